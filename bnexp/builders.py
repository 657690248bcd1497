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
own layers are seeded alike in every arm. `bnexp plan` checks this weight by weight (audit_pair).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

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

    def load(self) -> Callable:
        return _load(self)


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
    return Builder(spec, str(file), module, function, hashlib.sha256(file.read_bytes()).hexdigest())


def check(builder: Builder, model: ModelConfig, config_file: Path | str) -> None:
    """ConfigError, one line, when the builder does not import, is not a function, or cannot be called with
    input_shape, num_classes, norm and model.args as keyword arguments."""
    function = _load_as(builder, config_file)
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: calling it will tell
        return
    try:
        signature.bind(**dict.fromkeys(BUILDER_ARGUMENTS), **model.args)
    except TypeError as exc:
        given = ", ".join([*BUILDER_ARGUMENTS, *(f"{k}=..." for k in model.args)])
        raise ConfigError(f"{config_file}: model.builder: {builder.spec}: {builder.function}{signature} cannot be "
                          f"called as {builder.function}({given}) ({exc}); it must take input_shape, num_classes and "
                          f"norm, and a keyword for each model.args key") from None


def _load_as(builder: Builder, config_file: Path | str) -> Callable:
    try:
        return builder.load()
    except ConfigError as exc:
        raise ConfigError(f"{config_file}: {exc}") from None


@cache
def _load(builder: Builder) -> Callable:
    where = f"model.builder: {builder.spec}"
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
            sys.modules[name] = module
            spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: any error it raises on import is theirs to fix
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
        self._make_layer = make_layer

    def __call__(self, x, name: str | None = None):
        self.calls += 1
        if not NORMS[self.kind].normalizes:
            return x
        # Named by bnexp, never by Keras' counters, so that the builder's own layers are named alike in every arm.
        layer = self._make_layer(x, name or f"norm_{self.calls}")
        self.layers.append(layer)
        return layer(x)

    def __repr__(self) -> str:
        return f"<bnexp norm: {self.kind}, use_bias={self.use_bias}>"


def build(builder: Builder, model: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int,
          make_layer: Callable):
    """The builder's model for this arm, with its seed set right before the call (see the module's docstring)."""
    import keras

    where = f"model.builder: {builder.spec}"
    norm = Norm(model, make_layer)
    keras.utils.set_random_seed(seed)
    try:
        network = builder.load()(input_shape=input_shape, num_classes=num_classes, norm=norm,
                                 **copy.deepcopy(model.args))
    except BnexpError:  # norm(x) refused the tensor it got (an axis or a group count that does not fit)
        raise
    except Exception as exc:  # the user's code: its message, on one line, names what went wrong
        raise ConfigError(f"{where} raised {type(exc).__name__} for inputs of shape {input_shape} and "
                          f"{num_classes} classes: {one_line(exc)}") from None
    if not isinstance(network, keras.Model):
        raise ConfigError(f"{where} returned {type(network).__name__}, not a keras.Model")
    if not norm.calls:
        raise ConfigError(f"{where} never calls norm(x), so every arm would train the same network; call norm(x) "
                          "where the normalisation goes (it returns x unchanged for the arm without one)")
    if NORMS[norm.kind].normalizes and not any(layer.built for layer in norm.layers):
        raise ConfigError(f"{where} calls norm(x) but its model does not use what norm returned")
    network.bnexp_norm_layers = norm.layers
    return network


def shared_weights(model) -> dict[str, list[np.ndarray]]:
    """The initial weights of the model's own layers (not bnexp's normalisation layers), by layer path."""
    skip = {id(v) for layer in getattr(model, "bnexp_norm_layers", []) for v in layer.weights}
    layers: dict[str, list[np.ndarray]] = {}
    for variable in model.weights:
        if id(variable) not in skip:
            layers.setdefault(variable.path.rsplit("/", 1)[0], []).append(np.asarray(variable.numpy()))
    return layers


def audit_pair(builder: Builder, reference: tuple[str, object], others: list[tuple[str, object]], seed: int) -> str:
    """One line: how many of the reference arm's own layers have identical initial weights in every other arm;
    ConfigError when one does not (the pair would compare different initialisations, not normalisations).

    Layers are matched by their weights' values, not by names or order, so the check holds whatever the
    builder names its layers."""
    reference_arm, reference_model = reference
    expected = shared_weights(reference_model)
    # Constant weights (zero biases, unit scales) say nothing about the seed, and a bias may be missing in
    # arms where norm.use_bias is false: only the random ones must be found.
    digests = {path: [_digest(w) for w in weights if w.size and np.ptp(w) > 0] for path, weights in expected.items()}
    for arm, model in others:
        found = {_digest(w) for weights in shared_weights(model).values() for w in weights}
        differ = [path for path, ds in digests.items() if not set(ds) <= found]
        if differ:
            raise ConfigError(
                f"model.builder: {builder.spec}: {len(differ)} of the {len(digests)} layers of arm {reference_arm} "
                f"start with other weights in arm {arm} (seed {seed}; first: {differ[0]}): the builder draws random "
                f"numbers that depend on the arm; create its layers in the same order in every arm, or seed their "
                f"initializers")
    added = [f"{arm} {len(getattr(model, 'bnexp_norm_layers', []))}" for arm, model in [reference, *others]]
    return (f"builder {builder.spec}: {len(digests)} layers start with identical weights in arms "
            f"{', '.join([reference_arm, *(arm for arm, _ in others)])} (seed {seed}); normalisation layers per arm: "
            f"{', '.join(added)}")


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(str(array.shape).encode() + np.ascontiguousarray(array).tobytes()).hexdigest()
