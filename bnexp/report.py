"""The reporter: reads the files `bnexp run` wrote (docs/RESULTS_FORMAT.md) and writes, per
experiment, `report/` with `index.html` (one self-contained page), `report.md`, `tables/*.csv`
(full precision) and `plots/*.png`.

It never imports TensorFlow or Keras, so it stays fast and works while a sweep is running:
runs still training, failed or unreadable are listed, not dropped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from bnexp import RESULTS_FORMAT, __version__, plots, stats
from bnexp.data import builtin_num_classes
from bnexp.errors import ResultsError
from bnexp.store import EXPERIMENT, FINAL_STATUSES, HISTORY, RESULT, SPEC, experiment_dirs, read_history

REPORT_DIR = "report"
# Curves get one figure per sweep point; past this many the page would be a wall of plots.
MAX_CURVE_POINTS = 24
# Image resolution: sharp on screen and in a PDF appendix, small enough to embed.
DPI = 110
RESULT_STATUSES = (*FINAL_STATUSES, "failed")
# A completed run is "stuck at chance" when its final accuracy is at most chance plus this
# margin: 5 points, or half the chance rate when that is smaller (many classes).
CHANCE_MARGIN = 0.05
HISTORY_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass
class Experiment:
    """One experiment's runs as read from disk: frames for the tables, and what went wrong."""

    name: str
    path: Path
    sweep_keys: list[str]
    arms: list[str]
    reference_arm: str
    seeds: list
    planned: int
    config_file: str | None
    bnexp_version: str | None
    runs: pd.DataFrame
    history: pd.DataFrame
    step_losses: pd.DataFrame
    missing: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def _read_json(path: Path) -> dict:
    """A JSON object from a file; ValueError naming the problem if it is not one."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _number(value) -> float:
    """A float, or NaN for null, text and other non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _list(value) -> list:
    """`value` if it is a list, else [] (a damaged file may hold anything)."""
    return value if isinstance(value, list) else []


def _point_value(value):
    """A sweep value usable as a table cell and group key: lists and mappings become JSON."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return value


def _sort_key(value) -> tuple:
    """Numbers in numeric order, then text, then missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, 0.0, "")
    if stats.is_number(value):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _num_classes(config: dict) -> int | None:
    """Number of classes of a built-in dataset named in the run's config, for runs whose
    result.json (which records `num_classes`) is not written yet."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    return builtin_num_classes(str(data.get("dataset", "")))


def chance_threshold(num_classes: float) -> float:
    """Highest final accuracy that still counts as stuck at chance for `num_classes` classes."""
    chance = 1 / num_classes
    return chance + min(CHANCE_MARGIN, chance / 2)


def _read_spec(run_dir: Path) -> dict:
    """A run's spec.json, checked for what the tables need; ValueError naming what is wrong."""
    spec = _read_json(run_dir / SPEC)
    for name in ("arm", "seed"):
        if name not in spec:
            raise ValueError(f"no {name!r}")
    if not isinstance(spec["seed"], int) or isinstance(spec["seed"], bool):
        raise ValueError(f"seed: expected an integer, got {spec['seed']!r}")
    if not isinstance(spec["arm"], str) or not spec["arm"]:
        raise ValueError(f"arm: expected a name, got {spec['arm']!r}")
    if not isinstance(spec.get("point") or {}, dict):
        raise ValueError("point: expected a mapping")
    if isinstance(spec.get("format"), int) and spec["format"] > RESULTS_FORMAT:
        raise ValueError(f"format {spec['format']} is newer than this bnexp reads ({RESULTS_FORMAT})")
    return spec


def _result_fields(result: dict) -> dict:
    """The columns a run's result.json contributes to the runs table."""
    fields = {"status": result["status"], "error": result.get("error")}
    for name in ("epochs_run", "diverged_epoch", "test_loss", "test_accuracy", "test_error",
                 "trainable_params", "non_trainable_params", "wall_seconds"):
        fields[name] = _number(result.get(name))
    if math.isnan(fields["test_error"]) and not math.isnan(fields["test_accuracy"]):
        fields["test_error"] = 1 - fields["test_accuracy"]
    given = result.get("num_classes")
    if isinstance(given, int) and not isinstance(given, bool) and given >= 2:
        fields["num_classes"] = given
    environment = result.get("environment") if isinstance(result.get("environment"), dict) else {}
    backend = environment.get("backend")
    version = environment.get(backend) if isinstance(backend, str) else None
    fields.update(keras=environment.get("keras"), backend=f"{backend} {version}" if version else backend,
                  device=environment.get("device"))
    return fields


