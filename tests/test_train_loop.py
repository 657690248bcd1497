"""The training loop's parts: one fit over EpochBatches, and the callbacks that act after each epoch."""

import json
import math
import types

import keras
import numpy as np
import pytest

from bnexp.config.load import load_config
from bnexp.data.datasets import load_dataset
from bnexp.models import build_model
from bnexp.sweep import expand_runs
from bnexp.callbacks import Divergence
from bnexp.train import EpochBatches, epoch_order, make_optimizer, train_run

HISTORY_FIELDS = {"epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds",
                  "step_losses"}


def history(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def served(batches: EpochBatches) -> tuple[list[int], np.ndarray]:
    """The sizes of an epoch's batches and its labels in the order served."""
    labels = [batches[i][1] for i in range(len(batches))]
    return [len(b) for b in labels], np.concatenate(labels)


def test_epoch_batches_serve_each_epochs_order_the_same_for_both_arms():
    x, y = np.arange(10, dtype=np.float32).reshape(10, 1), np.arange(10)
    no_bn, bn = EpochBatches(x, y, seed=3, batch_size=4), EpochBatches(x, y, seed=3, batch_size=4)
    for epoch in (0, 1, 2):
        for arm in (no_bn, bn):
            arm.callback.on_epoch_begin(epoch)  # as Keras calls it at the start of each epoch
        sizes, labels = served(bn)
        assert sizes == [4, 4, 2]
        np.testing.assert_array_equal(labels, epoch_order(3, epoch, 10))
        np.testing.assert_array_equal(served(no_bn)[1], labels)
        np.testing.assert_array_equal(bn[1][0][:, 0], labels[4:8])  # inputs travel with their labels


def test_epoch_batches_cap_an_epoch_at_steps_per_epoch():
    x, y = np.zeros((10, 1), np.float32), np.arange(10)
    batches = EpochBatches(x, y, seed=0, batch_size=4, steps_per_epoch=2)
    batches.callback.on_epoch_begin(5)
    sizes, labels = served(batches)
    assert sizes == [4, 4]
    np.testing.assert_array_equal(labels, epoch_order(0, 5, 10)[:8])


def test_one_fit_trains_as_one_fit_per_epoch_on_the_epochs_order(write_config, tmp_path):
    # The loop before EpochBatches, kept here as the reference: both must give the same bits. 36
    # training rows in batches of 8 leave a short last batch, so both trace with an unknown batch size.
    path = write_config({"train.epochs": 3, "train.deterministic": True, "train.steps_per_execution": 2})
    spec = expand_runs(load_config(path), str(path))[1]
    assert spec.arm == "bn"
    result = train_run(spec, tmp_path / "run", None)
    assert result["status"] == "completed"

    typed = spec.config
    keras.utils.set_random_seed(typed.seed)
    data = load_dataset(typed.data, None)
    model = build_model(typed.model, data.input_shape, data.num_classes, typed.seed)
    model.compile(optimizer=make_optimizer(typed.train), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=2)
    losses = []
    for epoch in range(3):
        order = epoch_order(typed.seed, epoch, len(data.x_train))
        fit = model.fit(data.x_train[order], data.y_train[order], batch_size=8, epochs=epoch + 1, initial_epoch=epoch,
                        shuffle=False, validation_data=(data.x_val, data.y_val), validation_batch_size=1024, verbose=0)
        losses.append([float(fit.history[key][-1]) for key in ("loss", "val_loss")])
    test = model.evaluate(data.x_test, data.y_test, batch_size=1024, verbose=0, return_dict=True)

    records = history(tmp_path / "run")
    assert [set(r) for r in records] == [HISTORY_FIELDS] * 3
    assert [[r["loss"], r["val_loss"]] for r in records] == losses
    assert result["test_loss"] == float(test["loss"])


class FakeModel:
    stop_training = False
    optimizer = types.SimpleNamespace(iterations=0)  # Divergence reads the step from it


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_divergence_stops_at_the_first_bad_batch_and_records_the_epoch(bad):
    divergence, model = Divergence(), FakeModel()
    divergence.set_model(model)
    divergence.on_train_batch_end(0, {"loss": 2.0})
    divergence.on_epoch_end(0, {"loss": 2.0})
    assert not model.stop_training and divergence.epoch is None
    divergence.on_train_batch_end(3, {"loss": bad})
    assert model.stop_training
    divergence.on_epoch_end(1, {"loss": bad})
    assert divergence.epoch == 2


def test_early_stopping_state_survives_a_resume(write_config, tmp_path, monkeypatch):
    # min_delta 100: only the first epoch counts as a best, so with patience 2 the run stops after
    # epoch 3. A resume that forgot the state would take epoch 2 as a new best and stop after epoch 4.
    path = write_config({"train.epochs": 5, "train.deterministic": True,
                         "train.early_stopping": {"patience": 2, "min_delta": 100.0}})
    spec = expand_runs(load_config(path), str(path))[0]
    fits = []
    real_fit = keras.Model.fit

    def counting_fit(self, *args, **kwargs):
        fits.append(kwargs["initial_epoch"])
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", counting_fit)
    whole = train_run(spec, tmp_path / "whole", None)
    assert fits == [0] and whole["epochs_run"] == 3

    def interrupt_in_epoch_2(_, record):  # history.jsonl has epoch 2; the checkpoint is still epoch 1
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(spec, tmp_path / "resumed", None, on_epoch=interrupt_in_epoch_2)
    resumed = train_run(spec, tmp_path / "resumed", None)
    assert fits == [0, 0, 1]  # one fit per run, one more after the resume
    assert resumed["resumed_from_epoch"] == 1 and resumed["epochs_run"] == 3
    assert [r["epoch"] for r in history(tmp_path / "resumed")] == [1, 2, 3]
    # restore_best_weights: both evaluate the weights of epoch 1, the resumed run from its checkpoint
    assert resumed["test_loss"] == whole["test_loss"]
    assert not (tmp_path / "resumed" / "checkpoint.keras").exists()
