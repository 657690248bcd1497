"""What `data.scaling` does to a dataset's inputs, whatever dtype they were stored in: the full scale
`unit` divides each dtype and range by, the scaling an unset data.scaling picks, and the data that
does not look like what a scaling assumes (DataError, one line; or a warning).

- unit divides by the full scale the values are stored at: bool by 1, uint8 by 255, uint16 by 65535,
  other integers within 0..255 by 255 (8-bit values in a wider type), floats within [0, 1] by 1
  (already unit), floats within [0, 255] by 255. Refused: negative values, values beyond those ranges
  (no full scale to divide by), and values that reach at most a 16th of their full scale (uint8 0/1
  masks, 12-bit data in uint16, float features below 16 read as 8-bit): dividing those by 255 or
  65535 would squeeze them near 0.
- standardize: (x - mean) / std per feature (tables) or per channel (images), from the training rows.
- none: the values as float32.
- unset: standardize for a CSV; unit for mnist, fashion_mnist, cifar10 and image folders; for an npz,
  unit where a part looks like intensities (a full scale as above, reached above a 16th of it), else
  none, with a warning when values pass 255 (such inputs train poorly).

standardize and none give x_test x_train's scale, so an npz whose parts are stored at different full
scales (uint8 and floats within [0, 1]) is refused with them; unit divides each part by its own, except
float parts whose guessed full scales disagree (floats 0..20 beside floats 0..1), which it refuses.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bnexp.errors import DataError

_BIT_DEPTHS = {np.dtype(np.bool_): 1, np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}


class Values(NamedTuple):
    """The range of one stored part: x_train or x_test of an npz, a CSV's features, an image folder."""

    where: str  # the file, and the key within it, for messages
    dtype: np.dtype
    low: float
    high: float
    stored: str  # what messages call the values: their dtype, or "CSV" for a table bnexp read as float32


def values(where: str, *arrays: np.ndarray, stored: str | None = None) -> Values:
    """The dtype and range of arrays read from one place (finite and non-empty: checked before)."""
    low, high = min(a.min() for a in arrays).item(), max(a.max() for a in arrays).item()
    return Values(where, arrays[0].dtype, low, high, stored or str(arrays[0].dtype))


def full_scale(part: Values) -> int | None:
    """The value unit divides these by, or None where no bit depth fits them."""
    if part.dtype in _BIT_DEPTHS:
        return _BIT_DEPTHS[part.dtype]
    if part.low < 0:
        return None
    if np.issubdtype(part.dtype, np.integer):
        return 255 if part.high <= 255 else None
    return 1 if part.high <= 1 else 255 if part.high <= 255 else None


def resolve(scaling: str | None, dataset: str, parts: list[Values]) -> tuple[str, list[int], list[str]]:
    """(the scaling to apply, each part's divisor for unit (else 1), warnings); DataError where the data
    does not look like what the scaling assumes."""
    chosen = scaling or _automatic(dataset, parts)
    key = said(scaling, chosen)
    if chosen == "unit":
        # The built-in datasets' files are the published 8-bit ones: their full scale is known.
        scales = [_unit_scale(part, key, checked=dataset in ("npz", "csv", "images")) for part in parts]
        _same_guess(parts, scales, key)
        return chosen, scales, []
    first, *others = parts
    for other in others:
        scales = full_scale(first), full_scale(other)
        if None not in scales and scales[0] != scales[1]:
            raise DataError(
                f"{first.where}: {key} gives {_label(other)} the scale of {_label(first)}, but they are stored at "
                f"different ones ({_label(first)}: {first.stored} up to {_shown(first, first.high)}, full scale "
                f"{scales[0]}; {_label(other)}: {other.stored} up to {_shown(other, other.high)}, full scale {scales[1]}); "
                f"store both at one scale, or use data.scaling: unit, which divides each by its own full scale"
            )
    warnings = [
        f"{part.where}: {part.stored} values reach {_shown(part, _largest(part))}, kept as they are (data.scaling unset "
        f"keeps values that do not look like intensities); inputs this large train poorly: set data.scaling: "
        f"standardize, or none to keep them"
        for part in parts if scaling is None and _largest(part) > 255
    ]
    return chosen, [1] * len(parts), warnings


