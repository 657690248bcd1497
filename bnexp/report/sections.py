"""The report's sections: each one a heading, its text, tables and figures, built from an
experiment's loaded runs (bnexp.report.load); bnexp.report.write puts them on disk.

It never imports TensorFlow or Keras, so it stays fast and works while a sweep is running:
runs still training, interrupted, failed or unreadable are listed, not dropped.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from bnexp import __version__
from bnexp.config.keypaths import short_key
from bnexp.metrics import LOSS, VAL_ACCURACY, VAL_LOSS
from bnexp.report import plots, tables
from bnexp.report.load import Experiment
from bnexp.report.values import CHANCE_MARGIN, is_number, sort_key
from bnexp.report.page import Plot, Section, Table, slug
from bnexp.store import FINAL_STATUSES
from bnexp.report.cells import count, fmt, key_columns, p_value_text, pct, point_label, pp, value_label

# Curves get one figure per sweep point; past this many the page would be a wall of plots.
MAX_CURVE_POINTS = 24
# Activation bands: at most this many positions per figure (the first, the last and evenly between).
MAX_ACTIVATION_POSITIONS = 4


def _test_error_section(exp: Experiment, colours: dict) -> Section:
    keys = exp.sweep_keys
    raw = tables.test_error_table(exp.runs, keys)
    epochs = [
        "–" if math.isnan(lo) else f"{lo:.0f}" if lo == hi else f"{lo:.0f}–{hi:.0f}"
        for lo, hi in zip(raw.epochs_min, raw.epochs_max)
    ]
    display = pd.DataFrame({
        **key_columns(raw, keys), "arm": raw.arm, "runs": raw.runs.map(count),
        "completed": raw.completed.map(count), "diverged": raw.diverged.map(count),
        "failed": raw.failed.map(count), "incomplete": raw.incomplete.map(count), "n": raw.n.map(count),
        "test error (%)": raw.test_error_mean.map(pct), "sd (pp)": raw.test_error_sd.map(pct),
        "final train acc. (%)": raw.train_accuracy_mean.map(pct),
        "final val. acc. (%)": raw.val_accuracy_mean.map(pct), "epochs run": epochs,
    })
    section = Section(
        "test-error", "Test error",
        "Test error per sweep point and arm: mean and sample standard deviation over the n completed "
        "runs (diverged runs have no test error and are counted apart); final accuracies are from the "
        "last epoch of the completed runs.",
        tables=[Table("test_error", "Test error", raw, display)],
    )
    if not keys:
        section.figures.append(Plot.of(plots.plot_error_bars(raw, exp.runs, exp.arms, colours), "test_error",
                                       "Test error per arm: bar at the mean with ± sd, one dot per completed seed"))
    classes = exp.runs.num_classes.dropna().unique()
    chance_error = 1 - 1 / classes[0] if len(classes) == 1 else None
    # A numeric key makes an x axis; categorical keys split panels (unless all are categorical).
    numeric = [k for k in keys if all(is_number(v) for v in raw[k])]
    for key in numeric or keys[:1]:
        others = [k for k in keys if k != key]
        figure, left_out = plots.plot_error_vs(raw, key, others, exp.arms, colours, chance_error)
        caption = (f"Test error vs {short_key(key)}, mean ± sd over the completed seeds; an X at "
                   "the top marks a point where runs diverged (diverged/finished runs)")
        if chance_error is not None:
            caption += "; dotted line, where errors come near it: chance"
        section.figures.append(Plot.of(figure, f"test_error_vs_{slug(short_key(key))}", caption))
        if left_out:
            section.notes.append(f"Test error vs {short_key(key)}: {left_out} panel(s) beyond the "
                                 f"first {plots.MAX_PANELS} are left out of the figure; the table has them all.")
    return section


def _paired_section(exp: Experiment) -> Section:
    keys, ref = exp.sweep_keys, exp.reference_arm
    raw = tables.paired_table(exp.runs, keys, exp.arms, ref, exp.seeds)
    section = Section(
        "paired", f"Paired difference against {ref}",
        f"Each arm's test error minus {ref}'s, paired by seed at the same sweep point (negative: the arm "
        f"has the lower error). Mean over the pairs where both runs completed; 95% confidence interval "
        f"of the mean difference from the t distribution with pairs − 1 degrees of freedom; p-value of "
        f"a two-sided paired t-test (scipy.stats.ttest_rel). Wins count the seeds where the arm had the "
        f"lower error, in this order: a run that trained (completed above chance) beats one at chance or "
        f"diverged; a run at chance and a diverged one both failed to train, so neither wins (the note counts "
        f"such pairs).",
    )
    if raw.empty:
        section.notes.append(f"No arm to compare with {ref}.")
        return section

    def interval(row) -> str:
        if row.pairs == 0:
            return "–"
        if row.pairs == 1:
            return "no interval (1 seed)"
        if math.isnan(row.ci_low):
            return "no interval: same difference in every seed"
        return f"[{pp(row.ci_low)}, {pp(row.ci_high)}]"

    def needed(row) -> str:
        if row.pairs < 2:
            return "–"
        if math.isnan(row.ci_low):
            return "unknown (no spread)"
        if row.ci_low > 0 or row.ci_high < 0:
            return "already does"
        if abs(row.diff_mean) <= tables.SAME_DIFFERENCE:
            return "never (mean 0)"
        if math.isinf(row.seeds_needed):
            return f"more than {tables.MAX_SEEDS_NEEDED:,}"
        return f"{row.seeds_needed:,.0f} seeds"

    tested = int(raw.p_value.notna().sum())
    if tested:
        section.explanation += (
            f" p (Holm) and p (BH) are the {tested} paired t-test p-value(s) of this table adjusted for testing "
            f"every sweep point and arm at once: Holm's method bounds the chance of any false positive among "
            f"them, Benjamini-Hochberg's the expected share of false positives among those called significant.")
    section.explanation += (
        " Seeds for a CI without 0: how many seed pairs the 95% interval would need to exclude 0 if the "
        f"differences kept their observed mean and sd (past {tables.MAX_SEEDS_NEEDED:,}: more than that). When "
        "every pair gives the same difference (test errors are multiples of 1/test size) there is no spread, "
        "so no interval, test or seed count: the cell says so.")
    display = pd.DataFrame({
        **key_columns(raw, keys), "comparison": raw.arm + " − " + raw.reference,
        "pairs": raw.pairs.map(count), "mean diff. (pp)": raw.diff_mean.map(pp),
        "95% CI (pp)": [interval(row) for row in raw.itertuples()],
        "p (paired t-test)": raw.p_value.map(p_value_text),
        "p (Holm)": raw.p_holm.map(p_value_text), "p (BH)": raw.p_bh.map(p_value_text),
        "seeds for a CI without 0": [needed(row) for row in raw.itertuples()],
        "wins": [f"{w} of {d}" for w, d in zip(raw.wins, raw.decided)], "note": raw.note,
    })
    section.tables.append(Table("paired_difference", "Paired difference", raw, display))
    if (raw.pairs > 1).any():  # dots alone (one seed per point) say no more than the table
        colours = plots.arm_colours(exp.arms, ref)
        figure, left_out = plots.plot_forest(raw, keys, colours, ref)
        section.figures.append(Plot.of(
            figure, "paired_difference_forest",
            f"Forest plot: each arm's mean test-error difference from {ref} (dot) and its 95% confidence "
            f"interval (line) at every sweep point, in percentage points; an interval that crosses the "
            f"black line at 0 does not tell the arms apart."))
        if left_out:
            section.notes.append(f"The forest plot shows the first {plots.MAX_FOREST_ROWS} rows of the "
                                 "table; the table has them all.")
    if len(keys) == 2:
        for arm in exp.arms:
            if arm != ref and (raw.arm == arm).any():
                figure = plots.plot_advantage(raw, keys[0], keys[1], arm, ref)
                section.figures.append(Plot.of(
                    figure, f"advantage_{slug(arm)}",
                    f"Mean paired test-error difference {arm} − {ref} (percentage points) over "
                    f"{short_key(keys[0])} and {short_key(keys[1])}; blue: {arm} better"))
    elif len(keys) > 2:
        section.notes.append("The advantage heatmap is drawn for exactly two swept keys; this sweep has "
                             f"{len(keys)}.")
    return section


def _curves_section(exp: Experiment, colours: dict) -> Section:
    section = Section(
        "curves", "Training curves",
        "Accuracy and loss per epoch for each sweep point: the line is the mean over seeds (a marker per "
        "epoch when there are few), the band the range over seeds (an error bar where there is one epoch); "
        "training solid with filled markers, validation dashed with open ones. Runs still training and diverged "
        "runs contribute the epochs they logged.",
    )
    if exp.history.empty:
        section.notes.append("No run has logged an epoch yet.")
        return section
    point_ids = sorted(exp.history.point_id.unique())
    if len(point_ids) > MAX_CURVE_POINTS:
        section.notes.append(f"Curves are shown for the first {MAX_CURVE_POINTS} of {len(point_ids)} sweep "
                             "points; every run's history.jsonl holds the rest.")
    for number, point_id in enumerate(point_ids[:MAX_CURVE_POINTS], 1):
        runs = exp.runs[exp.runs.point_id == point_id]
        label = point_label({k: runs[k].iloc[0] for k in exp.sweep_keys}) or exp.name
        figure = plots.plot_curves(exp.history[exp.history.point_id == point_id], exp.arms, colours, label)
        section.figures.append(Plot.of(figure, f"curves_{number:02d}_{slug(label)}", f"Curves: {label}"))
    return section


def _activations_section(exp: Experiment, colours: dict) -> Section | None:
    """None when no run recorded activation statistics (train.activation_stats_every is 0, the default)."""
    if exp.activations.empty:
        return None
    section = Section(
        "activations", "Activation inputs over training",
        "The distribution of the input to each activation that follows a normalisation position (for a "
        "model.builder network: each tensor norm(x) returned), on a fixed probe of validation rows (the same rows "
        "in every arm of a seed), every train.activation_stats_every optimizer steps from step 0, as in Ioffe & "
        "Szegedy 2015, Figure 1(b, c): the band spans the 15th to 85th percentile of every value at the position "
        "(rows and units pooled), the line is the median, each the mean over seeds. The arm without normalisation "
        "shows the same position without it. BN normalises the probe with its moving statistics (inference mode), "
        "as at evaluation; activations.jsonl of each run holds the numbers, the mean and sd too.",
    )
    frame = exp.activations.merge(exp.runs[["run_id", "arm", "point_id", *exp.sweep_keys]], on="run_id")
    point_ids = sorted(frame.point_id.unique())
    if len(point_ids) > MAX_CURVE_POINTS:
        section.notes.append(f"Bands are shown for the first {MAX_CURVE_POINTS} of {len(point_ids)} sweep points; "
                             "every run's activations.jsonl holds the rest.")
    for number, point_id in enumerate(point_ids[:MAX_CURVE_POINTS], 1):
        rows = frame[frame.point_id == point_id]
        positions = list(dict.fromkeys(rows.position))
        shown = positions
        if len(positions) > MAX_ACTIVATION_POSITIONS:
            picks = np.linspace(0, len(positions) - 1, MAX_ACTIVATION_POSITIONS).round().astype(int)
            shown = [positions[i] for i in dict.fromkeys(picks)]
        label = point_label({k: rows[k].iloc[0] for k in exp.sweep_keys}) or exp.name
        figure = plots.plot_activation_bands(rows, shown, exp.arms, colours, label)
        caption = f"Activation inputs: {label}"
        if len(shown) < len(positions):
            caption += f" ({len(shown)} of {len(positions)} positions: {', '.join(shown)})"
        section.figures.append(Plot.of(figure, f"activations_{number:02d}_{slug(label)}", caption))
    return section


def _steps_section(exp: Experiment, colours: dict, metric: str | None, value: float | None) -> Section:
    keys, ref = exp.sweep_keys, exp.reference_arm
    target = tables.target_or_reason(exp.runs, exp.history, keys, ref, metric, value)
    section = Section("steps", "Steps to target", "")
    if not isinstance(target, tables.Target):
        section.explanation = f"No target could be set: {target}. Give a target value (--target-value)."
        return section
    finer = " The training loss is also checked in the per-step log (train.log_every_steps)." \
        if target.metric == LOSS else ""
    if target.metric in (VAL_LOSS, VAL_ACCURACY) and not exp.step_evals.empty:
        finer = (f" {target.metric} is also checked at the evaluations every train.eval_every_steps steps, "
                 f"for the {exp.step_evals.run_id.nunique()} run(s) that made them.")
    section.explanation = (
        f"Target: {target.describe()} ({target.how}). First optimizer step, and the epoch it falls in, "
        f"at which each run reaches it, checked at the end of every epoch.{finer} Speed-up: {ref}'s mean "
        f"steps divided by the arm's, over the runs that reached it (5.00× = five times fewer steps). Paired "
        f"speed-up: {ref}'s steps over the arm's for each seed where both reached it, their geometric mean "
        f"and its 95% confidence interval (t interval of the mean log ratio; none when every pair gives the "
        f"same ratio). A run without a final result that has not reached the target is \"not reached yet\", "
        f"not \"never reached\". The chart writes above each bar how many runs reached the target."
    )
    if target.metric not in exp.history or exp.history[target.metric].isna().all():
        section.notes.append(f"No run logged {target.metric}: every run shows as not reached.")
    per_run = tables.steps_per_run(exp.runs, exp.history, exp.step_losses, target, exp.step_evals)
    raw = tables.steps_table(exp.runs, per_run, keys, exp.arms, ref)
    if raw.empty:
        section.notes.append("No run has logged an epoch yet.")
        return section
    ranges = ["–" if reached == 0 else f"{low:,.0f}–{high:,.0f}"
              for reached, low, high in zip(raw.reached, raw.step_min, raw.step_max)]
    display = pd.DataFrame({
        **key_columns(raw, keys), "arm": raw.arm,
        "reached": [f"{r} of {n}" for r, n in zip(raw.reached, raw.runs)],
        "steps (mean)": [s if r else "not reached yet" if n == y else "not reached"
                         for s, r, n, y in zip(raw.step_mean.map(count), raw.reached, raw.runs, raw.not_yet)],
        "steps (range)": ranges, "epoch (mean)": raw.epoch_mean.map(lambda e: fmt(e, ".1f")),
        f"speed-up vs {ref}": [
            "" if arm == ref else fmt(s, ".2f", empty="–") + ("×" if not math.isnan(s) else "")
            for arm, s in zip(raw.arm, raw.speedup)
        ],
        "paired speed-up [95% CI]": [
            "" if arm == ref or not n else f"{value:.2f}×" + (f" [{low:.2f}, {high:.2f}]" if not math.isnan(low) else "")
            + f" ({n} pair{'s' if n > 1 else ''}"
            + (", the same ratio in each: no interval)" if n > 1 and math.isnan(low) else ")")
            for arm, n, value, low, high in zip(raw.arm, raw.speedup_pairs, raw.speedup_paired,
                                                raw.speedup_ci_low, raw.speedup_ci_high)
        ],
        "note": raw.note,
    })
    per_run_raw = tables.steps_runs_table(exp.runs, per_run, keys)
    section.tables.append(Table("steps_to_target", "Steps to target", raw, display))
    section.tables.append(Table("steps_to_target_runs", "Steps to target per run", per_run_raw, pd.DataFrame()))
    figure, left_out = plots.plot_steps(raw, keys, exp.arms, colours, target.describe())
    section.figures.append(Plot.of(figure, "steps_to_target", f"Optimizer steps until {target.describe()}: mean over the runs that reached it, the range over them as the error bar, and above each bar how many of the arm's runs reached it (reached/runs)"))
    if left_out:
        section.notes.append(f"The chart shows the first {plots.MAX_BAR_GROUPS} sweep points; the table has all.")
    return section


def _eval_statistics_section(exp: Experiment) -> Section | None:
    """None when no run evaluated BN's statistics (no BN-type arm, or runs from an older bnexp)."""
    keys = exp.sweep_keys
    raw = tables.eval_statistics_table(exp.runs, keys)
    if raw.empty:
        return None
    section = Section(
        "eval-statistics", "Test error by BN's statistics",
        "Each completed run with BN-type layers was also evaluated on the test set with (a) the moving averages "
        "Keras keeps and uses at inference, (b) precise population statistics recomputed from training batches, "
        "and (c) each test batch's own statistics, as in training (batches of train.batch_size; ghost batches "
        "within them). Same weights in all three: the gaps are the statistics' share of the test error, paired "
        "within each run (mean over seeds, 95% interval from the t distribution; a gap that is the same in every "
        "seed has no spread, so no interval). A flag marks a cell where the moving averages are worse than "
        "precise statistics by more than the seeds' spread (the sd over seeds of (b)) and the gap's interval "
        "lies above 0: there the test error is the moving averages, not the weights.",
    )

    def gap(mean, low, high, runs) -> str:
        if runs < 2:
            return f"{pp(mean)} (1 seed)"
        if np.isnan(low):
            return f"{pp(mean)} (no interval: same gap in every seed)"
        return f"{pp(mean)} [{pp(low)}, {pp(high)}]"

    display = pd.DataFrame({
        **key_columns(raw, keys), "arm": raw.arm, "runs": raw.n.map(count),
        "(a) moving (%)": raw.moving_mean.map(pct), "(b) precise (%)": raw.precise_mean.map(pct),
        "(c) batch (%)": raw.batch_mean.map(pct),
        "a − b (pp) [95% CI]": [gap(*v) for v in zip(raw.moving_gap_mean, raw.moving_gap_ci_low,
                                                    raw.moving_gap_ci_high, raw.n)],
        "c − b (pp) [95% CI]": [gap(*v) for v in zip(raw.batch_gap_mean, raw.batch_gap_ci_low,
                                                    raw.batch_gap_ci_high, raw.n)],
        "seeds' sd of b (pp)": raw.precise_sd.map(lambda v: fmt(v, ".2f", 100)),
        "flag": raw.flagged.map(lambda f: "this test error is the moving averages, not the weights" if f else ""),
    })
    section.tables.append(Table("eval_statistics", "Test error by BN's statistics", raw, display))
    if raw.precise_sd.isna().any():
        section.notes.append("Cells with one seed have no spread, so they are never flagged.")
    renorm = sorted(set(exp.runs.arm[exp.runs.norm.astype(str).str.startswith("batch_renorm")]) & set(raw.arm))
    if renorm:
        section.notes.append(
            f"{', '.join(renorm)}: batch renormalisation trains with its own renorm averages (Keras' r and d "
            "corrections), not with batch statistics, so (b) is not what it trained with and may test worse "
            "than (a); for these arms (a) − b says nothing about stale moving averages.")
    return section


