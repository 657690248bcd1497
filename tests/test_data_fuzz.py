"""Property-based: a user's own tiny CSV or npz file, however odd (NaN or inf, one class, wrong
shapes, empty parts, test labels never trained on, batches and models that do not fit), either plans
and trains, or `plan` and `run` both stop with the same one line and exit 2 before anything is written."""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from bnexp.cli import main

# At most one defect per generated experiment, none in about half of them, so both outcomes are exercised.
DEFECTS = ["nan", "inf", "one class", "unseen test label", "labels from 1", "float labels", "empty training part",
           "empty test part", "y_train length", "x_test shape", "batch too large", "steps too many", "pool too large",
           "conv on flat features", "tiny subset"]


@st.composite
def experiments(draw, folder: Path):
    defect = draw(st.one_of(st.none(), st.sampled_from(DEFECTS)))
    kind = draw(st.sampled_from(["csv", "npz"]))
    shape = draw(st.sampled_from([(3,), (4, 4), (4, 4, 2)])) if kind == "npz" else (draw(st.integers(1, 3)),)
    classes = draw(st.integers(2, 3))
    n_train, n_test = draw(st.integers(10, 16)), draw(st.integers(2, 4))
    x = draw(arrays(np.float32, (n_train + n_test, *shape), elements=st.floats(-5, 5, width=32)))
    y = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=n_train + n_test, max_size=n_train + n_test)))
    y[:classes] = np.arange(classes)  # every class in the training rows
    if defect in ("nan", "inf"):
        x.flat[draw(st.integers(0, x.size - 1))] = np.nan if defect == "nan" else draw(st.sampled_from([np.inf, -np.inf]))
    if defect == "one class":
        y[:] = 0
    if defect == "unseen test label":
        y[n_train:] = classes
    x_train, y_train, x_test, y_test = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    if defect == "empty training part":
        x_train, y_train = x_train[:0], y_train[:0]
    if defect == "empty test part":
        x_test, y_test = x_test[:0], y_test[:0]

    if kind == "npz":
        if defect == "labels from 1":
            y_train, y_test = y_train + 1, y_test + 1
        if defect == "float labels":
            y_train = y_train + 0.5
        if defect == "y_train length":
            y_train = y_train[1:]
        if defect == "x_test shape":
            x_test = x_test.reshape(len(x_test), -1)[:, :1]
        path = folder / "data.npz"
        np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        data = {"dataset": "npz", "path": str(path)}
    else:
        # A CSV has no test file: bnexp splits one off by data.test_split, so its parts come from the rows.
        rows = (x_train, x_test) if defect != "empty training part" else (x_test,)
        labels = (y_train, y_test) if defect != "empty training part" else (y_test,)
        frame = pd.DataFrame(np.concatenate(rows), columns=[f"f{i}" for i in range(shape[0])])
        frame["label"] = [f"class_{label}" for label in np.concatenate(labels)]
        path = folder / "data.csv"
        frame.to_csv(path, index=False)
        data = {"dataset": "csv", "path": str(path), "label_column": "label",
                "test_split": 0.01 if defect == "empty test part" else draw(st.sampled_from([0.2, 0.3]))}
    data["validation_split"] = draw(st.sampled_from([0.2, 0.4]))
    if defect == "tiny subset":
        data["train_subset"] = draw(st.integers(1, 3))

    images = len(shape) > 1
    pool = draw(st.integers(5, 9)) if defect == "pool too large" else draw(st.integers(1, 2))
    conv = images and draw(st.booleans()) or defect in ("pool too large", "conv on flat features")
    if defect == "conv on flat features":
        data["path"] = str(folder / "flat.npz")
        np.savez(data["path"], x_train=x_train.reshape(len(x_train), -1), y_train=y_train,
                 x_test=x_test.reshape(len(x_test), -1), y_test=y_test)
        data = {"dataset": "npz", "path": data["path"], "validation_split": data["validation_split"]}
    train = {"epochs": 1, "batch_size": 40 if defect == "batch too large" else draw(st.integers(1, 4)),
             "steps_per_execution": 1, "log_every_steps": 1}
    if defect == "steps too many":
        train["steps_per_epoch"] = 50
    return {
        "name": "fuzz", "seeds": [0],
        "arms": {"bn": {"model.batch_norm.enabled": True}},  # one run per example keeps the test short
        "data": data, "model": {"conv": [{"filters": 2, "pool": pool}] if conv else [], "dense": [4]}, "train": train,
    }


