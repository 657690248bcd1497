"""The files datasets come in, each read into train and test arrays with errors naming the file:
the built-in datasets' official files (MNIST's npz, Fashion-MNIST's IDX files, CIFAR-10's pickled
batches) or Keras' download of them, and a user's npz or CSV file (image folders: bnexp.data.images).

Keras is imported only by the download fallback, so importing this module stays fast.
"""

from __future__ import annotations

import gzip
import math
import pickle
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from bnexp.config.schema import DataConfig
from bnexp.config.messages import closest
from bnexp.errors import DataError, one_line


class Arrays(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class Builtin(NamedTuple):
    title: str
    input_shape: tuple[int, ...]
    num_classes: int
    read: Callable[[Path], tuple[Arrays, str]]  # the arrays and the file or folder they came from
    # What to tell a user whose machine cannot download the dataset.
    files_hint: str


def read_builtin(name: str, data_dir: Path | None) -> Arrays:
    builtin = BUILTINS[name]
    if data_dir is None:
        arrays, source = _download(name), f"keras.datasets.{name}"
    else:
        arrays, source = builtin.read(data_dir)
    arrays = normalise(arrays, source)
    shape = arrays.x_train.shape[1:]
    if shape != builtin.input_shape:
        raise DataError(
            f"{source}: {builtin.title} images should have shape {builtin.input_shape}, found {shape}"
        )
    top = int(np.concatenate([arrays.y_train, arrays.y_test]).max())
    if top >= builtin.num_classes:
        raise DataError(
            f"{source}: {builtin.title} labels should be 0..{builtin.num_classes - 1}, found {top}"
        )
    return arrays


def _download(name: str) -> Arrays:
    builtin = BUILTINS[name]
    try:
        import keras  # deferred: Keras (and its backend) take seconds to import

        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as exc:  # whatever stops the download (no network, proxy, bad hash), local files fix it
        raise DataError(
            f"{builtin.title} not found and could not be downloaded: {builtin.files_hint} "
            f"and pass --data-dir DIR or set BNEXP_DATA_DIR (download error: {one_line(exc)})"
        ) from None
    return Arrays(x_train, y_train, x_test, y_test)


def normalise(arrays: Arrays, source: str) -> Arrays:
    """Check the four arrays agree; give images a channel axis and labels int32."""
    x_train, y_train, x_test, y_test = arrays
    labels = []
    for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim < 2 or 0 in x.shape[1:]:
            raise DataError(f"{source}: x_{part} should have a sample axis and features, found shape {x.shape}")
        if not any(np.issubdtype(x.dtype, kind) for kind in (np.bool_, np.integer, np.floating)):
            raise DataError(f"{source}: x_{part} should hold numbers (bool, integer or float), found {x.dtype}")
        _check_finite(x, f"{source}: x_{part}")
        y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y  # Keras gives CIFAR labels as (N, 1)
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{source}: {len(x)} samples in x_{part} but y_{part} has shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: y_{part} should hold integer class indices, found {y.dtype}")
        if len(y) and y.min() < 0:
            raise DataError(f"{source}: y_{part} should hold class indices >= 0, found {y.min()}")
        if len(y) and y.max() > np.iinfo(np.int32).max:
            raise DataError(f"{source}: y_{part} should hold class indices 0..K-1, found {y.max()}")
        labels.append(y.astype(np.int32))
    if len(x_train) == 0:
        raise DataError(f"{source}: x_train has no samples")
    if len(x_test) == 0:
        raise DataError(f"{source}: x_test has no samples; the test error needs at least one")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{source}: x_train samples have shape {x_train.shape[1:]} but x_test samples {x_test.shape[1:]}"
        )
    if x_train.ndim == 3:  # greyscale (N, H, W) images get the channel axis Conv2D needs
        x_train, x_test = x_train[..., np.newaxis], x_test[..., np.newaxis]
    return Arrays(x_train, labels[0], x_test, labels[1])


