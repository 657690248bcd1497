"""`bnexp plan`: the table of an experiment's runs and its totals, after the checks `bnexp run`
makes that need no training (bnexp.checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from bnexp.checks import audit_builders, check_runs, check_same_experiment, model_key
from bnexp.config.schema import ExperimentConfig
from bnexp.store import FINAL_STATUSES, PENDING, norm_label, open_run, run_dir
from bnexp.sweep import UNKNOWN_DATA, RunSpec, load_runs


def plan_experiment(config_file: Path, overrides: Sequence[str] = (), sweeps: Sequence[str] = (), *,
                    results_dir: Path = Path("results"), data_dir: Path | None = None) -> str:
    """`bnexp plan`: the table of the experiment's runs (sweep values, arm, seed, run id, normalisation
    kind, parameter counts, status) and its totals, after the checks `bnexp run` makes that need no training."""
    config_file, results_dir = Path(config_file), Path(results_dir)
    experiment, runs = load_runs(config_file, overrides, sweeps, data_dir)
    check_same_experiment(experiment, runs, results_dir, config_file)
    return plan_table(experiment, runs, results_dir, data_dir)


def plan_table(experiment: ExperimentConfig, runs: list[RunSpec], results_dir: Path, data_dir: Path | None) -> str:
    import pandas as pd

    checked = check_runs(runs, data_dir, strict=False)
    rows = []
    for spec in runs:
        trainable, frozen = checked.params.get(model_key(spec), ("?", "?"))
        rows.append({
            **{key: value for key, value in spec.point.items()},
            "arm": spec.arm,
            "seed": spec.seed,
            "run id": spec.run_id,
            "norm": norm_label(spec.facts(), compact=True),
            "trainable": trainable,
            "non-trainable": frozen,
            "status": PENDING if spec.data_error else open_run(run_dir(results_dir, spec.experiment, spec.run_id)).status,
        })
    table = pd.DataFrame(rows).to_string(index=False)
    points = len(runs) // (len(experiment.arms) * len(experiment.seeds))
    statuses = pd.Series([row["status"] for row in rows]).value_counts()
    done = sum(statuses.get(status, 0) for status in FINAL_STATUSES)
    totals = (f"{experiment.name}: {len(runs)} runs = {points} sweep point(s) x {len(experiment.arms)} arm(s) "
              f"x {len(experiment.seeds)} seed(s); {done} complete, {len(runs) - done} to run "
              f"(results in {results_dir / experiment.name})")
    notes = [f"warning: {warning}" for warning in checked.warnings] + audit_builders(runs, checked)
    from bnexp.data.datasets import describe_images

    image_folders = dict.fromkeys(spec.config.data for spec in runs
                                  if spec.config.data.dataset == "images" and not spec.data_error)
    notes += [f"data: {describe_images(data, data_dir)}" for data in image_folders]
    if checked.missing:
        notes += [f"run ids end in '{UNKNOWN_DATA}' until the data file is there: an id covers the file's content",
                  f"parameter counts need the data ('?' above): {checked.missing}"]
    return "\n".join([table, "", totals, *notes])
