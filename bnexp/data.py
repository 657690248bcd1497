"""Datasets: read the official files (or download them), split, subset and scale into float32 arrays.

Keras is imported only by the download fallback, so importing this module stays fast.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import pickle
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from bnexp.config import DataConfig, closest
from bnexp.errors import DataError


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays element-wise has no single truth value
class Dataset:
    """Read-only float32 inputs and int32 class indices, already split and scaled.

    Images are (N, H, W, C) (greyscale gets C = 1); tables are (N, F).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    # Parts too small to mean much (see _small_parts): said once before training, never an error.
    warnings: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load_dataset(data: DataConfig, data_dir: Path | None) -> Dataset:
    """Load the dataset a `data` config section describes, cached per process.

    `data_dir` holds the MNIST, Fashion-MNIST and CIFAR-10 files; when it is None those are
    downloaded through keras.datasets.
    Relative csv/npz paths are tried from the current directory, then from `data_dir`.
    Raises DataError, with a one-line message, for missing, corrupt or unusable data: non-finite
    inputs, labels that are not class indices 0..K-1, one class, an empty part, test labels the
    training part never shows.
    """
    data_dir = Path(data_dir) if data_dir is not None else None
    path = sha256 = None
    if data.dataset not in _BUILTINS:
        path = _resolve_path(data.path, data_dir)
        sha256 = _file_sha256(path)
    return _load(data, data_dir, path, sha256)


def fingerprint(data: DataConfig, data_dir: Path | None) -> str | None:
    """The SHA-256 of the csv/npz file a `data` config reads (DataError when it is missing), None for
    the built-in datasets: their name already says what they hold, as Keras checks the official files'
    hashes when it downloads them, and an id must not change between a downloaded copy and a local one."""
    if data.dataset in _BUILTINS:
        return None
    return _file_sha256(_resolve_path(data.path, data_dir))


