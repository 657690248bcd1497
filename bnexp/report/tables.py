"""The report's tables: computed from loaded runs as pandas frames holding full-precision numbers
(the CSV files), and the cell formatting that turns them into the tables on the page.

Every table function takes the frames `bnexp.report.load.load_experiment` builds (one row per run,
one row per run and epoch, one row per logged step) and returns one table. Error rates and
accuracies stay fractions there, as in result.json; the cell formatters below make them
percentages, with the units in the column headers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from bnexp.config.keypaths import LEARNING_RATE_KEY
from bnexp.report.cells import point_label
from bnexp.report.values import chance_threshold, final_values, is_number
from bnexp.metrics import (ACCURACY, BATCH, DEFAULT_TARGET_METRIC, EVAL_STATISTICS, LOSS, MOVING, PRECISE,
                           TARGET_METRICS, VAL_ACCURACY, VAL_LOSS, is_accuracy)
from bnexp.store import COMPLETED, DIVERGED, FAILED, FINAL_STATUSES, INCOMPLETE, RUNNING, STATUS_TEXTS, UNFINISHED

if TYPE_CHECKING:  # the loader calls report_tables: an annotation only, no import at run time
    from bnexp.report.load import Experiment

CONFIDENCE = 0.95
# Steps-to-target defaults: a level every arm can be expected to reach, derived from the
# reference arm's best sweep point, so the table asks "how soon", not "whether".
DEFAULT_ACCURACY_FRACTION = 0.9
DEFAULT_LOSS_FACTOR = 1.1
# Corrections for testing every sweep point: statsmodels' method names, and the table column each fills.
# Holm bounds the chance of any false positive among the tests; Benjamini-Hochberg the expected share of
# false positives among those called significant (less strict, for wide sweeps).
ADJUSTMENTS = {"p_holm": "holm", "p_bh": "fdr_bh"}
# Differences closer than this are round-off of the same value: Keras computes accuracy in float32, so
# the same count of errors gives test errors up to about 1e-7 apart (0.03333333 and 0.03333330), while a
# real difference is at least one test sample, 1/n (above this for any test set under a million rows).
SAME_DIFFERENCE = 1e-6
# Past this many seed pairs "seeds for a CI without 0" is no plan anyone would follow: seeds_needed
# gives inf ("more than 1,000" on the page) instead of counting on to astronomical numbers.
MAX_SEEDS_NEEDED = 1000
# How a pair of runs ranks for `wins`: a run that trained (completed above chance) beats one that
# did not; two that trained are ranked by test error; a run at chance and a diverged one both
# failed to train, so neither wins against the other (nor two at chance, nor two diverged).


def _point_columns(group: pd.DataFrame, keys: list[str]) -> dict:
    """The sweep-key values shared by every run of a group."""
    return {key: group[key].iloc[0] for key in keys}


def _by_point_and_arm(runs: pd.DataFrame):
    """Groups of runs per sweep point and arm, in sweep order and the config's arm order."""
    return runs.groupby(["point_id", "arm_order"], sort=True)