def _stability_section(exp: Experiment) -> Section:
    keys = exp.sweep_keys
    raw = tables.stability_table(exp.runs, keys)
    section = Section(
        "stability", "Stability",
        "Diverged runs (training loss NaN or infinite; the epoch where it happened and, in brackets, the last "
        "optimizer step seen with a finite loss and the first seen without) and completed runs "
        "stuck at chance: final validation accuracy (test accuracy without a validation split) at most "
        f"c + min({CHANCE_MARGIN * 100:.0f} points, half of c), where c is 1/K for K classes or, when larger, the "
        "share of the most common class in those labels (always answering that class scores it; runs from a bnexp "
        "that did not record the share are taken to have balanced classes). A run trained if it completed and "
        "is not stuck.",
    )
    display = pd.DataFrame({
        **key_columns(raw, keys), "arm": raw.arm, "finished": raw.finished.map(count),
        "diverged": raw.diverged.map(count), "diverged in epoch": raw.diverged_epochs.replace("", "–"),
        "stuck at chance": raw.stuck_at_chance.map(count), "trained": raw.trained.map(count),
    })
    section.tables.append(Table("stability", "Stability", raw, display))
    unknown = int(raw.chance_unknown.sum()) if not raw.empty else 0
    if unknown:
        section.notes.append(f"{unknown} completed run(s) have no known number of classes (data.num_classes "
                             "or a known dataset name) or a damaged history.jsonl (no final validation accuracy); "
                             "they were not checked for chance accuracy.")
    lr = tables.largest_lr_table(exp.runs, keys)
    if not lr.empty:
        others = [k for k in keys if k != tables.LEARNING_RATE_KEY]
        lr_display = pd.DataFrame({
            **key_columns(lr, others), "arm": lr.arm, "learning rates tried": lr.learning_rates,
            "largest that trains": lr.largest_lr_that_trains.map(lambda v: fmt(v, "g", empty="none")),
            "smallest that fails": lr.smallest_lr_that_fails.map(lambda v: fmt(v, "g", empty="none")),
            "trains again at": lr.trains_again_at.replace("", "–"),
        })
        section.tables.append(Table("largest_learning_rate", "Largest learning rate that trains "
                                    "(every finished seed completed above chance at it and every smaller rate)",
                                    lr, lr_display))
        if (lr.trains_again_at != "").any():
            section.notes.append("Where a larger rate trains again after a smaller one failed, the rates that "
                                 "train are not one range: the largest that trains is the last before the first "
                                 "failure, and the ones after it are listed, not trusted.")
    return section


