"""Users' own networks: `model.builder` names a function that returns a Keras model, and bnexp gives it
a `norm` callable that inserts the arm's normalisation (or nothing) wherever the function calls it.

    def build(input_shape, num_classes, norm, width=16):   # model.args: {width: 32}
        x = inputs = keras.Input(input_shape)
        x = layers.Conv2D(width, 3, use_bias=norm.use_bias)(x)
        x = layers.ReLU()(norm(x))
        ...
        return keras.Model(inputs, outputs)

The arms of a pair get the same initial weights for every layer both have, without relying on layer names:
the seed is set right before the builder runs, Keras draws each layer initializer's seed in the order the
layers are created, and normalisation layers draw none (their initializers are constants), so the builder's
own layers are seeded alike in every arm. `bnexp plan` and `bnexp run` check this weight by weight (audit_pair).

What a builder promises is read from the graph it returns (Anatomy), in `plan` and again in `run` before
anything trains: every layer norm(x) made is on the path from the input to the output, the arms have the same
layers with the same configuration and connections once the normalisation is set aside (differences), and the
output is one softmax over the classes (probabilities).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bnexp.config.schema import BUILDER_ARGUMENTS, ModelConfig
from bnexp.errors import BnexpError, ConfigError, one_line
from bnexp.norms import NORMS


@dataclass(frozen=True)
class Builder:
    """Where a `model.builder` lives: resolved once from the config file's folder, carried to every worker."""

    spec: str  # as written: "package.module:function" or "path/to/file.py:function"
    file: str  # the source file, absolute; its content is part of every run id (sha256)
    module: str | None  # the module to import (package form); None: load `file` itself
    function: str
    sha256: str
    config_file: str = ""  # the config that names it, as given: errors about the network it builds name it

    @property
    def where(self) -> str:
        """How a message names the builder: the config file, the key, the value."""
        return f"{self.config_file}: model.builder: {self.spec}" if self.config_file else f"model.builder: {self.spec}"

    def load(self) -> Callable:
        return _load(self)

    def layer_classes(self) -> dict[str, type]:
        """The Keras layer classes the builder's module defines or imports, by name: what load_model needs to
        rebuild a checkpoint of its network (custom_objects)."""
        import keras

        module = sys.modules[self.load().__module__]
        return {name: value for name, value in vars(module).items()
                if inspect.isclass(value) and issubclass(value, keras.layers.Layer)
                and not value.__module__.startswith("keras")}


def locate(spec: str, config_file: Path) -> Builder:
    """The builder `spec` names, a file path resolved from the config file's folder and then the working
    directory; ConfigError, one line, when its file or module cannot be found."""
    target, function = spec.rsplit(":", 1)
    if target.endswith(".py") or "/" in target or "\\" in target:
        candidates = [Path(config_file).resolve().parent / target, Path.cwd() / target]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise ConfigError(f"{config_file}: model.builder: {spec}: no file {target} in {candidates[0].parent} (the "
                              f"config file's folder) or in {Path.cwd()}; give its path from either")
        file, module = found.resolve(), None
    else:
        try:
            found = importlib.util.find_spec(target)
        except Exception as exc:  # a parent package that is missing, or whose own code fails on import
            raise ConfigError(f"{config_file}: model.builder: {spec}: cannot import {target}: {one_line(exc)}") from None
        if found is None or not found.origin or not Path(found.origin).is_file():
            raise ConfigError(f"{config_file}: model.builder: {spec}: no module named {target!r} on the Python path; "
                              f"install it, or name a file instead (path/to/file.py:{function})")
        file, module = Path(found.origin).resolve(), target
    return Builder(spec, str(file), module, function, hashlib.sha256(file.read_bytes()).hexdigest(), str(config_file))


def check(builder: Builder, model: ModelConfig) -> None:
    """ConfigError, one line, when the builder does not import, is not a function, or cannot be called with
    input_shape, num_classes, norm and model.args as keyword arguments."""
    function = builder.load()
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: calling it will tell
        return
    try:
        signature.bind(**dict.fromkeys(BUILDER_ARGUMENTS), **model.args)
    except TypeError as exc:
        given = ", ".join([*BUILDER_ARGUMENTS, *(f"{k}=..." for k in model.args)])
        raise ConfigError(f"{builder.where}: {builder.function}{signature} cannot be "
                          f"called as {builder.function}({given}) ({exc}); it must take input_shape, num_classes and "
                          f"norm, and a keyword for each model.args key") from None


