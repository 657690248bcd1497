"""Train one run and record it: spec.json, history.jsonl after every epoch, result.json at the end.

One `fit` trains all epochs (one more after a resume) on EpochBatches, which serves each epoch in
its (seed, epoch) order; what happens after an epoch (history, progress, the NaN check, early
stopping, the checkpoint) is a callback each. The training code uses only Keras 3 APIs (no `tf.*`),
so it runs on any Keras backend.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import platform
import socket
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from bnexp.config import EarlyStoppingConfig, RunConfig, TrainConfig
from bnexp.data import load_dataset
from bnexp.builders import Builder
from bnexp.models import build_model, count_params
from bnexp.errors import ResultsError
from bnexp.metrics import ACCURACY, EPOCH_METRICS, LOSS, is_accuracy
from bnexp.store import (CHECKPOINT, COMPLETED, DIVERGED, FAILED, HISTORY, HistoryRow, ResultRecord, read_history,
                         read_spec, write_atomic, write_history, write_result, write_spec)
from bnexp.sweep import RunSpec


def train_run(
    spec: RunSpec,
    run_dir: Path,
    data_dir: Path | None,
    *,
    tensorboard: bool = False,
    on_epoch: Callable[[RunSpec, dict], None] | None = None,
) -> dict:
    """Train `spec`, writing its files into `run_dir`; returns the result record.

    A NaN/inf loss ends the run as `diverged`; an exception ends it as `failed` with its
    message. Neither is raised: a sweep goes on past them. KeyboardInterrupt and ResultsError
    (the results folder cannot be written) are raised, leaving the run to resume from its last
    checkpoint. The caller holds the run's lock (bnexp.executors.train_one).
    """
    started, started_at = time.perf_counter(), _now()
    record = spec.record()
    try:
        resumable = read_spec(run_dir).get("config") == record["config"]
    except (OSError, ValueError, ResultsError):  # no spec.json yet, or not one to trust
        resumable = False
    if not resumable:
        (run_dir / CHECKPOINT).unlink(missing_ok=True)  # not this run's: never resume from it
    write_spec(run_dir, record)
    history: list[HistoryRow] = []
    result = ResultRecord(status=FAILED, epochs_run=0, diverged_epoch=None, diverged_steps=None, error=None,
                          test_loss=None, test_accuracy=None, test_error=None,
                          trainable_params=None, non_trainable_params=None, num_classes=None,
                          resumed_from_epoch=None)
    try:
        _fit(spec.config, spec.builder, run_dir, data_dir, history, result, tensorboard,
             lambda record: on_epoch(spec, record) if on_epoch else None)
    except ResultsError:
        raise
    except Exception as exc:  # the run failed; the sweep goes on and the message is kept
        result.update(status=FAILED, error=f"{type(exc).__name__}: {exc}")
    result.update(
        epochs_run=len(history),
        wall_seconds=round(time.perf_counter() - started, 3),
        started_at=started_at,
        finished_at=_now(),
        environment=environment(),
    )
    write_result(run_dir, result)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    return result


def _fit(config: RunConfig, builder: Builder | None, run_dir: Path, data_dir, history: list[HistoryRow],
         result: ResultRecord, tensorboard: bool, on_epoch):
    train = config.train
    # Each run compiles a new model, which TensorFlow would report as "excessive retracing".
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if train.deterministic:
        enable_determinism()
    keras.utils.set_random_seed(config.seed)
    data = load_dataset(config.data, data_dir)
    stopping = ResumableEarlyStopping(train.early_stopping) if train.early_stopping else None
    checkpoint = Checkpoint(run_dir, stopping)
    model = checkpoint.restore(history)
    if model is None:
        model = build_model(config.model, data.input_shape, data.num_classes, config.seed, builder)
        model.compile(
            optimizer=make_optimizer(train),
            loss="sparse_categorical_crossentropy",
            metrics=[ACCURACY],
            steps_per_execution=train.steps_per_execution,
        )
    else:
        result["resumed_from_epoch"] = len(history)
    result["trainable_params"], result["non_trainable_params"] = count_params(model)
    result["num_classes"] = data.num_classes  # lets the report tell "stuck at chance" for any dataset

    batches = EpochBatches(data.x_train, data.y_train, config.seed, train.batch_size, train.steps_per_epoch)
    step_log = StepLossLog(train.log_every_steps)
    divergence = Divergence()
    # Evaluation needs no small batches (BN uses its moving statistics); one size for validation and
    # test traces the evaluation function once. E2 on 12k images: 0.9 s at 1024 instead of 1.4 s at 16.
    eval_batch = max(train.batch_size, 1024)
    # Keras calls on_test_begin/on_test_end around every evaluate, the validation inside fit included.
    precise = [PreciseBatchNorm(batches, config.model.batch_norm.precise_stats)] \
        if config.model.batch_norm.precise_stats else []
    step_evals = StepEvals(train.eval_every_steps, data.x_val[:train.eval_subset], data.y_val[:train.eval_subset],
                           eval_batch, precise) if train.eval_every_steps and len(data.x_val) else None
    # Order matters: every callback's on_epoch_end runs before Keras acts on stop_training, so the
    # epoch is recorded and reported first, and the checkpoint, last, sees whether the run stops.
    callbacks = [
        batches.callback,
        *precise,
        step_log,
        *([step_evals] if step_evals else []),
        HistoryLog(run_dir / HISTORY, history, step_log, step_evals),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch(history[-1])),
        divergence,
        *([stopping] if stopping else []),
        checkpoint,
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")))
    # shuffle=False: Keras would otherwise serve the batches of an epoch in a random order of its own.
    model.fit(batches, epochs=train.epochs, initial_epoch=len(history), shuffle=False,
              validation_data=(data.x_val, data.y_val), validation_batch_size=eval_batch, callbacks=callbacks,
              verbose=0)
    if divergence.epoch:
        result.update(status=DIVERGED, diverged_epoch=divergence.epoch, diverged_steps=divergence.steps)
        return
    test = model.evaluate(data.x_test, data.y_test, batch_size=eval_batch, verbose=0, return_dict=True,
                          callbacks=precise)
    result.update(status=COMPLETED, test_loss=float(test[LOSS]), test_accuracy=float(test[ACCURACY]),
                  test_error=1.0 - float(test[ACCURACY]))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of training examples in an epoch: a function of (seed, epoch) only, so every arm of
    a pair sees the same batches, and a resumed run the same ones it would have seen."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class EpochBatches(keras.utils.PyDataset):
    """The training batches of every epoch in that epoch's order (epoch_order), for one `fit` over all epochs.

    Keras asks a PyDataset for batches by index alone, so `callback` tells it the epoch: Keras calls
    on_epoch_begin before it makes that epoch's iterator, so no batch is read in another epoch's
    order. `steps_per_epoch` caps the batches of an epoch, which then draws on the first rows of its order.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, seed: int, batch_size: int, steps_per_epoch: int | None = None):
        super().__init__()
        self.x, self.y, self.seed, self.batch_size = x, y, seed, batch_size
        self.batches = math.ceil(len(x) / batch_size)
        if steps_per_epoch:
            self.batches = min(self.batches, steps_per_epoch)
        self.callback = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs=None: self.serve(epoch))
        self.serve(0)

    def serve(self, epoch: int) -> None:
        self.epoch, self.order = epoch, epoch_order(self.seed, epoch, len(self.x))

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        return self.x[rows], self.y[rows]


