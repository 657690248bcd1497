"""An experiment's results as pandas frames: `load_experiment(path)` reads what `bnexp run` wrote
(through bnexp.store's readers) into one row per run, one per run and epoch, one per logged step.

The report's tables are built from these frames, and a notebook can use them directly, tables
included (`Experiment.tables`). Never imports TensorFlow or Keras, so it stays fast and works
while a sweep is running: runs still training, interrupted, failed or unreadable are listed, not
dropped.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bnexp.errors import ResultsError
from bnexp.report.tables import report_tables
from bnexp.report.values import chance_threshold, final_values, is_number, sort_key
from bnexp.metrics import EPOCH_METRICS, EVAL_STATISTICS, VAL_ACCURACY, VAL_LOSS
from bnexp.store import (ACTIVATION_STATISTICS, ACTIVATIONS, COMPLETED, DAMAGED, EXPERIMENT, PENDING, RESULT_FIELDS,
                         SPEC, STATUS_TEXTS, RunFacts, norm_label, open_runs, read_activations, read_experiment)

STEP_EVAL_COLUMNS = ["run_id", "step", VAL_LOSS, VAL_ACCURACY]
ACTIVATION_COLUMNS = ["run_id", "step", "position", *ACTIVATION_STATISTICS]


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
    # [run_id, step, val_loss, val_accuracy] from history.jsonl's step_evals (train.eval_every_steps)
    step_evals: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=STEP_EVAL_COLUMNS))
    # [run_id, step, position, p15, p50, p85, mean, std] from activations.jsonl (train.activation_stats_every)
    activations: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ACTIVATION_COLUMNS))

    @functools.cached_property
    def tables(self) -> dict[str, pd.DataFrame]:
        """The report's tables by file name (tables/<name>.csv), with its default steps-to-target
        threshold; computed on first use."""
        return report_tables(self)


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


def _fact_columns(facts: RunFacts) -> dict:
    """The columns a run's recorded facts (store.RunFacts) contribute to the runs table."""
    return {"num_classes": facts.get("num_classes"), "norm": norm_label(facts),
            "builder": facts.get("builder"), "precise_stats": facts.get("precise_stats", 0)}


# result.json's numeric fields, as numbers (NaN for null) in the runs table.
NUMERIC_RESULT_FIELDS = [name for name in RESULT_FIELDS
                         if name not in ("status", "error", "diverged_steps", "num_classes", "started_at",
                                         "finished_at", "environment", "resumed_from_epoch", "eval_statistics")]


def _result_fields(result: dict) -> dict:
    """The columns a run's result.json contributes to the runs table."""
    fields = {"status": result["status"], "error": result.get("error")}
    for name in NUMERIC_RESULT_FIELDS:
        fields[name] = _number(result.get(name))
    steps = result.get("diverged_steps")  # as "410–420": the last finite step and the first NaN/inf one
    fields["diverged_steps"] = "–".join(str(int(v)) for v in steps) \
        if isinstance(steps, list) and len(steps) == 2 and all(is_number(v) for v in steps) else None
    if math.isnan(fields["test_error"]) and not math.isnan(fields["test_accuracy"]):
        fields["test_error"] = 1 - fields["test_accuracy"]
    statistics = result.get("eval_statistics")
    if isinstance(statistics, dict):  # test_error_moving, ...: columns only where some run has them (BN arms)
        for name in EVAL_STATISTICS:
            scores = statistics.get(name) if isinstance(statistics.get(name), dict) else {}
            fields[f"test_error_{name}"] = _number(scores.get("test_error"))
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
    report's warnings or missing-runs table; a run without result.json is `running` while another
    process holds its lock, else `incomplete` (interrupted). Only files in another results format
    (store.check_format) and a directory that cannot be listed raise ResultsError.
    """
    path = Path(path)
    warnings: list[str] = []
    meta: dict = {}
    try:
        meta = read_experiment(path) or {}
    except (OSError, ValueError) as error:
        warnings.append(f"{EXPERIMENT} damaged ({error}); the plan was rebuilt from the run folders")
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

    records, history_rows, step_rows, eval_rows, activation_rows, missing = [], [], [], [], [], []
    point_keys: list[str] = []
    planned_arms = [str(a) for a in meta["arms"]] if isinstance(meta.get("arms"), list) else None
    for run in open_runs(path, [p.name for p in run_dirs], planned_arms):
        if run.recorded_status == DAMAGED:  # spec or result unreadable or untrusted; a damaged history: a warning
            identity = {"arm": run.spec["arm"], "seed": run.spec["seed"]} if run.spec is not None else {}
            missing.append({"run_id": run.id, **identity, "status": DAMAGED, "detail": run.damage})
            continue
        spec = run.spec
        point = spec.get("point") or {}
        point_keys.extend(k for k in point if k not in point_keys)
        meta.setdefault("arms", spec.get("arms"))
        meta.setdefault("reference_arm", spec.get("reference_arm"))
        record = {"run_id": run.id, "arm": spec["arm"], "seed": spec["seed"],
                  **{f"point:{k}": _point_value(v) for k, v in point.items()},
                  "status": run.recorded_status, "error": None, **_fact_columns(run.facts),
                  "history_damaged": run.history_damaged}
        if run.result is not None:
            record.update(_result_fields(run.result))
        records.append(record)
        if run.history_damaged:
            file, _, reason = run.damage.partition(": ")
            warnings.append(f"{run.id}/{file} damaged ({reason}): its curves and steps-to-target are left out")
        for row in run.history:
            history_rows.append({"run_id": run.id, "epoch": row["epoch"], "step": _number(row.get("step")),
                                 **{m: _number(row.get(m)) for m in EPOCH_METRICS if m in row}})
            step_rows.extend((run.id, _number(pair[0]), _number(pair[1]))
                             for pair in _list(row.get("step_losses")) if isinstance(pair, list) and len(pair) == 2)
            eval_rows.extend((run.id, *map(_number, triple)) for triple in _list(row.get("step_evals"))
                             if isinstance(triple, list) and len(triple) == 3)
        activation_rows.extend(_activation_rows(run.id, run.path, warnings))
    if planned is not None:
        started = {p.name for p in run_dirs}
        missing += [{"run_id": run_id, "status": PENDING, "detail": STATUS_TEXTS[PENDING]}
                    for run_id in planned if run_id not in started]

    keys = [k for k in (meta.get("sweep_keys") or []) if isinstance(k, str)]
    keys += [k for k in point_keys if k not in keys]
    runs = pd.DataFrame(records)
    arms = [str(a) for a in (meta.get("arms") or [])]
    arms += [a for a in dict.fromkeys(runs.arm if not runs.empty else []) if a not in arms]
    runs = _finish_runs(runs, keys, arms)
    history = pd.DataFrame(history_rows, columns=["run_id", "epoch", "step", *EPOCH_METRICS])
    if not runs.empty:
        history = history.merge(runs[["run_id", "arm", "seed", *keys, "point_id"]], on="run_id")
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
        warnings=warnings, step_evals=pd.DataFrame(eval_rows, columns=STEP_EVAL_COLUMNS),
        activations=pd.DataFrame(activation_rows, columns=ACTIVATION_COLUMNS),
    )


def _activation_rows(run_id: str, run_dir: Path, warnings: list[str]) -> list[tuple]:
    """(run_id, step, position, statistics...) for each position of each row of the run's activations.jsonl."""
    try:
        rows = read_activations(run_dir / ACTIVATIONS)
    except (OSError, ValueError) as error:
        warnings.append(f"{run_id}/{ACTIVATIONS} damaged ({error}): its activation statistics are left out")
        return []
    return [(run_id, row["step"], str(name), *(_number(stats.get(s)) for s in ACTIVATION_STATISTICS))
            for row in rows for name, stats in row["positions"].items() if isinstance(stats, dict)]