@cache
def _load(builder: Builder) -> Callable:
    where = builder.where
    try:
        if builder.module is not None:
            module = importlib.import_module(builder.module)
        else:
            # A module name of its own per file content: an edited file is a new module, not a stale one.
            name = f"bnexp_builder_{Path(builder.file).stem}_{builder.sha256[:12]}"
            spec = importlib.util.spec_from_file_location(name, builder.file)
            module = importlib.util.module_from_spec(spec)
            folder = str(Path(builder.file).parent)
            if folder not in sys.path:  # as `python file.py` would: the file may import its neighbours
                sys.path.insert(0, folder)
            # The content the run ids were given for, or none: a file edited since must not be trained under them.
            source = Path(builder.file).read_bytes()
            if hashlib.sha256(source).hexdigest() != builder.sha256:
                raise ConfigError(f"{where}: {builder.file} changed after the sweep was planned; run the same command "
                                  "again to plan and train its new content")
            sys.modules[name] = module
            exec(compile(source, builder.file, "exec"), module.__dict__)
    except ConfigError:
        raise
    except (Exception, SystemExit) as exc:  # the user's code: any error it raises on import is theirs to fix
        raise ConfigError(f"{where}: importing {builder.file} raised {type(exc).__name__}: {one_line(exc)}") from None
    function = getattr(module, builder.function, None)
    if function is None:
        defined = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and v.__module__ == module.__name__)
        raise ConfigError(f"{where}: {builder.file} defines no {builder.function!r}; functions there: "
                          f"{', '.join(defined) or 'none'}")
    if not callable(function):
        raise ConfigError(f"{where}: {builder.function} in {builder.file} is a {type(function).__name__}, not a function")
    return function


class Norm:
    """The `norm` a builder receives: `norm(x)` returns x normalised the arm's way (x itself for the arm
    without normalisation); `norm.use_bias` says whether the layer before it should keep its bias
    (model.batch_norm.use_bias, for normalised arms), `norm.kind` which normalisation this arm uses."""

    def __init__(self, model: ModelConfig, make_layer: Callable):
        self.kind = model.norm_kind
        self.use_bias = not NORMS[self.kind].normalizes or model.batch_norm.use_bias
        self.calls = 0
        self.layers: list = []  # the normalisation layers made, in order
        self.positions: list[tuple[str, Any]] = []  # (name, the tensor norm returned) per call: bnexp.activations
        self._make_layer = make_layer

    def __call__(self, x, name: str | None = None):
        self.calls += 1
        name = name or f"norm_{self.calls}"
        if not NORMS[self.kind].normalizes:
            self.positions.append((name, x))
            return x
        # Named by bnexp, never by Keras' counters, so that the builder's own layers are named alike in every arm.
        layer = self._make_layer(x, name)
        self.layers.append(layer)
        y = layer(x)
        self.positions.append((name, y))
        return y

    def __repr__(self) -> str:
        return f"<bnexp norm: {self.kind}, use_bias={self.use_bias}>"


