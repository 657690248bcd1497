"""One table per vocabulary: normalisation kinds (bnexp.norms) and optimizers (bnexp.optimizers) are read by
config, models, builders, checks and train from their one table, which imports neither Keras nor pydantic."""

import subprocess
import sys
from typing import get_args

import pytest

from bnexp.config.keypaths import LEARNING_RATE_KEY, point_label
from bnexp.config.schema import NormConfig, TrainConfig
from bnexp.norms import DEFAULT_GROUPS, NORM_KINDS, NORMS, WITH_MOVING_STATISTICS
from bnexp.optimizers import OPTIMIZER_NAMES, OPTIMIZERS


def test_the_tables_import_without_keras_or_pydantic():
    code = ("import sys, bnexp.norms, bnexp.optimizers, bnexp.machine, bnexp.config.keypaths; "
            "print(sorted(m for m in ('keras', 'pydantic', 'tensorflow', 'jax', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_config_allows_exactly_the_tables_names():
    assert get_args(NormConfig.model_fields["kind"].annotation) == NORM_KINDS == tuple(NORMS)
    assert get_args(TrainConfig.model_fields["optimizer"].annotation) == OPTIMIZER_NAMES == tuple(OPTIMIZERS)
    assert NormConfig().groups == DEFAULT_GROUPS == 32


def test_each_norm_kind_says_its_layer_suffix_statistics_and_groups():
    assert {kind: (n.suffix, n.moving_statistics, n.group_count(8)) for kind, n in NORMS.items()} == {
        "batch": ("bn", True, None), "batch_renorm": ("bn", True, None), "group": ("gn", False, 8),
        "layer": ("ln", False, 1), "none": (None, False, None)}
    assert WITH_MOVING_STATISTICS == ("batch", "batch_renorm")
    assert [kind for kind, n in NORMS.items() if not n.normalizes] == ["none"]


def test_each_norm_kind_makes_its_keras_layer():
    from types import SimpleNamespace

    from keras import layers

    settings = SimpleNamespace(axis=-1, momentum=0.9, epsilon=1e-3, center=True, scale=False)
    made = {kind: n.make(settings, n.group_count(4), f"x_{kind}") for kind, n in NORMS.items() if n.normalizes}
    assert {kind: type(layer) for kind, layer in made.items()} == {
        "batch": layers.BatchNormalization, "batch_renorm": layers.BatchNormalization,
        "group": layers.GroupNormalization, "layer": layers.GroupNormalization}
    assert (made["batch"].renorm, made["batch_renorm"].renorm, made["batch"].momentum) == (False, True, 0.9)
    assert (made["group"].groups, made["layer"].groups, made["group"].scale) == (4, 1, False)


@pytest.mark.parametrize("name, momentum, slots, keras_class", [
    ("adam", 0.0, 2, "Adam"), ("adamw", 0.0, 2, "AdamW"), ("nadam", 0.0, 2, "Nadam"), ("adagrad", 0.0, 1, "Adagrad"),
    ("rmsprop", 0.0, 1, "RMSprop"), ("rmsprop", 0.9, 2, "RMSprop"), ("sgd", 0.0, 0, "SGD"), ("sgd", 0.9, 1, "SGD"),
])
def test_each_optimizer_makes_its_keras_optimizer_and_counts_its_slots(name, momentum, slots, keras_class):
    from bnexp.train import make_optimizer

    train = TrainConfig(optimizer=name, momentum=momentum, learning_rate=0.01)
    assert OPTIMIZERS[name].slot_count(momentum) == slots
    optimizer = make_optimizer(train)
    assert type(optimizer).__name__ == keras_class and float(optimizer.learning_rate) == pytest.approx(0.01)
    if name in ("sgd", "rmsprop"):
        assert optimizer.momentum == momentum


def test_sweep_point_labels_have_one_writer():
    point = {LEARNING_RATE_KEY: 0.01, "train.batch_size": 8}
    assert point_label(point) == "train.learning_rate=0.01, train.batch_size=8"
    assert point_label(point, " ", short=True) == "learning_rate=0.01 batch_size=8"
    assert point_label(point, short=True, value=lambda v: f"<{v}>") == "learning_rate=<0.01>, batch_size=<8>"