def _file_sha256(path: Path) -> str:
    try:
        stat = path.stat()
        return _content_sha256(path, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the data file ({exc.strerror or exc})") from None


# Keyed by the file's size, time and inode, so an edited or replaced file is hashed again; hashing the
# 11 MB mnist.npz takes about 15 ms, so a plan or run of a whole sweep reads each file once.
@functools.lru_cache(maxsize=64)
def _content_sha256(path: Path, size: int, mtime_ns: int, inode: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_info(data: DataConfig, data_dir: Path | None) -> tuple[tuple[int, ...], int]:
    """Return (input_shape, num_classes); constants for the built-in datasets, so no file is read."""
    if data.dataset in _BUILTINS:
        builtin = _BUILTINS[data.dataset]
        return builtin.input_shape, builtin.num_classes
    dataset = load_dataset(data, data_dir)
    return dataset.input_shape, dataset.num_classes


def builtin_num_classes(dataset: str) -> int | None:
    """The number of classes of a built-in dataset (mnist, fashion_mnist, cifar10), else None."""
    builtin = _BUILTINS.get(dataset)
    return builtin.num_classes if builtin else None


class _Arrays(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class _Builtin(NamedTuple):
    title: str
    input_shape: tuple[int, ...]
    num_classes: int
    read: Callable[[Path], tuple[_Arrays, str]]  # the arrays and the file or folder they came from
    # What to tell a user whose machine cannot download the dataset.
    files_hint: str


def _resolve_path(path: str, data_dir: Path | None) -> Path:
    given = Path(path).expanduser()
    candidates = [given]
    if data_dir is not None and not given.is_absolute():
        candidates.append(data_dir / given)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise DataError(f"data.path: {path} not found (looked for {_join(candidates)})")


# One worker trains many runs on the same data; a small bound keeps a sweep over data
# settings from holding many float32 copies of a large image set. The key holds the csv/npz file's
# resolved `path` and content (`sha256`), so an edited file is read again.
@functools.lru_cache(maxsize=4)
def _load(data: DataConfig, data_dir: Path | None, path: Path | None, sha256: str | None) -> Dataset:
    if data.dataset in _BUILTINS:
        name = data.dataset
        arrays = _read_builtin(name, data_dir)
        classes = list(range(_BUILTINS[name].num_classes))
    elif data.dataset == "npz":
        name = str(path)
        arrays = _normalise(_read_npz(path), name)
        classes = list(range(_class_count(arrays, name)))
    else:
        name = str(path)
        arrays, classes = _read_csv(data, path)

    x_pool = _first(arrays.x_train, data.train_subset, "data.train_subset", "training", name)
    y_pool = arrays.y_train[: len(x_pool)]
    x_test = _first(arrays.x_test, data.test_subset, "data.test_subset", "test", name)
    y_test = arrays.y_test[: len(x_test)]

    # Keras' own rule for fit(validation_split=...): the last rows become validation.
    split_at = int(math.floor(len(x_pool) * (1.0 - data.validation_split)))
    if split_at < 1:
        raise DataError(
            f"data.validation_split: {data.validation_split} of {len(x_pool)} training rows "
            f"in {name} leaves no rows to train on"
        )
    if split_at == len(x_pool):  # a split so small that 1 - split rounds to 1
        raise DataError(
            f"data.validation_split: {data.validation_split} of {len(x_pool)} training rows "
            f"in {name} leaves no rows to validate on"
        )
    x_train, x_val = x_pool[:split_at], x_pool[split_at:]
    y_train, y_val = y_pool[:split_at], y_pool[split_at:]
    warnings = _check_labels(name, classes, y_train, y_val, y_test)

    scaling = data.scaling or _automatic_scaling(data.dataset, x_train)
    x_train, x_val, x_test = _scale((x_train, x_val, x_test), scaling)
    return Dataset(
        name=name,
        x_train=_frozen(x_train),
        y_train=_frozen(y_train),
        x_val=_frozen(x_val),
        y_val=_frozen(y_val),
        x_test=_frozen(x_test),
        y_test=_frozen(y_test),
        num_classes=len(classes),
        warnings=warnings,
    )


def _check_labels(name: str, classes: list, y_train, y_val, y_test) -> tuple[str, ...]:
    """Refuse parts a classifier cannot learn from or be tested on; return the warnings for parts
    too small to mean much: fewer samples than classes, so some class cannot appear even once."""
    present = np.unique(y_train)
    if len(present) < 2:
        raise DataError(
            f"{name}: the training part holds only class {classes[present[0]]!r} ({len(y_train)} sample(s), after "
            f"data.train_subset and data.validation_split); a classifier needs at least two classes"
        )
    unseen = np.setdiff1d(np.unique(y_test), present)
    if len(unseen):
        raise DataError(
            f"{name}: test label(s) {_labels(classes, unseen)} never occur in the training part "
            f"({int(np.isin(y_test, unseen).sum())} of {len(y_test)} test samples), so the model cannot learn them; "
            f"give the training part samples of every test class (data.train_subset, data.validation_split)"
        )
    return tuple(
        f"{name}: the {part} part has {len(y)} sample(s) for {len(classes)} classes; "
        f"its accuracy means little (at least one sample per class, and far more for a clear difference)"
        for part, y in (("training", y_train), ("validation", y_val), ("test", y_test))
        if len(y) < len(classes)
    )


def _labels(classes: list, indices) -> str:
    shown = ", ".join(repr(classes[i]) for i in indices[:5])
    return shown + (f" and {len(indices) - 5} more" if len(indices) > 5 else "")


def _first(x: np.ndarray, subset: int | None, key: str, part: str, name: str) -> np.ndarray:
    if subset is None:
        return x
    if subset > len(x):
        raise DataError(f"{key}: {subset} is more than the {len(x)} {part} rows available in {name}")
    return x[:subset]


def _automatic_scaling(dataset: str, x_train: np.ndarray) -> str:
    if dataset == "csv":
        return "standardize"
    if dataset in _BUILTINS or x_train.dtype == np.uint8:
        return "unit"
    return "none"


def _scale(parts: tuple[np.ndarray, ...], scaling: str) -> list[np.ndarray]:
    """Scale every part with statistics taken from the first, the training rows, only."""
    if scaling == "unit":
        return [part.astype(np.float32) / np.float32(255) for part in parts]
    if scaling == "standardize":
        # Per feature for tables, per channel for images: every axis but the last is pooled.
        axes = tuple(range(parts[0].ndim - 1))
        mean = parts[0].mean(axis=axes, dtype=np.float64)
        std = parts[0].std(axis=axes, dtype=np.float64)
        std[std == 0] = 1.0  # a constant feature carries no information; leave it at 0
        return [((part - mean) / std).astype(np.float32) for part in parts]
    return [part.astype(np.float32) for part in parts]


def _frozen(array: np.ndarray) -> np.ndarray:
    # Cached arrays are shared by every run in the process, so no caller may change them.
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


def _read_builtin(name: str, data_dir: Path | None) -> _Arrays:
    builtin = _BUILTINS[name]
    if data_dir is None:
        arrays, source = _download(name), f"keras.datasets.{name}"
    else:
        arrays, source = builtin.read(data_dir)
    arrays = _normalise(arrays, source)
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


def _download(name: str) -> _Arrays:
    builtin = _BUILTINS[name]
    try:
        import keras  # deferred: Keras (and its backend) take seconds to import

        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as exc:  # whatever stops the download (no network, proxy, bad hash), local files fix it
        raise DataError(
            f"{builtin.title} not found and could not be downloaded: {builtin.files_hint} "
            f"and pass --data-dir DIR or set BNEXP_DATA_DIR (download error: {_reason(exc)})"
        ) from None
    return _Arrays(x_train, y_train, x_test, y_test)


def _normalise(arrays: _Arrays, source: str) -> _Arrays:
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
    return _Arrays(x_train, labels[0], x_test, labels[1])


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


def _class_count(arrays: _Arrays, source: str) -> int:
    """K for labels 0..K-1; every class needs training samples, or the output layer and the chance level
    would count classes the model never sees (labels numbered from 1, or with gaps)."""
    present = np.unique(arrays.y_train)
    if len(present) < 2:
        raise DataError(f"{source}: y_train holds only class {present[0]}; a classifier needs at least two classes")
    unseen = np.setdiff1d(np.unique(arrays.y_test), present)
    if len(unseen):
        raise DataError(
            f"{source}: y_test label(s) {_labels(unseen.tolist(), range(len(unseen)))} never occur in y_train "
            f"({int(np.isin(arrays.y_test, unseen).sum())} of {len(arrays.y_test)} test samples), so the model "
            f"cannot learn them; add training samples of those classes or drop them from the test set"
        )
    if present[-1] + 1 != len(present):
        first = int(np.flatnonzero(present != np.arange(len(present)))[0])
        raise DataError(
            f"{source}: y_train should hold class indices 0..K-1 without gaps, but class {first} has no samples "
            f"(labels found: {_labels(present.tolist(), range(len(present)))}); renumber the classes from 0"
        )
    return len(present)


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _read_npz(path: Path) -> _Arrays:
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
            return _Arrays(*(archive[key] for key in _NPZ_KEYS))
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupt npz file ({_reason(exc)})") from None


def _read_mnist(data_dir: Path) -> tuple[_Arrays, str]:
    candidates = [data_dir / "mnist.npz", data_dir / "mnist" / "mnist.npz"]
    for candidate in candidates:
        if candidate.is_file():
            return _read_npz(candidate), str(candidate)
    raise DataError(f"MNIST not found: looked for {_join(candidates)}")


_FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_IDX_IMAGES = 2051  # 0x0803: unsigned bytes, 3 dimensions
_IDX_LABELS = 2049  # 0x0801: unsigned bytes, 1 dimension


def _read_fashion_mnist(data_dir: Path) -> tuple[_Arrays, str]:
    folders = [data_dir / "fashion-mnist", data_dir / "fashion_mnist", data_dir]
    for folder in folders:
        if all((folder / file).is_file() for file in _FASHION_FILES):
            x_train, y_train, x_test, y_test = (
                _read_idx(folder / file, magic)
                for file, magic in zip(_FASHION_FILES, (_IDX_IMAGES, _IDX_LABELS) * 2)
            )
            return _Arrays(x_train, y_train, x_test, y_test), str(folder)
    raise DataError(f"Fashion-MNIST not found: looked for {', '.join(_FASHION_FILES)} in {_join(folders)}")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes (the format of the original MNIST files)."""
    try:
        with gzip.open(path, "rb") as file:
            raw = file.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({_reason(exc)})") from None
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


def _read_cifar10(data_dir: Path) -> tuple[_Arrays, str]:
    looked = []
    for base in (data_dir, data_dir / "cifar10"):
        folder, archive = base / _CIFAR_FOLDER, base / _CIFAR_ARCHIVE
        if folder.is_dir():
            return _cifar_arrays(_read_cifar_folder(folder), folder), str(folder)
        if archive.is_file():
            return _cifar_arrays(_read_cifar_archive(archive), archive), str(archive)
        looked += [folder, archive]
    raise DataError(f"CIFAR-10 not found: looked for {_join(looked)}")


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
        raise DataError(f"{archive}: not a readable tar.gz archive ({_reason(exc)})") from None
    missing = [member for member, name in wanted.items() if name not in contents]
    if missing:
        raise DataError(f"{archive}: missing member(s) {', '.join(missing)}")
    return contents


def _cifar_arrays(contents: dict[str, bytes], source: Path) -> _Arrays:
    batches = [_parse_cifar_batch(contents[name], f"{source}/{name}") for name in _CIFAR_BATCHES]
    x_train = np.concatenate([x for x, _ in batches[:5]])
    y_train = np.concatenate([y for _, y in batches[:5]])
    x_test, y_test = batches[5]
    return _Arrays(x_train, y_train, x_test, y_test)


def _parse_cifar_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle one official CIFAR-10 batch into (N, 32, 32, 3) images and labels."""
    try:
        batch = pickle.loads(raw, encoding="bytes")  # the batches were pickled by Python 2
    except Exception as exc:  # pickle documents no closed set of errors for malformed input
        raise DataError(f"{source}: not a readable CIFAR-10 batch ({_reason(exc)})") from None
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


def _read_csv(data: DataConfig, path: Path) -> tuple[_Arrays, list]:
    """Read a table, map its labels to 0..K-1 and carve out a stratified test set."""
    label = data.label_column
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({_reason(exc)})") from None
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
        example = frame[non_numeric[0]].dropna().iloc[0]
        raise DataError(
            f"{path}: feature column(s) {', '.join(non_numeric)} are not numeric "
            f"(e.g. {non_numeric[0]}={example!r}); list them in data.ignore_columns"
        )
    empty = [c for c in [*features, label] if frame[c].isna().any()]
    if empty:
        line = int(np.argmax(frame[empty[0]].isna().to_numpy())) + 2  # line 1 is the header
        raise DataError(f"{path}: empty or NaN cells in column(s) {', '.join(empty)}, the first at line {line} "
                        f"(column {empty[0]}); fill or drop those rows")

    classes, y = np.unique(frame[label].to_numpy(), return_inverse=True)
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
    train, test = _stratified_split(y, data.test_split, np.random.default_rng(data.split_seed))
    if len(train) == 0:
        raise DataError(f"{path}: data.test_split: {data.test_split} of {len(y)} rows leaves no training rows; "
                        f"lower data.test_split or add rows")
    if len(test) == 0:
        raise DataError(
            f"{path}: data.test_split: {data.test_split} of {len(y)} rows leaves no test rows (each class gives "
            f"round(test_split x its rows)); raise data.test_split or add rows"
        )
    y = y.astype(np.int32)
    return _Arrays(x[train], y[train], x[test], y[test]), classes.tolist()


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


def _join(paths) -> str:
    return ", ".join(str(path) for path in paths)


def _reason(exc: BaseException) -> str:
    """An exception's message on one line (some libraries end theirs with a newline)."""
    return " ".join(str(exc).split()) or type(exc).__name__


_BUILTINS = {
    "mnist": _Builtin(
        "MNIST", (28, 28, 1), 10, _read_mnist,
        "put mnist.npz (keys x_train, y_train, x_test, y_test) in a folder",
    ),
    "fashion_mnist": _Builtin(
        "Fashion-MNIST", (28, 28, 1), 10, _read_fashion_mnist,
        f"put {', '.join(_FASHION_FILES)} in a folder",
    ),
    "cifar10": _Builtin(
        "CIFAR-10", (32, 32, 3), 10, _read_cifar10,
        f"put {_CIFAR_ARCHIVE} (or its extracted {_CIFAR_FOLDER} folder) in a folder",
    ),
}
