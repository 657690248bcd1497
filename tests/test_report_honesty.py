"""Statistics that never overclaim (issue 16, part 4), on hand-written result folders: no interval
without spread, no "-0.00", no astronomical seed counts, wins that rank a run at chance with a
diverged one as a failure, summary lines on the table's Holm-adjusted p-values, and steps to a
target that is more than chance, counting the runs still training apart."""

import math

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from bnexp import report
from bnexp.report import plots, sections, tables
from test_report import LR, ExperimentWriter, completed, diverged, epochs, row
from test_report_stats import sweep


def paired_display(exp):
    return sections._paired_section(exp).tables[0].display


def pairs(tmp_path, ref_errors, arm_errors, name="pairs"):
    """One point, the arm's and the reference's test error per seed (None: diverged in epoch 2)."""
    writer = ExperimentWriter(tmp_path, name)
    for arm, errors in (("no_bn", ref_errors), ("bn", arm_errors)):
        for seed, error in enumerate(errors):
            if error is None:
                writer.run(arm, seed, history=epochs([0.5, None]), result=diverged(2))
            else:
                writer.run(arm, seed, history=epochs([0.5, 1 - error]), result=completed(error))
    return report.load_experiment(writer.plan())


def summary(exp):
    paired = tables.paired_table(exp.runs, exp.sweep_keys, exp.arms, exp.reference_arm)
    return sections._summary_section(exp, paired, tables.stability_table(exp.runs, exp.sweep_keys)).bullets


def test_the_same_difference_in_every_seed_has_no_interval_test_or_seed_count(tmp_path):
    # a 20-image test set: errors are multiples of 0.05, and bn is one image better in both seeds
    exp = pairs(tmp_path, [0.10, 0.20], [0.05, 0.15])
    raw = row(tables.paired_table(exp.runs, [], exp.arms, "no_bn"), arm="bn")
    assert raw.diff_mean == pytest.approx(-0.05)
    assert all(math.isnan(raw[c]) for c in ("ci_low", "ci_high", "p_value", "p_holm", "seeds_needed"))
    cells = paired_display(exp).iloc[0]
    assert cells["95% CI (pp)"] == "no interval: same difference in every seed"
    assert cells["p (paired t-test)"] == "–" and cells["p (Holm)"] == "–"
    assert cells["seeds for a CI without 0"] == "unknown (no spread)"
    assert cells["note"] == "same difference in every seed: no test"
    assert summary(exp)[0] == ("bn vs no_bn: mean test-error difference -5.00 pp, the same in every seed: "
                               "no interval or test; bn won 2 of 2 seeds.")
    assert plots._forest_numbers(next(tables.paired_table(exp.runs, [], exp.arms, "no_bn").itertuples())) == \
        "-5.00, no CI (same in every pair)"


def test_a_difference_that_rounds_to_zero_has_no_sign_and_a_tiny_mean_no_astronomical_seed_count(tmp_path):
    exp = pairs(tmp_path, [0.30, 0.40, 0.50], [0.31, 0.39, 0.49999])  # mean -0.0000033, sd about 0.01
    cells = paired_display(exp).iloc[0]
    assert cells["mean diff. (pp)"] == "0.00"
    assert cells["seeds for a CI without 0"] == "more than 1,000"
    raw = tables.paired_table(exp.runs, [], exp.arms, "no_bn")
    assert raw.seeds_needed.tolist() == [np.inf]
    low, high = cells["95% CI (pp)"].strip("[]").split(", ")
    assert low.startswith("-") and high.startswith("+")
    assert tables.seeds_needed(1e-5, 0.1) == np.inf  # returned at once, not counted up to 4e8


def test_a_run_at_chance_does_not_win_against_a_diverged_one(tmp_path):
    # MNIST: chance is 10% accuracy, the stability table's line 15%; an error of 0.9 is at chance.
    exp = pairs(tmp_path, [None, None, 0.9, 0.05], [0.9, 0.05, 0.9, 0.9])
    raw = row(tables.paired_table(exp.runs, [], exp.arms, "no_bn"), arm="bn")
    # seed 0: bn at chance, no_bn diverged: neither trained; seed 1: bn trained, no_bn diverged: bn wins;
    # seed 2: both at chance: no winner; seed 3: no_bn trained, bn at chance: no_bn wins.
    assert (raw.wins, raw.decided, raw.pairs) == (1, 2, 2)
    assert raw.note == ("1 pair(s) excluded: no_bn diverged (bn wins); 1 pair(s) excluded: one diverged, the other "
                        "is at chance (no winner); 1 pair(s) both at chance (no winner)")
    assert paired_display(exp).iloc[0]["wins"] == "1 of 2"