def _check_finite(x: np.ndarray, where: str) -> None:
    """NaN or inf inputs make a run diverge whatever its arm, so training on them would blame the model."""
    if not np.issubdtype(x.dtype, np.floating):
        return
    bad = ~np.isfinite(x)
    if bad.any():
        first = np.unravel_index(np.argmax(bad), x.shape)
        at = f"sample {first[0]}" + (f", position {tuple(int(i) for i in first[1:])}" if x.ndim > 2 else f", feature {first[1]}")
        raise DataError(
            f"{where}: {int(np.isnan(x).sum())} NaN and {int(np.isinf(x).sum())} infinite value(s), the first at "
            f"{at}; bnexp needs finite inputs: fix or drop those samples"
        )


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_npz(path: Path) -> Arrays:
    """Read an npz with the keys keras.datasets.mnist uses."""
    # np.load reports a file that is not a zip archive as "pickled data"; say what is really wrong.
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an npz file (no complete zip archive: truncated or another format)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in _NPZ_KEYS if key not in archive.files]
            if missing:
                raise DataError(
                    f"{path}: missing key(s) {', '.join(missing)}; found {', '.join(archive.files) or 'none'}"
                )
            return Arrays(*(archive[key] for key in _NPZ_KEYS))
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupt npz file ({one_line(exc)})") from None


def _read_mnist(data_dir: Path) -> tuple[Arrays, str]:
    candidates = [data_dir / "mnist.npz", data_dir / "mnist" / "mnist.npz"]
    for candidate in candidates:
        if candidate.is_file():
            return read_npz(candidate), str(candidate)
    raise DataError(f"MNIST not found: looked for {_join(candidates)}{_WHERE}")


_FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_IDX_IMAGES = 2051  # 0x0803: unsigned bytes, 3 dimensions
_IDX_LABELS = 2049  # 0x0801: unsigned bytes, 1 dimension


