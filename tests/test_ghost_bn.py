"""Ghost batch normalisation: model.batch_norm.virtual_batch_size and bnexp.layers.GhostBatchNormalization."""

import json

import keras
import numpy as np
import pytest

from bnexp.callbacks import recompute_bn_statistics
from bnexp.config.schema import ModelConfig, RunConfig
from bnexp.layers import GhostBatchNormalization
from bnexp.models import build_model
from bnexp.sweep import run_id

EPSILON = 1e-3


def values(tensor) -> np.ndarray:
    return keras.ops.convert_to_numpy(tensor)


def random_weights(layer: keras.layers.Layer, seed: int = 1) -> None:
    """Weights away from their constant initial values, so that a mix-up of gamma and beta would show."""
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        value = rng.uniform(0.5, 2.0, variable.shape) if "variance" in variable.path or "stddev" in variable.path \
            else rng.normal(0.0, 1.0, variable.shape)
        variable.assign(value.astype("float32"))


@pytest.mark.parametrize("renorm", [False, True])
@pytest.mark.parametrize("axis", [-1, 1])
def test_a_group_as_large_as_the_batch_is_stock_batch_normalisation(renorm, axis):
    x = np.random.default_rng(0).normal(2.0, 3.0, (8, 5, 5, 3)).astype("float32")
    settings = dict(axis=axis, momentum=0.9, epsilon=EPSILON, renorm=renorm)
    stock, ghost = keras.layers.BatchNormalization(**settings), GhostBatchNormalization(8, **settings)
    stock.build(x.shape)
    ghost.build(x.shape)
    random_weights(stock)
    ghost.set_weights(stock.get_weights())
    np.testing.assert_allclose(values(ghost(x, training=True)), values(stock(x, training=True)), atol=1e-5)
    for after_step, before in zip(ghost.get_weights(), stock.get_weights()):  # moving (and renorm) statistics
        np.testing.assert_allclose(after_step, before, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(values(ghost(x, training=False)), values(stock(x, training=False)), atol=1e-5)


def by_hand(x: np.ndarray, bounds, gamma, beta) -> np.ndarray:
    return np.concatenate([(x[a:b] - x[a:b].mean(0)) / np.sqrt(x[a:b].var(0) + EPSILON) * gamma + beta
                           for a, b in bounds])


@pytest.mark.parametrize("rows, bounds", [
    (8, [(0, 4), (4, 8)]),
    (6, [(0, 4), (4, 6)]),  # a short batch (an epoch's last) ends with a smaller group
    (3, [(0, 3)]),
])
def test_each_group_is_normalised_with_its_own_statistics(rows, bounds):
    x = np.random.default_rng(2).normal(0.0, 1.0, (rows, 3)).astype("float32")
    x[4:] = x[4:] * 10 + 50  # the second group lives elsewhere: batch statistics would not centre it
    layer = GhostBatchNormalization(4, momentum=0.0, epsilon=EPSILON)
    layer.build(x.shape)
    random_weights(layer)
    gamma, beta = values(layer.gamma), values(layer.beta)
    np.testing.assert_allclose(values(layer(x, training=True)), by_hand(x, bounds, gamma, beta), rtol=1e-4, atol=1e-4)
    # Momentum 0: the moving statistics are this batch's, each group weighted by its size.
    sizes = np.array([b - a for a, b in bounds])[:, None]
    np.testing.assert_allclose(values(layer.moving_mean), x.mean(0), rtol=1e-5, atol=1e-5)
    within = np.array([x[a:b].var(0) for a, b in bounds])
    np.testing.assert_allclose(values(layer.moving_variance), (within * sizes).sum(0) / rows, rtol=1e-5)


def test_inference_uses_the_moving_statistics_whatever_the_groups():
    layer = GhostBatchNormalization(2, epsilon=EPSILON)
    x = np.random.default_rng(3).normal(0.0, 1.0, (6, 4)).astype("float32")
    layer.build(x.shape)
    random_weights(layer)
    mean, variance, gamma, beta = (values(v) for v in (layer.moving_mean, layer.moving_variance, layer.gamma,
                                                       layer.beta))
    np.testing.assert_allclose(values(layer(x, training=False)),
                               (x - mean) / np.sqrt(variance + EPSILON) * gamma + beta, rtol=1e-5, atol=1e-5)


def test_a_saved_model_loads_with_its_ghost_layers(tmp_path):
    model = build_model(model_config(batch_norm={"virtual_batch_size": 2}), (8, 8, 1), 3, 0)
    for layer in model.layers:
        if isinstance(layer, GhostBatchNormalization):
            random_weights(layer)
    x = np.random.default_rng(4).random((6, 8, 8, 1)).astype("float32")
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    ghosts = [layer for layer in loaded.layers if isinstance(layer, GhostBatchNormalization)]
    assert [layer.virtual_batch_size for layer in ghosts] == [2, 2]
    np.testing.assert_allclose(values(loaded(x, training=False)), values(model(x, training=False)), atol=1e-6)
    np.testing.assert_allclose(values(loaded(x, training=True)), values(model(x, training=True)), atol=1e-6)


def model_config(**changes) -> ModelConfig:
    return ModelConfig.model_validate({"conv": [{"filters": 4, "kernel_size": 3, "pool": 2}], "dense": [8]} | changes)


@pytest.mark.parametrize("kind, ghosts", [("batch", 2), ("batch_renorm", 2), ("group", 0), ("layer", 0), ("none", 0)])
def test_the_batch_kinds_get_ghost_layers_and_the_per_sample_kinds_ignore_the_size(kind, ghosts):
    model = build_model(model_config(batch_norm={"virtual_batch_size": 2}, norm={"kind": kind, "groups": 2}),
                        (8, 8, 1), 3, 0)
    assert sum(isinstance(layer, GhostBatchNormalization) for layer in model.layers) == ghosts


def test_precise_statistics_are_the_mean_of_the_groups_statistics():
    inputs = keras.Input((3,))
    layer = GhostBatchNormalization(2)
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(5).normal(0.0, 1.0, (8, 3)).astype("float32")
    recompute_bn_statistics(model, [(x[:4], None), (x[4:], None)])
    groups = x.reshape(4, 2, 3)
    np.testing.assert_allclose(values(layer.moving_mean), x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(values(layer.moving_variance), groups.var(1).mean(0), rtol=1e-5)


def test_without_the_setting_run_ids_stay_what_they_were():
    def identity(**batch_norm):
        return run_id("bn", RunConfig.model_validate({"data": {"dataset": "mnist"}, "model": {
            "conv": [{"filters": 4, "pool": 2}], "dense": [8], "batch_norm": batch_norm}}))

    assert identity() == "bn-s0-0f98b76847"  # the id before virtual_batch_size existed (tests/test_norms.py)
    assert identity(virtual_batch_size=None) == "bn-s0-0f98b76847"
    assert identity(virtual_batch_size=8) != "bn-s0-0f98b76847"


def assert_error(out, message):
    assert (out.exit_code, out.output) == (2, f"Error: {message}\n")


@pytest.mark.parametrize("size, message", [
    (0, "expected a number >= 2, got 0"),
    (-4, "expected a number >= 2, got -4"),
    (1, "expected a number >= 2, got 1"),  # a group of one has variance 0: BN would output its shift alone
    (2.5, "expected an integer, got 2.5"),
    (True, "expected an integer, got True; true and false are not numbers"),
    (3, "3 does not divide train.batch_size 8, so a batch would not split into ghost batches of 3; allowed: a "
        "divisor of 8 (2, 4, 8), or leave it unset for the whole batch"),
    (16, "16 does not divide train.batch_size 8, so a batch would not split into ghost batches of 16; allowed: a "
         "divisor of 8 (2, 4, 8), or leave it unset for the whole batch"),
])
def test_a_size_that_is_not_a_divisor_of_the_batch_is_one_line_at_plan_time(cli, write_config, size, message):
    config = write_config({"model.batch_norm": {"virtual_batch_size": size}})
    assert_error(cli("plan", config), f"{config}: model.batch_norm.virtual_batch_size: {message}")


def test_a_swept_size_is_named_by_its_sweep_point(cli, write_config):
    config = write_config({"sweep": {"model.batch_norm.virtual_batch_size": [2, 3]}})
    out = cli("plan", config)
    assert out.exit_code == 2
    assert out.output.startswith(f"Error: {config}: sweep point model.batch_norm.virtual_batch_size=3: "
                                 "model.batch_norm.virtual_batch_size: 3 does not divide train.batch_size 8")


def test_a_ghost_sweep_trains_one_epoch_with_short_last_batches(cli, write_config, tmp_path):
    # 36 training samples in batches of 16: the last batch has 4, less than a ghost batch of 8.
    config = write_config({"sweep": {"model.batch_norm.virtual_batch_size": [2, 8]},
                           "train": {"epochs": 1, "batch_size": 16, "log_every_steps": 1, "steps_per_execution": 1},
                           "model.batch_norm": {"precise_stats": 2}})
    out = cli("run", config, "--quiet")
    assert out.exit_code == 0, out.output
    runs = {}
    for path in (tmp_path / "results" / "tiny").glob("*/result.json"):
        spec = json.loads((path.parent / "spec.json").read_text())
        runs[(spec["arm"], spec["point"]["model.batch_norm.virtual_batch_size"])] = (
            json.loads(path.read_text())["status"], spec["config"]["model"]["batch_norm"]["virtual_batch_size"])
    assert runs == {("no_bn", 2): ("completed", 2), ("bn", 2): ("completed", 2),
                    ("no_bn", 8): ("completed", 8), ("bn", 8): ("completed", 8)}


def test_a_builders_norm_makes_ghost_layers(write_config, tmp_path):
    from bnexp.sweep import load_runs

    (tmp_path / "nets.py").write_text(
        "import keras\n"
        "def build(input_shape, num_classes, norm):\n"
        "    x = inputs = keras.Input(input_shape)\n"
        "    x = norm(keras.layers.Dense(4)(keras.layers.Flatten()(x)))\n"
        "    return keras.Model(inputs, keras.layers.Dense(num_classes, activation='softmax')(x))\n")
    config = write_config({"model": {"builder": "nets.py:build", "batch_norm": {"virtual_batch_size": 4}}})
    _, runs = load_runs(config)
    spec = next(run for run in runs if run.arm == "bn")
    model = build_model(spec.config.model, (8, 8, 1), 3, 0, spec.builder)
    assert [layer.virtual_batch_size for layer in model.layers if isinstance(layer, GhostBatchNormalization)] == [4]


def test_a_swept_batch_size_that_the_size_does_not_divide_is_named_by_its_sweep_point(cli, write_config):
    config = write_config({"model.batch_norm": {"virtual_batch_size": 4}, "sweep": {"train.batch_size": [8, 6]}})
    assert_error(cli("plan", config), f"{config}: sweep point train.batch_size=6: model.batch_norm.virtual_batch_size: "
                                      "4 does not divide train.batch_size 6, so a batch would not split into ghost "
                                      "batches of 4; allowed: a divisor of 6 (2, 3, 6), or leave it unset for the "
                                      "whole batch")


def test_ghost_batch_renormalisation_trains_as_an_arm(cli, write_config, tmp_path):
    config = write_config({"arms": {"batch": {"model.norm.kind": "batch"}, "renorm": {"model.norm.kind": "batch_renorm"}},
                           "model.batch_norm": {"virtual_batch_size": 2}})
    out = cli("run", config, "--quiet")
    assert out.exit_code == 0, out.output
    statuses = [json.loads(path.read_text())["status"] for path in (tmp_path / "results" / "tiny").glob("*/result.json")]
    assert statuses == ["completed", "completed"]


def test_a_checkpoint_of_a_ghost_model_resumes_with_its_groups_and_optimizer(tmp_path):
    from bnexp.callbacks import Checkpoint
    from bnexp.store import HistoryRow, write_history

    model = build_model(model_config(batch_norm={"virtual_batch_size": 2}), (8, 8, 1), 3, 0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(6).random((8, 8, 8, 1)).astype("float32")
    model.train_on_batch(x, np.arange(8) % 3)
    write_history(tmp_path / "history.jsonl", [HistoryRow(epoch=1, step=1)])
    Checkpoint(tmp_path).save(model, 1)
    history = []
    restored = Checkpoint(tmp_path).restore(history)
    assert len(history) == 1 and int(restored.optimizer.iterations) == 1
    assert [layer.virtual_batch_size for layer in restored.layers if isinstance(layer, GhostBatchNormalization)] == [2, 2]
    for a, b in zip(restored.weights, model.weights):
        np.testing.assert_array_equal(values(a), values(b))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow graph with unknown dimensions")
def test_groups_hold_in_a_graph_whose_batch_and_map_sizes_are_unknown():
    import tensorflow as tf

    layer = GhostBatchNormalization(4, momentum=0.0, epsilon=EPSILON, center=False, scale=False)
    layer.build((None, 5, 5, 3))
    graph = tf.function(lambda x: layer(x, training=True), input_signature=[tf.TensorSpec((None, None, None, 3))])
    x = np.random.default_rng(7).normal(0.0, 1.0, (6, 5, 5, 3)).astype("float32")
    expected = np.concatenate([(x[a:b] - x[a:b].mean((0, 1, 2))) / np.sqrt(x[a:b].var((0, 1, 2)) + EPSILON)
                               for a, b in ((0, 4), (4, 6))])
    np.testing.assert_allclose(values(graph(x)), expected, rtol=1e-4, atol=1e-4)