def _finish_runs(runs: pd.DataFrame, keys: list[str], arms: list[str]) -> pd.DataFrame:
    """Name the sweep-key columns, number the sweep points in sweep order, order the arms."""
    columns = [*NUMERIC_RESULT_FIELDS, "diverged_steps", "keras", "backend", "device"]
    if runs.empty:
        return pd.DataFrame(columns=["run_id", "arm", "seed", *keys, "status", "point_id", "arm_order"])
    runs = runs.reindex(columns=[*runs.columns, *(c for c in columns if c not in runs)])
    for key in keys:
        source = f"point:{key}"
        runs[key] = runs.pop(source) if source in runs else None
    points = list(runs[keys].itertuples(index=False, name=None)) if keys else [()] * len(runs)
    order = sorted(set(points), key=lambda p: tuple(sort_key(v) for v in p))
    ids = {point: i for i, point in enumerate(order)}
    runs["point_id"] = [ids[p] for p in points]
    runs["arm_order"] = runs.arm.map({arm: i for i, arm in enumerate(arms)})
    # What identifies a run first, as a notebook reader looks for it.
    first = ["run_id", "arm", "seed", *keys]
    runs = runs[[*first, *(c for c in runs.columns if c not in first)]]
    return runs.sort_values(["point_id", "arm_order", "seed"], kind="stable").reset_index(drop=True)


def _add_final_values(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Final-epoch metrics per run, and the chance-level verdicts that depend on them."""
    if runs.empty:
        return runs
    final = final_values(history).reindex(runs.run_id) if not history.empty else pd.DataFrame(index=runs.run_id)
    for metric in EPOCH_METRICS:
        runs[f"final_{metric}"] = final[metric].to_numpy() if metric in final else np.nan
    classes = pd.to_numeric(runs.num_classes, errors="coerce")
    majority = pd.to_numeric(runs.majority_share, errors="coerce").fillna(np.nan)
    # A run whose history.jsonl is damaged has no final validation accuracy: its test accuracy is not the
    # number the chance level was set for, so whether it is stuck is unknown, not guessed.
    runs["chance_threshold"] = [chance_threshold(k, m) if k >= 2 and not damaged else np.nan
                                for k, m, damaged in zip(classes.fillna(0), majority, runs.history_damaged)]
    accuracy = runs.final_val_accuracy.fillna(runs.test_accuracy)
    runs["stuck"] = (runs.status == COMPLETED) & (accuracy <= runs.chance_threshold)
    runs["trained"] = (runs.status == COMPLETED) & ~runs.stuck
    return runs