def build(builder: Builder, model: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int,
          make_layer: Callable):
    """The builder's model for this arm, with its seed set right before the call (see the module's docstring)."""
    import keras

    where = builder.where
    norm = Norm(model, make_layer)
    # Imported before the seed is set: a module that makes layers (or draws numbers) when imported would
    # otherwise draw them in the first arm built only, and the arms' weights would differ by the import.
    function = builder.load()
    keras.utils.set_random_seed(seed)
    try:
        network = function(input_shape=input_shape, num_classes=num_classes, norm=norm, **copy.deepcopy(model.args))
    except BnexpError:  # norm(x) refused the tensor it got (an axis or a group count that does not fit)
        raise
    except (Exception, SystemExit) as exc:  # the user's code: its message, on one line, names what went wrong
        raise ConfigError(f"{where} raised {type(exc).__name__} for inputs of shape {input_shape} and "
                          f"{num_classes} classes: {one_line(exc)}") from None
    if not isinstance(network, keras.Model):
        raise ConfigError(f"{where} returned {type(network).__name__}, not a keras.Model")
    inputs = [tuple(tensor.shape[1:]) for tensor in network.inputs]
    if len(inputs) != 1 or len(inputs[0]) != len(input_shape) or any(
            size is not None and size != expected for size, expected in zip(inputs[0], input_shape)):
        raise ConfigError(f"{where} returned a model whose input(s) have shape {', '.join(map(str, inputs)) or 'none'}, "
                          f"but the data's samples have shape {input_shape}: build one keras.Input(input_shape)")
    if not norm.calls:
        raise ConfigError(f"{where} never calls norm(x), so every arm would train the same network; call norm(x) "
                          "where the normalisation goes (it returns x unchanged for the arm without one)")
    made = {id(layer) for layer in norm.layers}
    network.bnexp_anatomy = anatomy(network, lambda op: id(op) in made, where)
    unused = len(norm.layers) - len(network.bnexp_anatomy.norms)
    if unused:
        raise ConfigError(f"{where} calls norm(x) {norm.calls} time(s) but {unused} of the {len(norm.layers)} "
                          f"normalisation layers it made for arm {norm.kind} are not on the path from the input to the "
                          f"output: the network keeps using x; write x = norm(x) and use what norm returns")
    output = probabilities(network, num_classes)
    if output:
        raise ConfigError(f"{where} {output}")
    network.bnexp_norm_layers = norm.layers
    network.bnexp_positions = norm.positions
    return network


@dataclass(frozen=True)
class Anatomy:
    """What a built network computes, read from its graph: its own layers in a canonical order (a walk from the
    outputs back to the inputs, inputs first), each as (class, config as JSON, the positions of the layers it
    reads), and the normalisation layers on the path from input to output (configs), which the walk steps
    through: the same `layers` in two arms mean the same network but for the normalisation."""

    layers: tuple[tuple[str, str, tuple[int, ...]], ...]
    norms: tuple[str, ...]


# Configuration a normalisation makes redundant (a bias before it) or that names rather than computes.
_ASIDE = {"name", "use_bias"}
# Layers that pass their input's values through: the output is probabilities when their input is.
_PASS_THROUGH = {"Reshape", "Flatten", "Dropout", "Identity", "ActivityRegularization"}


def anatomy(network, is_norm: Callable, where: str) -> Anatomy:
    """The network's Anatomy; `is_norm(layer)` says which layers are normalisation layers. ConfigError for a
    model whose graph cannot be read (a subclassed keras.Model)."""
    import keras

    layers: list[tuple[str, str, tuple[int, ...]]] = []
    norms: list[str] = []
    placed: dict[int, int] = {}  # id(node) -> position in `layers` of what the node outputs

    def visit(tensor) -> int:
        operation, node_index, _ = tensor._keras_history
        node = operation._inbound_nodes[node_index]
        if id(node) in placed:
            return placed[id(node)]
        inputs = tuple([visit(t) for t in node.input_tensors])
        if is_norm(operation):
            norms.append(_config(operation))
            position = inputs[0]
        elif isinstance(operation, keras.Model) and getattr(operation, "outputs", None):
            # a nested model: its own layers, reading what the outer graph gives it
            inner = anatomy(operation, is_norm, where)
            offset = len(layers)
            for kind, config, reads in inner.layers:
                reads = tuple(inputs[-1 - r] if r < 0 else r + offset for r in reads)
                layers.append((kind, config, reads))
            norms.extend(inner.norms)
            position = len(layers) - 1
        else:
            kind = type(operation).__name__
            if kind == "InputLayer":
                config = json.dumps(list(tensor.shape[1:]))
                inputs = (-1 - sum(1 for layer in layers if layer[0] == "InputLayer"),)
            else:
                config = _config(operation)
            layers.append((kind, config, inputs))
            position = len(layers) - 1
        placed[id(node)] = position
        return position

    outputs = getattr(network, "outputs", None)
    # The walk recurses once per layer on the longest path: what Keras itself builds must not exceed it.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))
    if not outputs:
        raise ConfigError(f"{where} returned a {type(network).__name__} without a graph of layers (a subclassed "
                          "keras.Model); return keras.Model(inputs, outputs) built from keras.Input")
    for tensor in outputs:
        visit(tensor)
    return Anatomy(tuple(layers), tuple(norms))