def _parameters_section(exp: Experiment) -> Section:
    raw = tables.parameter_table(exp.runs, exp.sweep_keys, exp.reference_arm)
    section = Section("parameters", "Parameter counts",
                      "Trainable and non-trainable parameters per arm as Keras counted them (result.json); "
                      "BN adds gamma and beta (trainable) and the moving mean and variance (non-trainable).")
    if raw.empty:
        section.notes.append("No finished run has recorded its parameter counts yet.")
        return section
    keys = [k for k in exp.sweep_keys if k in raw]
    display = pd.DataFrame({
        **key_columns(raw, keys), "arm": raw.arm, "runs": raw.runs.map(count),
        "trainable": raw.trainable.map(count),
        "non-trainable": raw.non_trainable.map(count), "total": raw.total.map(count),
        f"trainable vs {exp.reference_arm}": raw.trainable_vs_reference.map(lambda v: fmt(v, "+,.0f")),
    })
    section.tables.append(Table("parameters", "Parameter counts", raw, display))
    return section


def _missing_section(exp: Experiment) -> Section:
    raw = tables.missing_table(exp.runs, exp.missing, exp.sweep_keys)
    section = Section("missing", "Missing and incomplete runs",
                      "Runs of the plan that are not in the tables above: failed, still running or "
                      "interrupted, pending (not started), or damaged (a run file that cannot be read). `bnexp run` "
                      "retries the failed and resumes the interrupted.")
    if raw.empty:
        section.explanation = f"All {exp.planned} planned runs finished; none is missing."
    display = pd.DataFrame({
        "run": raw.run_id, "arm": raw.arm.fillna(""), "seed": raw.seed.map(lambda v: fmt(v, ".0f", empty="")),
        "point": raw.point, "status": raw.status, "detail": raw.detail,
    })
    section.tables.append(Table("missing", "Missing and incomplete runs", raw, display))
    section.notes.extend(exp.warnings)
    return section


