"""The training loop: identical data order across arms, step-loss samples, early stopping."""

import keras
import numpy as np
import pytest

from bnexp.config.schema import EarlyStoppingConfig
from bnexp.config.load import load_config
from bnexp.sweep import expand_runs
from bnexp.callbacks import ResumableEarlyStopping, StepLossLog
from bnexp.train import EpochBatches, epoch_order, train_run


def test_both_arms_see_the_same_batches_in_the_same_order(write_config, tmp_path, monkeypatch):
    served = {}  # model name -> epoch -> batch index -> labels, as the one fit call reads them
    real_fit, real_getitem = keras.Model.fit, EpochBatches.__getitem__

    def recording_fit(self, x, **kwargs):
        x.record = served.setdefault(self.name, {})
        return real_fit(self, x, **kwargs)

    def recording_getitem(self, index):
        batch = real_getitem(self, index)
        if hasattr(self, "record"):
            self.record.setdefault(self.epoch, {})[index] = batch[1]
        return batch

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    monkeypatch.setattr(EpochBatches, "__getitem__", recording_getitem)
    path = write_config({"train.epochs": 2})
    no_bn, bn = expand_runs(load_config(path), str(path))
    for spec in (no_bn, bn):
        train_run(spec, tmp_path / spec.run_id, None)
    seen = {name: [np.concatenate([batches[i] for i in sorted(batches)]) for _, batches in sorted(epochs.items())]
            for name, epochs in served.items()}
    no_bn_batches, bn_batches = seen.values()  # keyed by model name, one per arm, in training order
    assert len(no_bn_batches) == len(bn_batches) == 2
    for a, b in zip(no_bn_batches, bn_batches):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(bn_batches[0], bn_batches[1])  # reshuffled every epoch


def test_epoch_order_depends_only_on_seed_and_epoch():
    np.testing.assert_array_equal(epoch_order(3, 1, 50), epoch_order(3, 1, 50))
    assert sorted(epoch_order(3, 1, 50)) == list(range(50))
    assert not np.array_equal(epoch_order(3, 1, 50), epoch_order(3, 2, 50))
    assert not np.array_equal(epoch_order(3, 1, 50), epoch_order(4, 1, 50))


def test_step_losses_are_sampled_every_n_steps(write_config, tmp_path):
    path = write_config({"train.epochs": 2, "train.log_every_steps": 2, "train.steps_per_execution": 1})
    spec = expand_runs(load_config(path), str(path))[0]
    train_run(spec, tmp_path / "run", None)
    import json

    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [5, 10]
    assert [s for s, _ in history[0]["step_losses"]] == [2, 4]
    assert [s for s, _ in history[1]["step_losses"]] == [6, 8, 10]


def test_steps_per_epoch_caps_the_epoch(write_config, tmp_path):
    path = write_config({"train.steps_per_epoch": 2})
    spec = expand_runs(load_config(path), str(path))[0]
    train_run(spec, tmp_path / "run", None)
    assert '"step": 2' in (tmp_path / "run" / "history.jsonl").read_text()


class FakeModel:
    def __init__(self):
        self.weights = 0
        self.stop_training = False

    def get_weights(self):
        return self.weights

    def set_weights(self, weights):
        self.weights = weights


@pytest.mark.parametrize(
    "monitor, values, stops_after, best",
    [
        ("val_loss", [1.0, 0.8, 0.9, 0.85, 0.7], 4, 0.8),  # patience 2: two epochs without a new best
        ("val_accuracy", [0.5, 0.6, 0.6, 0.55], 4, 0.6),
    ],
)
def test_early_stopping_waits_patience_epochs_and_restores_the_best(monitor, values, stops_after, best):
    stopper, model = ResumableEarlyStopping(EarlyStoppingConfig(monitor=monitor, patience=2)), FakeModel()
    stopper.set_model(model)
    stopper.on_train_begin()
    for epoch, value in enumerate(values, start=1):
        model.weights = value
        stopper.on_epoch_end(epoch - 1, {monitor: value})
        if model.stop_training:
            break
    assert epoch == stops_after
    stopper.on_train_end()
    assert model.weights == best


def test_step_losses_are_window_means_not_the_epoch_running_mean():
    class Model:
        class optimizer:
            iterations = 0

    log = StepLossLog(every=2)
    log.set_model(Model())
    log.start(0)
    batch_losses = [4.0, 2.0, 1.0, 1.0, 0.5, 0.5]
    for step, _ in enumerate(batch_losses, start=1):
        Model.optimizer.iterations = step
        log.on_train_batch_end(step - 1, {"loss": sum(batch_losses[:step]) / step})  # Keras' running mean
    assert log.samples == [[2, 3.0], [4, 1.0], [6, 0.5]]
