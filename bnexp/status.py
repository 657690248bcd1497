"""`bnexp status`: the state of every run of an experiment, read from the results folder alone.

Imports nothing heavy, so it answers at once, even while a sweep trains.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bnexp.store import (CHECKPOINT, COMPLETED, DAMAGED, DIVERGED, EXPERIMENT, FAILED, HISTORY, INCOMPLETE, PENDING,
                         RESULT, RUNNING, SPEC, STATUSES, check_format, experiment_dirs, read_experiment,
                         read_history, read_json, run_damage, run_status)


def sweep_status(results_dir: Path, target: str | None = None) -> str:
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
    rows = [run_row(folder / run_id) for run_id in run_ids]
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


def run_row(run_dir: Path) -> dict[str, str]:
    """The run's id, state, epochs done out of planned, and its outcome or what happens next."""
    damage = run_damage(run_dir)
    if damage:
        return {"run": run_dir.name, "status": DAMAGED, "epochs": "", "detail": damage}
    check_format(run_dir / SPEC)
    status = run_status(run_dir)
    spec, result = read_json(run_dir / SPEC) or {}, read_json(run_dir / RESULT) or {}
    config = spec.get("config") if isinstance(spec.get("config"), dict) else {}
    planned = (config.get("train") if isinstance(config.get("train"), dict) else {}).get("epochs", "?")
    done = len(read_history(run_dir / HISTORY))
    # As the report reads it: test_error, else 1 - test_accuracy (results that only have the latter).
    error, accuracy = result.get("test_error"), result.get("test_accuracy")
    if not _is_number(error) and _is_number(accuracy):
        error = 1 - accuracy
    if status == COMPLETED and not _is_number(error):
        return {"run": run_dir.name, "status": DAMAGED, "epochs": "",
                "detail": f"{RESULT}: test_error: expected a number for a completed run, got {result.get('test_error')!r}"}
    detail = {
        COMPLETED: lambda: f"test error {error:.4f}",
        DIVERGED: lambda: f"loss NaN or infinite in epoch {result.get('diverged_epoch')}" + _steps(result),
        FAILED: lambda: f"{result.get('error')} (retried by the next bnexp run)",
        RUNNING: lambda: "another bnexp process holds its lock",
        INCOMPLETE: lambda: ("interrupted; resumes from its last checkpoint" if (run_dir / CHECKPOINT).exists()
                               else "interrupted; restarts from epoch 1"),
        PENDING: lambda: "",
    }.get(status, lambda: "")()
    return {"run": run_dir.name, "status": status, "epochs": f"{done}/{planned}" if spec else "", "detail": detail}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _steps(result: dict) -> str:
    """The optimizer steps between which the loss went NaN, when the run recorded them."""
    steps = result.get("diverged_steps")
    return f" (steps {steps[0]}-{steps[1]})" if isinstance(steps, list) and len(steps) == 2 else ""