def _read_fashion_mnist(data_dir: Path) -> tuple[Arrays, str]:
    folders = [data_dir / "fashion-mnist", data_dir / "fashion_mnist", data_dir]
    for folder in folders:
        if all((folder / file).is_file() for file in _FASHION_FILES):
            x_train, y_train, x_test, y_test = (
                _read_idx(folder / file, magic)
                for file, magic in zip(_FASHION_FILES, (_IDX_IMAGES, _IDX_LABELS) * 2)
            )
            return Arrays(x_train, y_train, x_test, y_test), str(folder)
    raise DataError(f"Fashion-MNIST not found: looked for {', '.join(_FASHION_FILES)} in {_join(folders)}{_WHERE}")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes (the format of the original MNIST files)."""
    try:
        with gzip.open(path, "rb") as file:
            raw = file.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({one_line(exc)})") from None
    kind = "image" if magic == _IDX_IMAGES else "label"
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path}: not an IDX {kind} file (magic number {found}, expected {magic})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated ({len(raw)} of {header} bytes)")
    dims = [int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)]
    expected = math.prod(dims)
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header says {'x'.join(map(str, dims))} = {expected} bytes of data, "
            f"found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


def _read_cifar10(data_dir: Path) -> tuple[Arrays, str]:
    looked = []
    for base in (data_dir, data_dir / "cifar10"):
        folder, archive = base / _CIFAR_FOLDER, base / _CIFAR_ARCHIVE
        if folder.is_dir():
            return _cifar_arrays(_read_cifar_folder(folder), folder), str(folder)
        if archive.is_file():
            return _cifar_arrays(_read_cifar_archive(archive), archive), str(archive)
        looked += [folder, archive]
    raise DataError(f"CIFAR-10 not found: looked for {_join(looked)}{_WHERE}")


def _read_cifar_folder(folder: Path) -> dict[str, bytes]:
    missing = [name for name in _CIFAR_BATCHES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)}")
    return {name: (folder / name).read_bytes() for name in _CIFAR_BATCHES}


def _read_cifar_archive(archive: Path) -> dict[str, bytes]:
    wanted = {f"{_CIFAR_FOLDER}/{name}": name for name in _CIFAR_BATCHES}
    contents = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            # One pass in archive order: seeking back in a gzip stream means decompressing again.
            for member in tar:
                if member.name in wanted and member.isfile():
                    contents[wanted[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: not a readable tar.gz archive ({one_line(exc)})") from None
    missing = [member for member, name in wanted.items() if name not in contents]
    if missing:
        raise DataError(f"{archive}: missing member(s) {', '.join(missing)}")
    return contents


def _cifar_arrays(contents: dict[str, bytes], source: Path) -> Arrays:
    batches = [_parse_cifar_batch(contents[name], f"{source}/{name}") for name in _CIFAR_BATCHES]
    x_train = np.concatenate([x for x, _ in batches[:5]])
    y_train = np.concatenate([y for _, y in batches[:5]])
    x_test, y_test = batches[5]
    return Arrays(x_train, y_train, x_test, y_test)


def _parse_cifar_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle one official CIFAR-10 batch into (N, 32, 32, 3) images and labels."""
    try:
        batch = pickle.loads(raw, encoding="bytes")  # the batches were pickled by Python 2
    except Exception as exc:  # pickle documents no closed set of errors for malformed input
        raise DataError(f"{source}: not a readable CIFAR-10 batch ({one_line(exc)})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = sorted(map(repr, batch)) if isinstance(batch, dict) else [type(batch).__name__]
        raise DataError(f"{source}: expected a dict with keys b'data' and b'labels', found {', '.join(found)}")
    x, y = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DataError(f"{source}: b'data' should be uint8 of shape (N, 3072), found {x.dtype} {x.shape}")
    if y.shape != (len(x),):
        raise DataError(f"{source}: {len(x)} images but b'labels' has shape {y.shape}")
    # Each row holds the red plane, then green, then blue, each 32x32 row-major.
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def read_csv(data: DataConfig, path: Path) -> tuple[Arrays, list]:
    """Read a table, map its labels to 0..K-1 and carve out a stratified test set."""
    label = data.label_column
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({one_line(exc)})") from None
    columns = [str(column) for column in frame.columns]
    if frame.empty:
        raise DataError(f"{path}: no rows below the header; a dataset needs samples")

    if label not in columns:
        raise DataError(f"{path}: data.label_column: no column {label!r}{_suggest(label, columns)}")
    unknown = [c for c in data.ignore_columns if c not in columns]
    if unknown:
        raise DataError(f"{path}: data.ignore_columns: no column {unknown[0]!r}{_suggest(unknown[0], columns)}")
    if data.feature_columns is None:
        features = [c for c in columns if c != label and c not in data.ignore_columns]
    else:
        features = list(data.feature_columns)
        unknown = [c for c in features if c not in columns]
        if unknown:
            raise DataError(
                f"{path}: data.feature_columns: no column {unknown[0]!r}{_suggest(unknown[0], columns)}"
            )
        if label in features:
            raise DataError(f"{path}: data.feature_columns: includes the label column {label!r}")
    if not features:
        raise DataError(f"{path}: no feature columns left besides the label and data.ignore_columns")

    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        column = frame[non_numeric[0]]
        # The first cell that is not a number, not merely the first cell (which may read as one).
        bad = column.notna() & pd.to_numeric(column, errors="coerce").isna()
        line = int(np.argmax(bad.to_numpy())) + 2  # line 1 is the header
        raise DataError(
            f"{path}: feature column(s) {', '.join(non_numeric)} are not numeric "
            f"(e.g. {non_numeric[0]}={column[bad].iloc[0]!r} at line {line}); list them in data.ignore_columns"
        )
    empty = [c for c in [*features, label] if frame[c].isna().any()]
    if empty:
        line = int(np.argmax(frame[empty[0]].isna().to_numpy())) + 2  # line 1 is the header
        raise DataError(f"{path}: empty or NaN cells in column(s) {', '.join(empty)}, the first at line {line} "
                        f"(column {empty[0]}); fill or drop those rows")

    labels = frame[label]
    if pd.api.types.is_float_dtype(labels) and (labels != labels.round()).any():
        fractional = labels[labels != labels.round()]
        line = int(labels.index.get_loc(fractional.index[0])) + 2
        raise DataError(f"{path}: data.label_column {label!r} holds fractional numbers (e.g. {fractional.iloc[0].item()!r} at "
                        f"line {line}), a quantity rather than classes; bnexp trains classifiers: give a column of "
                        "class names or whole numbers")
    classes, y = np.unique(labels.to_numpy(), return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"{path}: data.label_column {label!r} holds only one class ({classes[0]!r}); "
                        f"a classifier needs at least two")
    x = frame[features].to_numpy(dtype=np.float32)
    infinite = ~np.isfinite(x)
    if infinite.any():
        row, column = np.unravel_index(np.argmax(infinite), x.shape)
        raise DataError(
            f"{path}: {int(infinite.sum())} infinite value(s) (or beyond float32's range), the first at line {row + 2} "
            f"(column {features[column]}); bnexp needs finite inputs: fix or drop those rows"
        )
    train, test = stratified_test_split(y, data, np.random.default_rng(data.split_seed), path, "rows")
    y = y.astype(np.int32)
    return Arrays(x[train], y[train], x[test], y[test]), classes.tolist()


def stratified_test_split(y: np.ndarray, data: DataConfig, rng: np.random.Generator, source: Path,
                unit: str) -> tuple[np.ndarray, np.ndarray]:
    """data.test_split's stratified (train, test) indices; DataError when either part is empty."""
    train, test = _stratified_split(y, data.test_split, rng)
    if len(train) == 0:
        raise DataError(f"{source}: data.test_split: {data.test_split} of {len(y)} {unit} leaves no training {unit}; "
                        f"lower data.test_split or add {unit}")
    if len(test) == 0:
        raise DataError(
            f"{source}: data.test_split: {data.test_split} of {len(y)} {unit} leaves no test {unit} (each class gives "
            f"round(test_split x its {unit})); raise data.test_split or add {unit}"
        )
    return train, test


def _stratified_split(y: np.ndarray, test_split: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return shuffled (train, test) row indices; each class gives round(test_split * its size) rows to test."""
    train_parts, test_parts = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        n_test = int(math.floor(len(members) * test_split + 0.5))
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    return rng.permutation(np.concatenate(train_parts)), rng.permutation(np.concatenate(test_parts))


def _suggest(name: str, columns: list[str]) -> str:
    """A "did you mean" for a misspelt column, then the columns there are."""
    close = closest(name, columns, ignore_case=True)  # a column's case is easily mistyped
    hint = f" (did you mean {close!r}?)" if close else ""
    shown = ", ".join(columns[:10]) + (f", ... ({len(columns)} columns)" if len(columns) > 10 else "")
    return f"{hint}; columns: {shown}"


# What would work when a built-in dataset's files are not in the data folder.
_WHERE = "; give --data-dir (or BNEXP_DATA_DIR) the folder that holds them, or leave it out to let Keras download them"


def _join(paths) -> str:
    return ", ".join(str(path) for path in paths)


BUILTINS = {
    "mnist": Builtin(
        "MNIST", (28, 28, 1), 10, _read_mnist,
        "put mnist.npz (keys x_train, y_train, x_test, y_test) in a folder",
    ),
    "fashion_mnist": Builtin(
        "Fashion-MNIST", (28, 28, 1), 10, _read_fashion_mnist,
        f"put {', '.join(_FASHION_FILES)} in a folder",
    ),
    "cifar10": Builtin(
        "CIFAR-10", (32, 32, 3), 10, _read_cifar10,
        f"put {_CIFAR_ARCHIVE} (or its extracted {_CIFAR_FOLDER} folder) in a folder",
    ),
}
