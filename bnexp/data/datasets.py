"""Datasets: the arrays a `data` config section means, read from their files (bnexp.data.files),
then subset, split, checked and scaled into read-only float32 inputs and int32 labels.

Keras is imported only by the download fallback, so importing this module stays fast.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnexp.config.schema import DataConfig
from bnexp.data.files import BUILTINS, Arrays, normalise, read_builtin, read_csv, read_npz
from bnexp.data.images import (check_image_headers, folder_sha256, image_files, image_shape, read_images,
                               scan_images, single_image_warnings)
from bnexp.data.scaling import apply, resolve, said, values
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
    classes: tuple[str, ...] = ()  # the class names, in label order, where the data names them (csv, images)
    # Said once before training, never an error: parts too small to mean much (_check_labels), values
    # kept unscaled (bnexp.data.scaling), classes of one image and transparent images (bnexp.data.images).
    warnings: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load_dataset(data: DataConfig, data_dir: Path | None) -> Dataset:
    """Load the dataset a `data` config section describes, cached per process.

    `data_dir` holds the MNIST, Fashion-MNIST and CIFAR-10 files; when it is None those are
    downloaded through keras.datasets.
    Relative csv/npz/image-folder paths are tried from the current directory, then from `data_dir`.
    Raises DataError, with a one-line message, for missing, corrupt or unusable data: non-finite
    inputs, labels that are not class indices 0..K-1, one class, an empty part, test labels the
    training part never shows.
    """
    data_dir = Path(data_dir) if data_dir is not None else None
    if data.dataset in BUILTINS:
        return _load(data, data_dir, None, None, None)
    return _load(data, data_dir, *_located(data, data_dir))


def fingerprint(data: DataConfig, data_dir: Path | None) -> str | None:
    """The SHA-256 of the csv/npz file a `data` config reads, or of an image folder's (and its test
    folder's) file names and contents (DataError when one is missing); None for the built-in datasets:
    their name already says what they hold, as Keras checks the official files' hashes when it
    downloads them, and an id must not change between a downloaded copy and a local one."""
    if data.dataset in BUILTINS:
        return None
    return _located(data, data_dir)[-1]


def _located(data: DataConfig, data_dir: Path | None) -> tuple[Path, Path | None, str]:
    """(path, test folder, SHA-256 of what they hold) of a csv/npz file or an image folder."""
    if data.dataset != "images":
        path = _resolve_path(data.path, data_dir, "data.path", folder=False)
        return path, None, _file_sha256(path)
    folder = _resolve_path(data.path, data_dir, "data.path", folder=True)
    test = _resolve_path(data.test_path, data_dir, "data.test_path", folder=True) if data.test_path else None
    digest = hashlib.sha256(folder_sha256(folder).encode())
    if test is not None:
        digest.update(b"test\0" + folder_sha256(test).encode())
    return folder, test, digest.hexdigest()


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
    """Return (input_shape, num_classes); constants for the built-in datasets, so no file is read; for
    an image folder, from data.image_size and color_mode and its class subfolders, each image's header
    checked but no pixels decoded."""
    if data.dataset in BUILTINS:
        builtin = BUILTINS[data.dataset]
        return builtin.input_shape, builtin.num_classes
    if data.dataset == "images":
        return image_shape(data), len(image_classes(data, data_dir))
    dataset = load_dataset(data, data_dir)
    return dataset.input_shape, dataset.num_classes


def image_classes(data: DataConfig, data_dir: Path | None) -> tuple[str, ...]:
    """An image folder's class names (its sorted subfolders), the folders checked as the loader
    checks them and each image's header read (DataError otherwise), no pixels decoded."""
    folder, test, _ = _located(data, data_dir)
    files = scan_images(folder, "data.path")
    check_image_headers(files)
    if test is not None:
        check_image_headers(scan_images(test, "data.test_path", folder))
    return tuple(files)


