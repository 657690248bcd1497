"""bnexp: paired with/without-BatchNormalization experiments from one YAML file."""

from __future__ import annotations

import os

__version__ = "0.1.0"


def load_experiment(path: str | os.PathLike):
    """Read one experiment's results folder (results/<name>) into pandas frames.

    Returns a bnexp.report.load.Experiment: `runs` (one row per run: run_id, arm, seed, the swept
    values, status, test metrics, final epoch metrics), `history` (one row per run and epoch),
    `tables` (the report's tables by their file name: "test_error", "paired_difference", ...),
    and `step_losses`, `missing`, `warnings`. The report reads results through the same loader;
    neither imports TensorFlow or Keras.
    """
    # Imported here so that `import bnexp` (and `bnexp --help`) stays free of pandas.
    from bnexp.report.load import load_experiment as load

    return load(_experiment_folder(path))


def _experiment_folder(path: str | os.PathLike):
    """`path` when it is an experiment folder; else ResultsError saying which folder to pass instead
    (a results folder, a run folder and a report folder are not experiments)."""
    from pathlib import Path

    from bnexp.errors import ResultsError
    from bnexp.report.write import REPORT_DIR
    from bnexp.store import SPEC, is_experiment_dir

    path = Path(path)
    if not path.is_dir() or is_experiment_dir(path):  # a folder not there: the loader's one-line error
        return path
    if (path / SPEC).is_file() or (path.name == REPORT_DIR and is_experiment_dir(path.parent)):
        what = "a run folder" if (path / SPEC).is_file() else "the report folder"
        raise ResultsError(f"{path}: {what} of experiment '{path.parent.name}'; pass the experiment "
                           f"folder: bnexp.load_experiment({str(path.parent)!r})")
    inner = sorted(child for child in path.iterdir() if child.is_dir() and is_experiment_dir(child))
    if inner:
        names = ", ".join(folder.name for folder in inner)
        raise ResultsError(f"{path}: a results folder holding experiment(s) {names}; pass one of them: "
                           f"bnexp.load_experiment({str(inner[0])!r})")
    raise ResultsError(f"{path}: not an experiment folder (experiment.json, or run folders with spec.json)")
