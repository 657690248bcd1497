"""train.activation_stats_every: the percentiles, mean and sd of every activation input after a normalisation
position, on a fixed validation probe, over training (activations.jsonl), and the report's bands of them."""

import json

import keras
import numpy as np
import pytest

import bnexp
from bnexp.activations import probe_rows
from bnexp.config.load import load_config
from bnexp.data.datasets import load_dataset
from bnexp.models import build_model
from bnexp.store import ACTIVATIONS, pack_run, read_activations
from bnexp.sweep import expand_runs, load_runs
from bnexp.train import train_run
from test_builders import NETWORKS


MLP = {"model": {"dense": [8, 6], "activation": "sigmoid"},
       "train": {"epochs": 2, "batch_size": 8, "steps_per_execution": 1, "activation_stats_every": 2}}


def mlp_config(write_config, name="tiny", **train):
    return write_config({"model": MLP["model"], "train": {**MLP["train"], **train}}, name=name)


def runs_of(path):
    return {spec.arm: spec for spec in expand_runs(load_config(path), str(path))}


def by_numpy(values) -> dict:
    values = np.asarray(values, "float64").ravel()
    return {"p15": np.percentile(values, 15), "p50": np.percentile(values, 50), "p85": np.percentile(values, 85),
            "mean": values.mean(), "std": values.std()}


def step_zero_by_hand(spec, tensors) -> dict:
    """The statistics at step 0 computed from the untrained network: `tensors(model)` are its positions."""
    data = load_dataset(spec.config.data, None)
    model = build_model(spec.config.model, data.input_shape, data.num_classes, spec.config.seed, spec.builder)
    probe = data.x_val[probe_rows(len(data.x_val), spec.config.seed)]
    names, outputs = zip(*tensors(model).items())
    values = keras.Model(model.inputs, list(outputs)).predict_on_batch(probe)
    values = values if isinstance(values, list) else [values]  # one output comes back as an array
    return {name: by_numpy(v) for name, v in zip(names, values)}


def assert_matches(recorded: dict, expected: dict):
    assert list(recorded) == list(expected)
    for name, stats in expected.items():
        assert recorded[name] == pytest.approx(stats, rel=1e-4, abs=1e-5), name


def test_a_builtin_mlp_records_its_activation_inputs_in_every_arm(write_config, tmp_path):
    runs = runs_of(mlp_config(write_config))
    rows = {}
    for arm, spec in runs.items():
        train_run(spec, tmp_path / arm, None)
        rows[arm] = read_activations(tmp_path / arm / ACTIVATIONS)
    # 36 training rows in batches of 8: 5 steps an epoch, 10 in all; a row at step 0 and every 2 steps
    for arm in runs:
        assert [row["step"] for row in rows[arm]] == [0, 2, 4, 6, 8, 10]
        assert all(list(row["positions"]) == ["dense_0", "dense_1"] for row in rows[arm])
    # Step 0 against numpy: the input of each sigmoid, which in the BN arm is BN's output (moving statistics)
    for arm, spec in runs.items():
        expected = step_zero_by_hand(spec, lambda m: {name: m.get_layer(f"{name}_act").input
                                                      for name in ("dense_0", "dense_1")})
        assert_matches(rows[arm][0]["positions"], expected)
    bn = step_zero_by_hand(runs["bn"], lambda m: {"dense_0": m.get_layer("dense_0_bn").output})
    assert_matches({"dense_0": rows["bn"][0]["positions"]["dense_0"]}, bn)
    # Training moves them
    assert rows["no_bn"][-1]["positions"]["dense_1"] != rows["no_bn"][0]["positions"]["dense_1"]
    assert pack_run(tmp_path / "bn")[ACTIVATIONS] == (tmp_path / "bn" / ACTIVATIONS).read_text()


def test_the_probe_is_fixed_per_seed_and_within_the_validation_rows():
    assert np.array_equal(probe_rows(1000, 3), probe_rows(1000, 3))
    assert not np.array_equal(probe_rows(1000, 3), probe_rows(1000, 4))
    rows = probe_rows(12, 0)
    assert sorted(rows.tolist()) == list(range(12))  # fewer rows than the probe: all of them


def test_a_builder_records_where_norm_was_called(write_config, tmp_path):
    (tmp_path / "nets.py").write_text(NETWORKS)
    path = write_config({"model": {"builder": "nets.py:build"}, "train": MLP["train"],
                         "arms": {"none": {"model.norm.kind": "none"}, "batch": {"model.norm.kind": "batch"}}})
    runs = {spec.arm: spec for spec in load_runs(path, [])[1]}
    for arm, spec in runs.items():
        train_run(spec, tmp_path / arm, None)
        rows = read_activations(tmp_path / arm / ACTIVATIONS)
        assert [row["step"] for row in rows] == [0, 2, 4, 6, 8, 10]
        # build() calls norm(x) once: x itself without normalisation, BN's output with it
        layer = (lambda m: m.layers[2].output) if arm == "none" else (lambda m: m.get_layer("norm_1").output)
        assert_matches(rows[0]["positions"], step_zero_by_hand(spec, lambda m: {"norm_1": layer(m)}))


