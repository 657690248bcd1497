"""`bnexp plan`: the runs of an experiment as a table, with parameter counts and status."""

from __future__ import annotations

import json
from pathlib import Path

from bnexp.config import ExperimentConfig, RunConfig
from bnexp.store import run_status
from bnexp.sweep import RunSpec


def plan_table(experiment: ExperimentConfig, runs: list[RunSpec], results_dir: Path, data_dir: Path | None) -> str:
    import pandas as pd

    params = parameter_counts(runs, data_dir)
    rows = []
    for spec in runs:
        trainable, frozen = params[_model_key(spec)]
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
    return f"{table}\n\n{totals}"


def parameter_counts(runs: list[RunSpec], data_dir: Path | None) -> dict[str, tuple[int, int]]:
    """(trainable, non-trainable) per distinct model and input shape; builds each model once."""
    from bnexp.data import dataset_info
    from bnexp.models import build_model, count_params

    counts = {}
    for spec in runs:
        key = _model_key(spec)
        if key not in counts:
            config = RunConfig.model_validate(spec.config)
            input_shape, num_classes = dataset_info(config.data, data_dir)
            counts[key] = count_params(build_model(config.model, input_shape, num_classes, config.seed))
    return counts


def _model_key(spec: RunSpec) -> str:
    return json.dumps([spec.config["model"], spec.config["data"]], sort_keys=True)