def _config(operation) -> str:
    try:
        config = operation.get_config()
    except Exception:  # a custom layer without get_config: its class is all there is to compare
        config = {}
    return json.dumps({k: v for k, v in config.items() if k != "name"}, sort_keys=True, default=str)


def probabilities(network, num_classes: int) -> str | None:
    """Why the network's output is not one tensor of shape (num_classes,) holding class probabilities
    (what sparse categorical cross-entropy trains), as the rest of a sentence; None when it is."""
    import keras

    outputs = network.outputs
    end = (f'end the network with layers.Dense({num_classes}, activation="softmax") (or layers.Softmax() after a '
           f"last layer of {num_classes} units)")
    if len(outputs) != 1:
        return f"returned a model with {len(outputs)} outputs; bnexp trains one, the class probabilities: {end}"
    shape = tuple(outputs[0].shape[1:])
    if shape != (num_classes,):
        return (f"returned a model whose output has shape {shape}, not ({num_classes},), one probability per class "
                f"of the data's {num_classes}: {end}")
    tensor = outputs[0]
    while True:
        operation, node_index, _ = tensor._keras_history
        kind = type(operation).__name__
        if isinstance(operation, keras.Model) and getattr(operation, "outputs", None):
            tensor = operation.outputs[0]
            continue
        if kind in _PASS_THROUGH and operation._inbound_nodes[node_index].input_tensors:
            tensor = operation._inbound_nodes[node_index].input_tensors[0]
            continue
        break
    activation = "softmax" if kind == "Softmax" else json.loads(_config(operation)).get("activation")
    if isinstance(activation, dict):  # a function given as the activation (tf.nn.softmax: 'softmax_v2')
        activation = str(activation.get("config"))
    if activation == "softmax" or (activation and activation.startswith("softmax_")):
        return _sums_to_one(network, end)
    what = f"{kind} with activation {activation}" if activation else kind
    return (f"returned a model whose output comes from {what}, not a softmax: bnexp trains with sparse categorical "
            f"cross-entropy on class probabilities, and logits would be read as probabilities; {end}")


def _sums_to_one(network, end: str) -> str | None:
    """Why a softmax-ended network's output is still not a distribution over the classes (a softmax over
    another axis, a size-1 one included, gives ones), checked on a probe batch; None when each row sums to 1."""
    import keras

    shape = tuple(network.inputs[0].shape[1:]) if len(network.inputs) == 1 else ()
    if not shape or any(size is None for size in shape):
        return None
    probe = np.random.default_rng(0).normal(size=(2, *shape)).astype("float32")
    try:
        with warnings.catch_warnings():  # Keras' own warning on a size-1 softmax axis: the message below says it
            warnings.simplefilter("ignore")
            output = keras.ops.convert_to_numpy(network(probe, training=False)).astype("float64")
    except Exception:  # a network that cannot run on a probe fails at training time, with its own message
        return None
    sums = output.reshape(len(probe), -1).sum(axis=1)
    if np.all(np.isfinite(sums)) and np.allclose(sums, 1.0, atol=1e-3) and (output >= 0).all():
        return None
    return (f"returned a model whose output does not sum to 1 over the classes (a probe batch gives {sums[0]:.4g}): "
            f"its softmax is over another axis; {end}")