def invoke(folder: Path, *args):
    return CliRunner().invoke(main, [*args, str(folder / "fuzz.yaml"), "--results", str(folder / "results")])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_data_file_trains_or_is_one_line_before_training(data):
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        experiment = data.draw(experiments(folder))
        (folder / "fuzz.yaml").write_text(yaml.safe_dump(experiment))
        plan = invoke(folder, "plan")
        run = invoke(folder, "run", "--workers", "1", "--quiet")
        results = folder / "results"
        event("refused" if run.exit_code == 2 else "trained")
        if run.exit_code == 2:
            assert run.output.startswith("Error: ") and run.output.count("\n") == 1, run.output
            assert "Traceback" not in run.output
            assert plan.output == run.output  # plan reads the file and says the same
            assert not [p for p in results.rglob("*") if p.is_file()]
        else:
            assert run.exit_code == 0 and plan.exit_code == 0, (plan.output, run.output)
            *warnings, summary = run.output.splitlines()
            assert summary == "1 runs: 1 completed; 0 already complete (skipped); 0 left", run.output
            assert all(line.startswith("Warning: ") for line in warnings), run.output


# Arrays of every dtype, and images of every pixel format, straight through the loader: each either
# gives finite float32 inputs (within [0, 1] under unit, the same numbers whatever dtype held the same
# levels) or one line; no traceback, no silent squeeze.
DTYPES = ["bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16", "float32",
          "float64"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(DTYPES), scaling=st.sampled_from([None, "unit", "standardize", "none"]), data=st.data())
def test_arrays_of_every_dtype_load_within_their_scale_or_are_one_line(dtype, scaling, data):
    from bnexp.data.datasets import load_dataset
    from bnexp.config.schema import DataConfig
    from bnexp.errors import DataError

    small = data.draw(st.booleans())  # values within 0..255, where most pipelines' pixels lie
    integer = np.issubdtype(np.dtype(dtype), np.integer)
    elements = st.integers(0, min(255, np.iinfo(dtype).max)) if small and integer else None
    if small and dtype.startswith("float"):
        elements = st.sampled_from([0.0, 0.5, 1.0]) if data.draw(st.booleans()) else st.integers(0, 255).map(float)
    x = data.draw(arrays(np.dtype(dtype), (16, 2, 2), elements=elements))
    y = np.arange(16) % 2
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "x.npz"
        np.savez(path, x_train=x[:12], y_train=y[:12], x_test=x[12:], y_test=y[12:])
        config = DataConfig(dataset="npz", path=str(path), validation_split=0.25, scaling=scaling)
        try:
            dataset = load_dataset(config, None)
        except DataError as error:
            event("refused")
            assert str(error) and "\n" not in str(error)
            return
        event("loaded")
        parts = (dataset.x_train, dataset.x_val, dataset.x_test)
        assert all(part.dtype == np.float32 and np.isfinite(part).all() for part in parts)
        if scaling == "unit":
            assert all(part.min() >= 0 and part.max() <= 1 for part in parts)
        if scaling == "unit" and np.issubdtype(x.dtype, np.integer) and x.min() >= 0 and x.max() <= 255:
            np.savez(path, x_train=x[:12].astype(np.uint8), y_train=y[:12], x_test=x[12:].astype(np.uint8),
                     y_test=y[12:])
            as_uint8 = load_dataset(config, None)
            assert all(np.array_equal(a, b) for a, b in zip(parts, (as_uint8.x_train, as_uint8.x_val, as_uint8.x_test)))


