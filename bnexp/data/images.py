"""A user's folder of class subfolders of PNG/JPEG images: listing it, checking it, decoding it with
Pillow into uint8 arrays, and the SHA-256 of its images that a run id covers."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bnexp.config.schema import DataConfig
from bnexp.data.files import Arrays, stratified_test_split
from bnexp.errors import DataError, one_line

# What Pillow decodes for an image folder; other files (notes, .DS_Store) are left alone, as Keras'
# image_dataset_from_directory does.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_files(folder: Path) -> dict[str, list[Path]]:
    """Each class subfolder's name (sorted) -> its PNG/JPEG files, at any depth, sorted; hidden entries
    (a leading dot) are skipped. No checks: the run id's fingerprint and the loader both start here."""
    try:
        classes = sorted(entry.name for entry in os.scandir(folder)
                         if entry.is_dir() and not entry.name.startswith("."))
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the image folder ({exc.strerror or exc})") from None
    files = {}
    for name in classes:
        found = []
        # os.walk's directory entries say file or folder without a stat per file: listing 2,000 images
        # takes a few milliseconds.
        for parent, subfolders, names in os.walk(folder / name, onerror=_raise_listing_error):
            subfolders[:] = [sub for sub in subfolders if not sub.startswith(".")]
            found += [Path(parent, file) for file in names
                      if not file.startswith(".") and os.path.splitext(file)[1].lower() in IMAGE_SUFFIXES]
        files[name] = sorted(found)
    return files


def _raise_listing_error(exc: OSError) -> None:
    raise DataError(f"{exc.filename}: cannot list the image folder ({exc.strerror or exc})")


def scan_images(folder: Path, key: str, classes: tuple[str, ...] | None = None) -> dict[str, list[Path]]:
    """image_files, checked: at least two class subfolders, each with an image, and for a test folder
    (`classes` given) the training folder's classes."""
    files = image_files(folder)
    if classes is not None and tuple(files) != classes:
        missing = [name for name in classes if name not in files]
        extra = [name for name in files if name not in classes]
        said = "; ".join(part for part in (
            f"missing {', '.join(map(repr, missing))}" if missing else "",
            f"extra {', '.join(map(repr, extra))}" if extra else "",
        ) if part)
        raise DataError(f"{folder}: {key}: the test folder's class subfolders differ from the training folder's "
                        f"({said}); give both folders the same class names")
    if not files:
        raise DataError(f"{folder}: {key}: no class subfolders; dataset 'images' needs one subfolder of PNG/JPEG "
                        f"images per class (e.g. {folder / 'cat' / '1.png'})")
    if len(files) < 2:
        raise DataError(f"{folder}: {key}: only one class subfolder ({next(iter(files))!r}); "
                        f"a classifier needs at least two")
    for name, paths in files.items():
        if not paths:
            raise DataError(f"{folder / name}: class folder {name!r} holds no PNG or JPEG images "
                            f"({', '.join(IMAGE_SUFFIXES)}); add some or remove the folder")
    return files


def image_shape(data: DataConfig) -> tuple[int, int, int]:
    height, width = data.image_size
    return height, width, 3 if data.color_mode == "rgb" else 1


def check_image_headers(files: dict[str, list[Path]]) -> None:
    """Open each image's header (Pillow reads no pixels until asked), so a file that is not an image
    stops `bnexp plan` without decoding the folder."""
    for path in (p for paths in files.values() for p in paths):
        try:
            with Image.open(path):
                pass
        except _IMAGE_ERRORS as exc:
            raise _image_error(path, exc) from None


def read_images(data: DataConfig, folder: Path, test_folder: Path | None) -> tuple[Arrays, list]:
    """Decode a folder of class subfolders into uint8 (N, H, W, C) arrays (labels: the sorted subfolder
    names' indices), in an order shuffled with data.split_seed, so the validation split's last rows
    and data.train_subset's first ones hold every class. Without a test folder, data.test_split
    carves out a stratified test set as for a CSV."""
    rng = np.random.default_rng(data.split_seed)
    files = scan_images(folder, "data.path")
    classes = tuple(files)
    x, y = _decode_images(files, data)
    if test_folder is None:
        train, test = stratified_test_split(y, data, rng, folder, "images")
        return Arrays(x[train], y[train], x[test], y[test]), list(classes)
    x_test, y_test = _decode_images(scan_images(test_folder, "data.test_path", classes), data)
    train, test = rng.permutation(len(y)), rng.permutation(len(y_test))
    return Arrays(x[train], y[train], x_test[test], y_test[test]), list(classes)