def load_experiment(path: Path) -> Experiment:
    """Read an experiment directory: experiment.json and every run folder in it.

    A run folder with a missing or unreadable file is kept out of the tables and named in the
    report's warnings or missing-runs table; only an experiment.json from a newer bnexp or a
    directory that cannot be listed raise ResultsError.
    """
    path = Path(path)
    warnings: list[str] = []
    meta: dict = {}
    if (path / EXPERIMENT).is_file():
        try:
            meta = _read_json(path / EXPERIMENT)
        except (OSError, ValueError) as error:
            warnings.append(f"{EXPERIMENT} damaged ({error}); the plan was rebuilt from the run folders")
    if isinstance(meta.get("format"), int) and meta["format"] > RESULTS_FORMAT:
        raise ResultsError(f"{path}/experiment.json: results format {meta['format']} is newer than this "
                           f"bnexp reads ({RESULTS_FORMAT}); upgrade bnexp")
    planned = meta.get("run_ids") if isinstance(meta.get("run_ids"), list) else None
    try:
        run_dirs = sorted(p for p in path.iterdir() if p.is_dir() and (p / SPEC).is_file())
    except OSError as error:
        raise ResultsError(f"{path}: cannot list the experiment folder ({error.strerror})") from None
    if planned is not None:
        stale = [p for p in run_dirs if p.name not in planned]
        if stale:
            warnings.append(f"{len(stale)} run folder(s) not in the current plan (experiment.json) were left out")
        run_dirs = [p for p in run_dirs if p.name in planned]

    records, history_rows, step_rows, missing = [], [], [], []
    point_keys: list[str] = []
    for run_dir in run_dirs:
        try:
            spec = _read_spec(run_dir)
        except (OSError, ValueError) as error:
            missing.append({"run_id": run_dir.name, "status": "damaged", "detail": f"{SPEC}: {error}"})
            continue
        point = spec.get("point") or {}
        point_keys.extend(k for k in point if k not in point_keys)
        meta.setdefault("arms", spec.get("arms"))
        meta.setdefault("reference_arm", spec.get("reference_arm"))
        config = spec.get("config") if isinstance(spec.get("config"), dict) else {}
        record = {"run_id": run_dir.name, "arm": spec["arm"], "seed": spec["seed"],
                  **{f"point:{k}": _point_value(v) for k, v in point.items()},
                  "status": "incomplete", "error": None, "num_classes": _num_classes(config)}
        if (run_dir / RESULT).is_file():
            try:
                result = _read_json(run_dir / RESULT)
                if result.get("status") not in RESULT_STATUSES:
                    raise ValueError(f"unknown status {result.get('status')!r}")
            except (OSError, ValueError) as error:
                missing.append({"run_id": run_dir.name, "arm": spec["arm"], "seed": spec["seed"],
                                "status": "damaged", "detail": f"{RESULT}: {error}"})
                continue
            record.update(_result_fields(result))
        records.append(record)
        try:
            epochs = read_history(run_dir / HISTORY)
        except (OSError, ValueError) as error:
            warnings.append(f"{run_dir.name}/{HISTORY} damaged ({error}): "
                            "its curves and steps-to-target are left out")
            epochs = []
        for row in epochs:
            history_rows.append({"run_id": run_dir.name, "epoch": row["epoch"], "step": _number(row.get("step")),
                                 **{m: _number(row.get(m)) for m in HISTORY_METRICS if m in row}})
            step_rows.extend((run_dir.name, _number(pair[0]), _number(pair[1]))
                             for pair in _list(row.get("step_losses")) if isinstance(pair, list) and len(pair) == 2)
    if planned is not None:
        started = {p.name for p in run_dirs}
        missing += [{"run_id": run_id, "status": "not started", "detail": "no spec.json yet"}
                    for run_id in planned if run_id not in started]

    keys = [k for k in (meta.get("sweep_keys") or []) if isinstance(k, str)]
    keys += [k for k in point_keys if k not in keys]
    runs = pd.DataFrame(records)
    arms = [str(a) for a in (meta.get("arms") or [])]
    arms += [a for a in dict.fromkeys(runs.arm if not runs.empty else []) if a not in arms]
    runs = _finish_runs(runs, keys, arms)
    history = pd.DataFrame(history_rows, columns=["run_id", "epoch", "step", *HISTORY_METRICS])
    if not runs.empty:
        history = history.merge(runs[["run_id", "arm", "seed", "point_id"]], on="run_id")
    runs = _add_final_values(runs, history)
    seeds = meta.get("seeds") or (sorted(set(runs.seed)) if not runs.empty else [])
    return Experiment(
        name=str(meta.get("experiment") or path.name), path=path, sweep_keys=keys, arms=arms,
        reference_arm=str(meta.get("reference_arm") or (arms[0] if arms else "")), seeds=list(seeds),
        planned=len(planned) if planned is not None else len(records) + len(missing),
        config_file=meta.get("config_file"), bnexp_version=meta.get("bnexp_version"),
        runs=runs, history=history,
        step_losses=pd.DataFrame(step_rows, columns=["run_id", "step", "loss"]),
        missing=pd.DataFrame(missing, columns=["run_id", "arm", "seed", "status", "detail"]),
        warnings=warnings,
    )


