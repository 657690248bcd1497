"""The callbacks `fit` is handed for one run: the step-loss log, precise BN statistics, step
evaluations, the history file, the divergence stop, early stopping that survives a resume, and the
checkpoint. Each does one per-epoch (or per-step) side effect, so the training function stays short.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import tempfile
import time
import zipfile
from pathlib import Path

import keras
import numpy as np

from bnexp.config.schema import EarlyStoppingConfig
from bnexp.errors import one_line
from bnexp.metrics import ACCURACY, EPOCH_METRICS, LOSS, is_accuracy
from bnexp.store import CHECKPOINT, HISTORY, HistoryRow, read_history, write_atomic, write_history


def next_multiple(step: int, every: int) -> int:
    """The first multiple of `every` after `step`: when a callback that acts every `every` optimizer steps acts
    next (Keras calls back once per steps_per_execution steps, so at the first callback at or past it)."""
    return (step // every + 1) * every


class StepLossLog(keras.callbacks.Callback):
    """Samples the training loss every `every` optimizer steps, for steps-to-target analysis.

    Keras reports the running mean of the loss since the epoch began, which lags behind the
    model; each sample is instead the mean over the steps since the previous sample, recovered
    exactly from two running means (mean_b * k_b - mean_a * k_a over k_b - k_a steps).
    With steps_per_execution > 1 Keras calls back once per execution (and its batch index can run
    past the epoch's end), so the step is read from the optimizer and samples fall on the first
    callback at or past each multiple of `every`."""

    def __init__(self, every: int):
        super().__init__()
        self.every = every
        self.start(0)

    def start(self, step: int) -> None:
        self.samples: list[list[float]] = []
        self.epoch_start = self.last_step = step
        self.last_total = 0.0  # sum of the batch losses of this epoch up to last_step
        self.next_step = next_multiple(step, self.every)

    def on_epoch_begin(self, epoch, logs=None):
        self.start(int(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if step >= self.next_step and logs and LOSS in logs:
            total = float(logs[LOSS]) * (step - self.epoch_start)
            self.samples.append([step, (total - self.last_total) / (step - self.last_step)])
            self.last_step, self.last_total = step, total
            self.next_step = next_multiple(step, self.every)


class PreciseBatchNorm(keras.callbacks.Callback):
    """Evaluates BN with population statistics (PreciseBN, Wu & Johnson 2021) without changing training.

    Before an evaluation every BatchNormalization layer's moving mean and variance become the mean
    of the batch means and variances over the first `batches` training batches of the current
    epoch's order: the model runs in training mode on them with each layer's momentum at
    (i - 1) / i for the i-th batch, which makes the moving average an exact running mean. After
    the evaluation every non-trainable variable (moving statistics, and the dropout layers' seed
    states that the training-mode passes advanced) is put back, so training goes on as without it.
    """

    def __init__(self, data: keras.utils.PyDataset, batches: int):
        super().__init__()
        self.data, self.batches, self.saved = data, batches, None

    def on_test_begin(self, logs=None):
        batches = (self.data[i] for i in range(min(self.batches, len(self.data))))
        self.saved = recompute_bn_statistics(self.model, batches)

    def on_test_end(self, logs=None):
        for variable, value in self.saved or ():
            variable.assign(value)
        self.saved = None


def bn_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BN layer (ghost and renorm ones included) at any depth: a model.builder may nest models or layers
    that hold BN layers, which `model.layers` (the top level) would miss. Keras walks its own layers the same
    way (_flatten_layers)."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]


def recompute_bn_statistics(model: keras.Model, batches) -> list[tuple]:
    """Set every BN layer's moving statistics to the mean over `batches` of its batch statistics
    (training mode); returns (variable, value before) for every non-trainable variable, to put back."""
    layers = bn_layers(model)
    if not layers:  # the no-BN arm: nothing to recompute, so no forward passes to pay for
        return []
    saved = [(v, v.numpy()) for v in model.variables if not v.trainable]
    momenta = [layer.momentum for layer in layers]
    totals, count = [0.0] * (2 * len(layers)), 0
    try:
        # Momentum 0: after each pass a layer's moving statistics are that batch's own, summed here. The
        # passes run through Keras' compiled predict function (an eager call per batch cost seconds).
        for layer in layers:
            layer.momentum = 0.0
        with called_in_training_mode(model):
            for x, _ in batches:
                model.predict_on_batch(x)
                statistics = [keras.ops.convert_to_numpy(v) for layer in layers
                              for v in (layer.moving_mean, layer.moving_variance)]
                totals, count = [t + s for t, s in zip(totals, statistics)], count + 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if count:
        for layer, mean, variance in zip(layers, totals[::2], totals[1::2]):
            layer.moving_mean.assign(mean / count)
            layer.moving_variance.assign(variance / count)
    return saved


@contextlib.contextmanager
def called_in_training_mode(model: keras.Model, layers: list | None = None):
    """`layers` of `model` (default: the model itself, so all of them) run in training mode whatever mode they
    are called in, also inside the model's predict function, which is rebuilt on entry and on exit so that
    no compiled one outlives the change or predates it."""
    layers = [model] if layers is None else layers
    for layer in layers:
        call = layer.call
        layer.call = lambda *args, training=None, call=call, **kwargs: call(*args, training=True, **kwargs)
    model.predict_function = None
    try:
        yield
    finally:
        for layer in layers:
            del layer.call
        model.predict_function = None


class StepEvals(keras.callbacks.Callback):
    """Validation loss and accuracy every `every` optimizer steps, as [step, val_loss, val_accuracy].

    Steps fall as in StepLossLog (the first callback at or past each multiple); a step that ends
    the epoch is left to the epoch's own validation. Keras' evaluate resets the metrics the
    training loop accumulates for the epoch, so their values are put back after it.
    """

    def __init__(self, every: int, x: np.ndarray, y: np.ndarray, batch_size: int, callbacks: list):
        super().__init__()
        self.every, self.x, self.y, self.batch_size, self.callbacks = every, x, y, batch_size, callbacks
        self.samples: list[list[float]] = []

    def on_epoch_begin(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations)
        self.samples, self.epoch_end = [], step + self.params["steps"]
        self.next_step = next_multiple(step, self.every)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if step < self.next_step:
            return
        self.next_step = next_multiple(step, self.every)
        if step >= self.epoch_end:
            return
        kept = [(v, v.numpy()) for v in self.model.metrics_variables]
        scores = self.model.evaluate(self.x, self.y, batch_size=self.batch_size, verbose=0, return_dict=True,
                                     callbacks=self.callbacks)
        for variable, value in kept:
            variable.assign(value)
        self.samples.append([step, float(scores[LOSS]), float(scores[ACCURACY])])


class HistoryLog(keras.callbacks.Callback):
    """Appends each epoch's record to `history` and rewrites history.jsonl with it."""

    def __init__(self, path: Path, history: list[HistoryRow], step_log: StepLossLog,
                 step_evals: StepEvals | None = None):
        super().__init__()
        self.path, self.history, self.step_log, self.step_evals = path, history, step_log, step_evals

    def on_epoch_begin(self, epoch, logs=None):
        self.tic = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.history.append(HistoryRow(
            epoch=epoch + 1,
            step=int(self.model.optimizer.iterations),
            **{key: None if logs.get(key) is None else float(logs[key]) for key in EPOCH_METRICS},
            learning_rate=float(self.model.optimizer.learning_rate),
            epoch_seconds=round(time.perf_counter() - self.tic, 4),
            step_losses=self.step_log.samples,
            **({"step_evals": self.step_evals.samples} if self.step_evals else {}),
        ))
        write_history(self.path, self.history)


class Divergence(keras.callbacks.Callback):
    """Stops training at the first NaN/inf batch loss, as Keras' TerminateOnNaN does but without its
    printed line (bnexp's progress line says `diverged`, also under --quiet), and records the epoch whose
    loss was not finite, which ends the run as `diverged`, and `steps`: [the last optimizer step seen
    with a finite loss, the first seen with a NaN/inf one]. Keras calls back once per
    steps_per_execution batches, so the loss went bad at a step in between."""

    epoch: int | None = None
    steps: list[int] | None = None
    last_finite = 0

    def on_train_begin(self, logs=None):
        self.last_finite = int(self.model.optimizer.iterations)  # a resumed run starts past step 0

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if logs and LOSS in logs and self.steps is None:
            if math.isfinite(float(logs[LOSS])):
                self.last_finite = step
            else:
                self.steps = [self.last_finite, step]
                self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite(logs[LOSS]):
            self.epoch = epoch + 1
            self.model.stop_training = True


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' EarlyStopping with its state carried across a resume: Keras resets it at the start of
    every `fit`, and a resumed run's `fit` continues the interrupted one (Checkpoint saves the state)."""

    def __init__(self, rule: EarlyStoppingConfig):
        super().__init__(monitor=rule.monitor, min_delta=rule.min_delta, patience=rule.patience,
                         mode="max" if is_accuracy(rule.monitor) else "min",  # an accuracy rises, a loss falls
                         restore_best_weights=rule.restore_best_weights)
        self.resumed: tuple | None = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resumed:
            self.best, self.wait, self.best_weights = self.resumed


class Checkpoint(keras.callbacks.Callback):
    """The model with its optimizer state, plus the loop's own state, after the last finished epoch.

    One file (a Keras archive with bnexp's state added) replaced atomically, so the model, the
    epoch and the early-stopping state can never disagree. Saved after history.jsonl: a run killed
    in between has one epoch too many in its history, which restore() drops and trains again.
    Must come after the callbacks that stop the run, whose last epoch needs no checkpoint.
    """

    STATE, BEST = "bnexp_state.json", "bnexp_best_weights.npz"  # entries bnexp adds to the archive

    def __init__(self, run_dir: Path, stopping: ResumableEarlyStopping | None = None,
                 custom_objects: dict | None = None):
        super().__init__()
        self.path, self.history_path, self.stopping = run_dir / CHECKPOINT, run_dir / HISTORY, stopping
        self.custom_objects = custom_objects  # a builder's own layer classes, by name, for load_model
        self.unsaveable = False  # set when Keras cannot save the model: one warning, no more tries

    def on_epoch_end(self, epoch, logs=None):
        # After the last epoch, or one that stops the run, the test evaluation and result.json come
        # next and the checkpoint is deleted: saving it would be wasted time.
        if not self.model.stop_training and epoch + 1 < self.params["epochs"]:
            self.save(self.model, epoch + 1)

    def save(self, model: keras.Model, epoch: int) -> None:
        stopping = self.stopping
        if self.unsaveable:
            return
        with tempfile.TemporaryDirectory(prefix="bnexp-") as scratch:
            path = Path(scratch) / CHECKPOINT
            try:
                model.save(path)
            except Exception as exc:  # a custom layer without a config Keras can save (NotImplementedError, ...)
                self.unsaveable = True
                logging.getLogger(__name__).warning(
                    "%s: cannot checkpoint this network (%s: %s); if the run is interrupted it trains again from its "
                    "start", self.path.parent, type(exc).__name__, _short(exc))
                return
            with zipfile.ZipFile(path, "a") as archive:
                archive.writestr(self.STATE, json.dumps(
                    {"epoch": epoch, "best": stopping.best, "wait": stopping.wait} if stopping else {"epoch": epoch}))
                if stopping and stopping.best_weights is not None:
                    weights = io.BytesIO()
                    np.savez(weights, *stopping.best_weights)
                    archive.writestr(self.BEST, weights.getvalue())
            write_atomic(self.path, path.read_bytes())

    def restore(self, history: list[HistoryRow]) -> keras.Model | None:
        """The compiled model saved after the last finished epoch, with `history` filled up to that
        epoch and the early stopping's state restored; None when there is nothing to resume from."""
        if not self.path.exists():
            return None
        try:
            with zipfile.ZipFile(self.path) as archive:
                state = json.loads(archive.read(self.STATE))
                best = None
                if self.BEST in archive.namelist():
                    with np.load(io.BytesIO(archive.read(self.BEST))) as saved:
                        best = [saved[f"arr_{i}"] for i in range(len(saved.files))]
            model = keras.saving.load_model(self.path, custom_objects=self.custom_objects)
        except Exception as exc:  # damaged, or a custom layer Keras cannot rebuild from its config: start again
            logging.getLogger(__name__).warning("%s: cannot resume from this checkpoint (%s: %s); training the run "
                                                "again from its start", self.path, type(exc).__name__, _short(exc))
            return None
        previous = read_history(self.history_path)[: state["epoch"]]
        if len(previous) < state["epoch"]:
            return None
        history[:] = previous
        if self.stopping:
            self.stopping.resumed = (state["best"], state["wait"], best)
        return model


def _short(exc: BaseException) -> str:
    """The start of an exception's message, on one line (Keras' serialisation errors run to many lines)."""
    reason = one_line(exc)
    return reason if len(reason) <= 160 else reason[:160].rsplit(" ", 1)[0] + " ..."