def test_error_table(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Test error (mean, sd over completed runs), final accuracies, epochs and status counts;
    `incomplete` counts the runs without a result yet, running or interrupted."""
    rows = []
    for _, group in _by_point_and_arm(runs):
        completed = group[group.status == COMPLETED]
        finished = group[group.status.isin(FINAL_STATUSES)]
        errors = completed.test_error.dropna()
        rows.append({
            **_point_columns(group, keys),
            "arm": group.arm.iloc[0],
            "runs": len(group),
            COMPLETED: int((group.status == COMPLETED).sum()),
            DIVERGED: int((group.status == DIVERGED).sum()),
            FAILED: int((group.status == FAILED).sum()),
            "incomplete": int(group.status.isin(UNFINISHED).sum()),
            "n": len(errors),
            "test_error_mean": errors.mean(),
            "test_error_sd": errors.std(ddof=1),
            "train_accuracy_mean": completed.final_accuracy.mean(),
            "val_accuracy_mean": completed.final_val_accuracy.mean(),
            "epochs_min": finished.epochs_run.min(),
            "epochs_max": finished.epochs_run.max(),
        })
    return pd.DataFrame(rows)


def _paired_stats(arm_errors: np.ndarray, reference_errors: np.ndarray) -> dict:
    """Mean paired difference, t-based CI and paired t-test p-value; NaN where undefined."""
    diffs = arm_errors - reference_errors
    n = len(diffs)
    out = {"pairs": n, "diff_mean": np.nan, "diff_sd": np.nan, "seeds_needed": np.nan,
           "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan}
    if n == 0:
        return out
    out["diff_mean"] = diffs.mean()
    if n == 1:
        return out
    out["diff_sd"] = diffs.std(ddof=1)
    # Identical differences have no spread: no interval, no test (the t statistic is undefined), and
    # no number of seeds that a zero sd would make "enough".
    if np.allclose(diffs, diffs[0], rtol=0, atol=SAME_DIFFERENCE):
        return out
    out["seeds_needed"] = seeds_needed(out["diff_mean"], out["diff_sd"])
    test = sps.ttest_rel(arm_errors, reference_errors)
    interval = test.confidence_interval(CONFIDENCE)
    out.update(ci_low=interval.low, ci_high=interval.high, p_value=test.pvalue)
    return out


def seeds_needed(mean: float, sd: float) -> float:
    """The fewest seed pairs whose 95% interval would exclude zero if the paired differences kept
    this mean and sample sd: the smallest n >= 2 with t(0.975, n - 1) * sd / sqrt(n) < |mean|.
    NaN when the mean is 0 (no number of seeds would do) or the sd is unknown; inf when it is more
    than MAX_SEEDS_NEEDED."""
    if np.isnan(sd) or np.isnan(mean) or abs(mean) <= SAME_DIFFERENCE:
        return np.nan
    quantile = (1 + CONFIDENCE) / 2
    # The normal quantile is below every t quantile, so its n is a lower bound; t shrinks towards
    # it as n grows, so a few steps up from there reach the answer.
    n = max(2, math.ceil((sps.norm.ppf(quantile) * sd / abs(mean)) ** 2))
    while n <= MAX_SEEDS_NEEDED and sps.t.ppf(quantile, float(n - 1)) * sd / math.sqrt(n) >= abs(mean):
        n += 1
    return float(n) if n <= MAX_SEEDS_NEEDED else np.inf


def adjust_p_values(p_values: pd.Series) -> pd.DataFrame:
    """Each correction of ADJUSTMENTS over the p-values that exist (NaN, no test, stays NaN)."""
    adjusted = pd.DataFrame(np.nan, index=p_values.index, columns=list(ADJUSTMENTS))
    tested = p_values.dropna()
    for column, method in ADJUSTMENTS.items():
        if len(tested):
            adjusted.loc[tested.index, column] = multipletests(tested.to_numpy(), method=method)[1]
    return adjusted


def paired_table(runs: pd.DataFrame, keys: list[str], arms: list[str], reference: str,
                 seeds: Sequence[int] = ()) -> pd.DataFrame:
    """Each arm's test error minus the reference arm's, paired by seed within a sweep point.

    Only pairs where both runs completed enter the mean, interval and test. `wins` counts the pairs
    the arm won, `decided` those with a winner or a tie, in this order: a run that trained (completed
    above chance) beats one that did not; two that trained are ranked by test error; a run at chance
    and a diverged one both failed to train, so such a pair (and two at chance, two diverged) has
    no winner and is counted apart in the note. The p-values are also adjusted (ADJUSTMENTS) over
    the whole table: every sweep point and arm. `seeds` are the planned seeds: one with no readable
    run at a point (pending or damaged) counts among the seeds without two finished runs.
    """
    rows = []
    for _, group in runs.groupby("point_id", sort=True):
        ref = group[group.arm == reference].drop_duplicates("seed").set_index("seed")
        for arm in arms:
            if arm == reference:
                continue
            other = group[group.arm == arm].drop_duplicates("seed").set_index("seed")
            if other.empty and ref.empty:
                continue
            point_seeds = sorted({s for s in seeds if is_number(s)} | set(ref.index) | set(other.index))
            arm_err, ref_err, notes = [], [], []
            wins = decided = 0
            ref_diverged = arm_diverged = both_diverged = both_at_chance = chance_and_diverged = unpaired = 0
            for seed in point_seeds:
                if seed not in ref.index or seed not in other.index:
                    unpaired += 1
                    continue
                a, r = other.loc[seed], ref.loc[seed]
                if a.status not in FINAL_STATUSES or r.status not in FINAL_STATUSES \
                        or (a.status == COMPLETED and pd.isna(a.test_error)) \
                        or (r.status == COMPLETED and pd.isna(r.test_error)):
                    unpaired += 1
                    continue
                if a.status == COMPLETED and r.status == COMPLETED:
                    arm_err.append(a.test_error)
                    ref_err.append(r.test_error)
                    if a.trained or r.trained:
                        decided += 1
                        wins += int(a.test_error < r.test_error if a.trained and r.trained else a.trained)
                    else:
                        both_at_chance += 1
                elif a.status == DIVERGED and r.status == DIVERGED:
                    both_diverged += 1
                elif not (a.trained or r.trained):
                    chance_and_diverged += 1
                else:
                    decided += 1
                    wins += int(a.trained)
                    ref_diverged += int(a.trained)
                    arm_diverged += int(r.trained)
            stats = _paired_stats(np.array(arm_err, dtype=float), np.array(ref_err, dtype=float))
            if stats["pairs"] == 1:
                notes.append("one seed: no interval or test")
            elif stats["pairs"] > 1 and np.isnan(stats["p_value"]):
                notes.append("same difference in every seed: no test")
            notes += [f"{count} {what}" for count, what in (
                (ref_diverged, f"pair(s) excluded: {reference} diverged ({arm} wins)"),
                (arm_diverged, f"pair(s) excluded: {arm} diverged ({reference} wins)"),
                (chance_and_diverged, "pair(s) excluded: one diverged, the other is at chance (no winner)"),
                (both_at_chance, "pair(s) both at chance (no winner)"),
                (both_diverged, "pair(s) excluded: both diverged"),
                (unpaired, "seed(s) without two finished runs"),
            ) if count]
            rows.append({
                **_point_columns(group, keys), "arm": arm, "reference": reference, **stats,
                "wins": wins, "decided": decided, "note": "; ".join(notes),
            })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    adjusted = adjust_p_values(table.p_value)
    at = table.columns.get_loc("p_value") + 1
    for offset, column in enumerate(adjusted):
        table.insert(at + offset, column, adjusted[column])
    return table


def parameter_table(runs: pd.DataFrame, keys: list[str], reference: str) -> pd.DataFrame:
    """Trainable and non-trainable parameter counts per arm, with how many runs had them.

    Rows are per sweep point too when an arm's counts differ between runs (a swept width, say);
    two rows for one point and arm would show runs that disagree.
    """
    counts = ["trainable_params", "non_trainable_params"]
    if not set(counts) <= set(runs.columns):  # no run has started: the loader has no result columns
        return pd.DataFrame()
    counted = runs.dropna(subset=counts)
    if counted.empty:
        return pd.DataFrame()
    varies = bool((counted.groupby("arm_order")[counts].nunique() > 1).any().any())
    group_by = ["point_id", "arm_order", *counts] if varies else ["arm_order", *counts]
    rows = []
    for (*_, trainable, non_trainable), group in counted.groupby(group_by, sort=True):
        ref = counted[counted.arm == reference]
        if varies:
            ref = ref[ref.point_id == group.point_id.iloc[0]]
        rows.append({
            **(_point_columns(group, keys) if varies else {}), "arm": group.arm.iloc[0], "runs": len(group),
            "trainable": int(trainable), "non_trainable": int(non_trainable),
            "total": int(trainable + non_trainable),
            "trainable_vs_reference": int(trainable - ref.trainable_params.iloc[0]) if not ref.empty else np.nan,
        })
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Target:
    """A steps-to-target threshold: `metric` at least (accuracies) or at most (losses) `value`."""

    metric: str
    value: float
    how: str

    @property
    def higher_is_better(self) -> bool:
        return is_accuracy(self.metric)

    def describe(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        return f"{self.metric} {sign} {self.value:.4g}"


def resolve_target(runs: pd.DataFrame, history: pd.DataFrame, keys: list[str], reference: str,
                   metric: str | None, value: float | None) -> Target | None:
    """The target to use (see target_or_reason); None when there is none."""
    target = target_or_reason(runs, history, keys, reference, metric, value)
    return target if isinstance(target, Target) else None


def target_or_reason(runs: pd.DataFrame, history: pd.DataFrame, keys: list[str], reference: str,
                     metric: str | None, value: float | None) -> Target | str:
    """The target to use: the one given, or the default derived from the reference arm; else why
    there is none.

    The default metric is val_accuracy (accuracy when no run has a validation split); the
    default value is 90% of the reference arm's best mean final accuracy over sweep points
    (1.1x its best mean final loss for a loss metric). A default a model at chance meets (an
    accuracy at or below the stability table's chance line, a loss at or above ln K, the loss of
    guessing uniformly among K classes) is no target: every run would reach it at once.
    """
    if metric is None:
        metric = DEFAULT_TARGET_METRIC
        if VAL_ACCURACY not in history or history[VAL_ACCURACY].isna().all():
            metric = ACCURACY
    if metric not in TARGET_METRICS:
        raise ValueError(f"target metric must be one of {', '.join(TARGET_METRICS)}, got {metric!r}")
    if value is not None:
        return Target(metric, float(value), "given")
    no_default = f"no completed run of the reference arm {reference} logged {metric}"
    if metric not in history:
        return no_default
    final = final_values(history)
    done = runs[(runs.arm == reference) & (runs.status == COMPLETED)]
    done = done.assign(final=final[metric].reindex(done.run_id).to_numpy()).dropna(subset=["final"])
    if done.empty:
        return no_default
    means = done.groupby("point_id").final.mean()
    higher = is_accuracy(metric)
    best_point = means.idxmax() if higher else means.idxmin()
    best = means.loc[best_point]
    where = done[done.point_id == best_point].iloc[0]
    at = ", ".join(f"{key.rsplit('.', 1)[-1]}={where[key]}" for key in keys)
    if higher:
        how = (f"{DEFAULT_ACCURACY_FRACTION:.0%} of {reference}'s best mean final {metric}, "
               f"{best:.4g}{' at ' + at if at else ''}")
        target = Target(metric, DEFAULT_ACCURACY_FRACTION * best, how)
    else:
        how = f"{DEFAULT_LOSS_FACTOR}x {reference}'s best mean final {metric}, {best:.4g}{' at ' + at if at else ''}"
        target = Target(metric, DEFAULT_LOSS_FACTOR * best, how)
    classes = pd.to_numeric(done.num_classes, errors="coerce").dropna().unique()
    if len(classes) != 1 or classes[0] < 2:
        return target
    k = int(classes[0])
    chance = chance_threshold(k) if higher else math.log(k)
    if (target.value <= chance) if higher else (target.value >= chance):
        return (f"the default target, {target.describe()} ({how}), is at chance level for {k} classes "
                f"({metric} {'<=' if higher else '>='} {chance:.4g}), which a network that learned nothing meets: "
                f"no target; give one with --target-value")
    return target


def _first_reached(values: pd.Series, steps: pd.Series, target: Target) -> float:
    """The first step whose value meets the target, NaN if none does."""
    hit = values >= target.value if target.higher_is_better else values <= target.value
    hit = hit & values.notna()
    return float(steps[hit].iloc[0]) if hit.any() else np.nan


def steps_per_run(runs: pd.DataFrame, history: pd.DataFrame, step_losses: pd.DataFrame,
                  target: Target, step_evals: pd.DataFrame | None = None) -> pd.DataFrame:
    """For every run with a history: the first step and epoch at which it meets the target.

    Epoch-end values are checked; so is the per-step log, where there is one for the metric:
    step_losses for the training loss, step_evals (train.eval_every_steps) for val_loss and
    val_accuracy; the earliest step wins. The epoch is the one during which that step fell.
    """
    rows = []
    logged = history.sort_values(["run_id", "epoch"]).groupby("run_id")
    finer = {LOSS: step_losses, VAL_LOSS: step_evals, VAL_ACCURACY: step_evals}.get(target.metric)
    if finer is not None and (finer.empty or target.metric not in finer):
        finer = None
    fine = finer.sort_values(["run_id", "step"]).groupby("run_id") if finer is not None else None
    for run in runs.itertuples():
        if run.run_id not in logged.groups:
            continue
        epochs = logged.get_group(run.run_id)
        step = np.nan
        if target.metric in epochs:
            step = _first_reached(epochs[target.metric], epochs.step, target)
        if fine is not None and run.run_id in fine.groups:
            per_step = fine.get_group(run.run_id)
            step = np.nanmin([step, _first_reached(per_step[target.metric], per_step.step, target)])
        epoch = np.nan
        if not np.isnan(step):
            later = epochs[epochs.step >= step]
            epoch = float(later.epoch.iloc[0]) if not later.empty else np.nan
        rows.append({"run_id": run.run_id, "point_id": run.point_id, "arm_order": run.arm_order,
                     "arm": run.arm, "seed": run.seed, "status": run.status,
                     "reached": not np.isnan(step), "step": step, "epoch": epoch,
                     "last_step": float(epochs.step.max())})
    return pd.DataFrame(rows)


def steps_table(runs: pd.DataFrame, per_run: pd.DataFrame, keys: list[str], arms: list[str],
                reference: str) -> pd.DataFrame:
    """Mean steps and epochs to the target per sweep point and arm, and the speed-up over the
    reference arm: the reference's mean steps divided by the arm's (5.0 = five times fewer).
    `not_yet` counts the runs without a final result that have not reached it so far: unfinished,
    not "never reached"."""
    if per_run.empty:
        return pd.DataFrame()
    rows = []
    per_run = per_run.merge(runs[["run_id", *keys]], on="run_id")
    for _, point in per_run.groupby("point_id", sort=True):
        point_rows = []
        for arm in arms:
            group = point[point.arm == arm]
            if group.empty:
                continue
            reached = group[group.reached]
            unfinished = ~group.reached & ~group.status.isin(FINAL_STATUSES)
            point_rows.append({
                **_point_columns(point, keys), "arm": arm, "runs": len(group), "reached": len(reached),
                "not_yet": int(unfinished.sum()),
                "step_mean": reached.step.mean(), "step_min": reached.step.min(),
                "step_max": reached.step.max(), "epoch_mean": reached.epoch.mean(),
                "diverged_later": int((reached.status == DIVERGED).sum()),
            })
        means = {row["arm"]: row["step_mean"] for row in point_rows}
        ref_mean = means.get(reference, np.nan)
        ref_steps = point[(point.arm == reference) & point.reached].set_index("seed").step
        for row in point_rows:
            row["speedup"] = ref_mean / row["step_mean"] if row["arm"] != reference else np.nan
            arm_steps = point[(point.arm == row["arm"]) & point.reached].set_index("seed").step
            row.update(paired_speedup(ref_steps, arm_steps) if row["arm"] != reference else paired_speedup([], []))
            notes = []
            never = row["runs"] - row["reached"] - row["not_yet"]
            if never:
                notes.append(f"{never} of {row['runs']} runs never reached it")
            if row["not_yet"]:
                notes.append(f"{row['not_yet']} of {row['runs']} runs not reached yet (unfinished: still "
                             "training, interrupted or failed)")
            if row["arm"] != reference and np.isnan(ref_mean) and row["reached"]:
                notes.append(f"no {reference} run reached it: no ratio")
            if row["diverged_later"]:
                notes.append(f"{row['diverged_later']} diverged after reaching it")
            row["note"] = "; ".join(notes)
        rows.extend(point_rows)
    return pd.DataFrame(rows)


def paired_speedup(reference_steps: pd.Series, arm_steps: pd.Series) -> dict:
    """The reference's steps over the arm's, paired by seed among the seeds where both reached the target:
    their geometric mean and its 95% interval (a t interval of the mean log ratio, which treats 2x
    faster and 2x slower alike); NaN where fewer than one pair reached it, and no interval with
    fewer than two pairs or the same ratio in every pair."""
    pairs = pd.concat([pd.Series(reference_steps), pd.Series(arm_steps)], axis=1, join="inner").dropna()
    out = {"speedup_pairs": len(pairs), "speedup_paired": np.nan, "speedup_ci_low": np.nan, "speedup_ci_high": np.nan}
    if pairs.empty:
        return out
    logs = np.log(pairs.iloc[:, 0].to_numpy() / pairs.iloc[:, 1].to_numpy())
    out["speedup_paired"] = math.exp(logs.mean())
    # The same ratio in every seed (steps counted at epoch ends often are) has no spread: no interval.
    if len(logs) > 1 and not np.allclose(logs, logs[0], rtol=0, atol=SAME_DIFFERENCE):
        spread = sps.sem(logs) * sps.t.ppf((1 + CONFIDENCE) / 2, len(logs) - 1)
        out.update(speedup_ci_low=math.exp(logs.mean() - spread), speedup_ci_high=math.exp(logs.mean() + spread))
    return out


def stability_table(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per sweep point and arm: finished runs, diverged runs (and when), runs stuck at chance."""
    rows = []
    for _, group in _by_point_and_arm(runs):
        finished = group[group.status.isin(FINAL_STATUSES)]
        diverged = finished[finished.status == DIVERGED]
        diverged = diverged.dropna(subset=["diverged_epoch"]).sort_values("diverged_epoch")
        # "3 (steps 410–420)": the loss was finite at step 410 and not at step 420 (result.json diverged_steps)
        epochs = ", ".join(str(int(epoch)) + (f" (steps {steps})" if isinstance(steps, str) else "")
                           for epoch, steps in zip(diverged.diverged_epoch, diverged.diverged_steps))
        rows.append({
            **_point_columns(group, keys), "arm": group.arm.iloc[0], "finished": len(finished),
            "diverged": len(diverged), "diverged_epochs": epochs,
            "stuck_at_chance": int(finished.stuck.sum()),
            "chance_unknown": int(finished[finished.status == COMPLETED].chance_threshold.isna().sum()),
            "trained": int(finished.trained.sum()),
        })
    return pd.DataFrame(rows)


def eval_statistics_table(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per sweep point and arm with BN-type layers: the mean test error of its completed runs with BN's moving,
    precise and batch statistics (result.json eval_statistics), the gaps moving − precise and batch − precise
    paired within each run (mean and 95% interval over the seeds), and the seeds' spread (sd of the precise
    error). `flagged`: the moving averages are worse than the precise statistics by more than that spread and
    the gap's interval excludes 0, so the arm's test error there says more about its moving averages than about
    its weights. Gaps with no spread (the same in every seed) have no interval, as in paired_table, and are
    never flagged."""
    columns = [f"test_error_{name}" for name in EVAL_STATISTICS]
    if runs.empty or not all(column in runs for column in columns):
        return pd.DataFrame()
    rows = []
    for _, group in _by_point_and_arm(runs):
        evaluated = group[group.status == COMPLETED].dropna(subset=columns)
        if evaluated.empty:
            continue
        moving, precise, batch = (evaluated[f"test_error_{name}"].to_numpy() for name in (MOVING, PRECISE, BATCH))
        stale, in_batches = _paired_stats(moving, precise), _paired_stats(batch, precise)
        spread = precise.std(ddof=1) if len(precise) > 1 else np.nan
        rows.append({
            **_point_columns(group, keys), "arm": group.arm.iloc[0], "n": len(evaluated),
            **{f"{name}_mean": errors.mean() for name, errors in
               ((MOVING, moving), (PRECISE, precise), (BATCH, batch))},
            "moving_gap_mean": stale["diff_mean"], "moving_gap_ci_low": stale["ci_low"],
            "moving_gap_ci_high": stale["ci_high"],
            "batch_gap_mean": in_batches["diff_mean"], "batch_gap_ci_low": in_batches["ci_low"],
            "batch_gap_ci_high": in_batches["ci_high"],
            "precise_sd": spread,
            "flagged": _stale(stale, spread),
        })
    return pd.DataFrame(rows)


def _stale(gap: dict, spread: float) -> bool:
    """The moving − precise gap shows stale moving averages: moving is worse, by more than the seeds' spread of
    the precise error, and the gap's 95% interval lies above 0 (no interval, no flag)."""
    if np.isnan(spread) or np.isnan(gap["ci_low"]):
        return False
    return bool(gap["diff_mean"] > spread and gap["ci_low"] > 0)


def largest_lr_table(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per arm (and value of the other swept keys): the largest learning rate up to which every finished run
    trained (completed, not stuck at chance) at every rate tried, the smallest at which one did not, and the
    rates above that which trained again (`trains_again_at`: the range is then not one interval, and the
    largest rate that trained is not a safe one)."""
    if LEARNING_RATE_KEY not in keys:
        return pd.DataFrame()
    others = [key for key in keys if key != LEARNING_RATE_KEY]
    finished = runs[runs.status.isin(FINAL_STATUSES) & runs[LEARNING_RATE_KEY].map(is_number)]
    if finished.empty:
        return pd.DataFrame()
    rows = []
    group_by = [*others, "arm_order"]
    for _, group in finished.groupby(group_by, sort=True, dropna=False):
        per_lr = group.groupby(LEARNING_RATE_KEY).trained.agg(["all", "size"])
        ok = per_lr.index[per_lr["all"]]
        bad = per_lr.index[~per_lr["all"]]
        first_bad = bad.min() if len(bad) else np.inf
        below, again = ok[ok < first_bad], ok[ok > first_bad]
        rows.append({
            **_point_columns(group, others), "arm": group.arm.iloc[0],
            "learning_rates": ", ".join(f"{lr:g}" for lr in per_lr.index),
            "largest_lr_that_trains": below.max() if len(below) else np.nan,
            "smallest_lr_that_fails": bad.min() if len(bad) else np.nan,
            "trains_again_at": ", ".join(f"{lr:g}" for lr in again),
        })
    return pd.DataFrame(rows)


def steps_runs_table(runs: pd.DataFrame, per_run: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """steps_per_run with each run's sweep values, as tables/steps_to_target_runs.csv holds it."""
    return per_run.drop(columns=["point_id", "arm_order"]).merge(runs[["run_id", *keys]], on="run_id")


def _unfinished_detail(run) -> str:
    """Why a run that started has no result in the tables."""
    if run.status == FAILED:
        return run.error if isinstance(run.error, str) else ""
    if run.status == RUNNING:
        return f"{STATUS_TEXTS[RUNNING]}: still training"
    return f"spec.json but no result.json: {STATUS_TEXTS[INCOMPLETE]}; the next `bnexp run` resumes it"


def missing_table(runs: pd.DataFrame, missing: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Runs of the plan not in the other tables: started but unfinished (failed, running,
    interrupted), then those `load_experiment` could not read or that have not started."""
    unfinished = runs[~runs.status.isin(FINAL_STATUSES)]
    rows = [{"run_id": run.run_id, "arm": run.arm, "seed": run.seed,
             "point": point_label({k: run[k] for k in keys}), "status": run.status,
             "detail": _unfinished_detail(run)}
            for _, run in unfinished.iterrows()]
    return pd.concat([pd.DataFrame(rows, columns=["run_id", "arm", "seed", "point", "status", "detail"]),
                      missing.assign(point="")], ignore_index=True)


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run, one row each, without the loader's internal ordering columns."""
    return runs.drop(columns=["point_id", "arm_order"])


def report_tables(exp: Experiment, target_metric: str | None = None,
                  target_value: float | None = None) -> dict[str, pd.DataFrame]:
    """Every table of the report by its file name (tables/<name>.csv), full precision; a table
    the report leaves out for lack of data is an empty frame here, but eval_statistics is left out where no
    run evaluated BN's statistics (experiments without BN, or trained by an older bnexp)."""
    keys, ref, runs = exp.sweep_keys, exp.reference_arm, exp.runs
    target = resolve_target(runs, exp.history, keys, ref, target_metric, target_value)
    per_run = steps_per_run(runs, exp.history, exp.step_losses, target, exp.step_evals) if target else pd.DataFrame()
    statistics = eval_statistics_table(runs, keys)
    return {
        "test_error": test_error_table(runs, keys),
        "paired_difference": paired_table(runs, keys, exp.arms, ref, exp.seeds),
        "steps_to_target": steps_table(runs, per_run, keys, exp.arms, ref),
        "steps_to_target_runs": steps_runs_table(runs, per_run, keys) if not per_run.empty else pd.DataFrame(),
        "stability": stability_table(runs, keys),
        "largest_learning_rate": largest_lr_table(runs, keys),
        "parameters": parameter_table(runs, keys, ref),
        "missing": missing_table(runs, exp.missing, keys),
        "runs": runs_table(runs),
        **({"eval_statistics": statistics} if not statistics.empty else {}),
    }
