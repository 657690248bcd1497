"""`bnexp status`: the state of every run of an experiment, read from the results folder alone.

Imports nothing heavy, so it answers at once, even while a sweep trains.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bnexp.store import DAMAGED, EXPERIMENT, SPEC, STATUSES, Run, experiment_dirs, open_runs, read_experiment


def experiments_status(results_dir: Path, target: str | None = None) -> str:
    """One table per experiment `target` names (see store.experiment_dirs): each run's state,
    epochs and outcome."""
    return "\n\n".join(experiment_status(folder) for folder in experiment_dirs(results_dir, target))


def experiment_status(folder: Path) -> str:
    try:
        plan = read_experiment(folder)
    except (OSError, ValueError):
        plan = None
    note = ""
    if plan is not None and isinstance(plan.get("run_ids"), list):
        run_ids = [str(run_id) for run_id in plan["run_ids"]]
    else:
        # Without a readable plan the run folders are all there is to list.
        run_ids = sorted(child.name for child in folder.iterdir() if (child / SPEC).is_file())
        if (folder / EXPERIMENT).exists():
            note = f"; {EXPERIMENT} is damaged, so only the run folders are listed"
    arms = [str(arm) for arm in plan["arms"]] if plan is not None and isinstance(plan.get("arms"), list) else None
    rows = [run_row(run) for run in open_runs(folder, run_ids, arms)]
    header = {"run": "run id", "status": "status", "epochs": "epochs", "detail": "detail"}
    widths = {key: max(len(row[key]) for row in [header, *rows]) for key in ("run", "status", "epochs")}
    lines = [
        "  ".join([row["run"].ljust(widths["run"]), row["status"].ljust(widths["status"]),
                   row["epochs"].rjust(widths["epochs"]), row["detail"]]).rstrip()
        for row in [header, *rows]
    ]
    counts = Counter(row["status"] for row in rows)
    totals = ", ".join(f"{counts[state]} {state}" for state in STATUSES if counts[state])
    lines.append(f"\n{folder.name}: {len(rows)} runs: {totals or 'none planned'} ({folder}){note}")
    return "\n".join(lines)


def run_row(run: Run) -> dict[str, str]:
    """The run's id, state, epochs done out of planned, and its outcome or what happens next."""
    epochs = f"{len(run.history)}/{run.epochs_planned}" if run.spec is not None and run.status != DAMAGED else ""
    return {"run": run.id, "status": run.status, "epochs": epochs, "detail": run.detail}