def _finish_runs(runs: pd.DataFrame, keys: list[str], arms: list[str]) -> pd.DataFrame:
    """Name the sweep-key columns, number the sweep points in sweep order, order the arms."""
    columns = ["epochs_run", "diverged_epoch", "test_loss", "test_accuracy", "test_error",
               "trainable_params", "non_trainable_params", "wall_seconds", "keras", "backend", "device"]
    if runs.empty:
        return pd.DataFrame(columns=["run_id", "arm", "seed", *keys, "status", "point_id", "arm_order"])
    runs = runs.reindex(columns=[*runs.columns, *(c for c in columns if c not in runs)])
    for key in keys:
        source = f"point:{key}"
        runs[key] = runs.pop(source) if source in runs else None
    points = list(runs[keys].itertuples(index=False, name=None)) if keys else [()] * len(runs)
    order = sorted(set(points), key=lambda p: tuple(_sort_key(v) for v in p))
    ids = {point: i for i, point in enumerate(order)}
    runs["point_id"] = [ids[p] for p in points]
    runs["arm_order"] = runs.arm.map({arm: i for i, arm in enumerate(arms)})
    return runs.sort_values(["point_id", "arm_order", "seed"], kind="stable").reset_index(drop=True)


def _add_final_values(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Final-epoch metrics per run, and the chance-level verdicts that depend on them."""
    if runs.empty:
        return runs
    final = stats.final_values(history).reindex(runs.run_id) if not history.empty else pd.DataFrame(index=runs.run_id)
    for metric in HISTORY_METRICS:
        runs[f"final_{metric}"] = final[metric].to_numpy() if metric in final else np.nan
    classes = pd.to_numeric(runs.num_classes, errors="coerce")
    runs["chance_threshold"] = [chance_threshold(k) if k >= 2 else np.nan for k in classes.fillna(0)]
    accuracy = runs.final_val_accuracy.fillna(runs.test_accuracy)
    runs["stuck"] = (runs.status == "completed") & (accuracy <= runs.chance_threshold)
    runs["trained"] = (runs.status == "completed") & ~runs.stuck
    return runs


# --- formatting for the page: cells are text, units live in the column headers --------------

def _fmt(value, spec: str, scale: float = 1.0, empty: str = "–") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return empty
    return format(value * scale, spec)


def _pct(value) -> str:
    return _fmt(value, ".2f", 100)


def _pp(value) -> str:
    return _fmt(value, "+.2f", 100)


def _p_value(value) -> str:
    if value is None or math.isnan(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _count(value) -> str:
    return _fmt(value, ",.0f")


def _key_columns(table: pd.DataFrame, keys: list[str]) -> dict:
    """The sweep values as columns named by their full dotted key: `model.dropout.rate` and
    `train.rate` would both be `rate`."""
    return {key: table[key].map(plots.format_value) for key in keys}


@dataclass
class Table:
    """A report table: `raw` goes to tables/<name>.csv, `display` onto the page (none if empty)."""

    name: str
    title: str
    raw: pd.DataFrame
    display: pd.DataFrame


@dataclass
class Plot:
    """A figure rendered to PNG bytes, saved as plots/<name>.png."""

    name: str
    caption: str
    png: bytes


@dataclass
class Section:
    """One part of the page: an explanation, then tables, figures and notes."""

    anchor: str
    title: str
    explanation: str
    tables: list[Table] = field(default_factory=list)
    figures: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    collapsed: bool = False


def _render(figure, name: str, caption: str) -> Plot:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return Plot(name, caption, buffer.getvalue())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text).strip("_")[:60]


def _test_error_section(exp: Experiment, colours: dict) -> Section:
    keys = exp.sweep_keys
    raw = stats.test_error_table(exp.runs, keys)
    epochs = [
        "–" if math.isnan(lo) else f"{lo:.0f}" if lo == hi else f"{lo:.0f}–{hi:.0f}"
        for lo, hi in zip(raw.epochs_min, raw.epochs_max)
    ]
    display = pd.DataFrame({
        **_key_columns(raw, keys), "arm": raw.arm, "runs": raw.runs.map(_count),
        "completed": raw.completed.map(_count), "diverged": raw.diverged.map(_count),
        "failed": raw.failed.map(_count), "incomplete": raw.incomplete.map(_count), "n": raw.n.map(_count),
        "test error (%)": raw.test_error_mean.map(_pct), "sd (pp)": raw.test_error_sd.map(_pct),
        "final train acc. (%)": raw.train_accuracy_mean.map(_pct),
        "final val. acc. (%)": raw.val_accuracy_mean.map(_pct), "epochs run": epochs,
    })
    section = Section(
        "test-error", "Test error",
        "Test error per sweep point and arm: mean and sample standard deviation over the n completed "
        "runs (diverged runs have no test error and are counted apart); final accuracies are from the "
        "last epoch of the completed runs.",
        tables=[Table("test_error", "Test error", raw, display)],
    )
    if not keys:
        section.figures.append(_render(plots.plot_error_bars(raw, exp.runs, exp.arms, colours), "test_error",
                                       "Test error per arm: bar at the mean with ± sd, one dot per completed seed"))
    classes = exp.runs.num_classes.dropna().unique()
    chance_error = 1 - 1 / classes[0] if len(classes) == 1 else None
    # A numeric key makes an x axis; categorical keys split panels (unless all are categorical).
    numeric = [k for k in keys if all(stats.is_number(v) for v in raw[k])]
    for key in numeric or keys[:1]:
        others = [k for k in keys if k != key]
        figure, left_out = plots.plot_error_vs(raw, key, others, exp.arms, colours, chance_error)
        caption = (f"Test error vs {plots.short_key(key)}, mean ± sd over the completed seeds; an X at "
                   "the top marks a point where runs diverged (diverged/finished runs)")
        if chance_error is not None:
            caption += "; dotted line, where errors come near it: chance"
        section.figures.append(_render(figure, f"test_error_vs_{_slug(plots.short_key(key))}", caption))
        if left_out:
            section.notes.append(f"Test error vs {plots.short_key(key)}: {left_out} panel(s) beyond the "
                                 f"first {plots.MAX_PANELS} are left out of the figure; the table has them all.")
    return section


def _paired_section(exp: Experiment) -> Section:
    keys, ref = exp.sweep_keys, exp.reference_arm
    raw = stats.paired_table(exp.runs, keys, exp.arms, ref)
    section = Section(
        "paired", f"Paired difference against {ref}",
        f"Each arm's test error minus {ref}'s, paired by seed at the same sweep point (negative: the arm "
        f"has the lower error). Mean over the pairs where both runs completed; 95% confidence interval "
        f"of the mean difference from the t distribution with pairs − 1 degrees of freedom; p-value of "
        f"a two-sided paired t-test (scipy.stats.ttest_rel). Wins count the seeds where the arm had the "
        f"lower error; a completed run beats a diverged one.",
    )
    if raw.empty:
        section.notes.append(f"No arm to compare with {ref}.")
        return section

    def interval(row) -> str:
        if row.pairs == 0:
            return "–"
        if row.pairs == 1:
            return "no interval (1 seed)"
        return f"[{_pp(row.ci_low)}, {_pp(row.ci_high)}]"

    display = pd.DataFrame({
        **_key_columns(raw, keys), "comparison": raw.arm + " − " + raw.reference,
        "pairs": raw.pairs.map(_count), "mean diff. (pp)": raw.diff_mean.map(_pp),
        "95% CI (pp)": [interval(row) for row in raw.itertuples()],
        "p (paired t-test)": raw.p_value.map(_p_value),
        "wins": [f"{w} of {d}" for w, d in zip(raw.wins, raw.decided)], "note": raw.note,
    })
    section.tables.append(Table("paired_difference", "Paired difference", raw, display))
    if len(keys) == 2:
        for arm in exp.arms:
            if arm != ref and (raw.arm == arm).any():
                figure = plots.plot_advantage(raw, keys[0], keys[1], arm, ref)
                section.figures.append(_render(
                    figure, f"advantage_{_slug(arm)}",
                    f"Mean paired test-error difference {arm} − {ref} (percentage points) over "
                    f"{plots.short_key(keys[0])} and {plots.short_key(keys[1])}; blue: {arm} better"))
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
        label = plots.point_label({k: runs[k].iloc[0] for k in exp.sweep_keys}) or exp.name
        figure = plots.plot_curves(exp.history[exp.history.point_id == point_id], exp.arms, colours, label)
        section.figures.append(_render(figure, f"curves_{number:02d}_{_slug(label)}", f"Curves: {label}"))
    return section


def _steps_section(exp: Experiment, colours: dict, metric: str | None, value: float | None) -> Section:
    keys, ref = exp.sweep_keys, exp.reference_arm
    target = stats.resolve_target(exp.runs, exp.history, keys, ref, metric, value)
    section = Section("steps", "Steps to target", "")
    if target is None:
        section.explanation = ("No target could be set: no completed run of the reference arm logged "
                               f"{metric or 'validation accuracy'}. Give a target value.")
        return section
    finer = " The training loss is also checked in the per-step log (train.log_every_steps)." \
        if target.metric == "loss" else ""
    section.explanation = (
        f"Target: {target.describe()} ({target.how}). First optimizer step, and the epoch it falls in, "
        f"at which each run reaches it, checked at the end of every epoch.{finer} Speed-up: {ref}'s mean "
        f"steps divided by the arm's, over the runs that reached it (5.00× = five times fewer steps)."
    )
    if target.metric not in exp.history or exp.history[target.metric].isna().all():
        section.notes.append(f"No run logged {target.metric}: every run shows as not reached.")
    per_run = stats.steps_per_run(exp.runs, exp.history, exp.step_losses, target)
    raw = stats.steps_table(exp.runs, per_run, keys, exp.arms, ref)
    if raw.empty:
        section.notes.append("No run has logged an epoch yet.")
        return section
    ranges = ["–" if reached == 0 else f"{low:,.0f}–{high:,.0f}"
              for reached, low, high in zip(raw.reached, raw.step_min, raw.step_max)]
    display = pd.DataFrame({
        **_key_columns(raw, keys), "arm": raw.arm,
        "reached": [f"{r} of {n}" for r, n in zip(raw.reached, raw.runs)],
        "steps (mean)": [s if r else "not reached" for s, r in zip(raw.step_mean.map(_count), raw.reached)],
        "steps (range)": ranges, "epoch (mean)": raw.epoch_mean.map(lambda e: _fmt(e, ".1f")),
        f"speed-up vs {ref}": [
            "" if arm == ref else _fmt(s, ".2f", empty="–") + ("×" if not math.isnan(s) else "")
            for arm, s in zip(raw.arm, raw.speedup)
        ],
        "note": raw.note,
    })
    per_run_raw = per_run.drop(columns=["point_id", "arm_order"]).merge(exp.runs[["run_id", *keys]], on="run_id")
    section.tables.append(Table("steps_to_target", "Steps to target", raw, display))
    section.tables.append(Table("steps_to_target_runs", "Steps to target per run", per_run_raw, pd.DataFrame()))
    figure, left_out = plots.plot_steps(raw, keys, exp.arms, colours, target.describe())
    section.figures.append(_render(figure, "steps_to_target", f"Optimizer steps until {target.describe()}"))
    if left_out:
        section.notes.append(f"The chart shows the first {plots.MAX_BAR_GROUPS} sweep points; the table has all.")
    return section


def _stability_section(exp: Experiment) -> Section:
    keys = exp.sweep_keys
    raw = stats.stability_table(exp.runs, keys)
    section = Section(
        "stability", "Stability",
        "Diverged runs (training loss NaN or infinite; the epoch where it happened) and completed runs "
        "stuck at chance: final validation accuracy (test accuracy without a validation split) at most "
        f"1/K + min({CHANCE_MARGIN * 100:.0f} points, half of 1/K) for K classes. A run trained if it "
        "completed and is not stuck.",
    )
    display = pd.DataFrame({
        **_key_columns(raw, keys), "arm": raw.arm, "finished": raw.finished.map(_count),
        "diverged": raw.diverged.map(_count), "diverged in epoch": raw.diverged_epochs.replace("", "–"),
        "stuck at chance": raw.stuck_at_chance.map(_count), "trained": raw.trained.map(_count),
    })
    section.tables.append(Table("stability", "Stability", raw, display))
    unknown = int(raw.chance_unknown.sum()) if not raw.empty else 0
    if unknown:
        section.notes.append(f"{unknown} completed run(s) have no known number of classes (data.num_classes "
                             "or a known dataset name); they were not checked for chance accuracy.")
    lr = stats.largest_lr_table(exp.runs, keys)
    if not lr.empty:
        others = [k for k in keys if k != stats.LEARNING_RATE_KEY]
        lr_display = pd.DataFrame({
            **_key_columns(lr, others), "arm": lr.arm, "learning rates tried": lr.learning_rates,
            "largest that trains": lr.largest_lr_that_trains.map(lambda v: _fmt(v, "g", empty="none")),
            "smallest that fails": lr.smallest_lr_that_fails.map(lambda v: _fmt(v, "g", empty="none")),
        })
        section.tables.append(Table("largest_learning_rate", "Largest learning rate that trains "
                                    "(every finished seed completed above chance)", lr, lr_display))
    return section


def _parameters_section(exp: Experiment) -> Section:
    raw = stats.parameter_table(exp.runs, exp.sweep_keys, exp.reference_arm)
    section = Section("parameters", "Parameter counts",
                      "Trainable and non-trainable parameters per arm as Keras counted them (result.json); "
                      "BN adds gamma and beta (trainable) and the moving mean and variance (non-trainable).")
    if raw.empty:
        section.notes.append("No finished run has recorded its parameter counts yet.")
        return section
    keys = [k for k in exp.sweep_keys if k in raw]
    display = pd.DataFrame({
        **_key_columns(raw, keys), "arm": raw.arm, "runs": raw.runs.map(_count),
        "trainable": raw.trainable.map(_count),
        "non-trainable": raw.non_trainable.map(_count), "total": raw.total.map(_count),
        f"trainable vs {exp.reference_arm}": raw.trainable_vs_reference.map(lambda v: _fmt(v, "+,.0f")),
    })
    section.tables.append(Table("parameters", "Parameter counts", raw, display))
    return section


def _missing_section(exp: Experiment) -> Section:
    unfinished = exp.runs[~exp.runs.status.isin(FINAL_STATUSES)]
    rows = [{"run_id": run.run_id, "arm": run.arm, "seed": run.seed,
             "point": plots.point_label({k: run[k] for k in exp.sweep_keys}), "status": run.status,
             "detail": (run.error if isinstance(run.error, str) else "") if run.status == "failed"
             else "spec.json but no result.json: running or interrupted"}
            for _, run in unfinished.iterrows()]
    raw = pd.concat([pd.DataFrame(rows, columns=["run_id", "arm", "seed", "point", "status", "detail"]),
                     exp.missing.assign(point="")], ignore_index=True)
    section = Section("missing", "Missing and incomplete runs",
                      "Runs of the plan that are not in the tables above: failed, still running or "
                      "interrupted, not started, or damaged (a run file that cannot be read). `bnexp run` "
                      "retries the failed and resumes the interrupted.")
    if raw.empty:
        section.explanation = f"All {exp.planned} planned runs finished; none is missing."
    display = pd.DataFrame({
        "run": raw.run_id, "arm": raw.arm.fillna(""), "seed": raw.seed.map(lambda v: _fmt(v, ".0f", empty="")),
        "point": raw.point, "status": raw.status, "detail": raw.detail,
    })
    section.tables.append(Table("missing", "Missing and incomplete runs", raw, display))
    section.notes.extend(exp.warnings)
    return section


def _runs_section(exp: Experiment) -> Section:
    runs, keys = exp.runs, exp.sweep_keys
    raw = runs.drop(columns=["point_id", "arm_order"])
    display = pd.DataFrame({
        "run": runs.run_id, "arm": runs.arm, "seed": runs.seed.astype(str), **_key_columns(runs, keys),
        "status": runs.status, "epochs": runs.epochs_run.map(_count),
        "test error (%)": runs.test_error.map(_pct), "test loss": runs.test_loss.map(lambda v: _fmt(v, ".4f")),
        "final train acc. (%)": runs.final_accuracy.map(_pct),
        "final val. acc. (%)": runs.final_val_accuracy.map(_pct),
        "wall time (s)": runs.wall_seconds.map(lambda v: _fmt(v, ".1f")),
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
        points = list(dict.fromkeys(plots.point_label({k: r[k] for k in keys}) for _, r in rows.iterrows()))
        more = f" and {len(points) - 4} more" if len(points) > 4 else ""
        return " (at " + "; ".join(points[:4]) + more + ")"

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
            spread = (f"{_pp(low.diff_mean.iloc[0])} pp{where(low)}" if len(rows) == 1 else
                      f"lowest {_pp(low.diff_mean.iloc[0])} pp{where(low)}, highest "
                      f"{_pp(high.diff_mean.iloc[0])} pp{where(high)}")
            text = (f"{arm} − {ref} mean test-error difference per sweep point: {spread}; {arm} is lower at "
                    f"{int((rows.diff_mean < 0).sum())} of {len(rows)} sweep point(s)")
        else:
            text = f"{arm} vs {ref}: mean test-error difference {_pp(rows.diff_mean.iloc[0])} pp"
        tested = rows[rows.ci_low.notna()]
        if tested.empty:
            text += f"; one seed{' per point' if keys else ''}: no confidence interval."
        elif keys:
            text += (f"; the 95% CI is below 0 (in {arm}'s favour) at {int((tested.ci_high < 0).sum())} and "
                     f"above 0 at {int((tested.ci_low > 0).sum())} of the {len(tested)} with 2+ seeds.")
        else:
            row = tested.iloc[0]
            verdict = "includes 0" if row.ci_low <= 0 <= row.ci_high else "excludes 0"
            text += (f", 95% CI [{_pp(row.ci_low)}, {_pp(row.ci_high)}] pp ({verdict}), paired t-test "
                     f"p = {_p_value(row.p_value)}; {arm} won {row.wins} of {row.decided} seeds.")
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


def _header_facts(exp: Experiment) -> list[tuple[str, str]]:
    runs = exp.runs
    counts = runs.status.value_counts()
    finished = int(counts.get("completed", 0) + counts.get("diverged", 0))
    status = ", ".join(f"{int(n)} {s}" for s, n in counts.items())
    if len(exp.missing):
        status += ", " + ", ".join(f"{int(n)} {s}" for s, n in exp.missing.status.value_counts().items())
    facts = [
        ("runs", f"{finished} of {exp.planned} finished ({status})"),
        ("arms", ", ".join(f"{a} (reference)" if a == exp.reference_arm else a for a in exp.arms)),
        ("seeds", ", ".join(str(s) for s in exp.seeds)),
    ]
    for key in exp.sweep_keys:
        values = sorted(set(runs[key]), key=_sort_key)
        facts.append((f"swept {key}", ", ".join(plots.format_value(v) for v in values)))
    if exp.config_file:
        facts.append(("config", exp.config_file))
    environments = runs.dropna(subset=["keras"])[["keras", "backend", "device"]].drop_duplicates()
    if not environments.empty:
        facts.append(("trained with", "; ".join(f"Keras {k} ({b}) on {d}" for k, b, d in
                                                environments.itertuples(index=False))))
    runner = f", runs from bnexp {exp.bnexp_version}" if exp.bnexp_version else ""
    facts.append(("report", f"bnexp {__version__}{runner}, "
                            f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"))
    return facts


CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #222; max-width: 1180px; margin: 0 auto; padding: 1.5em 2em 4em; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.15em 1em; color: #444; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
nav a { margin-right: 1em; }
p.explain { color: #444; max-width: 60em; }
.table-wrap { overflow-x: auto; margin: 0.8em 0; }
table { border-collapse: collapse; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
th { background: #f4f5f7; border-bottom: 2px solid #ccc; white-space: nowrap; }
td.num { text-align: right; white-space: nowrap; }
tbody tr:hover { background: #fafbfc; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13.5px; }
ul.notes { color: #8a5a00; }
ul.summary li { margin: 0.3em 0; }
"""

_NUMERIC_CELL = re.compile(r"^[-+−]?[\d,]*\.?\d+(×|%)?$|^\[.*\]$|^[–-]$|^< ?0\.\d+$")


def _html_table(display: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in display.columns)
    body = []
    for row in display.itertuples(index=False):
        cells = []
        for value in row:
            text = str(value)
            css = ' class="num"' if _NUMERIC_CELL.match(text) else ""
            cells.append(f"<td{css}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _md_table(display: pd.DataFrame) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in display.columns) + " |",
             "| " + " | ".join("---" for _ in display.columns) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in display.itertuples(index=False)]
    return "\n".join(lines)


def render_html(exp: Experiment, sections: list[Section]) -> str:
    """The report page: tables inline, figures as base64 PNG data URIs, no external resources."""
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _header_facts(exp))
    nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>bnexp report: {html.escape(exp.name)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{html.escape(exp.name)}</h1><dl class=\"facts\">{facts}</dl></header>",
        f"<nav>{nav}</nav>",
    ]
    for section in sections:
        parts.append(f'<section id="{section.anchor}"><h2>{html.escape(section.title)}</h2>')
        parts.append(f'<p class="explain">{html.escape(section.explanation)}</p>')
        if section.bullets:
            parts.append('<ul class="summary">' + "".join(f"<li>{html.escape(b)}</li>" for b in section.bullets)
                         + "</ul>")
        if section.collapsed:
            parts.append(f"<details><summary>Show {len(section.tables[0].display)} rows</summary>")
        shown = [table for table in section.tables if not table.display.empty]
        for table in shown:
            if len(shown) > 1:
                parts.append(f"<h3>{html.escape(table.title)}</h3>")
            parts.append(_html_table(table.display))
        if section.collapsed:
            parts.append("</details>")
        for plot in section.figures:
            data = base64.b64encode(plot.png).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(plot.caption)}">'
                         f"<figcaption>{html.escape(plot.caption)}</figcaption></figure>")
        if section.notes:
            parts.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in section.notes)
                         + "</ul>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(exp: Experiment, sections: list[Section]) -> str:
    """report.md: the page's content with tables in Markdown and links to plots/*.png."""
    lines = [f"# {exp.name}", ""]
    lines += [f"- **{k}**: {v}" for k, v in _header_facts(exp)]
    for section in sections:
        lines += ["", f"## {section.title}", "", section.explanation, ""]
        lines += [f"- {bullet}" for bullet in section.bullets] + ([""] if section.bullets else [])
        shown = [table for table in section.tables if not table.display.empty]
        for table in shown:
            if len(shown) > 1:
                lines += [f"### {table.title}", ""]
            lines += [_md_table(table.display), ""]
        lines += [f"![{plot.caption}](plots/{plot.name}.png)\n" for plot in section.figures]
        lines += [f"- {note}" for note in section.notes]
    return "\n".join(lines).rstrip() + "\n"


