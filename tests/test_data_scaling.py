"""data.scaling on npz and CSV arrays: the inputs a model gets do not depend on the dtype a user's
pipeline happened to store (uint8 0..255, int64 0..255, float32 0..255 and float32 0..1 give the same
numbers), and data that does not look like what the scaling assumes stops with one line or a warning."""

import numpy as np
import pytest

from bnexp.config.schema import DataConfig
from bnexp.data.datasets import load_dataset
from bnexp.errors import DataError

LEVELS = np.array([0, 17, 128, 255] * 12).reshape(12, 2, 2)  # 12 tiny 2x2 "images" of 8-bit levels
LABELS = np.arange(12) % 2


def npz(tmp_path, x_train, x_test=None, name="data.npz"):
    path = tmp_path / name
    np.savez(path, x_train=x_train, y_train=LABELS[:len(x_train)],
             x_test=x_train[:4] if x_test is None else x_test, y_test=LABELS[:4])
    return path


def inputs(path, scaling=None):
    dataset = load_dataset(DataConfig(dataset="npz", path=str(path), validation_split=0.25, scaling=scaling), None)
    return dataset


def refusal(path, scaling=None) -> str:
    with pytest.raises(DataError) as error:
        inputs(path, scaling)
    return str(error.value)


EIGHT_BIT = (LEVELS[:9, ..., None].astype(np.float32) / np.float32(255))


@pytest.mark.parametrize("scaling", [None, "unit"])
@pytest.mark.parametrize("stored", [
    LEVELS.astype(np.uint8), LEVELS.astype(np.int64), LEVELS.astype(np.int16), LEVELS.astype(np.float32),
    LEVELS.astype(np.float64), LEVELS.astype(np.float32) / np.float32(255),
], ids=["uint8", "int64", "int16", "float32 0..255", "float64 0..255", "float32 0..1"])
def test_8_bit_levels_give_the_same_inputs_whatever_their_dtype(tmp_path, stored, scaling):
    np.testing.assert_array_equal(inputs(npz(tmp_path, stored), scaling).x_train, EIGHT_BIT)


@pytest.mark.parametrize("scaling", [None, "unit"])
def test_uint16_is_divided_by_65535_and_bool_is_kept(tmp_path, scaling):
    sixteen = (LEVELS * 257).astype(np.uint16)  # 255 x 257 = 65535: the same fractions of full scale
    np.testing.assert_array_equal(inputs(npz(tmp_path, sixteen), scaling).x_train, EIGHT_BIT)
    mask = LEVELS > 100
    np.testing.assert_array_equal(inputs(npz(tmp_path, mask, name="mask.npz"), scaling).x_train,
                                  mask[:9, ..., None].astype(np.float32))


def test_unset_scaling_keeps_small_integers_and_features_as_they_are(tmp_path):
    # A uint8 0/1 mask or float features up to 7.9 are not 8-bit intensities: dividing by 255 would squeeze them.
    for stored in (LEVELS.astype(np.uint8) % 2, (LEVELS % 8 + 0.9).astype(np.float32), LEVELS - 128.0):
        dataset = inputs(npz(tmp_path, stored))
        np.testing.assert_array_equal(dataset.x_train, stored[:9, ..., None].astype(np.float32))
        assert dataset.warnings == ()


def test_unset_scaling_warns_about_large_values_kept_as_they_are(tmp_path):
    path = npz(tmp_path, (LEVELS * 16).astype(np.uint16))  # 12-bit data in uint16: up to 4080, far below 65535
    dataset = inputs(path)
    np.testing.assert_array_equal(dataset.x_train, (LEVELS[:9, ..., None] * 16).astype(np.float32))
    assert dataset.warnings == tuple(
        f"{path}: {part}: uint16 values reach 4080, kept as they are (data.scaling unset keeps values that do not look "
        f"like intensities); inputs this large train poorly: set data.scaling: standardize, or none to keep them"
        for part in ("x_train", "x_test"))
    assert inputs(path, "none").warnings == ()  # said explicitly: no warning


def test_unit_refuses_negative_values(tmp_path):
    path = npz(tmp_path, LEVELS - 128.0)
    assert refusal(path, "unit") == (
        f"{path}: x_train: data.scaling: unit divides intensities by their full scale, but these float64 values go "
        f"down to -128; use data.scaling: standardize (or none to keep them)")


@pytest.mark.parametrize(("stored", "shown"), [
    ((LEVELS * 4).astype(np.int64), "int64 values up to 1020"),
    (LEVELS * 257.0, "float64 values up to 65535"),
])
def test_unit_refuses_values_without_a_full_scale(tmp_path, stored, shown):
    path = npz(tmp_path, stored)
    assert refusal(path, "unit") == (
        f"{path}: x_train: data.scaling: unit has no full scale for {shown} (it divides bool by 1, uint8 and other "
        f"values within 0..255 by 255, uint16 by 65535, floats within [0, 1] by 1); store them as uint16 if 65535 "
        f"is their full scale, or use data.scaling: standardize")
    assert len(inputs(path).warnings) == 2  # unset, they are kept as they are, with a warning for each part