def _png(path: Path, pixels: np.ndarray, bits: int, colour_type: int) -> None:
    """A 16-bit PNG by hand (Pillow writes no 16-bit colour PNG)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1).astype(">u2").view(np.uint8)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bits, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"".join(b"\0" + row.tobytes() for row in rows)))
                     + chunk(b"IEND", b""))


# mode -> (channels drawn, bits, how to write them, grey or colour, lossless)
IMAGE_MODES = {
    "1": (1, 1, lambda p, a: Image.fromarray(a[..., 0] > 0).save(p), "grey", True),
    "L": (1, 8, lambda p, a: Image.fromarray(a[..., 0].astype(np.uint8)).save(p), "grey", True),
    "I;16": (1, 16, lambda p, a: Image.fromarray(a[..., 0].astype(np.uint16)).save(p), "grey", True),
    "I;16B": (1, 16, lambda p, a: Image.fromarray(a[..., 0].astype(">u2")).save(p), "grey", True),
    "I": (1, 16, lambda p, a: Image.fromarray(a[..., 0].astype(np.int32)).save(p, format="TIFF"), "grey", True),
    "LA": (2, 8, lambda p, a: Image.fromarray(a.astype(np.uint8), "LA").save(p), "grey", True),
    "LA 16-bit": (2, 16, lambda p, a: _png(p, a, 16, 4), "grey", True),
    "RGB": (3, 8, lambda p, a: Image.fromarray(a.astype(np.uint8)).save(p), "colour", True),
    "RGB 16-bit": (3, 16, lambda p, a: _png(p, a, 16, 2), "colour", True),
    "RGBA": (4, 8, lambda p, a: Image.fromarray(a.astype(np.uint8)).save(p), "colour", True),
    "RGBA 16-bit": (4, 16, lambda p, a: _png(p, a, 16, 6), "colour", True),
    "P": (3, 8, lambda p, a: Image.fromarray(a.astype(np.uint8)).quantize(4).save(p), "colour", False),
    "L JPEG": (1, 8, lambda p, a: Image.fromarray(a[..., 0].astype(np.uint8)).save(p, format="JPEG"), "grey", False),
    "RGB JPEG": (3, 8, lambda p, a: Image.fromarray(a.astype(np.uint8)).save(p, format="JPEG"), "colour", False),
    "CMYK JPEG": (3, 8, lambda p, a: Image.fromarray(a.astype(np.uint8)).convert("CMYK").save(p, format="JPEG"),
                  "colour", False),
}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modes=st.lists(st.sampled_from(sorted(IMAGE_MODES)), min_size=1, max_size=3),
       color_mode=st.sampled_from(["rgb", "grayscale"]), data=st.data())
def test_images_of_every_mode_reach_the_model_at_their_own_full_scale_or_are_one_line(modes, color_mode, data):
    from bnexp.config.schema import DataConfig
    from bnexp.data.datasets import load_dataset
    from bnexp.errors import DataError

    expected = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "pics"
        for label in range(2):
            (folder / f"class{label}").mkdir(parents=True)
            for i in range(3):
                mode = data.draw(st.sampled_from(modes))
                channels, bits, write, kind, lossless = IMAGE_MODES[mode]
                top = (1 << bits) - 1
                pixels = data.draw(arrays(np.int64, (2, 2, channels), elements=st.integers(0, top)))
                if channels in (2, 4):
                    pixels[..., -1] = top  # opaque: transparency has its own tests
                write(folder / f"class{label}" / f"{i}.png", pixels)
                if lossless and (kind == "grey" or color_mode == "rgb"):
                    shown = pixels[..., :1] if kind == "grey" else pixels[..., :3]
                    if kind == "grey" and color_mode == "rgb":
                        shown = np.repeat(shown, 3, axis=-1)
                    expected.append(np.float32(shown) / np.float32(top))
                else:
                    expected.append(None)
        config = DataConfig(dataset="images", path=str(folder), image_size=(2, 2), color_mode=color_mode,
                            test_split=0.34, validation_split=0.25)
        try:
            dataset = load_dataset(config, None)
        except DataError as error:
            event("refused")
            assert str(error) and "\n" not in str(error)
            assert "reach only" in str(error), str(error)  # the only refusal here: a folder too dark to be intensities
            return
    event("loaded")
    decoded = np.concatenate([dataset.x_train, dataset.x_val, dataset.x_test])
    assert decoded.dtype == np.float32 and decoded.min() >= 0 and decoded.max() <= 1
    assert decoded.shape[-1] == (3 if color_mode == "rgb" else 1)
    if all(image is not None for image in expected):
        assert sorted(image.tobytes() for image in decoded) == sorted(image.tobytes() for image in expected)
