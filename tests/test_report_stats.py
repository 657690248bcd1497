"""The paired table's reviewer statistics on hand-written result folders with known numbers:
p-values adjusted over the sweep, seeds needed for an interval without 0, and the forest plot."""

import html
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bnexp.report import load as experiment

from bnexp.report import plots

from bnexp import report
from bnexp.report import sections

from bnexp.report import tables
from test_report import LR, ExperimentWriter, completed, epochs, row

# The reference's test error is 0.10 in every seed; the arm's differences per seed at each learning rate.
DIFFERENCES = {
    0.001: [-0.02, -0.03, -0.04],  # mean -0.03, sd 0.01: t^2 = 27, 2 degrees of freedom
    0.01: [0.01, -0.01, 0.0],  # mean 0: t = 0, p = 1
    0.1: [-0.01, -0.03, 0.01],  # mean -0.01, sd 0.02: t^2 = 0.75
}
# With 2 degrees of freedom the two-sided p-value of t is 1 - |t| / sqrt(t^2 + 2).
P_FAST = 1 - math.sqrt(27 / 29)
P_SLOW = 1 - math.sqrt(0.75 / 2.75)


def sweep(root, arms=("no_bn", "bn")):
    """Three learning rates x 3 seeds; every arm but the reference has DIFFERENCES."""
    writer = ExperimentWriter(root, "stats", sweep_keys=[LR], arms=arms, reference="no_bn")
    for lr, differences in DIFFERENCES.items():
        for seed, difference in enumerate(differences):
            for arm in arms:
                error = 0.10 if arm == "no_bn" else 0.10 + difference
                writer.run(arm, seed, {LR: lr}, epochs([0.5, 1 - error]), completed(error))
    return writer.plan()


def test_holm_and_bh_adjust_only_the_p_values_that_exist():
    raw = pd.Series([0.01, 0.04, np.nan, 0.03])
    adjusted = tables.adjust_p_values(raw)
    # Holm over 3 tests: sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04, then the running maximum.
    assert adjusted.p_holm.tolist()[:2] + adjusted.p_holm.tolist()[3:] == pytest.approx([0.03, 0.06, 0.06])
    # BH over 3 tests: p * 3 / rank -> 0.03, 0.045, 0.04, then the running minimum from the largest.
    assert adjusted.p_bh.tolist()[:2] + adjusted.p_bh.tolist()[3:] == pytest.approx([0.03, 0.04, 0.04])
    assert math.isnan(adjusted.p_holm[2]) and math.isnan(adjusted.p_bh[2])


def test_seeds_needed_is_the_smallest_n_whose_interval_excludes_zero():
    # mean 0.01, sd 0.02: t(0.975, 16) = 2.1199 gives 2.1199 * 0.02 / sqrt(17) = 0.01028 >= 0.01;
    # t(0.975, 17) = 2.1098 gives 2.1098 * 0.02 / sqrt(18) = 0.00995 < 0.01.
    assert tables.seeds_needed(0.01, 0.02) == 18
    assert tables.seeds_needed(-0.01, 0.02) == 18
    assert tables.seeds_needed(0.03, 0.01) == 3  # 12.706 * 0.01 / sqrt(2) = 0.0898; 4.303 * 0.01 / sqrt(3) = 0.0248
    assert tables.seeds_needed(0.01, 0.0) == 2
    assert math.isnan(tables.seeds_needed(0.0, 0.02))
    assert math.isnan(tables.seeds_needed(0.01, np.nan))