def build_sections(exp: Experiment, target_metric: str | None = None,
                   target_value: float | None = None) -> list[Section]:
    """Every section of an experiment's report, tables computed and figures rendered."""
    colours = plots.arm_colours(exp.arms, exp.reference_arm)
    paired = _paired_section(exp)
    stability = _stability_section(exp)
    summary = _summary_section(exp, paired.tables[0].raw if paired.tables else pd.DataFrame(),
                               stability.tables[0].raw)
    return [
        summary,
        _test_error_section(exp, colours),
        paired,
        _curves_section(exp, colours),
        _steps_section(exp, colours, target_metric, target_value),
        stability,
        _parameters_section(exp),
        _missing_section(exp),
        _runs_section(exp),
    ]


def write_report(experiment_dir: Path, *, target_metric: str | None = None,
                 target_value: float | None = None) -> Path:
    """Write `<experiment_dir>/report/` and return its path.

    Raises ResultsError when the folder holds no run that has started.
    """
    exp = load_experiment(Path(experiment_dir))
    if exp.runs.empty:
        raise ResultsError(f"{experiment_dir}: no run has started yet ({exp.planned} planned); "
                           "run `bnexp run CONFIG` first")
    return _write(exp, build_sections(exp, target_metric, target_value))


def _write(exp: Experiment, sections: list[Section]) -> Path:
    """Write the report files into a staging folder, then swap it in for any previous report."""
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=exp.path))
    target = exp.path / REPORT_DIR
    try:
        (staging / "tables").mkdir()
        (staging / "plots").mkdir()
        for section in sections:
            for table in section.tables:
                table.raw.to_csv(staging / "tables" / f"{table.name}.csv", index=False)
            for plot in section.figures:
                (staging / "plots" / f"{plot.name}.png").write_bytes(plot.png)
        (staging / "index.html").write_text(render_html(exp, sections), encoding="utf-8")
        (staging / "report.md").write_text(render_markdown(exp, sections), encoding="utf-8")
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=".report-old-", dir=exp.path))
            target.rename(old / REPORT_DIR)
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_reports(results_dir: Path, target: str | None = None, *, target_metric: str | None = None,
                  target_value: float | None = None) -> list[Path]:
    """Write a report for each experiment `target` names and return the report folders.

    `target` is an experiment name under `results_dir`, a path to an experiment folder or to
    a results folder; None means every experiment under `results_dir`. `target_metric`
    (val_accuracy, accuracy, loss or val_loss) and `target_value` set the steps-to-target
    threshold; by default it is 90% of the reference arm's best mean final validation
    accuracy. Experiments where no run has started are skipped when reporting several; a
    call that finds nothing to report raises ResultsError with a one-line message.
    """
    results_dir = Path(results_dir)
    dirs = experiment_dirs(results_dir, target)
    if len(dirs) == 1:
        return [write_report(dirs[0], target_metric=target_metric, target_value=target_value)]
    reports = []
    for experiment_dir in dirs:
        exp = load_experiment(experiment_dir)
        if not exp.runs.empty:
            reports.append(_write(exp, build_sections(exp, target_metric, target_value)))
    if not reports:
        raise ResultsError(f"{results_dir}: no experiment has a started run yet; run `bnexp run CONFIG` first")
    return reports
