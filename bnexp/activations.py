"""Activation inputs over training (train.activation_stats_every > 0), as in Ioffe & Szegedy 2015, Fig. 1(b, c):
every N optimizer steps, and at step 0, the 15th, 50th and 85th percentiles, the mean and the standard deviation
of the tensor at each normalisation position, on a fixed probe of validation rows, into activations.jsonl
(bnexp.store.ACTIVATIONS; docs/RESULTS_FORMAT.md).

Positions, the same in every arm of a pair:
- built-in networks: the input of each hidden layer's activation (`dense_0_act`, `conv_1_act`), named after its
  layer (`dense_0`): BN's output where it comes before the activation, the layer's own output in the arm without
  normalisation (or with placement after_activation);
- model.builder networks: the tensor each `norm(x)` call returned (x itself in the arm without normalisation),
  named as the call named it (`norm_1`, `norm_2`, ... by default).

The probe runs through a sub-model of the training model (from its inputs to the statistics of each position,
built once per `fit`) in inference mode: BN normalises with its moving statistics, as at evaluation. The
statistics pool every value of a position on the probe (rows, units and spatial places). Only keras.ops: any
Keras backend.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from bnexp.callbacks import next_multiple
from bnexp.errors import one_line
from bnexp.store import ACTIVATION_STATISTICS, ActivationRow, write_activations

PERCENTILES = (15, 50, 85)  # Ioffe & Szegedy's Figure 1(b, c)
# Validation rows in the probe: 512 x 100 units gives 51,200 values per dense position, plenty for the
# percentiles, and a conv position's tensor stays a few tens of MB.
PROBE_ROWS = 512
# Activation layers of the built-in networks are named <layer>_act (bnexp.models).
ACTIVATION_SUFFIX = "_act"

# A position as found again in another copy of the same network: (name, index of the layer that makes it in
# model.layers, index of that layer's call, index of the tensor among the call's outputs).
Address = tuple[str, int, int, int]


def probe_rows(validation_rows: int, seed: int) -> np.ndarray:
    """The validation rows of the probe, in order: fixed per seed, so the arms of a pair see the same rows."""
    count = min(PROBE_ROWS, validation_rows)
    return np.sort(np.random.default_rng([seed, 3]).choice(validation_rows, size=count, replace=False))


def positions(model: keras.Model) -> list[tuple[str, object]]:
    """(name, tensor) of each position of a network bnexp built (see the module's docstring), in network order.
    A builder's network as it came from its builder: after a checkpoint is loaded use `addresses` on a fresh
    build and `locate` on the loaded one."""
    recorded = getattr(model, "bnexp_positions", None)
    if recorded is not None:
        return list(recorded)
    return [(layer.name.removesuffix(ACTIVATION_SUFFIX), layer.input) for layer in model.layers
            if isinstance(layer, keras.layers.Activation) and layer.name.endswith(ACTIVATION_SUFFIX)]


def addresses(model: keras.Model, found: list[tuple[str, object]]) -> list[Address]:
    """Where each position's tensor is made in `model`, to be found again in a copy of it (`locate`)."""
    index = {id(layer): i for i, layer in enumerate(model.layers)}
    result = []
    for name, tensor in found:
        operation, node, number = tensor._keras_history
        result.append((name, index[id(operation)], node, number))
    return result


def locate(model: keras.Model, where: list[Address]) -> list[tuple[str, object]]:
    """The positions at `where` (`addresses` of a copy of `model`) in `model`."""
    return [(name, model.layers[layer]._inbound_nodes[node].outputs[number]) for name, layer, node, number in where]


class Summary(keras.layers.Layer):
    """The percentiles, mean and sd of every value of its input, batch included, as one vector in the order of
    store.ACTIVATION_STATISTICS, in float32 and keras.ops: inside the probe's sub-model they run in its compiled
    predict function, three times cheaper than eager ops on its outputs."""

    def call(self, x):
        flat = keras.ops.reshape(keras.ops.cast(x, "float32"), (-1,))
        quantiles = keras.ops.quantile(flat, [p / 100 for p in PERCENTILES])
        return keras.ops.concatenate([quantiles, keras.ops.stack([keras.ops.mean(flat), keras.ops.std(flat)])])

    def compute_output_shape(self, input_shape):
        return (len(ACTIVATION_STATISTICS),)


class ActivationLog(keras.callbacks.Callback):
    """Records the probe's statistics at step 0 and then at the first callback at or past every multiple of
    `every` (as StepLossLog does), and rewrites `path` with `rows` at each epoch's end and when training ends:
    after a resume the rows up to the checkpoint's step are kept and later ones dropped (the caller's `rows`).

    `reference`: a fresh build of the same builder network, whose norm(x) positions are found again in the
    model being trained (a checkpoint Keras loaded knows nothing of norm calls); None otherwise."""

    def __init__(self, every: int, probe: np.ndarray, path: Path, rows: list[ActivationRow],
                 reference: keras.Model | None = None):
        super().__init__()
        self.every, self.probe, self.path, self.rows, self.reference = every, probe, path, rows, reference
        self.network: keras.Model | None = None
        self.names: list[str] = []

    def on_train_begin(self, logs=None):
        found = (locate(self.model, addresses(self.reference, positions(self.reference))) if self.reference
                 is not None else positions(self.model))
        self.reference = None  # only its graph was needed
        if not found:
            logging.getLogger(__name__).warning("%s: train.activation_stats_every: this network has no activation "
                                                "after a normalisation position; nothing is recorded", self.path.parent)
            return
        try:
            self.network = keras.Model(self.model.inputs, [Summary()(tensor) for _, tensor in found])
        except Exception as exc:  # a builder's graph Keras cannot cut (a position inside a nested model)
            logging.getLogger(__name__).warning("%s: train.activation_stats_every: cannot read the positions of this "
                                                "network (%s); nothing is recorded", self.path.parent, one_line(exc))
            return
        self.names = [name for name, _ in found]
        step = int(self.model.optimizer.iterations)
        self.next_step = next_multiple(step, self.every)
        if step == 0:
            self.record(0)

    def record(self, step: int) -> None:
        outputs = self.network.predict_on_batch(self.probe)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        self.rows.append({"step": step, "positions": {
            name: dict(zip(ACTIVATION_STATISTICS, map(float, keras.ops.convert_to_numpy(values))))
            for name, values in zip(self.names, outputs)}})

    def on_train_batch_end(self, batch, logs=None):
        if self.network is None:
            return
        step = int(self.model.optimizer.iterations)
        if step >= self.next_step:
            self.record(step)
            self.next_step = next_multiple(step, self.every)

    def on_epoch_end(self, epoch, logs=None):
        self.write()

    def on_train_end(self, logs=None):
        self.write()

    def write(self) -> None:
        if self.network is not None:
            write_activations(self.path, self.rows)
