"""Train one run and record it: spec.json, history.jsonl after every epoch, result.json at the end.

One `fit` trains all epochs (one more after a resume) on EpochBatches, which serves each epoch in
its (seed, epoch) order; what happens after an epoch (history, progress, the NaN check, early
stopping, the checkpoint) is a callback each. The training code uses only Keras 3 APIs (no `tf.*`),
so it runs on any Keras backend.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from bnexp.activations import ActivationLog, probe_rows
from bnexp.builders import Builder
from bnexp.callbacks import (Checkpoint, Divergence, HistoryLog, PreciseBatchNorm, ResumableEarlyStopping, StepEvals,
                             StepLossLog)
from bnexp.config.schema import RunConfig, TrainConfig
from bnexp.data.datasets import load_dataset
from bnexp.errors import ResultsError
from bnexp.evaluation import evaluate_statistics
from bnexp.hparams import write_hparams
from bnexp.machine import keras_backend
from bnexp.metrics import ACCURACY, LOSS
from bnexp.models import build_model, count_params
from bnexp.optimizers import OPTIMIZERS
from bnexp.store import (ACTIVATIONS, CHECKPOINT, COMPLETED, DIVERGED, FAILED, HISTORY, HistoryRow, ResultRecord,
                         read_activations, read_spec, write_result, write_spec)
from bnexp.sweep import RunSpec

# `--tensorboard` logs: Keras' curves in its train/ and validation/, the HParams record (bnexp.hparams) above them.
TENSORBOARD = "tensorboard"


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
    if tensorboard:
        write_hparams(run_dir / TENSORBOARD, record, result, step=history[-1].get("step", 0) if history else 0)
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
    checkpoint = Checkpoint(run_dir, stopping, builder.layer_classes() if builder else None)
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
    result["majority_share"] = majority_share(data.y_val if len(data.y_val) else data.y_test)

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
    activations = _activation_log(config, builder, data, run_dir, history)
    # Order matters: every callback's on_epoch_end runs before Keras acts on stop_training, so the
    # epoch is recorded and reported first, and the checkpoint, last, sees whether the run stops.
    callbacks = [
        batches.callback,
        *precise,
        step_log,
        *([step_evals] if step_evals else []),
        *([activations] if activations else []),
        HistoryLog(run_dir / HISTORY, history, step_log, step_evals),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch(history[-1])),
        divergence,
        *([stopping] if stopping else []),
        checkpoint,
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / TENSORBOARD)))
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
    statistics = evaluate_statistics(model, data.x_test, data.y_test, batches, config.model.batch_norm.precise_stats,
                                     train.batch_size, eval_batch, config.seed, test)
    if statistics:
        result["eval_statistics"] = statistics


def _activation_log(config: RunConfig, builder: Builder | None, data, run_dir: Path,
                    history: list[HistoryRow]) -> ActivationLog | None:
    """The activation statistics' callback (train.activation_stats_every), None when off. A resumed run keeps
    the rows up to its checkpoint's step; a builder's network is built once more to find its norm(x) positions
    in the loaded checkpoint."""
    every = config.train.activation_stats_every
    if not every or not len(data.x_val):
        return None
    rows, reference = [], None
    if history:
        try:
            rows = [row for row in read_activations(run_dir / ACTIVATIONS) if row["step"] <= history[-1].get("step", -1)]
        except (OSError, ValueError) as exc:
            logging.getLogger(__name__).warning("%s: %s cannot be read (%s); its rows before the resumed epoch are "
                                                "lost", run_dir, ACTIVATIONS, exc)
        if builder is not None:
            reference = build_model(config.model, data.input_shape, data.num_classes, config.seed, builder)
    probe = data.x_val[probe_rows(len(data.x_val), config.seed)]
    return ActivationLog(every, probe, run_dir / ACTIVATIONS, rows, reference)


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
    """The Keras optimizer of the train section, with its learning-rate schedule."""
    schedules = keras.optimizers.schedules
    learning_rate = {
        "constant": lambda: train.learning_rate,
        "exponential": lambda: schedules.ExponentialDecay(
            train.learning_rate, train.decay_steps, train.decay_rate, staircase=train.staircase),
        # lr / (1 + rate * step / decay_steps): the old Keras `decay` argument is decay_steps=1.
        "inverse_time": lambda: schedules.InverseTimeDecay(
            train.learning_rate, train.decay_steps, train.decay_rate, staircase=train.staircase),
    }[train.schedule]()
    return OPTIMIZERS[train.optimizer].make(learning_rate, train)


def enable_determinism() -> None:
    """Bit-identical reruns: deterministic kernels where the backend offers a switch."""
    if keras_backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def environment() -> dict:
    """Versions, device and host the run trained on."""
    backend = keras_backend()
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


def majority_share(labels: np.ndarray) -> float | None:
    """The share of the most common class among `labels`: the accuracy of always answering that class, which
    is the chance level when classes are not balanced (result.json majority_share)."""
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
