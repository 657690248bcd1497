"""Values as the report reads and ranks them: what counts as a number, the order of sweep values, the
chance level, a run's last logged epoch. Shared by the loader, the tables and the plots."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# A completed run is "stuck at chance" when its final accuracy is at most chance plus this
# margin: 5 points, or half the chance rate when that is smaller (many classes).
CHANCE_MARGIN = 0.05


def is_number(value) -> bool:
    """True for ints and floats (numpy's too), False for bools, text and everything else."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def sort_key(value) -> tuple:
    """Numbers in numeric order, then text, then missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, 0.0, "")
    if is_number(value):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def chance_threshold(num_classes: float, majority_share: float = math.nan) -> float:
    """Highest final accuracy that still counts as stuck at chance for `num_classes` classes: chance is 1/K, or
    the share of the most common class when it is larger (always answering that class scores it); NaN for
    `majority_share` (results from before bnexp recorded it) assumes balanced classes."""
    chance = 1 / num_classes
    if not math.isnan(majority_share):
        chance = max(chance, majority_share)
    return chance + min(CHANCE_MARGIN, chance / 2)


def final_values(history: pd.DataFrame) -> pd.DataFrame:
    """The last logged epoch of each run, indexed by run id."""
    return history.sort_values(["run_id", "epoch"]).groupby("run_id").tail(1).set_index("run_id")