def _same_guess(parts: list[Values], scales: list[int], key: str) -> None:
    """DataError when two float parts get different full scales: a float's scale is guessed from its range
    (1 within [0, 1], else 255), so floats 0..20 beside floats 0..1 would be divided by 255 and by 1, a
    silent 255-fold mismatch between the parts. A dtype's own scale (uint8 beside floats in [0, 1]) is known,
    not guessed, and may differ."""
    floats = [(part, scale) for part, scale in zip(parts, scales) if np.issubdtype(part.dtype, np.floating)]
    for (first, a), (other, b) in zip(floats, floats[1:]):
        if a != b:
            raise DataError(
                f"{first.where}: {key} would divide {_label(first)} (floats up to {_shown(first, first.high)}) by {a} "
                f"but {_label(other)} (floats up to {_shown(other, other.high)}) by {b}: for floats the full scale is "
                f"a guess from their range, and these ranges disagree; store both parts at one scale, or use "
                f"data.scaling: standardize (or none to keep them as they are)")


def said(scaling: str | None, chosen: str) -> str:
    """How messages name the scaling: as the user set it, or as bnexp picked it."""
    return f"data.scaling: {chosen}" if scaling else f"data.scaling (unset, so {chosen})"


def _automatic(dataset: str, parts: list[Values]) -> str:
    if dataset == "csv":
        return "standardize"
    if dataset != "npz":  # the built-in datasets and image folders: 8- or 16-bit intensities
        return "unit"
    return "unit" if any(_intensities(part) for part in parts) else "none"


def _intensities(part: Values) -> bool:
    scale = full_scale(part)
    return scale is not None and (scale == 1 or part.high * 16 > scale)


def _unit_scale(part: Values, key: str, *, checked: bool) -> int:
    scale = full_scale(part)
    if part.low < 0:
        raise DataError(f"{part.where}: {key} divides intensities by their full scale, but these {part.stored} values "
                        f"go down to {_shown(part, part.low)}; use data.scaling: standardize (or none to keep them)")
    if scale is None:
        raise DataError(
            f"{part.where}: {key} has no full scale for {part.stored} values up to {_shown(part, part.high)} (it divides "
            f"bool by 1, uint8 and other values within 0..255 by 255, uint16 by 65535, floats within [0, 1] by 1); "
            f"store them as uint16 if 65535 is their full scale, or use data.scaling: standardize"
        )
    if checked and scale > 1 and part.high * 16 <= scale:
        raise DataError(
            f"{part.where}: {key} divides these {part.stored} values by {scale}, but they reach only "
            f"{_shown(part, part.high)} (inputs within [0, {part.high / scale:.2g}]); use data.scaling: standardize, "
            f"or store them at their type's full scale (bool for 0/1, uint8 for 0..255, uint16 for 0..65535) or as "
            f"floats within [0, 1]"
        )
    return scale


def apply(parts: tuple[np.ndarray, ...], scaling: str, scales: tuple[int, ...], where: str,
          key: str) -> list[np.ndarray]:
    """Scale every part (unit: each by its scale), with statistics taken from the first, the training
    rows, only; DataError where a value leaves float32's range."""
    if scaling == "unit":
        scaled = [part.astype(np.float32) / np.float32(scale) for part, scale in zip(parts, scales)]
    elif scaling == "standardize":
        # Per feature for tables, per channel for images: every axis but the last is pooled.
        axes = tuple(range(parts[0].ndim - 1))
        with np.errstate(over="ignore", invalid="ignore"):  # reported below
            mean = parts[0].mean(axis=axes, dtype=np.float64)
            std = parts[0].std(axis=axes, dtype=np.float64)
            if not (np.isfinite(mean).all() and np.isfinite(std).all()):  # beyond 1e154, squares overflow float64
                raise DataError(f"{where}: values up to {_largest_of(parts):.6g} are too large to standardize "
                                f"(their squares overflow float64); rescale them")
            std[std == 0] = 1.0  # a constant feature carries no information; leave it at 0
            scaled = [((part - mean) / std).astype(np.float32) for part in parts]
    else:
        with np.errstate(over="ignore"):
            scaled = [part.astype(np.float32) for part in parts]
    if not all(np.isfinite(part).all() for part in scaled):
        raise DataError(f"{where}: values up to {_largest_of(parts):.6g} leave float32's range (about 3.4e38) with {key}; bnexp "
                        f"trains in float32: rescale them, or use data.scaling: standardize")
    return scaled


def _largest_of(parts: tuple[np.ndarray, ...]) -> float:
    return max(float(np.abs(part.astype(np.float64)).max()) for part in parts)


def _largest(part: Values) -> float:
    return max(abs(part.low), abs(part.high))


def _label(part: Values) -> str:
    return part.where.rpartition(": ")[2]


def _shown(part: Values, value: float) -> str:
    return f"{value:.6g}" if np.issubdtype(part.dtype, np.floating) else str(int(value))