def _runs_section(exp: Experiment) -> Section:
    runs, keys = exp.runs, exp.sweep_keys
    raw = tables.runs_table(runs)
    display = pd.DataFrame({
        "run": runs.run_id, "arm": runs.arm, "seed": runs.seed.astype(str), **key_columns(runs, keys),
        "status": runs.status, "epochs": runs.epochs_run.map(count),
        "test error (%)": runs.test_error.map(pct), "test loss": runs.test_loss.map(lambda v: fmt(v, ".4f")),
        "final train acc. (%)": runs.final_accuracy.map(pct),
        "final val. acc. (%)": runs.final_val_accuracy.map(pct),
        "wall time (s)": runs.wall_seconds.map(lambda v: fmt(v, ".1f")),
    })
    return Section("runs", "All runs",
                   "Every run in the tables, one row each; its folder under the experiment holds the "
                   "spec.json, history.jsonl and result.json these numbers come from.",
                   tables=[Table("runs", "All runs", raw, display)], collapsed=True)


def _summary_section(exp: Experiment, paired: pd.DataFrame, stability: pd.DataFrame) -> Section:
    """The answers at a glance: which arm won where, how sure, and which runs broke."""
    keys, ref = exp.sweep_keys, exp.reference_arm
    section = Section("summary", "Summary", "The tables below hold every number behind these lines.")

    def where(rows: pd.DataFrame) -> str:
        if not keys:
            return ""
        points = list(dict.fromkeys(point_label({k: r[k] for k in keys}) for _, r in rows.iterrows()))
        more = f" and {len(points) - 4} more" if len(points) > 4 else ""
        return " (at " + "; ".join(points[:4]) + more + ")"

    tests = int(paired.p_value.notna().sum()) if not paired.empty else 0
    for arm in exp.arms:
        if arm == ref:
            continue
        rows = paired[(paired.arm == arm) & (paired.pairs > 0)] if not paired.empty else paired
        if rows.empty:
            section.bullets.append(f"{arm} vs {ref}: no seed has two completed runs to compare yet.")
            continue
        if keys:
            # The extremes over sweep points, each named by its point, so they cannot pass for an interval.
            low, high = rows.loc[[rows.diff_mean.idxmin()]], rows.loc[[rows.diff_mean.idxmax()]]
            spread = (f"{pp(low.diff_mean.iloc[0])} pp{where(low)}" if len(rows) == 1 else
                      f"lowest {pp(low.diff_mean.iloc[0])} pp{where(low)}, highest "
                      f"{pp(high.diff_mean.iloc[0])} pp{where(high)}")
            text = (f"{arm} − {ref} mean test-error difference per sweep point: {spread}; {arm} is lower at "
                    f"{int((rows.diff_mean < 0).sum())} of {len(rows)} sweep point(s)")
        else:
            text = f"{arm} vs {ref}: mean test-error difference {pp(rows.diff_mean.iloc[0])} pp"
        text += _significance(rows, arm, ref, bool(keys), tests)
        section.bullets.append(text)
    for arm in exp.arms:
        rows = stability[stability.arm == arm] if not stability.empty else stability
        diverged, stuck = rows[rows.diverged > 0], rows[rows.stuck_at_chance > 0]
        parts = []
        if not diverged.empty:
            parts.append(f"{int(diverged.diverged.sum())} run(s) diverged{where(diverged)}")
        if not stuck.empty:
            parts.append(f"{int(stuck.stuck_at_chance.sum())} run(s) stuck at chance{where(stuck)}")
        section.bullets.append(f"{arm}: " + ("; ".join(parts) if parts else "no run diverged or stuck at chance") + ".")
    unfinished = int((~exp.runs.status.isin(FINAL_STATUSES)).sum()) + len(exp.missing)
    if unfinished:
        section.bullets.append(f"{unfinished} of {exp.planned} planned runs are missing, failed or still "
                               "running: see “Missing and incomplete runs”.")
    return section