def interrupt_in_epoch_2(_, record):  # activations.jsonl has epoch 2's rows; the checkpoint is still epoch 1
    if record["epoch"] == 2:
        raise KeyboardInterrupt


@pytest.mark.parametrize("builder", [False, True])
def test_a_resumed_run_drops_the_rows_after_its_checkpoint(write_config, tmp_path, builder):
    (tmp_path / "nets.py").write_text(NETWORKS)
    model = {"builder": "nets.py:build"} if builder else MLP["model"]
    path = write_config({"model": model, "train": {**MLP["train"], "epochs": 3, "deterministic": True}})
    spec = [s for s in load_runs(path, [])[1] if s.arm == "bn"][0]
    train_run(spec, tmp_path / "whole", None)
    with pytest.raises(KeyboardInterrupt):
        train_run(spec, tmp_path / "resumed", None, on_epoch=interrupt_in_epoch_2)
    assert read_activations(tmp_path / "resumed" / ACTIVATIONS)[-1]["step"] == 10
    resumed = train_run(spec, tmp_path / "resumed", None)
    assert resumed["resumed_from_epoch"] == 1
    whole, again = (read_activations(tmp_path / name / ACTIVATIONS) for name in ("whole", "resumed"))
    assert [row["step"] for row in again] == [row["step"] for row in whole] == [0, 2, 4, 6, 8, 10, 12, 14]
    for a, b in zip(whole, again):
        for name, stats in a["positions"].items():
            assert b["positions"][name] == pytest.approx(stats, rel=1e-5, abs=1e-6)


def test_off_by_default_writes_nothing_and_keeps_the_run_ids(write_config, tmp_path, cli):
    path = write_config({"model": MLP["model"], "train": {**MLP["train"], "activation_stats_every": 0}})
    default = write_config({"model": MLP["model"], "train": {k: v for k, v in MLP["train"].items()
                                                             if k != "activation_stats_every"}}, name="tiny")
    ids = sorted(spec.run_id for spec in load_runs(default, [])[1])
    assert ids == sorted(spec.run_id for spec in load_runs(path, [])[1])
    assert ids != sorted(spec.run_id for spec in load_runs(mlp_config(write_config, "on"), [])[1])
    assert cli("run", default, "--quiet").exit_code == 0
    experiment = tmp_path / "results" / "tiny"
    assert not list(experiment.glob(f"*/{ACTIVATIONS}"))
    spec = json.loads(next(experiment.glob("*/spec.json")).read_text())
    assert spec["config"]["train"]["activation_stats_every"] == 0
    assert cli("report", "tiny").exit_code == 0
    assert "Activation inputs over training" not in (experiment / "report" / "index.html").read_text()
    assert bnexp.load_experiment(experiment).activations.empty


def test_the_report_draws_the_bands_arm_beside_arm(write_config, tmp_path, cli):
    assert cli("run", mlp_config(write_config), "--quiet").exit_code == 0
    report = cli("report", "tiny")
    assert report.exit_code == 0, report.output
    folder = tmp_path / "results" / "tiny" / "report"
    assert "Activation inputs over training" in (folder / "index.html").read_text()
    assert (folder / "plots" / "activations_01_tiny.png").stat().st_size > 1000
    experiment = bnexp.load_experiment(tmp_path / "results" / "tiny")
    assert set(experiment.activations.position) == {"dense_0", "dense_1"}
    assert len(experiment.activations) == 2 * 6 * 2  # arms x rows x positions


@pytest.mark.parametrize("value, message", [
    ("3", "train.activation_stats_every: 3 is not a multiple of steps_per_execution 2, the steps between Keras' "
          "callbacks; use a multiple of it, 0 (off), or set steps_per_execution to a divisor of 3"),
    ("-1", "train.activation_stats_every"),
])
def test_a_bad_value_is_one_line_and_exit_2(write_config, cli, value, message):
    path = write_config({"model": MLP["model"], "train": {**MLP["train"], "steps_per_execution": 2}})
    out = cli("plan", path, "--set", f"train.activation_stats_every={value}")
    assert out.exit_code == 2
    assert message in out.output and len(out.output.strip().splitlines()) == 1 and "Traceback" not in out.output


def test_ioffe_fig1_tracks_the_sigmoid_inputs_of_the_articles_network():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "ioffe_fig1.yaml"
    runs = {spec.arm: spec.config for spec in load_runs(path, [])[1] if spec.seed == 0}
    assert {arm: config.model.norm_kind for arm, config in runs.items()} == {"no_bn": "none", "bn": "batch"}
    for config in runs.values():
        assert (config.model.dense, config.model.activation, config.train.batch_size) == ((100, 100, 100), "sigmoid", 60)
        assert config.model.batch_norm.placement == "before_activation" and config.train.activation_stats_every > 0
