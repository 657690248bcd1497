"""Precise BN statistics, validation every N steps and the located divergence (issue 11)."""

import json
import types

import keras
import numpy as np
import pandas as pd
import pytest

from bnexp import report
from bnexp.report import sections

from bnexp.report import tables
from bnexp.config.load import load_config
from bnexp.errors import ConfigError
from bnexp.sweep import expand_runs
from bnexp.callbacks import Divergence, PreciseBatchNorm, recompute_bn_statistics
from bnexp.train import train_run
from test_report import ExperimentWriter, completed, diverged, epochs, row


def history(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def train_bn_arm(write_config, run_dir, changes):
    # Dropout too: precise statistics run the model in training mode, which advances dropout's seed state.
    path = write_config({"train.epochs": 2, "train.deterministic": True, "train.steps_per_execution": 2,
                         "model.dropout": {"rate": 0.3}, **changes}, name=run_dir.name)
    spec = expand_runs(load_config(path), str(path))[1]
    assert spec.arm == "bn"
    return spec, train_run(spec, run_dir, None), history(run_dir)


def test_precise_statistics_change_the_evaluations_but_not_the_training(write_config, tmp_path):
    _, plain, plain_history = train_bn_arm(write_config, tmp_path / "plain", {})
    _, precise, precise_history = train_bn_arm(
        write_config, tmp_path / "precise", {"model.batch_norm": {"precise_stats": 2}})
    assert plain["status"] == precise["status"] == "completed"
    for key in ("loss", "accuracy", "step_losses", "step"):
        assert [r[key] for r in precise_history] == [r[key] for r in plain_history]
    for one, other in zip(plain_history, precise_history):
        assert one["val_loss"] != other["val_loss"]
    assert precise["test_loss"] != plain["test_loss"]
    spec_json = json.loads((tmp_path / "precise" / "spec.json").read_text())
    assert spec_json["config"]["model"]["batch_norm"]["precise_stats"] == 2


def test_recomputed_statistics_are_the_mean_of_the_batch_statistics_and_are_put_back():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(inputs))
    bn = model.get_layer("bn")
    batches = [(np.array([[1, 2, 3], [3, 4, 5]], "float32"), None),  # means 2 3 4, variances 1 1 1
               (np.array([[0, 0, 0], [4, 4, 4]], "float32"), None)]  # means 2 2 2, variances 4 4 4
    callback = PreciseBatchNorm(batches, 2)
    callback.set_model(model)
    callback.on_test_begin()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), [2, 2.5, 3])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), [2.5, 2.5, 2.5])
    assert bn.momentum == 0.99
    callback.on_test_end()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_mean), [0, 0, 0])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_variance), [1, 1, 1])
    # N larger than the batches there are: all of them
    saved = recompute_bn_statistics(model, iter(batches[:1]))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), [2, 3, 4])
    assert len(saved) == 2
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    assert recompute_bn_statistics(plain, iter(batches)) == []  # no BN: nothing run, nothing to put back


def test_validation_every_n_steps_is_recorded_without_changing_the_training(write_config, tmp_path, monkeypatch):
    _, _, plain_history = train_bn_arm(write_config, tmp_path / "plain", {"model.dropout": {"rate": 0.0}})
    evaluated = []
    real_evaluate = keras.Model.evaluate

    def counting_evaluate(self, x=None, y=None, **kwargs):
        evaluated.append(len(x) if x is not None else "fit")
        return real_evaluate(self, x, y, **kwargs)

    monkeypatch.setattr(keras.Model, "evaluate", counting_evaluate)
    # 36 training rows in batches of 8: 5 steps an epoch; steps_per_execution 1, so a callback per step.
    _, result, rows = train_bn_arm(write_config, tmp_path / "evals", {
        "model.dropout": {"rate": 0.0}, "train.steps_per_execution": 1, "train.eval_every_steps": 2,
        "train.eval_subset": 4})
    assert result["status"] == "completed"
    # steps 2 and 4 of epoch 1 and 6 and 8 of epoch 2; 5 and 10 end an epoch, whose validation records them
    assert [[s[0] for s in r["step_evals"]] for r in rows] == [[2, 4], [6, 8]]
    assert evaluated[:2] == [4, 4] and evaluated[-1] == 16  # the subset, then the 16 test rows
    assert all(len(s) == 3 and 0 <= s[2] <= 1 for r in rows for s in r["step_evals"])
    # evaluate resets the training metrics mid-epoch; they are put back, so the epoch loss is unchanged
    _, _, again = train_bn_arm(write_config, tmp_path / "again", {
        "model.dropout": {"rate": 0.0}, "train.steps_per_execution": 1})
    assert [r["loss"] for r in rows] == [r["loss"] for r in again]
    assert "step_evals" not in plain_history[0]