def _significance(rows: pd.DataFrame, arm: str, ref: str, swept: bool, tests: int) -> str:
    """The end of an arm's summary line: what the paired table's intervals and p-values say, with
    the Holm-adjusted p-values of its p (Holm) column wherever the table holds several tests."""
    tested = rows[rows.p_value.notna()]
    flat = rows[(rows.pairs > 1) & rows.p_value.isna()]
    single = rows[rows.pairs == 1]
    if not swept:
        row = rows.iloc[0]
        if not tested.empty:
            verdict = "includes 0" if row.ci_low <= 0 <= row.ci_high else "excludes 0"
            text = f", 95% CI [{pp(row.ci_low)}, {pp(row.ci_high)}] pp ({verdict}), paired t-test p = {p_value_text(row.p_value)}"
            if tests > 1:
                text = (f", 95% CI [{pp(row.ci_low)}, {pp(row.ci_high)}] pp (unadjusted), paired t-test p = "
                        f"{p_value_text(row.p_value)}, Holm-adjusted over the table's {tests} tests p = "
                        f"{p_value_text(row.p_holm)}")
        elif not flat.empty:
            text = ", the same in every seed: no interval or test"
        else:
            return "; one seed: no confidence interval."
        return text + f"; {arm} won {row.wins} of {row.decided} seeds."
    if tested.empty and flat.empty:
        return "; one seed per point: no confidence interval."
    parts = []
    if not tested.empty:
        significant = tested[tested.p_holm < 0.05]
        parts.append(
            f"Holm-adjusted p < 0.05 (the table's p (Holm), over its {tests} tests) at {len(significant)} of the "
            f"{len(tested)} point(s) with an interval: {int((significant.diff_mean < 0).sum())} in {arm}'s favour, "
            f"{int((significant.diff_mean > 0).sum())} in {ref}'s")
    if not flat.empty:
        parts.append(f"{len(flat)} point(s) with the same difference in every seed: no interval or test")
    if not single.empty:
        parts.append(f"{len(single)} point(s) with one seed: no interval")
    return "; " + "; ".join(parts) + "."