def make_optimizer(train: TrainConfig) -> keras.optimizers.Optimizer:
    schedules = keras.optimizers.schedules
    learning_rate = {
        "constant": lambda: train.learning_rate,
        "exponential": lambda: schedules.ExponentialDecay(
            train.learning_rate, train.decay_steps, train.decay_rate, staircase=train.staircase),
        # lr / (1 + rate * step / decay_steps): the old Keras `decay` argument is decay_steps=1.
        "inverse_time": lambda: schedules.InverseTimeDecay(
            train.learning_rate, train.decay_steps, train.decay_rate, staircase=train.staircase),
    }[train.schedule]()
    optimizers = keras.optimizers
    return {
        "adam": lambda: optimizers.Adam(learning_rate),
        "adamw": lambda: optimizers.AdamW(learning_rate),
        "nadam": lambda: optimizers.Nadam(learning_rate),
        "adagrad": lambda: optimizers.Adagrad(learning_rate),
        "rmsprop": lambda: optimizers.RMSprop(learning_rate, momentum=train.momentum),
        "sgd": lambda: optimizers.SGD(learning_rate, momentum=train.momentum, nesterov=train.nesterov),
    }[train.optimizer]()


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
        self.next_step = (step // self.every + 1) * self.every

    def on_epoch_begin(self, epoch, logs=None):
        self.start(int(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if step >= self.next_step and logs and LOSS in logs:
            total = float(logs[LOSS]) * (step - self.epoch_start)
            self.samples.append([step, (total - self.last_total) / (step - self.last_step)])
            self.last_step, self.last_total = step, total
            self.next_step = (step // self.every + 1) * self.every


class PreciseBatchNorm(keras.callbacks.Callback):
    """Evaluates BN with population statistics (PreciseBN, Wu & Johnson 2021) without changing training.

    Before an evaluation every BatchNormalization layer's moving mean and variance become the mean
    of the batch means and variances over the first `batches` training batches of the current
    epoch's order: the model runs in training mode on them with each layer's momentum at
    (i - 1) / i for the i-th batch, which makes the moving average an exact running mean. After
    the evaluation every non-trainable variable (moving statistics, and the dropout layers' seed
    states that the training-mode passes advanced) is put back, so training goes on as without it.
    """

    def __init__(self, data: EpochBatches, batches: int):
        super().__init__()
        self.data, self.batches, self.saved = data, batches, None

    def on_test_begin(self, logs=None):
        batches = (self.data[i] for i in range(min(self.batches, len(self.data))))
        self.saved = recompute_bn_statistics(self.model, batches)

    def on_test_end(self, logs=None):
        for variable, value in self.saved or ():
            variable.assign(value)
        self.saved = None


def recompute_bn_statistics(model: keras.Model, batches) -> list[tuple]:
    """Set every BN layer's moving statistics to the mean over `batches` of its batch statistics
    (training mode); returns (variable, value before) for every non-trainable variable, to put back."""
    # Every BN layer at any depth: a model.builder may nest models or layers that hold BN layers, which
    # `model.layers` (the top level) would miss. Keras walks its own layers the same way (_flatten_layers).
    layers = [layer for layer in model._flatten_layers(include_self=False)
              if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:  # the no-BN arm: nothing to recompute, so no forward passes to pay for
        return []
    saved = [(v, keras.ops.convert_to_numpy(v.value)) for v in model.variables if not v.trainable]
    momenta = [layer.momentum for layer in layers]
    try:
        for i, (x, _) in enumerate(batches, 1):
            for layer in layers:
                layer.momentum = (i - 1) / i
            model(x, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return saved


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
        self.next_step = (step // self.every + 1) * self.every

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if step < self.next_step:
            return
        self.next_step = (step // self.every + 1) * self.every
        if step >= self.epoch_end:
            return
        kept = [(v, keras.ops.convert_to_numpy(v.value)) for v in self.model.metrics_variables]
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
            learning_rate=float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
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

    def __init__(self, run_dir: Path, stopping: ResumableEarlyStopping | None = None):
        super().__init__()
        self.path, self.history_path, self.stopping = run_dir / CHECKPOINT, run_dir / HISTORY, stopping

    def on_epoch_end(self, epoch, logs=None):
        # After the last epoch, or one that stops the run, the test evaluation and result.json come
        # next and the checkpoint is deleted: saving it would be wasted time.
        if not self.model.stop_training and epoch + 1 < self.params["epochs"]:
            self.save(self.model, epoch + 1)

    def save(self, model: keras.Model, epoch: int) -> None:
        stopping = self.stopping
        with tempfile.TemporaryDirectory(prefix="bnexp-") as scratch:
            path = Path(scratch) / CHECKPOINT
            model.save(path)
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
            model = keras.saving.load_model(self.path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            logging.getLogger(__name__).warning("%s: unusable checkpoint (%s); training from scratch", self.path, exc)
            return None
        previous = read_history(self.history_path)[: state["epoch"]]
        if len(previous) < state["epoch"]:
            return None
        history[:] = previous
        if self.stopping:
            self.stopping.resumed = (state["best"], state["wait"], best)
        return model


def enable_determinism() -> None:
    """Bit-identical reruns: deterministic kernels where the backend offers a switch."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def environment() -> dict:
    """Versions, device and host the run trained on."""
    backend = keras.backend.backend()
    env = {"python": platform.python_version(), "keras": keras.__version__, "backend": backend,
           "numpy": np.__version__, "device": "cpu", "host": socket.gethostname(), "platform": platform.platform()}
    if backend == "tensorflow":
        import tensorflow as tf

        env["tensorflow"] = tf.__version__
        env["device"] = "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    elif backend == "jax":
        import jax

        env["jax"], env["device"] = jax.__version__, jax.devices()[0].platform
    elif backend == "torch":
        import torch

        env["torch"], env["device"] = torch.__version__, "gpu" if torch.cuda.is_available() else "cpu"
    env["cpu_count"] = os.cpu_count()
    return env


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
