"""The reporter on hand-written result folders with known numbers (docs/RESULTS_FORMAT.md)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bnexp.report import load as experiment

from bnexp import report
from bnexp.report import sections

from bnexp.report import tables
from bnexp.errors import ResultsError

LR = "train.learning_rate"
ACT = "model.activation"


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data))


def epochs(val_accuracy, *, loss=None, accuracy=None, val_loss=None, steps_per_epoch=100, step_losses=None):
    """History records for len(val_accuracy) epochs; step_losses: {epoch: [[step, loss], ...]}."""
    n = len(val_accuracy)
    loss = loss or [1.0 / (e + 1) for e in range(n)]
    accuracy = accuracy or val_accuracy
    val_loss = val_loss or loss
    return [
        {"epoch": e + 1, "step": (e + 1) * steps_per_epoch, "loss": loss[e], "accuracy": accuracy[e],
         "val_loss": val_loss[e], "val_accuracy": val_accuracy[e], "learning_rate": 0.001,
         "epoch_seconds": 1.0, "step_losses": (step_losses or {}).get(e + 1, [])}
        for e in range(n)
    ]


def completed(test_error, *, epochs_run=3, trainable=1000, non_trainable=0):
    return {"status": "completed", "epochs_run": epochs_run, "diverged_epoch": None, "error": None,
            "test_loss": 0.1, "test_accuracy": 1 - test_error, "test_error": test_error,
            "trainable_params": trainable, "non_trainable_params": non_trainable, "wall_seconds": 2.0,
            "environment": {"keras": "3.12.0", "backend": "tensorflow", "tensorflow": "2.20.0", "device": "cpu"}}


def diverged(epoch, *, trainable=1000, non_trainable=0):
    return {"status": "diverged", "epochs_run": epoch, "diverged_epoch": epoch, "error": None,
            "test_loss": None, "test_accuracy": None, "test_error": None,
            "trainable_params": trainable, "non_trainable_params": non_trainable, "wall_seconds": 1.0}


def failed(message):
    return {"status": "failed", "epochs_run": 0, "diverged_epoch": None, "error": message,
            "test_loss": None, "test_accuracy": None, "test_error": None,
            "trainable_params": None, "non_trainable_params": None, "wall_seconds": 0.5}


class ExperimentWriter:
    """Writes an experiment folder run by run, then its experiment.json."""

    def __init__(self, root: Path, name="exp", sweep_keys=(), arms=("no_bn", "bn"), reference="no_bn",
                 dataset="mnist"):
        self.path = root / name
        self.path.mkdir(parents=True)
        self.name, self.sweep_keys, self.arms, self.reference = name, list(sweep_keys), list(arms), reference
        self.dataset = dataset
        self.run_ids, self.seeds = [], set()

    def run(self, arm, seed, point=None, history=None, result=None, run_id=None):
        point = point or {}
        run_id = run_id or "-".join([arm, f"s{seed}", *(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in point.items())])
        run_dir = self.path / run_id
        run_dir.mkdir()
        write_json(run_dir / "spec.json", {
            "format": 1, "bnexp_version": "0.1.0", "experiment": self.name, "run_id": run_id, "arm": arm,
            "reference_arm": self.reference, "arms": self.arms, "seed": seed, "point": point,
            "config": {"data": {"dataset": self.dataset}, "model": {}, "train": {}}})
        if history is not None:
            (run_dir / "history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
        if result is not None:
            write_json(run_dir / "result.json", result)
        self.run_ids.append(run_id)
        self.seeds.add(seed)
        return run_id

    def plan(self, extra_run_ids=()):
        write_json(self.path / "experiment.json", {
            "format": 1, "bnexp_version": "0.1.0", "experiment": self.name,
            "config_file": f"configs/{self.name}.yaml", "sweep_keys": self.sweep_keys, "arms": self.arms,
            "reference_arm": self.reference, "seeds": sorted(self.seeds),
            "run_ids": [*self.run_ids, *extra_run_ids]})
        return self.path


def lr_sweep(tmp_path, errors, name="lr"):
    """A learning-rate sweep; errors: {(lr, arm): [test error per seed]} (None: diverged in epoch 2)."""
    writer = ExperimentWriter(tmp_path, name, sweep_keys=[LR])
    for (lr, arm), per_seed in errors.items():
        for seed, error in enumerate(per_seed):
            if error is None:
                writer.run(arm, seed, {LR: lr}, epochs([0.5, None]), diverged(2))
            else:
                writer.run(arm, seed, {LR: lr}, epochs([0.5, 1 - error, 1 - error]), completed(error))
    return writer.plan()


def row(table, **where):
    match = np.ones(len(table), dtype=bool)
    for key, value in where.items():
        match &= (table[key] == value).to_numpy()
    assert match.sum() == 1, f"{match.sum()} rows match {where}"
    return table[match].iloc[0]


def test_test_error_table_gives_mean_sd_and_status_counts(tmp_path):
    path = lr_sweep(tmp_path, {
        (0.001, "no_bn"): [0.02, 0.03, 0.04], (0.001, "bn"): [0.010, 0.012, 0.017],
        (0.1, "no_bn"): [None, None, 0.9], (0.1, "bn"): [0.05, 0.06, 0.07],
    })
    exp = report.load_experiment(path)
    table = tables.test_error_table(exp.runs, exp.sweep_keys)
    assert list(table.arm) == ["no_bn", "bn", "no_bn", "bn"]
    first = row(table, **{LR: 0.001, "arm": "no_bn"})
    assert first.test_error_mean == pytest.approx(0.03, abs=1e-15)
    assert first.test_error_sd == pytest.approx(0.01, abs=1e-15)
    assert (first.n, first.completed, first.diverged, first.epochs_min, first.epochs_max) == (3, 3, 0, 3, 3)
    assert first.train_accuracy_mean == pytest.approx(0.97)
    unstable = row(table, **{LR: 0.1, "arm": "no_bn"})
    assert (unstable.n, unstable.completed, unstable.diverged) == (1, 1, 2)
    assert unstable.test_error_mean == pytest.approx(0.9)
    assert math.isnan(unstable.test_error_sd)
    assert (unstable.epochs_min, unstable.epochs_max) == (2, 3)


def test_paired_difference_matches_a_hand_calculation(tmp_path):
    ref, bn = [0.020, 0.031, 0.042, 0.025], [0.010, 0.012, 0.045, 0.011]
    path = lr_sweep(tmp_path, {(0.001, "no_bn"): ref, (0.001, "bn"): bn})
    exp = report.load_experiment(path)
    paired = row(tables.paired_table(exp.runs, exp.sweep_keys, exp.arms, "no_bn"), arm="bn")
    diffs = np.array(bn) - np.array(ref)
    n, mean, sd = len(diffs), diffs.mean(), diffs.std(ddof=1)
    half = sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    p = 2 * sps.t.sf(abs(mean / (sd / math.sqrt(n))), n - 1)
    assert paired.pairs == 4
    assert paired.diff_mean == pytest.approx(mean, rel=1e-12)
    assert paired.ci_low == pytest.approx(mean - half, rel=1e-9)
    assert paired.ci_high == pytest.approx(mean + half, rel=1e-9)
    assert paired.p_value == pytest.approx(p, rel=1e-9)
    assert (paired.wins, paired.decided) == (3, 4)
    assert paired.note == ""


def test_one_seed_gives_no_interval_and_says_so(tmp_path):
    path = lr_sweep(tmp_path, {(0.001, "no_bn"): [0.03], (0.001, "bn"): [0.01]})
    exp = report.load_experiment(path)
    paired = row(tables.paired_table(exp.runs, exp.sweep_keys, exp.arms, "no_bn"), arm="bn")
    assert paired.diff_mean == pytest.approx(-0.02)
    assert math.isnan(paired.ci_low) and math.isnan(paired.ci_high) and math.isnan(paired.p_value)
    assert paired.note == "one seed: no interval or test"
    section = sections._paired_section(exp)
    display = section.tables[0].display.iloc[0]
    assert display["95% CI (pp)"] == "no interval (1 seed)"
    assert display["mean diff. (pp)"] == "-2.00"
    assert display["p (paired t-test)"] == "–"


def test_diverged_partner_counts_as_a_loss_and_leaves_the_interval(tmp_path):
    path = lr_sweep(tmp_path, {(0.1, "no_bn"): [None, 0.05, 0.06], (0.1, "bn"): [0.04, 0.04, 0.07]})
    exp = report.load_experiment(path)
    paired = row(tables.paired_table(exp.runs, exp.sweep_keys, exp.arms, "no_bn"), arm="bn")
    assert paired.pairs == 2
    assert paired.diff_mean == pytest.approx(0.0)
    assert (paired.wins, paired.decided) == (2, 3)
    assert paired.note == "1 pair(s) excluded: no_bn diverged (bn wins)"


def test_identical_differences_give_no_interval_and_no_test(tmp_path):
    path = lr_sweep(tmp_path, {(0.01, "no_bn"): [0.25, 0.5], (0.01, "bn"): [0.125, 0.375]})
    exp = report.load_experiment(path)
    paired = row(tables.paired_table(exp.runs, exp.sweep_keys, exp.arms, "no_bn"), arm="bn")
    # issue 16: a zero-width interval at -0.125 would "exclude 0" with no spread to show it
    assert paired.diff_mean == -0.125 and math.isnan(paired.ci_low) and math.isnan(paired.ci_high)
    assert math.isnan(paired.p_value)
    assert paired.note == "same difference in every seed: no test"


def test_steps_to_a_loss_target_use_the_step_log_and_give_the_speedup(tmp_path):
    writer = ExperimentWriter(tmp_path, "e3")
    # 100 steps per epoch; loss logged every 10 steps: the reference gets to 0.5 at step 350, BN at 70.
    for seed in (0, 1):
        logged = {e: range(100 * e - 90, 100 * e + 1, 10) for e in (1, 2, 3, 4)}
        ref_log = {e: [[s, 0.5 + (350 - s) / 200] for s in steps] for e, steps in logged.items()}
        bn_log = {e: [[s, 0.5 + (70 - s) / 100] for s in steps] for e, steps in logged.items()}
        writer.run("no_bn", seed, history=epochs([0.5] * 4, loss=[1.8, 1.4, 0.6, 0.4], step_losses=ref_log),
                   result=completed(0.3, epochs_run=4))
        writer.run("bn", seed, history=epochs([0.6] * 4, loss=[0.5, 0.4, 0.3, 0.2], step_losses=bn_log),
                   result=completed(0.2, epochs_run=4))
    exp = report.load_experiment(writer.plan())
    target = tables.resolve_target(exp.runs, exp.history, [], "no_bn", "loss", 0.5)
    per_run = tables.steps_per_run(exp.runs, exp.history, exp.step_losses, target)
    assert set(per_run[per_run.arm == "no_bn"].step) == {350.0}
    assert set(per_run[per_run.arm == "no_bn"].epoch) == {4.0}
    assert set(per_run[per_run.arm == "bn"].step) == {70.0}
    assert set(per_run[per_run.arm == "bn"].epoch) == {1.0}
    table = tables.steps_table(exp.runs, per_run, [], exp.arms, "no_bn")
    assert row(table, arm="bn").speedup == 5.0
    assert math.isnan(row(table, arm="no_bn").speedup)
    section = sections._steps_section(exp, {"no_bn": "b", "bn": "r"}, "loss", 0.5)
    assert row(section.tables[0].display, arm="bn")["speed-up vs no_bn"] == "5.00×"


def test_default_target_is_90_percent_of_the_references_best_validation_accuracy(tmp_path):
    writer = ExperimentWriter(tmp_path, "acc", sweep_keys=[LR])
    for seed in (0, 1):
        writer.run("no_bn", seed, {LR: 0.001}, epochs([0.5, 0.8, 0.9 + seed / 10]), completed(0.1))
        writer.run("no_bn", seed, {LR: 0.1}, epochs([0.1, 0.1, 0.1]), completed(0.9))
        writer.run("bn", seed, {LR: 0.001}, epochs([0.9, 0.95, 0.97]), completed(0.03))
        writer.run("bn", seed, {LR: 0.1}, epochs([0.5, 0.8, 0.9]), completed(0.1))
    exp = report.load_experiment(writer.plan())
    target = tables.resolve_target(exp.runs, exp.history, exp.sweep_keys, "no_bn", None, None)
    assert target.metric == "val_accuracy"
    assert target.value == pytest.approx(0.9 * 0.95)
    assert target.how == "90% of no_bn's best mean final val_accuracy, 0.95 at learning_rate=0.001"
    per_run = tables.steps_per_run(exp.runs, exp.history, exp.step_losses, target)
    table = tables.steps_table(exp.runs, per_run, exp.sweep_keys, exp.arms, "no_bn")
    ref = row(table, **{LR: 0.001, "arm": "no_bn"})
    assert (ref.reached, ref.step_mean, ref.epoch_mean) == (2, 300.0, 3.0)
    fast = row(table, **{LR: 0.001, "arm": "bn"})
    assert (fast.step_mean, fast.speedup) == (100.0, 3.0)
    stuck = row(table, **{LR: 0.1, "arm": "no_bn"})
    assert (stuck.reached, stuck.note) == (0, "2 of 2 runs never reached it")
    late = row(table, **{LR: 0.1, "arm": "bn"})
    assert late.step_mean == 300.0 and math.isnan(late.speedup)
    assert late.note == "no no_bn run reached it: no ratio"


def test_stability_flags_divergence_chance_and_the_largest_learning_rate_that_trains(tmp_path):
    writer = ExperimentWriter(tmp_path, "stab", sweep_keys=[LR, ACT])
    for act in ("sigmoid", "relu"):
        for seed in (0, 1):
            for lr in (0.001, 0.01, 0.1):
                writer.run("bn", seed, {LR: lr, ACT: act}, epochs([0.9, 0.95]), completed(0.05))
            writer.run("no_bn", seed, {LR: 0.001, ACT: act}, epochs([0.9, 0.95]), completed(0.05))
            stuck_acc = 0.1135 if act == "sigmoid" else 0.95  # MNIST's largest class: still chance
            writer.run("no_bn", seed, {LR: 0.01, ACT: act}, epochs([0.1, stuck_acc]), completed(1 - stuck_acc))
            if seed == 0:
                writer.run("no_bn", seed, {LR: 0.1, ACT: act}, epochs([0.2, None]), diverged(2))
            else:
                writer.run("no_bn", seed, {LR: 0.1, ACT: act}, epochs([0.2, 0.96]), completed(0.04))
    exp = report.load_experiment(writer.plan())
    table = tables.stability_table(exp.runs, exp.sweep_keys)
    sig = row(table, **{LR: 0.01, ACT: "sigmoid", "arm": "no_bn"})
    assert (sig.finished, sig.diverged, sig.stuck_at_chance, sig.trained) == (2, 0, 2, 0)
    high = row(table, **{LR: 0.1, ACT: "relu", "arm": "no_bn"})
    assert (high.diverged, high.diverged_epochs, high.stuck_at_chance, high.trained) == (1, "2", 0, 1)
    largest = tables.largest_lr_table(exp.runs, exp.sweep_keys)
    assert row(largest, **{ACT: "sigmoid", "arm": "no_bn"}).largest_lr_that_trains == 0.001
    assert row(largest, **{ACT: "sigmoid", "arm": "no_bn"}).smallest_lr_that_fails == 0.01
    assert row(largest, **{ACT: "relu", "arm": "no_bn"}).largest_lr_that_trains == 0.01
    assert row(largest, **{ACT: "relu", "arm": "bn"}).largest_lr_that_trains == 0.1
    assert math.isnan(row(largest, **{ACT: "relu", "arm": "bn"}).smallest_lr_that_fails)


def test_a_rate_that_trains_again_above_a_failure_is_not_the_largest_that_trains(tmp_path):
    """Stuck at 0.01 but trained at 0.1: the largest rate that trains is 0.001, and 0.1 is listed apart."""
    writer = ExperimentWriter(tmp_path, "bumpy", sweep_keys=[LR])
    for seed in (0, 1):
        for lr, acc in ((0.001, 0.9), (0.01, 0.1), (0.1, 0.9)):
            writer.run("bn", seed, {LR: lr}, epochs([0.5, acc]), {**completed(1 - acc), "num_classes": 10})
    largest = tables.largest_lr_table(report.load_experiment(writer.plan()).runs, [LR])
    assert largest[["largest_lr_that_trains", "smallest_lr_that_fails", "trains_again_at"]].values.tolist() == [
        [0.001, 0.01, "0.1"]]


def test_chance_threshold_is_chance_plus_the_smaller_of_5_points_and_half_of_chance():
    assert experiment.chance_threshold(10) == pytest.approx(0.15)
    assert experiment.chance_threshold(2) == pytest.approx(0.55)
    assert experiment.chance_threshold(99) == pytest.approx(1.5 / 99)


def test_with_unbalanced_classes_chance_is_the_majority_share(tmp_path):
    """Two classes, 90% of them one: 90% accuracy is what always answering it scores (the attack on issue 16)."""
    assert experiment.chance_threshold(2, 0.9) == pytest.approx(0.95)
    assert experiment.chance_threshold(10, 0.05) == pytest.approx(0.15)  # 1/K when larger
    writer = ExperimentWriter(tmp_path, "unbalanced")
    for seed in (0, 1):
        writer.run("no_bn", seed, history=epochs([0.9, 0.9]),
                   result={**completed(0.1), "num_classes": 2, "majority_share": 0.9})
        writer.run("bn", seed, history=epochs([0.9, 0.99]),
                   result={**completed(0.01), "num_classes": 2, "majority_share": 0.9})
    runs = report.load_experiment(writer.plan()).runs.set_index(["arm", "seed"])
    assert runs.stuck.to_dict() == {("no_bn", 0): True, ("bn", 0): False, ("no_bn", 1): True, ("bn", 1): False}


def test_a_run_whose_history_is_damaged_is_not_called_stuck_at_chance(tmp_path):
    """Its final validation accuracy is unknown; its test accuracy is not what the chance line was drawn for."""
    writer = ExperimentWriter(tmp_path, "lost")
    for seed in (0, 1):
        writer.run("no_bn", seed, history=epochs([0.5, 0.9]), result={**completed(0.4), "num_classes": 2,
                                                                      "majority_share": 0.6})
        writer.run("bn", seed, history=epochs([0.5, 0.9]), result={**completed(0.4), "num_classes": 2,
                                                                   "majority_share": 0.6})
    path = writer.plan()
    (path / "bn-s1" / "history.jsonl").write_text('{"epoch": 1, "loss": "x"}\n')
    exp = report.load_experiment(path)
    runs = exp.runs.set_index(["arm", "seed"])
    assert runs.stuck.tolist() == [False] * 4 and math.isnan(runs.chance_threshold[("bn", 1)])
    stability = tables.stability_table(exp.runs, [])
    assert row(stability, arm="bn").chance_unknown == 1


def test_the_majority_share_is_the_largest_class_share_of_the_labels():
    from bnexp.train import majority_share

    assert majority_share(np.array([0, 1, 1, 1, 2])) == pytest.approx(0.6)
    assert majority_share(np.array([], dtype=int)) is None


def test_parameter_counts_per_arm_and_the_difference_to_the_reference(tmp_path):
    writer = ExperimentWriter(tmp_path, "params")
    for seed in (0, 1):
        writer.run("no_bn", seed, history=epochs([0.9]), result=completed(0.1, trainable=38250))
        writer.run("bn", seed, history=epochs([0.9]), result=completed(0.1, trainable=38762, non_trainable=512))
    exp = report.load_experiment(writer.plan())
    table = tables.parameter_table(exp.runs, [], "no_bn")
    assert table.to_dict("records") == [
        {"arm": "no_bn", "runs": 2, "trainable": 38250, "non_trainable": 0, "total": 38250,
         "trainable_vs_reference": 0},
        {"arm": "bn", "runs": 2, "trainable": 38762, "non_trainable": 512, "total": 39274,
         "trainable_vs_reference": 512},
    ]


def test_parameter_counts_that_vary_with_the_sweep_get_a_row_per_point(tmp_path):
    writer = ExperimentWriter(tmp_path, "width", sweep_keys=["model.dense"])
    for width, params in ((64, 1000), (128, 2000)):
        writer.run("no_bn", 0, {"model.dense": width}, epochs([0.9]), completed(0.1, trainable=params))
        writer.run("bn", 0, {"model.dense": width}, epochs([0.9]),
                   completed(0.1, trainable=params + 2 * width, non_trainable=2 * width))
    exp = report.load_experiment(writer.plan())
    table = tables.parameter_table(exp.runs, exp.sweep_keys, "no_bn")
    assert table[["model.dense", "arm", "trainable", "trainable_vs_reference"]].values.tolist() == [
        [64, "no_bn", 1000, 0], [64, "bn", 1128, 128], [128, "no_bn", 2000, 0], [128, "bn", 2256, 256]]


def test_partial_results_are_listed_not_dropped(tmp_path):
    writer = ExperimentWriter(tmp_path, "partial", sweep_keys=[LR])
    writer.run("no_bn", 0, {LR: 0.01}, epochs([0.5, 0.9]), completed(0.1))
    writer.run("bn", 0, {LR: 0.01}, epochs([0.5, 0.9]), completed(0.08))
    writer.run("no_bn", 1, {LR: 0.01}, epochs([0.5]), failed("ResourceExhaustedError: OOM"))
    writer.run("bn", 1, {LR: 0.01}, epochs([0.5]))
    garbled = writer.run("no_bn", 2, {LR: 0.01}, epochs([0.5, 0.9]), completed(0.1))
    (writer.path / garbled / "history.jsonl").write_text('{"epoch": 1, "loss": 0.5}\n{"epo')
    broken = writer.run("bn", 2, {LR: 0.01}, epochs([0.5, 0.9]), completed(0.1))
    (writer.path / broken / "result.json").write_text("{not json")
    path = writer.plan(extra_run_ids=["no_bn-s3-lr0.01"])
    (dirs,) = report.write_reports(tmp_path, "partial")
    missing = pd.read_csv(dirs / "tables" / "missing.csv")
    assert dict(zip(missing.run_id, missing.status)) == {
        "no_bn-s1-learning_rate0.01": "failed", "bn-s1-learning_rate0.01": "incomplete",
        "bn-s2-learning_rate0.01": "damaged", "no_bn-s3-lr0.01": "pending"}
    assert "ResourceExhaustedError: OOM" in set(missing.detail)
    page = (dirs / "index.html").read_text()
    assert "no_bn-s2-learning_rate0.01/history.jsonl damaged (line 2:" in page
    assert "2 of 7 finished (3 completed, 1 failed, 1 incomplete, 1 damaged, 1 pending)" not in page
    assert "3 of 7 finished (3 completed, 1 failed, 1 incomplete, 1 damaged, 1 pending)" in page
    errors = pd.read_csv(dirs / "tables" / "test_error.csv")
    assert list(errors[["completed", "failed", "incomplete"]].sum()) == [3, 1, 1]
    assert path.joinpath("report").is_dir()


def test_report_folder_holds_a_self_contained_page_markdown_tables_and_plots(tmp_path):
    path = lr_sweep(tmp_path, {(lr, arm): [0.02 + i / 100, 0.03] for i, lr in enumerate((0.001, 0.1))
                               for arm in ("no_bn", "bn")})
    (out,) = report.write_reports(tmp_path, None)
    assert out == path / "report"
    assert {p.name for p in (out / "tables").iterdir()} == {
        "test_error.csv", "paired_difference.csv", "steps_to_target.csv", "steps_to_target_runs.csv",
        "stability.csv", "largest_learning_rate.csv", "parameters.csv", "missing.csv", "runs.csv"}
    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert pngs == ["curves_01_learning_rate=0.001.png", "curves_02_learning_rate=0.1.png",
                    "paired_difference_forest.png", "steps_to_target.png", "test_error_vs_learning_rate.png"]
    page = (out / "index.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == len(pngs)
    assert "http://" not in page and "https://" not in page
    assert "scipy.stats.ttest_rel" in page and "bnexp 0.1.0" in page
    assert "Keras 3.12.0 (tensorflow 2.20.0) on cpu" in page
    markdown = (out / "report.md").read_text()
    for name in pngs:
        assert f"](plots/{name})" in markdown
    runs = pd.read_csv(out / "tables" / "runs.csv")
    assert len(runs) == 8 and runs.test_error.max() == 0.03  # full precision, fractions as stored


def test_a_second_report_replaces_the_first(tmp_path):
    path = lr_sweep(tmp_path, {(0.01, "no_bn"): [0.03], (0.01, "bn"): [0.01]})
    report.write_reports(tmp_path, "lr")
    (path / "report" / "plots" / "stale.png").write_bytes(b"")
    report.write_reports(tmp_path, str(path))
    assert not (path / "report" / "plots" / "stale.png").exists()
    assert sorted(p.name for p in path.iterdir() if p.name.startswith(".")) == []


def test_no_results_is_one_clear_error(tmp_path):
    with pytest.raises(ResultsError, match=r"results folder not found; run `bnexp run CONFIG` first"):
        report.write_reports(tmp_path / "nowhere", None)
    with pytest.raises(ResultsError, match=r": no experiments here yet; start one with `bnexp run CONFIG` or pass another folder with --results$"):
        report.write_reports(tmp_path, None)
    lr_sweep(tmp_path, {(0.01, "no_bn"): [0.03]}, name="lr")
    with pytest.raises(ResultsError, match=r": no experiment 'nope'; found: lr$"):
        report.write_reports(tmp_path, "nope")
    planned = ExperimentWriter(tmp_path, "planned").plan(extra_run_ids=["a", "b"])
    with pytest.raises(ResultsError, match=r"planned: no run has started yet \(2 planned\)"):
        report.write_reports(tmp_path, str(planned))


def test_importing_the_reporter_does_not_import_tensorflow_or_keras():
    code = ("import sys, bnexp.report; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_experiment_without_a_sweep_gets_a_bar_chart_and_its_one_seed_caveat(tmp_path):
    writer = ExperimentWriter(tmp_path / "results", "baseline")
    writer.run("no_bn", 0, history=epochs([0.9, 0.96]), result=completed(0.03))
    writer.run("bn", 0, history=epochs([0.95, 0.99]), result=completed(0.008))
    writer.plan()
    (out,) = report.write_reports(tmp_path / "unused", str(tmp_path / "results"))
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "curves_01_baseline.png", "steps_to_target.png", "test_error.png"]
    page = (out / "index.html").read_text()
    assert "bn vs no_bn: mean test-error difference -2.20 pp; one seed: no confidence interval." in page
    assert "<td>no interval (1 seed)</td>" in page


def test_an_explicit_target_metric_nobody_logged_is_reported_as_such(tmp_path):
    writer = ExperimentWriter(tmp_path, "noval")
    writer.run("no_bn", 0, history=[{"epoch": 1, "step": 10, "loss": 0.5, "accuracy": 0.9}], result=completed(0.1))
    exp = report.load_experiment(writer.plan())
    section = sections._steps_section(exp, {"no_bn": "b", "bn": "r"}, "val_loss", 0.4)
    assert section.notes == ["No run logged val_loss: every run shows as not reached."]
    assert list(section.tables[0].raw.reached) == [0]
    default = tables.resolve_target(exp.runs, exp.history, [], "no_bn", None, None)
    assert (default.metric, default.value) == ("accuracy", pytest.approx(0.81))


def test_summary_states_the_interval_whether_it_excludes_zero_and_the_wins(tmp_path):
    writer = ExperimentWriter(tmp_path, "summary")
    for seed, (ref, bn) in enumerate(((0.03, 0.01), (0.04, 0.02), (0.05, 0.04))):
        writer.run("no_bn", seed, history=epochs([0.9]), result=completed(ref))
        writer.run("bn", seed, history=epochs([0.9]), result=completed(bn))
    exp = report.load_experiment(writer.plan())
    paired = tables.paired_table(exp.runs, [], exp.arms, "no_bn")
    summary = sections._summary_section(exp, paired, tables.stability_table(exp.runs, []))
    assert summary.bullets == [
        "bn vs no_bn: mean test-error difference -1.67 pp, 95% CI [-3.10, -0.23] pp (excludes 0), "
        "paired t-test p = 0.038; bn won 3 of 3 seeds.",
        "no_bn: no run diverged or stuck at chance.",
        "bn: no run diverged or stuck at chance.",
    ]