def test_the_summary_uses_the_holm_adjusted_p_values_of_the_table_and_says_so(tmp_path):
    exp = report.load_experiment(sweep(tmp_path))
    display = paired_display(exp)
    # at 0.001 the unadjusted interval excludes 0, but Holm over the three points leaves p = 0.105
    assert display["seeds for a CI without 0"].tolist()[0] == "already does"
    assert display["p (Holm)"].tolist()[0] == "0.105"
    assert summary(exp)[0] == (
        "bn − no_bn mean test-error difference per sweep point: lowest -3.00 pp (at learning_rate=0.001), "
        "highest 0.00 pp (at learning_rate=0.01); bn is lower at 2 of 3 sweep point(s); Holm-adjusted p < 0.05 "
        "(the table's p (Holm), over its 3 tests) at 0 of the 3 point(s) with an interval: 0 in bn's favour, "
        "0 in no_bn's.")


def test_without_a_sweep_several_arms_give_the_holm_p_beside_the_raw_one(tmp_path):
    writer = ExperimentWriter(tmp_path, "arms", arms=("no_bn", "bn", "gn"))
    for seed, (ref, bn, gn) in enumerate(((0.03, 0.01, 0.02), (0.04, 0.02, 0.05), (0.05, 0.04, 0.05))):
        for arm, error in (("no_bn", ref), ("bn", bn), ("gn", gn)):
            writer.run(arm, seed, history=epochs([0.9]), result=completed(error))
    bullets = summary(report.load_experiment(writer.plan()))
    assert bullets[0] == ("bn vs no_bn: mean test-error difference -1.67 pp, 95% CI [-3.10, -0.23] pp (unadjusted), "
                          "paired t-test p = 0.038, Holm-adjusted over the table's 2 tests p = 0.075; bn won 3 of 3 seeds.")


def test_one_arm_only_and_one_seed_say_what_is_missing(tmp_path):
    writer = ExperimentWriter(tmp_path, "alone")
    writer.run("no_bn", 0, history=epochs([0.9]), result=completed(0.1))
    exp = report.load_experiment(writer.plan())
    assert summary(exp)[0] == "bn vs no_bn: no seed has two completed runs to compare yet."
    (out,) = report.write_reports(tmp_path, "alone")
    assert (out / "index.html").is_file()


def test_every_run_diverged_gives_no_numbers_and_no_winner(tmp_path):
    exp = pairs(tmp_path, [None, None], [None, None])
    raw = row(tables.paired_table(exp.runs, [], exp.arms, "no_bn"), arm="bn")
    assert (raw.pairs, raw.wins, raw.decided, raw.note) == (0, 0, 0, "2 pair(s) excluded: both diverged")
    assert summary(exp)[0] == "bn vs no_bn: no seed has two completed runs to compare yet."
    section = sections._steps_section(exp, {"no_bn": "b", "bn": "r"}, None, None)
    assert section.explanation == ("No target could be set: no completed run of the reference arm no_bn logged "
                                   "val_accuracy. Give a target value (--target-value).")
    (out,) = report.write_reports(tmp_path, "pairs")
    assert (out / "index.html").is_file()


def test_nan_in_a_test_error_leaves_that_pair_out_instead_of_poisoning_the_mean(tmp_path):
    writer = ExperimentWriter(tmp_path, "nan")
    for seed, (ref, bn) in enumerate(((0.10, 0.05), (0.20, 0.12), (0.30, None))):
        writer.run("no_bn", seed, history=epochs([0.9]), result=completed(ref))
        # result.json has no NaN: a test error written as null (or as text) is read as NaN
        result = completed(bn) if bn is not None else {**completed(0.1), "test_error": None, "test_accuracy": "n/a"}
        writer.run("bn", seed, history=epochs([0.9]), result=result)
    exp = report.load_experiment(writer.plan())
    raw = row(tables.paired_table(exp.runs, [], exp.arms, "no_bn"), arm="bn")
    assert raw.pairs == 2 and raw.diff_mean == pytest.approx(-0.065)
    assert raw.note.endswith("1 seed(s) without two finished runs")