def _decode_images(files: dict[str, list[Path]], data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    shape = image_shape(data)
    mode = "RGB" if data.color_mode == "rgb" else "L"
    paths = [(path, label) for label, members in enumerate(files.values()) for path in members]
    x = np.empty((len(paths), *shape), dtype=np.uint8)
    y = np.array([label for _, label in paths], dtype=np.int32)
    for row, (path, _) in enumerate(paths):
        try:
            with Image.open(path) as image:
                image = image.convert(mode)  # decodes every pixel, so a truncated file fails here
                if image.size != (shape[1], shape[0]):
                    image = image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
                x[row] = np.asarray(image, dtype=np.uint8).reshape(shape)
        except _IMAGE_ERRORS as exc:
            raise _image_error(path, exc) from None
    return x, y


# What Pillow raises for a file it cannot decode: OSError (unknown format, truncated data), ValueError and
# SyntaxError (malformed headers, raised by some of its plugins), DecompressionBombError (an image of
# more than twice Pillow's pixel limit).
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _image_error(path: Path, exc: BaseException) -> DataError:
    why = "not a PNG or JPEG file" if isinstance(exc, UnidentifiedImageError) else one_line(exc)
    return DataError(f"{path}: not a readable image ({why}); replace or remove the file")


def folder_sha256(folder: Path) -> str:
    """The SHA-256 of an image folder's images: their paths relative to it and their contents."""
    try:
        stats = tuple(
            (path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns, stat.st_ino)
            for paths in image_files(folder).values() for path in paths
            for stat in (path.stat(),)
        )
    except OSError as exc:
        raise DataError(f"{folder}: cannot read the image folder ({exc.strerror or exc})") from None
    return _folder_content_sha256(folder, stats)


# Within a process (plan, then each worker's load) the folder's listing keys the hash; across processes
# (each `bnexp plan` or `run`) every image's own hash is kept on disk, keyed by its size, time and inode,
# so re-planning reads only the images that changed: a folder of 2,000 PNGs costs its listing and stats.
@functools.lru_cache(maxsize=8)
def _folder_content_sha256(folder: Path, stats: tuple[tuple[str, int, int, int], ...]) -> str:
    cache_file = _hash_cache_file(folder)
    known = _read_hash_cache(cache_file)
    digest, hashes = hashlib.sha256(), {}
    for relative, *stat in stats:
        entry = known.get(relative)
        if isinstance(entry, list) and entry[:3] == stat and isinstance(entry[-1], str):
            content_sha256 = entry[-1]
        else:
            path = folder / relative
            try:
                content_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as exc:
                raise DataError(f"{path}: cannot read the image ({exc.strerror or exc})") from None
        hashes[relative] = [*stat, content_sha256]
        # The name, then the content's own hash: no two folders can give the same stream of bytes.
        digest.update(f"{relative}\0{content_sha256}\n".encode())
    if hashes != known:
        _write_hash_cache(cache_file, hashes)
    return digest.hexdigest()


def _hash_cache_file(folder: Path) -> Path:
    root = os.environ.get("BNEXP_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "bnexp"
    return Path(root) / "image-sha256" / f"{hashlib.sha256(str(folder).encode()).hexdigest()[:20]}.json"


def _read_hash_cache(cache_file: Path) -> dict:
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):  # none yet, or damaged: the images are hashed again
        return {}
    return known if isinstance(known, dict) else {}


def _write_hash_cache(cache_file: Path, hashes: dict) -> None:
    # Written whole under a temporary name, then renamed: a reader never sees half a file, and of two
    # processes writing at once the last one wins with a complete cache. The cache only saves time, so
    # a folder that cannot be written (a read-only home) is no error.
    temporary = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache_file.parent, suffix=".tmp", delete=False) as file:
            temporary = Path(file.name)
            json.dump(hashes, file, separators=(",", ":"))
        os.replace(temporary, cache_file)
    except OSError:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