def test_paired_table_adjusts_over_the_sweep_and_says_how_many_seeds(tmp_path):
    exp = experiment.load_experiment(sweep(tmp_path))
    paired = tables.paired_table(exp.runs, exp.sweep_keys, exp.arms, "no_bn")
    fast, flat, slow = (row(paired, **{LR: lr}) for lr in DIFFERENCES)
    assert (fast.p_value, flat.p_value, slow.p_value) == pytest.approx((P_FAST, 1.0, P_SLOW), rel=1e-9)
    # Holm, 3 tests sorted fast < slow < flat: 3 p, max(3 p, 2 p), max(..., 1 p).
    assert (fast.p_holm, slow.p_holm, flat.p_holm) == pytest.approx((3 * P_FAST, 2 * P_SLOW, 1.0), rel=1e-9)
    # BH: 3 p / rank, the running minimum from the largest: flat 1, slow 1.5 p, fast 3 p.
    assert (fast.p_bh, slow.p_bh, flat.p_bh) == pytest.approx((3 * P_FAST, 1.5 * P_SLOW, 1.0), rel=1e-9)
    assert (fast.seeds_needed, slow.seeds_needed) == (3, 18) and math.isnan(flat.seeds_needed)

    section = sections._paired_section(exp)
    display = section.tables[0].display
    assert display["seeds for a CI without 0"].tolist() == ["already does", "never (mean 0)", "18 seeds"]
    assert display["p (Holm)"].tolist() == [f"{3 * P_FAST:.3f}", "1.000", f"{2 * P_SLOW:.3f}"]
    assert display["p (BH)"].tolist() == [f"{3 * P_FAST:.3f}", "1.000", f"{1.5 * P_SLOW:.3f}"]

    out = report.write_report(exp.path)
    csv = pd.read_csv(out / "tables" / "paired_difference.csv")
    assert list(csv.columns[csv.columns.get_loc("p_value"):][:3]) == ["p_value", "p_holm", "p_bh"]
    assert csv.seeds_needed.tolist()[::2] == [3, 18]
    sentence = ("p (Holm) and p (BH) are the 3 paired t-test p-value(s) of this table adjusted for testing every "
                "sweep point and arm at once: Holm's method bounds")
    assert html.unescape((out / "index.html").read_text()).count(sentence) == 1
    assert (out / "report.md").read_text().count(sentence) == 1


def test_one_seed_gives_no_adjustment_sentence_and_no_forest_plot(tmp_path):
    writer = ExperimentWriter(tmp_path, "single")
    writer.run("no_bn", 0, history=epochs([0.9]), result=completed(0.05))
    writer.run("bn", 0, history=epochs([0.9]), result=completed(0.04))
    section = sections._paired_section(experiment.load_experiment(writer.plan()))
    assert "Holm" not in section.explanation and section.figures == []
    assert section.tables[0].display["seeds for a CI without 0"].tolist() == ["–"]


def test_forest_plot_has_a_row_per_point_and_arm_at_the_table_values(tmp_path):
    exp = experiment.load_experiment(sweep(tmp_path, arms=("no_bn", "bn", "bn_late")))
    paired = tables.paired_table(exp.runs, exp.sweep_keys, exp.arms, "no_bn")
    figure, left_out = plots.plot_forest(paired, exp.sweep_keys, plots.arm_colours(exp.arms, "no_bn"), "no_bn")
    (ax,) = figure.axes
    labels = [label.get_text() for label in ax.get_yticklabels()]
    assert left_out == 0
    assert labels == [f"learning_rate={lr:g}, {arm}" for lr in DIFFERENCES for arm in ("bn", "bn_late")]
    zero = [line for line in ax.lines if list(line.get_xdata()) == [0, 0]]
    assert len(zero) == 1
    half = sps.t.ppf(0.975, 2) * 0.01 / math.sqrt(3) * 100
    intervals = [list(line.get_xdata()) for line in ax.lines if len(line.get_xdata()) == 2 and line not in zero]
    assert len(intervals) == 6  # the mean-0 point has an interval too
    assert intervals[0] == pytest.approx([-3 - half, -3 + half], rel=1e-9)

    out = report.write_report(exp.path)
    assert (out / "plots" / "paired_difference_forest.png").is_file()
    assert "](plots/paired_difference_forest.png)" in (out / "report.md").read_text()


def test_float32_round_off_of_the_same_difference_is_no_spread():
    """Keras' float32 accuracy gives 1 - float32(27/60) and 1 - float32(29/60): the same 2/60 difference in
    every seed may differ in the 8th digit; that is no spread, not a zero-width interval (the attack on issue 16)."""
    f = lambda k, n: 1 - float(np.float32(k / n))  # noqa: E731
    stats = tables._paired_stats(np.array([f(29, 60), f(35, 60)]), np.array([f(27, 60), f(33, 60)]))
    assert stats["diff_mean"] == pytest.approx(-2 / 60, abs=1e-6)
    assert np.isnan(stats["ci_low"]) and np.isnan(stats["p_value"])