@pytest.mark.parametrize(("stored", "shown"), [
    (LEVELS.astype(np.uint8) % 2, "uint8 values by 255, but they reach only 1 (inputs within [0, 0.0039])"),
    ((LEVELS * 16).astype(np.uint16), "uint16 values by 65535, but they reach only 4080 (inputs within [0, 0.062])"),
    ((LEVELS % 8 + 0.5).astype(np.float32), "float32 values by 255, but they reach only 7.5 (inputs within [0, 0.029])"),
])
def test_unit_refuses_values_that_fill_a_16th_of_their_scale_or_less(tmp_path, stored, shown):
    path = npz(tmp_path, stored)
    assert refusal(path, "unit") == (
        f"{path}: x_train: data.scaling: unit divides these {shown}; use data.scaling: standardize, or store them at "
        f"their type's full scale (bool for 0/1, uint8 for 0..255, uint16 for 0..65535) or as floats within [0, 1]")


def test_parts_stored_at_different_scales_are_divided_each_by_its_own_under_unit(tmp_path):
    path = npz(tmp_path, LEVELS.astype(np.uint8), x_test=LEVELS[:4].astype(np.float32) / np.float32(255))
    dataset = inputs(path)
    np.testing.assert_array_equal(dataset.x_test, EIGHT_BIT[:4])


@pytest.mark.parametrize("scaling", [None, "unit"])
def test_float_parts_whose_guessed_scales_disagree_are_refused_by_unit(tmp_path, scaling):
    """Floats 0..20 beside floats 0..1 would be divided by 255 and by 1 (the attack on issue 16)."""
    train = (LEVELS % 21).astype(np.float32)
    path = npz(tmp_path, train, x_test=LEVELS[:4].astype(np.float32) / np.float32(255))
    key = "data.scaling: unit" if scaling else "data.scaling (unset, so unit)"
    assert refusal(path, scaling) == (
        f"{path}: x_train: {key} would divide x_train (floats up to 17) by 255 but x_test (floats up to 1) by 1: for "
        "floats the full scale is a guess from their range, and these ranges disagree; store both parts at one "
        "scale, or use data.scaling: standardize (or none to keep them as they are)")


@pytest.mark.parametrize("scaling", ["standardize", "none"])
def test_parts_stored_at_different_scales_are_refused_by_standardize_and_none(tmp_path, scaling):
    path = npz(tmp_path, LEVELS.astype(np.uint8), x_test=LEVELS[:4].astype(np.float32) / np.float32(255))
    assert refusal(path, scaling) == (
        f"{path}: x_train: data.scaling: {scaling} gives x_test the scale of x_train, but they are stored at different "
        f"ones (x_train: uint8 up to 255, full scale 255; x_test: float32 up to 1, full scale 1); store both at one "
        f"scale, or use data.scaling: unit, which divides each by its own full scale")


def test_values_beyond_float32_are_refused(tmp_path):
    stored = LEVELS * 1e37
    path = npz(tmp_path, stored)
    for scaling, key in (("none", "data.scaling: none"), (None, "data.scaling (unset, so none)")):
        assert refusal(path, scaling) == (
            f"{path}: values up to 2.55e+39 leave float32's range (about 3.4e38) with {key}; bnexp trains in "
            f"float32: rescale them, or use data.scaling: standardize")
    assert np.isfinite(inputs(path, "standardize").x_train).all()


def csv(tmp_path, values) -> DataConfig:
    path = tmp_path / "table.csv"
    rows = [f"{a},{b},{label}" for (a, b), label in zip(values, LABELS)]
    path.write_text("a,b,y\n" + "\n".join(rows) + "\n")
    return DataConfig(dataset="csv", path=str(path), label_column="y", scaling="unit", test_split=0.25)


def test_unit_on_a_csv_divides_8_bit_levels_and_keeps_fractions(tmp_path):
    levels = LEVELS.reshape(24, 2)[:12]
    whole = load_dataset(csv(tmp_path, levels), None)
    fractions = load_dataset(csv(tmp_path, levels / 255), None)
    np.testing.assert_allclose(whole.x_train, fractions.x_train, rtol=1e-6)
    assert whole.x_train.max() <= 1


def test_a_csv_of_negative_features_is_refused_by_unit(tmp_path):
    config = csv(tmp_path, LEVELS.reshape(24, 2)[:12] - 100)
    with pytest.raises(DataError) as error:
        load_dataset(config, None)
    assert str(error.value) == (
        f"{config.path}: data.scaling: unit divides intensities by their full scale, but these CSV values go "
        f"down to -100; use data.scaling: standardize (or none to keep them)")


def test_values_too_large_to_standardize_are_refused_not_zeroed(tmp_path):
    path = npz(tmp_path, LEVELS * 1e300)
    assert refusal(path, "standardize") == (
        f"{path}: values up to 2.55e+302 are too large to standardize (their squares overflow float64); rescale them")