def describe_images(data: DataConfig, data_dir: Path | None) -> str:
    """`bnexp plan`'s line for an image folder: its classes, how many images it and its test folder
    hold, and the input shape, from the folder listing and data.image_size/color_mode (no pixels read);
    then a "warning:" line for classes of a single image."""
    folder, test, _ = _located(data, data_dir)
    files = image_files(folder)
    count = sum(map(len, files.values()))
    split = (f"test folder {test}: {sum(map(len, image_files(test).values()))} images" if test is not None
             else f"data.test_split {data.test_split} of them for testing")
    shown = ", ".join(list(files)[:10]) + (f", ... ({len(files)} classes)" if len(files) > 10 else "")
    return "\n".join([f"{folder}: {len(files)} classes ({shown}), {count} images ({split}), "
                      f"input shape {image_shape(data)} ({data.color_mode})",
                      *(f"warning: {warning}" for warning in single_image_warnings(folder, files))])


def builtin_num_classes(dataset: str) -> int | None:
    """The number of classes of a built-in dataset (mnist, fashion_mnist, cifar10), else None."""
    builtin = BUILTINS.get(dataset)
    return builtin.num_classes if builtin else None


def _resolve_path(path: str, data_dir: Path | None, key: str, *, folder: bool) -> Path:
    given = Path(path).expanduser()
    candidates = [given]
    if data_dir is not None and not given.is_absolute():
        candidates.append(data_dir / given)
    for candidate in candidates:
        if candidate.is_dir() if folder else candidate.is_file():
            return candidate.resolve()
    looked = ", ".join(map(str, candidates))
    if folder and any(candidate.exists() for candidate in candidates):
        raise DataError(f"{key}: {path} is not a folder (looked for {looked}); dataset 'images' reads a folder "
                        f"with one subfolder of images per class")
    raise DataError(f"{key}: {path} not found (looked for {looked})")


# One worker trains many runs on the same data; a small bound keeps a sweep over data
# settings from holding many float32 copies of a large image set. The key holds the csv/npz file's
# or image folders' resolved paths and content (`sha256`), so edited data is read again.
@functools.lru_cache(maxsize=4)
def _load(data: DataConfig, data_dir: Path | None, path: Path | None, test: Path | None,
          sha256: str | None) -> Dataset:
    warnings: list[str] = []
    if data.dataset in BUILTINS:
        name = data.dataset
        arrays = read_builtin(name, data_dir)
        classes = list(range(BUILTINS[name].num_classes))
    elif data.dataset == "npz":
        name = str(path)
        arrays = normalise(read_npz(path), name)
        classes = list(range(_class_count(arrays, name)))
    elif data.dataset == "images":
        name = str(path)
        arrays, classes, warnings = read_images(data, path, test)
    else:
        name = str(path)
        arrays, classes = read_csv(data, path)
    # The parts as stored, each with its own dtype and range: an npz's two arrays, a test folder, or one
    # file split in two.
    if data.dataset == "npz":
        stored = [values(f"{name}: x_train", arrays.x_train), values(f"{name}: x_test", arrays.x_test)]
    elif test is not None:
        stored = [values(name, arrays.x_train), values(str(test), arrays.x_test)]
    else:
        stored = [values(name, arrays.x_train, arrays.x_test, stored="CSV" if data.dataset == "csv" else None)]
    scaling, scales, scaling_warnings = resolve(data.scaling, data.dataset, stored)

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
    warnings += [*_check_labels(name, classes, y_train, y_val, y_test), *scaling_warnings]
    x_train, x_val, x_test = apply((x_train, x_val, x_test), scaling, (scales[0], scales[0], scales[-1]), name,
                                     said(data.scaling, scaling))
    return Dataset(
        name=name,
        x_train=_frozen(x_train),
        y_train=_frozen(y_train),
        x_val=_frozen(x_val),
        y_val=_frozen(y_val),
        x_test=_frozen(x_test),
        y_test=_frozen(y_test),
        num_classes=len(classes),
        classes=tuple(map(str, classes)) if data.dataset in ("csv", "images") else (),
        warnings=tuple(warnings),
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


def _frozen(array: np.ndarray) -> np.ndarray:
    # Cached arrays are shared by every run in the process, so no caller may change them.
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


def _class_count(arrays: Arrays, source: str) -> int:
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
