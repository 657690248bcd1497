"""Writes, per experiment, `report/` with `index.html` (one self-contained page), `report.md`,
`tables/*.csv` (full precision) and `plots/*.png` from the sections (bnexp.report.sections).

It never imports TensorFlow or Keras, so it stays fast and works while a sweep is running:
runs still training, interrupted, failed or unreadable are listed, not dropped.
"""

from __future__ import annotations

from pathlib import Path

from bnexp.errors import ResultsError
from bnexp.report.load import Experiment, load_experiment
from bnexp.report.page import Section, report_files
from bnexp.report.sections import build_sections, header_facts
from bnexp.store import experiment_dirs, write_tree

REPORT_DIR = "report"


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
    """Write the report folder in one piece (store.write_tree), replacing any previous report."""
    target = exp.path / REPORT_DIR
    write_tree(target, report_files(exp.name, header_facts(exp), sections))
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
