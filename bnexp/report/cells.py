"""Cells for the report's pages: numbers and sweep values as text, with the units in the column headers.

Sweep values are written here as labels (0.001, relu); validation.format_value writes them for error
messages instead (repr: 'relu' quoted, mappings as YAML), so the two differ on purpose.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bnexp.config import keypaths


def value_label(value) -> str:
    """A sweep value as written in labels and cells: numbers in short form, anything else as text."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def point_label(values: dict) -> str:
    """`learning_rate=0.01, activation=relu` for a sweep point given as {key: value}."""
    return keypaths.point_label(values, short=True, value=value_label)


def fmt(value, spec: str, scale: float = 1.0, empty: str = "–") -> str:
    """`value * scale` in format `spec`; `empty` for a missing value. A value that rounds to zero
    is written without a sign: "-0.00" would claim a direction the digits do not show."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return empty
    text = format(value * scale, spec)
    if not any(digit in text for digit in "123456789") and "n" not in text:  # not inf or nan
        text = text.lstrip("+-")
    return text


def pct(value) -> str:
    """A fraction as a percentage (the header says %)."""
    return fmt(value, ".2f", 100)


def pp(value) -> str:
    """A difference of fractions in signed percentage points."""
    return fmt(value, "+.2f", 100)


def p_value_text(value) -> str:
    if value is None or math.isnan(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def count(value) -> str:
    return fmt(value, ",.0f")


def key_columns(table: pd.DataFrame, keys: list[str]) -> dict:
    """The sweep values as columns named by their full dotted key: `model.dropout.rate` and
    `train.rate` would both be `rate`."""
    return {key: table[key].map(value_label) for key in keys}