def header_facts(exp: Experiment) -> list[tuple[str, str]]:
    runs = exp.runs
    counts = runs.status.value_counts()
    finished = int(sum(counts.get(status, 0) for status in FINAL_STATUSES))
    status = ", ".join(f"{int(n)} {s}" for s, n in counts.items())
    if len(exp.missing):
        status += ", " + ", ".join(f"{int(n)} {s}" for s, n in exp.missing.status.value_counts().items())
    facts = [
        ("runs", f"{finished} of {exp.planned} finished ({status})"),
        ("arms", ", ".join(f"{a} (reference)" if a == exp.reference_arm else a for a in exp.arms)),
        ("seeds", ", ".join(str(s) for s in exp.seeds)),
    ]
    for key in exp.sweep_keys:
        values = sorted(set(runs[key]), key=sort_key)
        facts.append((f"swept {key}", ", ".join(value_label(v) for v in values)))
    if exp.config_file:
        facts.append(("config", exp.config_file))
    if "norm" in runs:
        kinds = runs.groupby("arm", sort=False).norm.agg(lambda kinds: " / ".join(dict.fromkeys(kinds)))
        facts.append(("normalisation", "; ".join(f"{arm}: {kind}" for arm, kind in kinds.items())))
    builders = runs.builder.dropna().unique() if "builder" in runs else []
    if len(builders):
        facts.append(("network", ", ".join(f"model.builder {b}" for b in builders)))
    precise = runs[runs.precise_stats > 0] if "precise_stats" in runs else runs.iloc[:0]
    if not precise.empty:
        facts.append(("precise BN statistics", "; ".join(
            f"{arm}: {len(group)} of {int((runs.arm == arm).sum())} runs, from "
            f"{', '.join(str(int(n)) for n in sorted(set(group.precise_stats)))} training batches"
            for arm, group in precise.groupby("arm", sort=False)) + " (model.batch_norm.precise_stats: BN's moving "
            "statistics recomputed before every evaluation)"))
    environments = runs.dropna(subset=["keras"])[["keras", "backend", "device"]].drop_duplicates()
    if not environments.empty:
        facts.append(("trained with", "; ".join(f"Keras {k} ({b}) on {d}" for k, b, d in
                                                environments.itertuples(index=False))))
    runner = f", runs from bnexp {exp.bnexp_version}" if exp.bnexp_version else ""
    facts.append(("report", f"bnexp {__version__}{runner}, "
                            f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"))
    return facts


def build_sections(exp: Experiment, target_metric: str | None = None,
                   target_value: float | None = None) -> list[Section]:
    """Every section of an experiment's report, tables computed and figures rendered."""
    colours = plots.arm_colours(exp.arms, exp.reference_arm)
    paired = _paired_section(exp)
    stability = _stability_section(exp)
    summary = _summary_section(exp, paired.tables[0].raw if paired.tables else pd.DataFrame(),
                               stability.tables[0].raw)
    return [section for section in [
        summary,
        _test_error_section(exp, colours),
        paired,
        _eval_statistics_section(exp),
        _curves_section(exp, colours),
        _activations_section(exp, colours),
        _steps_section(exp, colours, target_metric, target_value),
        stability,
        _parameters_section(exp),
        _missing_section(exp),
        _runs_section(exp),
    ] if section is not None]
