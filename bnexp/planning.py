"""`bnexp plan`: the runs of an experiment as a table, with parameter counts and status."""

from __future__ import annotations

import json
from pathlib import Path

from bnexp.config import ExperimentConfig, RunConfig
from bnexp.errors import DataError
from bnexp.store import run_status
from bnexp.sweep import RunSpec


def plan_table(experiment: ExperimentConfig, runs: list[RunSpec], results_dir: Path, data_dir: Path | None) -> str:
    import pandas as pd

    params, missing_data = parameter_counts(runs, data_dir)
    rows = []
    for spec in runs:
        trainable, frozen = params.get(_model_key(spec), ("?", "?"))
        rows.append({
            **{key: value for key, value in spec.point.items()},
            "arm": spec.arm,
            "seed": spec.seed,
            "run id": spec.run_id,
            "trainable": trainable,
            "non-trainable": frozen,
            "status": run_status(results_dir / spec.experiment / spec.run_id),
        })
    table = pd.DataFrame(rows).to_string(index=False)
    points = len(runs) // (len(experiment.arms) * len(experiment.seeds))
    statuses = pd.Series([row["status"] for row in rows]).value_counts()
    done = statuses.get("completed", 0) + statuses.get("diverged", 0)
    totals = (f"{experiment.name}: {len(runs)} runs = {points} sweep point(s) x {len(experiment.arms)} arm(s) "
              f"x {len(experiment.seeds)} seed(s); {done} complete, {len(runs) - done} to run "
              f"(results in {results_dir / experiment.name})")
    note = f"\nparameter counts need the data ('?' above): {missing_data}" if missing_data else ""
    return f"{table}\n\n{totals}{note}"


def parameter_counts(runs: list[RunSpec], data_dir: Path | None) -> tuple[dict[str, tuple[int, int]], str | None]:
    """(trainable, non-trainable) per distinct model and input shape, building each model once;
    and why some are missing: a CSV or npz config needs its file to know the input size."""
    from bnexp.data import dataset_info
    from bnexp.models import build_model, count_params

    counts, missing = {}, None
    for spec in runs:
        key = _model_key(spec)
        if key not in counts:
            config = RunConfig.model_validate(spec.config)
            try:
                input_shape, num_classes = dataset_info(config.data, data_dir)
            except DataError as exc:
                missing = str(exc)
                continue
            counts[key] = count_params(build_model(config.model, input_shape, num_classes, config.seed))
    return counts, missing


def _model_key(spec: RunSpec) -> str:
    return json.dumps([spec.config["model"], spec.config["data"]], sort_keys=True)