def test_a_default_target_at_chance_is_no_target(tmp_path):
    writer = ExperimentWriter(tmp_path, "chance")
    for seed in (0, 1):  # MNIST, and the reference never beats 12% validation accuracy
        writer.run("no_bn", seed, history=epochs([0.11, 0.12]), result=completed(0.88))
        writer.run("bn", seed, history=epochs([0.5, 0.9]), result=completed(0.1))
    exp = report.load_experiment(writer.plan())
    assert tables.resolve_target(exp.runs, exp.history, [], "no_bn", None, None) is None
    section = sections._steps_section(exp, {"no_bn": "b", "bn": "r"}, None, None)
    assert section.explanation == (
        "No target could be set: the default target, val_accuracy >= 0.108 (90% of no_bn's best mean final "
        "val_accuracy, 0.12), is at chance level for 10 classes (val_accuracy <= 0.15), which a network that "
        "learned nothing meets: no target; give one with --target-value. Give a target value (--target-value).")
    assert section.tables == []
    given = sections._steps_section(exp, {"no_bn": "b", "bn": "r"}, "val_accuracy", 0.8)
    assert row(given.tables[0].display, arm="bn")["reached"] == "2 of 2"
    # a loss default at or above ln(10) = 2.303, the loss of guessing uniformly, is no target either
    loss = tables.target_or_reason(exp.runs, exp.history.assign(loss=2.2), [], "no_bn", "loss", None)
    assert loss.startswith("the default target, loss <= 2.42 (1.1x no_bn's best mean final loss, 2.2), is at chance")


def test_runs_still_training_are_not_reached_yet_and_the_chart_counts_the_seeds(tmp_path):
    writer = ExperimentWriter(tmp_path, "live")
    for seed in (0, 1, 2):
        writer.run("no_bn", seed, history=epochs([0.5, 0.8, 0.95]), result=completed(0.05))
    writer.run("bn", 0, history=epochs([0.9, 0.95, 0.97]), result=completed(0.03))
    writer.run("bn", 1, history=epochs([0.5, 0.6]))  # interrupted after two epochs, below the target
    writer.run("bn", 2, history=epochs([0.5, 0.6, 0.6]), result=completed(0.4))  # finished, never reached it
    exp = report.load_experiment(writer.plan())
    section = sections._steps_section(exp, {"no_bn": "b", "bn": "r"}, "val_accuracy", 0.85)
    raw = row(section.tables[0].raw, arm="bn")
    assert (raw.runs, raw.reached, raw.not_yet) == (3, 1, 1)
    assert raw.note == ("1 of 3 runs never reached it; 1 of 3 runs not reached yet (unfinished: still training, "
                        "interrupted or failed)")
    figure, _ = plots.plot_steps(section.tables[0].raw, [], exp.arms, {"no_bn": "b", "bn": "r"}, "x")
    FigureCanvasAgg(figure).draw()
    (ax,) = figure.axes
    assert [text.get_text() for text in ax.texts] == ["3/3", "1/3"]


def test_a_point_whose_runs_are_all_unfinished_reads_not_reached_yet(tmp_path):
    writer = ExperimentWriter(tmp_path, "early")
    writer.run("no_bn", 0, history=epochs([0.5, 0.9]), result=completed(0.1))
    writer.run("bn", 0, history=epochs([0.5]))
    exp = report.load_experiment(writer.plan())
    section = sections._steps_section(exp, {"no_bn": "b", "bn": "r"}, "val_accuracy", 0.85)
    assert row(section.tables[0].display, arm="bn")["steps (mean)"] == "not reached yet"
    figure, _ = plots.plot_steps(section.tables[0].raw, [], exp.arms, {"no_bn": "b", "bn": "r"}, "x")
    assert [text.get_text() for text in figure.axes[0].texts] == ["1/1", "not reached yet"]


def test_a_paired_speedup_with_the_same_ratio_in_every_seed_has_no_interval():
    out = tables.paired_speedup([200.0, 400.0], [100.0, 200.0])
    assert out["speedup_paired"] == pytest.approx(2.0)
    assert out["speedup_pairs"] == 2 and math.isnan(out["speedup_ci_low"]) and math.isnan(out["speedup_ci_high"])


def test_two_seeds_give_an_interval_with_one_degree_of_freedom(tmp_path):
    exp = pairs(tmp_path, [0.10, 0.20], [0.05, 0.10])  # differences -0.05 and -0.10
    raw = row(tables.paired_table(exp.runs, [], exp.arms, "no_bn"), arm="bn")
    half = 12.706204736174698 * 0.025 * math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) * sd / sqrt(2)
    assert (raw.ci_low, raw.ci_high) == pytest.approx((-0.075 - half, -0.075 + half))
    assert paired_display(exp).iloc[0]["95% CI (pp)"] == f"[{(-0.075 - half) * 100:+.2f}, {(-0.075 + half) * 100:+.2f}]"