def differences(reference: tuple[str, Anatomy], other: tuple[str, Anatomy]) -> str | None:
    """How two arms' networks differ once their normalisation layers (and the biases before them) are set
    aside, as the rest of a sentence; None when they do not."""
    (arm, mine), (other_arm, theirs) = reference, other

    def plain(layers):
        return [(kind, {k: v for k, v in json.loads(config).items() if k not in _ASIDE} if kind != "InputLayer"
                 else json.loads(config), reads) for kind, config, reads in layers]

    ours, others = plain(mine.layers), plain(theirs.layers)
    for position, (a, b) in enumerate(zip(ours, others)):
        if a == b:
            continue
        where = f"layer {position + 1} of {len(ours)} besides normalisation"
        if a[0] != b[0]:
            return f"{where} is a {a[0]} in arm {arm} but a {b[0]} in arm {other_arm}"
        keys = sorted(k for k in a[1].keys() | b[1].keys() if a[1].get(k) != b[1].get(k))
        if keys:
            return (f"{where} ({a[0]}) has {keys[0]} {a[1].get(keys[0])} in arm {arm} but "
                    f"{b[1].get(keys[0])} in arm {other_arm}")
        return f"{where} ({a[0]}) reads other layers in arm {arm} than in arm {other_arm}"
    if len(ours) != len(others):
        longer, extra = (arm, ours) if len(ours) > len(others) else (other_arm, others)
        shorter = min(len(ours), len(others))
        return (f"arm {longer} has {len(extra) - shorter} layer(s) more besides normalisation than the other "
                f"(first: a {extra[shorter][0]})")
    return None


def shared_weights(model) -> dict[str, list[np.ndarray]]:
    """The initial weights of the model's own layers (not bnexp's normalisation layers), by layer path."""
    skip = {id(v) for layer in getattr(model, "bnexp_norm_layers", []) for v in layer.weights}
    layers: dict[str, list[np.ndarray]] = {}
    for variable in model.weights:
        if id(variable) not in skip:
            layers.setdefault(variable.path.rsplit("/", 1)[0], []).append(np.asarray(variable.numpy()))
    return layers


def audit_pair(builder: Builder, arms: list[tuple[str, Callable]], seed: int) -> str:
    """One line: how many of the reference arm's own layers have identical initial weights in every other arm;
    ConfigError when one does not (the pair would compare different initialisations, not normalisations).

    `arms`: (arm, a function building its model with its weights), the reference first. The arms are built
    one at a time, their weights reduced to digests and dropped before the next, so the audit needs the memory
    of one arm's model. Layers are matched by their weights' values, not by names or order, so the check holds
    whatever the builder names its layers."""
    import keras

    def weights(make) -> tuple[dict[str, list[tuple[str, bool]]], int]:
        """(digest, whether random) of each own weight by layer path, one variable in memory at a time."""
        model = make()
        skip = {id(v) for layer in getattr(model, "bnexp_norm_layers", []) for v in layer.weights}
        layers: dict[str, list[tuple[str, bool]]] = {}
        for variable in model.weights:
            if id(variable) not in skip:
                array = np.asarray(variable.numpy())
                layers.setdefault(variable.path.rsplit("/", 1)[0], []).append(
                    (_digest(array), bool(array.size and np.ptp(array) > 0)))
                del array
        norms = len(model.bnexp_anatomy.norms)  # counted on the graph's path from input to output
        del model
        keras.utils.clear_session()
        return layers, norms

    (reference_arm, make), others = arms[0], arms[1:]
    expected, reference_norms = weights(make)
    # Constant weights (zero biases, unit scales) say nothing about the seed, and a bias may be missing in
    # arms where norm.use_bias is false: only the random ones must be found.
    digests = {path: [digest for digest, random in ws if random] for path, ws in expected.items()}
    added = [f"{reference_arm} {reference_norms}"]
    for arm, make in others:
        layers, norms = weights(make)
        found = {digest for ws in layers.values() for digest, _ in ws}
        differ = [path for path, ds in digests.items() if not set(ds) <= found]
        if differ:
            raise ConfigError(
                f"{builder.where}: {len(differ)} of the {len(digests)} layers of arm {reference_arm} "
                f"start with other weights in arm {arm} (seed {seed}; first: {differ[0]}): the builder draws random "
                f"numbers that depend on the arm; create its layers in the same order in every arm, or seed their "
                f"initializers")
        added.append(f"{arm} {norms}")
    return (f"builder {builder.spec}: {len(digests)} layers start with identical weights in arms "
            f"{', '.join(arm for arm, _ in arms)} (seed {seed}); normalisation layers per arm: {', '.join(added)}")


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(str(array.shape).encode() + np.ascontiguousarray(array).tobytes()).hexdigest()
