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

    return load(path)