def test_new_fields_are_checked_and_left_out_of_the_run_id_at_their_default(write_config):
    path = write_config()
    plain = expand_runs(load_config(path), str(path))
    defaults = expand_runs(load_config(path, ["model.batch_norm.precise_stats=0", "train.eval_every_steps=0"]),
                           str(path))
    assert [r.run_id for r in defaults] == [r.run_id for r in plain]
    precise = expand_runs(load_config(path, ["model.batch_norm.precise_stats=5"]), str(path))
    assert precise[1].run_id != plain[1].run_id
    with pytest.raises(ConfigError) as error:
        load_config(path, ["model.batch_norm.precise_stats=-1"])
    assert str(error.value) == ("--set model.batch_norm.precise_stats=-1: model.batch_norm.precise_stats: "
                                "expected a number >= 0, got -1")
    with pytest.raises(ConfigError) as error:
        load_config(path, ["train.eval_subset=100"])
    assert str(error.value) == ("--set train.eval_subset=100: train.eval_subset: used only by the evaluations "
                                "every eval_every_steps steps; set eval_every_steps > 0 or drop eval_subset")


def with_step_evals(rows, evals):
    """`rows` with step_evals {epoch: [[step, val_loss, val_accuracy], ...]} added."""
    return [{**r, "step_evals": evals.get(r["epoch"], [])} for r in rows]


def test_steps_to_a_validation_target_use_the_step_evaluations(tmp_path):
    writer = ExperimentWriter(tmp_path, "e3")
    # 100 steps an epoch, validation every 25 steps: no_bn reaches 0.85 at step 150, bn at step 50;
    # at the epoch ends alone they reach it at steps 200 and 100.
    for seed in (0, 1):
        writer.run("no_bn", seed, history=with_step_evals(epochs([0.5, 0.9, 0.9]), {
            1: [[25, 1.0, 0.2], [50, 1.0, 0.3], [75, 1.0, 0.4]], 2: [[125, 1.0, 0.6], [150, 0.5, 0.85]]}),
            result=completed(0.1))
        writer.run("bn", seed, history=with_step_evals(epochs([0.9, 0.95, 0.95]), {
            1: [[25, 1.0, 0.5], [50, 0.4, 0.86], [75, 0.3, 0.88]]}), result=completed(0.05))
    exp = report.load_experiment(writer.plan())
    target = tables.resolve_target(exp.runs, exp.history, [], "no_bn", "val_accuracy", 0.85)
    per_run = tables.steps_per_run(exp.runs, exp.history, exp.step_losses, target, exp.step_evals)
    assert set(per_run[per_run.arm == "no_bn"].step) == {150.0}
    assert set(per_run[per_run.arm == "no_bn"].epoch) == {2.0}
    assert set(per_run[per_run.arm == "bn"].step) == {50.0}
    table = tables.steps_table(exp.runs, per_run, [], exp.arms, "no_bn")
    assert row(table, arm="bn").speedup == 3.0
    epoch_ends = tables.steps_per_run(exp.runs, exp.history, exp.step_losses, target)
    assert sorted(set(epoch_ends.step)) == [100.0, 200.0]
    # a loss target uses the evaluations' val_loss the same way
    loss_target = tables.resolve_target(exp.runs, exp.history, [], "no_bn", "val_loss", 0.5)
    by_loss = tables.steps_per_run(exp.runs, exp.history, exp.step_losses, loss_target, exp.step_evals)
    assert set(by_loss[by_loss.arm == "no_bn"].step) == {150.0}
    assert set(by_loss[by_loss.arm == "bn"].step) == {50.0}
    section = sections._steps_section(exp, {"no_bn": "b", "bn": "r"}, "val_accuracy", 0.85)
    assert row(section.tables[0].display, arm="bn")["speed-up vs no_bn"] == "3.00×"
    # both seeds 150 against 50: a geometric mean of 3 with no spread, so no interval (issue 16)
    assert row(section.tables[0].display, arm="bn")["paired speed-up [95% CI]"] == \
        "3.00× (2 pairs, the same ratio in each: no interval)"
    assert "every train.eval_every_steps steps, for the 4 run(s) that made them" in section.explanation


