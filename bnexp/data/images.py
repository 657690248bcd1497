"""A user's folder of class subfolders of PNG/JPEG images: listing it, checking it, decoding it with
Pillow into uint8 arrays (uint16 where an image has 16 bits), and the SHA-256 of its images that a
run id covers."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
import unicodedata
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
    """Each class subfolder's name (in Unicode NFC, sorted) -> its PNG/JPEG files, at any depth, sorted;
    hidden entries (a leading dot) are skipped and symbolic links followed, each folder and image once.
    No checks: the run id's fingerprint and the loader both start here (scan_images checks)."""
    return _list_images(folder)[0]


def _list_images(folder: Path) -> tuple[dict[str, list[Path]], dict[str, Path], list[str]]:
    """image_files; each image's real path (links resolved) -> the path it was found under; and what
    makes a class ambiguous, for scan_images to refuse: one name in two Unicode forms, a folder or an
    image reached twice (through links), a broken link."""
    try:
        entries = sorted((entry for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith(".")),
                         key=lambda entry: entry.name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the image folder ({exc.strerror or exc})") from None
    # macOS writes folder names decomposed (NFD: 'e' + a combining accent), most other systems composed
    # (NFC): the class names are compared in NFC, so a test folder copied between them still matches.
    classes: dict[str, os.DirEntry] = {}
    problems: list[str] = []
    for entry in entries:
        name = unicodedata.normalize("NFC", entry.name)
        if name in classes:
            problems.append(f"{folder}: class folders {ascii(classes[name].name)} and {ascii(entry.name)} are one "
                            f"name in two Unicode forms (NFC and NFD) that look the same; merge them into one folder")
            continue
        classes[name] = entry
    files, folders, reals = {}, {os.path.realpath(folder): folder}, {}
    for name in sorted(classes):
        found: list[Path] = []
        _walk(Path(classes[name].path), found, folders, reals, problems)
        files[name] = sorted(found)
    return files, reals, problems


def _walk(folder: Path, found: list[Path], folders: dict[str, Path], reals: dict[str, Path],
          problems: list[str]) -> None:
    """Add folder's images at any depth to `found`; `folders` and `reals` hold the real paths read so far."""
    real = os.path.realpath(folder)
    if real in folders:
        problems.append(f"{folder}: the folder {folders[real]} again (through a symbolic link); each image must be "
                        f"read once, in one class: remove the link")
        return
    folders[real] = folder
    try:
        # Directory entries say file, folder or link without a stat per file: listing 2,000 images takes a
        # few milliseconds.
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the image folder ({exc.strerror or exc})") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():  # a link to a folder is followed
            _walk(Path(entry.path), found, folders, reals, problems)
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
            path = Path(entry.path)
            if entry.is_symlink():
                if not path.exists():
                    problems.append(f"{path}: a broken symbolic link (to {os.readlink(path)}); fix or remove it")
                    continue
                target = os.path.realpath(path)
            else:
                target = os.path.join(real, entry.name)
            if target in reals:
                problems.append(f"{path}: the image {reals[target]} again (through a symbolic link); each image "
                                f"must be read once, in one class: remove the link")
                continue
            reals[target] = path
            found.append(path)


def scan_images(folder: Path, key: str, training: Path | None = None) -> dict[str, list[Path]]:
    """image_files, checked: at least two class subfolders, each with an image, and for a test folder
    (`training` given) the training folder's classes and none of its images."""
    files, reals, problems = _list_images(folder)
    if problems:
        raise DataError(problems[0])
    if training is not None:
        classes, training_reals, _ = _list_images(training)
        if tuple(files) != tuple(classes):
            missing = [name for name in classes if name not in files]
            extra = [name for name in files if name not in classes]
            said = "; ".join(part for part in (
                f"missing {', '.join(map(repr, missing))}" if missing else "",
                f"extra {', '.join(map(repr, extra))}" if extra else "",
            ) if part)
            raise DataError(f"{folder}: {key}: the test folder's class subfolders differ from the training folder's "
                            f"({said}); give both folders the same class names")
        if os.path.realpath(folder) == os.path.realpath(training):
            raise DataError(f"{folder}: {key}: the training folder itself; a test image must not be trained on: give a "
                            f"test folder of other images, or leave {key} out to hold out data.test_split of each class")
        shared = sorted(reals.keys() & training_reals.keys())
        if shared:
            raise DataError(f"{folder}: {key}: {len(shared)} image(s) of the training folder (e.g. {reals[shared[0]]} is "
                            f"{training_reals[shared[0]]}); a test image must not be trained on: give a test folder of "
                            f"other images, or leave {key} out to hold out data.test_split of each class")
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


def single_image_warnings(folder: Path, files: dict[str, list[Path]]) -> list[str]:
    """A warning for the training folder's classes that hold one image: it lands in one part only."""
    single = [name for name, paths in files.items() if len(paths) == 1]
    if not single:
        return []
    shown = ", ".join(map(repr, single[:5])) + (f" and {len(single) - 5} more" if len(single) > 5 else "")
    return [f"{folder}: {len(single)} class(es) hold a single image ({shown}): one image lands in only one of the "
            f"training, validation and test parts, so the model is trained on such a class or measured on it, "
            f"never both; add images to those classes"]


def image_shape(data: DataConfig) -> tuple[int, int, int]:
    height, width = data.image_size
    return height, width, 3 if data.color_mode == "rgb" else 1


def check_image_headers(files: dict[str, list[Path]]) -> None:
    """Open each image's header (Pillow reads no pixels until asked), so a file that is not an image, or
    one in a pixel format bnexp does not decode, stops `bnexp plan` without decoding the folder."""
    for path in (p for paths in files.values() for p in paths):
        try:
            with Image.open(path) as image:
                _check_mode(path, image)
        except _IMAGE_ERRORS as exc:
            raise _image_error(path, exc) from None


def read_images(data: DataConfig, folder: Path, test_folder: Path | None) -> tuple[Arrays, list, list[str]]:
    """Decode a folder of class subfolders into (N, H, W, C) arrays, uint8, or uint16 where an image has
    16 bits (labels: the sorted subfolder names' indices), in an order shuffled with data.split_seed, so
    the validation split's last rows and data.train_subset's first ones hold every class. Without a test
    folder, data.test_split carves out a stratified test set as for a CSV. Also returns the warnings:
    classes of a single image, images with transparent pixels."""
    rng = np.random.default_rng(data.split_seed)
    files = scan_images(folder, "data.path")
    classes = tuple(files)
    x, y, transparent = _decode_images(files, data)
    warnings = single_image_warnings(folder, files) + _transparency_warnings(folder, transparent)
    if test_folder is None:
        train, test = stratified_test_split(y, data, rng, folder, "images")
        return Arrays(x[train], y[train], x[test], y[test]), list(classes), warnings
    x_test, y_test, transparent = _decode_images(scan_images(test_folder, "data.test_path", folder), data)
    warnings += _transparency_warnings(test_folder, transparent)
    if x.dtype != x_test.dtype:  # one folder has a 16-bit image: both in 16 bits, so `none` scales them alike
        x, x_test = _to_16_bits(x), _to_16_bits(x_test)
    train, test = rng.permutation(len(y)), rng.permutation(len(y_test))
    return Arrays(x[train], y[train], x_test[test], y_test[test]), list(classes), warnings


def _decode_images(files: dict[str, list[Path]], data: DataConfig) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """(images, labels, the images with transparent pixels); uint8 unless an image has 16 bits."""
    shape = image_shape(data)
    paths = [(path, label) for label, members in enumerate(files.values()) for path in members]
    x = np.empty((len(paths), *shape), dtype=np.uint8)
    y = np.array([label for _, label in paths], dtype=np.int32)
    transparent = []
    for row, (path, _) in enumerate(paths):
        try:
            pixels, see_through = _decode_image(path, data.color_mode, shape)
        except _IMAGE_ERRORS as exc:
            raise _image_error(path, exc) from None
        if pixels.dtype == np.uint16 and x.dtype == np.uint8:
            x = _to_16_bits(x)
        x[row] = _to_16_bits(pixels) if x.dtype == np.uint16 else pixels
        if see_through:
            transparent.append(path)
    return x, y, transparent


def _to_16_bits(x: np.ndarray) -> np.ndarray:
    """8-bit values on the 16-bit scale: 255 x 257 = 65535, so each level keeps its exact fraction of full scale."""
    return x if x.dtype == np.uint16 else x.astype(np.uint16) * np.uint16(257)


# Pillow's modes for what a PNG or JPEG holds: 1-bit, 2-, 4- and 8-bit grey (L), grey with alpha, palette
# (P; PA), RGB, RGBA, CMYK (a JPEG), each at 8 bits a channel, and 16-bit grey (I;16; older Pillow gave I).
# Pillow reads a 16-bit colour or grey-with-alpha PNG as 8-bit RGB(A), keeping only the high byte: those
# are decoded by TensorFlow instead (_decode_16_bit_png).
_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I"})


def _check_mode(path: Path, image: Image.Image) -> None:
    if image.mode not in _EIGHT_BIT_MODES and image.mode not in _SIXTEEN_BIT_MODES:
        raise DataError(f"{path}: Pillow reads this {image.format} image in mode {image.mode}, which bnexp does not "
                        f"decode; save it as an 8- or 16-bit PNG (grey, RGB or RGBA) or an 8-bit JPEG")


def _decode_image(path: Path, color_mode: str, shape: tuple[int, int, int]) -> tuple[np.ndarray, bool]:
    """One image at `shape`, uint8 or (16 bits) uint16, and whether it has transparent pixels."""
    with Image.open(path) as image:
        _check_mode(path, image)
        if image.format == "PNG" and image.mode in ("RGB", "RGBA", "LA") and _png_bit_depth(image) == 16:
            pixels, transparent = _decode_16_bit_png(path, image.info.get("transparency"))
        elif image.mode in _SIXTEEN_BIT_MODES:
            pixels = np.asarray(image)
            if image.mode == "I" and (pixels.min() < 0 or pixels.max() > 65535):
                raise DataError(f"{path}: Pillow reads this {image.format} image in mode I (32-bit integer) with values "
                                f"from {pixels.min()} to {pixels.max()}, beyond 16 bits, which bnexp does not decode; "
                                f"save it as a 16-bit PNG (values 0..65535)")
            key = image.info.get("transparency")
            transparent = isinstance(key, int) and bool((pixels == key).any())
            pixels = pixels.astype(np.uint16)[..., np.newaxis]
        else:
            return _decode_8_bit(image, color_mode, shape)
    # Grey to RGB repeats the grey; RGB to grey weighs the channels as Pillow's "L" conversion (ITU-R 601-2).
    if color_mode == "rgb" and pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    elif color_mode == "grayscale" and pixels.shape[-1] == 3:
        pixels = np.rint(pixels @ np.array([0.299, 0.587, 0.114])).astype(np.uint16)[..., np.newaxis]
    return _resize_16_bit(pixels, shape), transparent


def _decode_8_bit(image: Image.Image, color_mode: str, shape: tuple[int, int, int]) -> tuple[np.ndarray, bool]:
    # A palette's or a colour key's transparency becomes an alpha channel first: its pixels are counted, and
    # Pillow then converts without warning. The alpha channel is dropped, as Keras does.
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    elif "transparency" in image.info:
        image = image.convert("RGBA" if image.mode == "RGB" else "LA")
    transparent = "A" in image.getbands() and image.getchannel("A").getextrema()[0] < 255
    image = image.convert("RGB" if color_mode == "rgb" else "L")  # decodes every pixel: a truncated file fails here
    if image.size != (shape[1], shape[0]):
        image = image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(shape), transparent


def _resize_16_bit(pixels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Each channel resized as Pillow resizes 8-bit images (bilinear), in 32-bit floats so no level is lost."""
    if pixels.shape[:2] == shape[:2]:
        return pixels
    channels = [np.asarray(Image.fromarray(pixels[..., c].astype(np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR)) for c in range(pixels.shape[-1])]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 65535).astype(np.uint16)


def _png_bit_depth(image: Image.Image) -> int:
    """The bit depth in a PNG's IHDR, read from the file Pillow holds open (its position put back)."""
    at = image.fp.tell()
    image.fp.seek(24)  # the signature, then IHDR: length, type, width, height, bit depth
    depth = image.fp.read(1)
    image.fp.seek(at)
    return depth[0] if depth else 8


def _decode_16_bit_png(path: Path, key) -> tuple[np.ndarray, bool]:
    """A 16-bit colour or grey-with-alpha PNG, every bit kept: (H, W, 1 or 3) uint16, and whether a pixel is
    transparent (an alpha below full scale, or the colour `key` of a tRNS chunk)."""
    import tensorflow as tf  # deferred: seconds to import, and only these PNGs need it

    try:
        pixels = tf.io.decode_png(path.read_bytes(), channels=0, dtype=tf.uint16).numpy()
    except tf.errors.OpError as exc:  # its message names TensorFlow's graph node and op: only the reason is the user's
        raise OSError(re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", one_line(exc.message)).strip()) from None
    if pixels.shape[-1] in (2, 4):
        transparent = bool((pixels[..., -1] < 65535).any())
        pixels = pixels[..., :-1]
    else:
        transparent = key is not None and bool((pixels == np.array(key).reshape(-1)).all(axis=-1).any())
    return pixels, transparent


def _transparency_warnings(folder: Path, transparent: list[Path]) -> list[str]:
    if not transparent:
        return []
    return [f"{folder}: {len(transparent)} image(s) have transparent pixels (e.g. {transparent[0]}); bnexp drops the "
            f"alpha channel, as Keras does, so the model sees the colour stored under them; flatten the images onto "
            f"a background if that colour is not meant"]


# What Pillow raises for a file it cannot decode: OSError (unknown format, truncated data), ValueError and
# SyntaxError (malformed headers, raised by some of its plugins), DecompressionBombError (an image of
# more than twice Pillow's pixel limit).
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _image_error(path: Path, exc: BaseException) -> DataError:
    if isinstance(exc, UnidentifiedImageError):
        bits = _jpeg_precision(path)
        if bits not in (None, 8):
            return DataError(f"{path}: a {bits}-bit JPEG, which Pillow does not decode (8-bit JPEGs only); save it as "
                             f"a 16-bit PNG, or as an 8-bit JPEG")
        return DataError(f"{path}: not a readable image (not a PNG or JPEG file); replace or remove the file")
    return DataError(f"{path}: not a readable image ({one_line(exc)}); replace or remove the file")


def _jpeg_precision(path: Path) -> int | None:
    """The bits per sample of a JPEG's frame header; None for a file that is not a JPEG or has none."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 4 < len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], int.from_bytes(data[at + 2:at + 4], "big")
        # Start of frame markers: C0-CF but C4 (Huffman tables), C8 (reserved) and CC (arithmetic coding).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return data[at + 4] if at + 4 < len(data) else None
        at += 2 + length
    return None


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