def test_the_paired_speedup_is_a_geometric_mean_over_the_seeds_both_arms_reached_with_a_t_interval():
    reference = pd.Series({0: 300.0, 1: 350.0, 2: 400.0, 3: 500.0})
    arm = pd.Series({0: 60.0, 1: 70.0, 2: 100.0, 4: 10.0})  # seed 3: bn never reached it; seed 4: no_bn never did
    out = tables.paired_speedup(reference, arm)
    logs = np.log([5.0, 5.0, 4.0])
    half = 4.302652729911275 * logs.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert out["speedup_pairs"] == 3
    assert out["speedup_paired"] == pytest.approx(100 ** (1 / 3))
    assert (out["speedup_ci_low"], out["speedup_ci_high"]) == pytest.approx(
        (np.exp(logs.mean() - half), np.exp(logs.mean() + half)))
    one = tables.paired_speedup(reference[:1], arm[:1])
    assert one["speedup_paired"] == pytest.approx(5.0) and np.isnan(one["speedup_ci_low"])
    assert tables.paired_speedup(reference, pd.Series(dtype=float))["speedup_pairs"] == 0


def test_the_report_says_which_runs_used_precise_statistics(tmp_path):
    writer = ExperimentWriter(tmp_path, "e2")
    for seed in (0, 1):
        for arm in ("no_bn", "bn"):
            run_id = writer.run(arm, seed, history=epochs([0.9]), result=completed(0.1, epochs_run=1))
            spec_path = writer.path / run_id / "spec.json"
            spec = json.loads(spec_path.read_text())
            spec["config"]["model"] = {"batch_norm": {"enabled": arm == "bn", "precise_stats": 20 if seed else 0}}
            spec_path.write_text(json.dumps(spec))
    exp = report.load_experiment(writer.plan())
    facts = dict(sections.header_facts(exp))
    assert facts["precise BN statistics"] == (
        "bn: 1 of 2 runs, from 20 training batches (model.batch_norm.precise_stats: BN's moving statistics "
        "recomputed before every evaluation)")


class FakeModel:
    stop_training = False

    def __init__(self):
        self.optimizer = types.SimpleNamespace(iterations=0)


def test_divergence_records_the_last_finite_and_the_first_bad_step():
    divergence, model = Divergence(), FakeModel()
    divergence.set_model(model)
    model.optimizer.iterations = 400
    divergence.on_train_begin()
    for step, loss in ((410, 2.0), (420, float("nan")), (430, float("nan"))):
        model.optimizer.iterations = step
        divergence.on_train_batch_end(0, {"loss": loss})
    assert divergence.steps == [410, 420] and model.stop_training


def test_a_diverged_run_records_its_step_range_and_the_report_shows_it(write_config, tmp_path):
    # A linear model at learning rate 1e12 overflows to inf within an epoch; a callback every 2 steps.
    path = write_config({"train.optimizer": "sgd", "train.learning_rate": 1e12, "train.steps_per_execution": 2,
                         "train.deterministic": True, "model.activation": "linear"})
    spec = expand_runs(load_config(path), str(path))[0]
    result = train_run(spec, tmp_path / "run", None)
    assert (result["status"], result["diverged_epoch"], result["diverged_steps"]) == ("diverged", 1, [2, 4])
    assert json.loads((tmp_path / "run" / "result.json").read_text())["diverged_steps"] == [2, 4]

    writer = ExperimentWriter(tmp_path, "lr")
    writer.run("no_bn", 0, history=epochs([0.5, None]), result={**diverged(2), "diverged_steps": [410, 420]})
    writer.run("no_bn", 1, history=epochs([0.5, None]), result=diverged(2))  # an older run: no step range
    writer.run("bn", 0, history=epochs([0.9, 0.9]), result=completed(0.1, epochs_run=2))
    exp = report.load_experiment(writer.plan())
    stability = tables.stability_table(exp.runs, [])
    assert row(stability, arm="no_bn").diverged_epochs == "2 (steps 410–420), 2"


def test_a_run_with_precise_statistics_resumes_to_the_same_numbers(write_config, tmp_path):
    # The checkpoint is saved after the validation put the moving statistics back, so a resumed run
    # continues from the training state, not from the recomputed statistics.
    path = write_config({"train.epochs": 3, "train.deterministic": True, "model.batch_norm": {"precise_stats": 2}})
    spec = expand_runs(load_config(path), str(path))[1]
    whole = train_run(spec, tmp_path / "whole", None)

    def interrupt_in_epoch_2(_, record):  # history.jsonl has epoch 2; the checkpoint is still epoch 1
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(spec, tmp_path / "resumed", None, on_epoch=interrupt_in_epoch_2)
    resumed = train_run(spec, tmp_path / "resumed", None)
    assert resumed["resumed_from_epoch"] == 1
    assert [[r["loss"], r["val_loss"]] for r in history(tmp_path / "resumed")] == \
        [[r["loss"], r["val_loss"]] for r in history(tmp_path / "whole")]
    assert resumed["test_loss"] == whole["test_loss"]
