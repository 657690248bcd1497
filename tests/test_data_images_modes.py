"""dataset: images, decoded as stored: every pixel format a PNG or JPEG holds reaches the model at the
value range its bit depth means (16 bits divided by 65535, not clipped at 255), a format bnexp cannot
decode is refused with one line, and symbolic links, Unicode class names and single-image classes
behave as the README says."""

import os
import struct
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bnexp.config.schema import DataConfig
from bnexp.data.datasets import describe_images, load_dataset
from bnexp.errors import DataError


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BNEXP_CACHE_DIR", str(tmp_path / "cache"))


def png(path: Path, pixels, bits: int, colour_type: int, palette=None, trns: bytes | None = None) -> Path:
    """Write a PNG by hand, at any bit depth (Pillow writes no 16-bit colour PNG): pixels (H, W[, C])."""
    pixels = np.asarray(pixels)
    height, width = pixels.shape[:2]
    flat = pixels.reshape(height, -1)
    if bits == 16:
        rows = flat.astype(">u2").view(np.uint8)
    elif bits == 8:
        rows = flat.astype(np.uint8)
    else:
        bit_planes = np.unpackbits(flat.astype(np.uint8)[..., np.newaxis], axis=-1)[..., 8 - bits:]
        rows = np.packbits(bit_planes.reshape(height, -1), axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bits, colour_type, 0, 0, 0))
    if palette is not None:
        data += chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).ravel()))
    if trns is not None:
        data += chunk(b"tRNS", trns)
    data += chunk(b"IDAT", zlib.compress(b"".join(b"\0" + row.tobytes() for row in rows))) + chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


def folders(root: Path, write, size=(2, 2)) -> tuple[Path, Path]:
    """A training and a test folder: class 'a' holds the image `write` makes, class 'b' a black and
    white 8-bit one."""
    for part in ("train", "test"):
        for name in ("a", "b"):
            (root / part / name).mkdir(parents=True)
        write(root / part / "a" / "0.png")
        plain = np.zeros(size, np.uint8)
        plain[0, 0] = 255
        Image.fromarray(plain).save(root / part / "b" / "0.png")
    for i in (1, 2):  # the training part needs both classes once validation_split has taken its rows
        os.link(root / "train" / "a" / "0.png", root / "train" / "a" / f"{i}.png")
        os.link(root / "train" / "b" / "0.png", root / "train" / "b" / f"{i}.png")
    return root / "train", root / "test"


def decoded(tmp_path, write, color_mode="grayscale", size=(2, 2), **data):
    """Class 'a''s test image as the model gets it, and the dataset's warnings."""
    train, test = folders(tmp_path, write)
    config = DataConfig(dataset="images", path=str(train), test_path=str(test), image_size=size,
                        color_mode=color_mode, validation_split=0.25, **data)
    dataset = load_dataset(config, None)
    return dataset.x_test[dataset.y_test.tolist().index(0)], dataset.warnings


def over(values, scale) -> np.ndarray:
    return np.asarray(values, np.float32) / np.float32(scale)


GREY = [[0, 10], [200, 255]]
SIXTEEN = [[0, 1000], [40000, 65535]]
COLOURS = [[[0, 10, 20], [30, 40, 50]], [[200, 210, 220], [255, 254, 253]]]
COLOURS_16 = [[[0, 1000, 2000], [30000, 40000, 50000]], [[200, 210, 220], [65535, 65534, 65280]]]
PALETTE = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]


# (how the image is written, its grey values as the model gets them)
GREY_IMAGES = {
    "1-bit (mode 1)": (lambda p: png(p, [[0, 1], [1, 0]], 1, 0), over([[0, 255], [255, 0]], 255)),
    "2-bit grey (mode L)": (lambda p: png(p, [[0, 1], [2, 3]], 2, 0), over([[0, 85], [170, 255]], 255)),
    "4-bit grey (mode L)": (lambda p: png(p, [[0, 5], [10, 15]], 4, 0), over([[0, 85], [170, 255]], 255)),
    "8-bit grey (mode L)": (lambda p: Image.fromarray(np.array(GREY, np.uint8)).save(p), over(GREY, 255)),
    "16-bit grey (mode I;16)": (lambda p: Image.fromarray(np.array(SIXTEEN, np.uint16)).save(p), over(SIXTEEN, 65535)),
    "16-bit big-endian grey (mode I;16B)": (lambda p: Image.fromarray(np.array(SIXTEEN, ">u2")).save(p),
                                            over(SIXTEEN, 65535)),
    "32-bit integer grey within 16 bits (mode I, a TIFF)": (
        lambda p: Image.fromarray(np.array(SIXTEEN, np.int32)).save(p, format="TIFF"), over(SIXTEEN, 65535)),
    "8-bit grey with alpha (mode LA)": (lambda p: png(p, np.stack([GREY, np.full((2, 2), 255)], -1), 8, 4),
                                        over(GREY, 255)),
    "16-bit grey with alpha": (lambda p: png(p, np.stack([SIXTEEN, np.full((2, 2), 65535)], -1), 16, 4),
                               over(SIXTEEN, 65535)),
    # Grey from colour: Pillow's "L" weights (ITU-R 601-2), 0.299 R + 0.587 G + 0.114 B.
    "8-bit RGB": (lambda p: Image.fromarray(np.array(COLOURS, np.uint8)).save(p), over([[8, 38], [208, 254]], 255)),
    "16-bit RGB": (lambda p: png(p, COLOURS_16, 16, 2), over([[815, 38150], [208, 65505]], 65535)),
}


@pytest.mark.parametrize("case", GREY_IMAGES)
def test_every_grey_depth_reaches_the_model_at_its_own_full_scale(tmp_path, case):
    write, expected = GREY_IMAGES[case]
    image, warnings = decoded(tmp_path, write)
    np.testing.assert_array_equal(image[..., 0], expected)
    assert not [w for w in warnings if "transparent" in w]


# (how the image is written, its RGB values as the model gets them)
COLOUR_IMAGES = {
    "8-bit RGB": (lambda p: Image.fromarray(np.array(COLOURS, np.uint8)).save(p), over(COLOURS, 255)),
    "8-bit RGBA, opaque": (lambda p: Image.fromarray(np.dstack([COLOURS, np.full((2, 2), 255)]).astype(np.uint8)).save(p),
                           over(COLOURS, 255)),
    "16-bit RGB": (lambda p: png(p, COLOURS_16, 16, 2), over(COLOURS_16, 65535)),
    "16-bit RGBA": (lambda p: png(p, np.dstack([COLOURS_16, np.full((2, 2), 65535)]), 16, 6), over(COLOURS_16, 65535)),
    "palette (mode P)": (lambda p: png(p, [[0, 1], [2, 1]], 8, 3, PALETTE),
                         over([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [0, 255, 0]]], 255)),
    "2-bit palette": (lambda p: png(p, [[0, 1], [2, 1]], 2, 3, PALETTE),
                      over([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [0, 255, 0]]], 255)),
    "8-bit grey repeated in 3 channels": (lambda p: Image.fromarray(np.array(GREY, np.uint8)).save(p),
                                          over(np.repeat(np.array(GREY)[..., None], 3, -1), 255)),
    "16-bit grey repeated in 3 channels": (lambda p: Image.fromarray(np.array(SIXTEEN, np.uint16)).save(p),
                                           over(np.repeat(np.array(SIXTEEN)[..., None], 3, -1), 65535)),
}


@pytest.mark.parametrize("case", COLOUR_IMAGES)
def test_every_colour_format_reaches_the_model_at_its_own_full_scale(tmp_path, case):
    write, expected = COLOUR_IMAGES[case]
    image, _ = decoded(tmp_path, write, color_mode="rgb")
    np.testing.assert_array_equal(image, expected)


def test_a_cmyk_jpeg_gives_its_rgb_colours_not_their_inverse(tmp_path):
    colours = np.array([[[0, 0, 0], [255, 255, 255]], [[255, 0, 0], [0, 0, 255]]], np.uint8)

    def cmyk_jpeg(path):
        Image.fromarray(colours).convert("CMYK").save(path, format="JPEG", quality=100)

    image, _ = decoded(tmp_path, cmyk_jpeg, color_mode="rgb")
    assert Image.open(tmp_path / "test" / "a" / "0.png").mode == "CMYK"
    # JPEG is lossy: each value within 2 levels of what was written.
    assert np.abs(image * 255 - colours).max() <= 2


def test_an_8_bit_image_beside_a_16_bit_one_keeps_its_exact_fraction(tmp_path):
    def both(path):
        Image.fromarray(np.array(SIXTEEN, np.uint16)).save(path)
        Image.fromarray(np.array(GREY, np.uint8)).save(path.with_name("8bit.png"))

    train, test = folders(tmp_path, both)
    dataset = load_dataset(DataConfig(dataset="images", path=str(train), test_path=str(test), image_size=(2, 2),
                                      color_mode="grayscale", validation_split=0.25), None)
    tested = {float(x.sum()) for x, y in zip(dataset.x_test, dataset.y_test) if y == 0}
    assert tested == {float(over(SIXTEEN, 65535).sum()), float(over(GREY, 255).sum())}
    # 'b''s 8-bit image (255 in one corner) is 1.0 there, whichever scale the folder is read at.
    assert {float(x.max()) for x, y in zip(dataset.x_test, dataset.y_test) if y == 1} == {1.0}


def test_a_16_bit_image_is_resized_without_losing_its_low_byte(tmp_path):
    image, _ = decoded(tmp_path, lambda p: Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(p), size=(3, 3))
    np.testing.assert_array_equal(image[..., 0], over(np.full((3, 3), 1000), 65535))


@pytest.mark.parametrize(("write", "what"), [
    (lambda p: png(p, np.stack([GREY, [[255, 0], [255, 255]]], -1), 8, 4), "grey with alpha"),
    (lambda p: Image.fromarray(np.dstack([COLOURS, [[255, 0], [255, 255]]]).astype(np.uint8)).save(p), "RGBA"),
    (lambda p: png(p, [[0, 1], [2, 1]], 8, 3, PALETTE, trns=b"\xff\x00"), "palette with tRNS"),
    (lambda p: png(p, GREY, 8, 0, trns=b"\x00\x0a"), "grey with a transparent colour key"),
    (lambda p: png(p, SIXTEEN, 16, 0, trns=struct.pack(">H", 1000)), "16-bit grey with a colour key"),
    (lambda p: png(p, np.dstack([COLOURS_16, [[65535, 0], [65535, 65535]]]), 16, 6), "16-bit RGBA"),
])
def test_transparent_pixels_are_dropped_with_one_warning_per_folder(tmp_path, write, what):
    _, warnings = decoded(tmp_path, write, color_mode="rgb")
    assert [w for w in warnings if "transparent" in w] == [
        f"{tmp_path / part}: {count} image(s) have transparent pixels (e.g. {tmp_path / part / 'a' / first}); bnexp "
        "drops the alpha channel, as Keras does, so the model sees the colour stored under them; flatten the images "
        "onto a background if that colour is not meant"
        for part, count, first in (("train", 3, "0.png"), ("test", 1, "0.png"))
    ], what


def refused(tmp_path, write):
    train, test = folders(tmp_path, write)
    config = DataConfig(dataset="images", path=str(train), test_path=str(test), image_size=(2, 2))
    with pytest.raises(DataError) as error:
        load_dataset(config, None)
    return str(error.value)


def test_a_float_image_is_refused_naming_the_file_and_the_mode(tmp_path, cli):
    write = lambda p: Image.fromarray(np.zeros((2, 2), np.float32)).save(p, format="TIFF")  # noqa: E731
    train, test = folders(tmp_path, write)
    line = (f"{train / 'a' / '0.png'}: Pillow reads this TIFF image in mode F, which bnexp does not decode; save it "
            f"as an 8- or 16-bit PNG (grey, RGB or RGBA) or an 8-bit JPEG")
    config = tmp_path / "pics.yaml"
    config.write_text(yaml.safe_dump({
        "name": "pics", "seeds": [0], "model": {"dense": [4]},
        "data": {"dataset": "images", "path": str(train), "test_path": str(test), "image_size": [2, 2]},
        "train": {"epochs": 1, "batch_size": 2, "steps_per_execution": 1, "log_every_steps": 1},
    }))
    for command in ("plan", "run"):  # plan reads the header, which holds the mode
        out = cli(command, config)
        assert (out.exit_code, out.output) == (2, f"Error: {line}\n")


def test_a_32_bit_integer_image_beyond_16_bits_is_refused(tmp_path):
    write = lambda p: Image.fromarray(np.array([[0, 1], [2, 70000]], np.int32)).save(p, format="TIFF")  # noqa: E731
    assert refused(tmp_path, write) == (
        f"{tmp_path / 'train' / 'a' / '0.png'}: Pillow reads this TIFF image in mode I (32-bit integer) with values "
        f"from 0 to 70000, beyond 16 bits, which bnexp does not decode; save it as a 16-bit PNG (values 0..65535)")


def test_a_12_bit_jpeg_is_named_as_such(tmp_path):
    def twelve_bit(path):
        Image.fromarray(np.array(COLOURS, np.uint8)).save(path, format="JPEG")
        data = bytearray(path.read_bytes())
        data[data.index(b"\xff\xc0") + 4] = 12  # the frame header's sample precision
        path.write_bytes(bytes(data))

    assert refused(tmp_path, twelve_bit) == (
        f"{tmp_path / 'train' / 'a' / '0.png'}: a 12-bit JPEG, which Pillow does not decode (8-bit JPEGs only); save "
        f"it as a 16-bit PNG, or as an 8-bit JPEG")


def test_a_12_bit_image_in_a_16_bit_png_is_refused_not_squeezed(tmp_path):
    write = lambda p: Image.fromarray(np.array([[0, 1000], [2000, 4095]], np.uint16)).save(p)  # noqa: E731
    # 'b''s 8-bit image reaches 255 x 257: the folder fills its scale; alone, the 12-bit images would not.
    train, test = folders(tmp_path, write)
    for path in (train / "b").iterdir():
        path.unlink()
    for i in range(3):
        Image.fromarray(np.full((2, 2), 300, np.uint16)).save(train / "b" / f"{i}.png")
    with pytest.raises(DataError) as error:
        load_dataset(DataConfig(dataset="images", path=str(train), image_size=(2, 2), test_split=0.34), None)
    assert str(error.value) == (
        f"{train}: data.scaling (unset, so unit) divides these uint16 values by 65535, but they reach only 4095 "
        f"(inputs within [0, 0.062]); use data.scaling: standardize, or store them at their type's full scale "
        f"(bool for 0/1, uint8 for 0..255, uint16 for 0..65535) or as floats within [0, 1]")


def test_scaling_none_keeps_the_stored_levels(tmp_path):
    image, _ = decoded(tmp_path, lambda p: Image.fromarray(np.array(GREY, np.uint8)).save(p), scaling="none")
    np.testing.assert_array_equal(image[..., 0], np.array(GREY, np.float32))


# Symbolic links, Unicode names, single-image classes


def shades(folder: Path, count: int, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((2, 2), 40 + 50 * (start + i) % 200, np.uint8)).save(folder / f"{start + i}.png")


def test_a_linked_folder_inside_a_class_is_followed(tmp_path):
    shades(tmp_path / "elsewhere" / "more_cats", 3)
    shades(tmp_path / "pics" / "cat", 3)
    shades(tmp_path / "pics" / "dog", 6)
    (tmp_path / "pics" / "cat" / "more").symlink_to(tmp_path / "elsewhere" / "more_cats")
    data = DataConfig(dataset="images", path=str(tmp_path / "pics"), image_size=(2, 2))
    assert describe_images(data, None).startswith(f"{tmp_path / 'pics'}: 2 classes (cat, dog), 12 images")
    dataset = load_dataset(data, None)
    assert len(dataset.y_train) + len(dataset.y_val) + len(dataset.y_test) == 12


@pytest.mark.parametrize("case", ["link loop", "image in two classes", "broken link", "test folder is the training one",
                                  "test class linked to a training class"])
def test_links_that_would_read_an_image_twice_are_refused(tmp_path, case):
    pics = tmp_path / "pics"
    shades(pics / "cat", 3)
    shades(pics / "dog", 3)
    test = None
    if case == "link loop":
        (pics / "cat" / "again").symlink_to(pics)
        message = f"{pics / 'cat' / 'again'}: the folder {pics} again (through a symbolic link); each image " \
                  f"must be read once, in one class: remove the link"
    elif case == "image in two classes":
        (pics / "dog" / "9.png").symlink_to(pics / "cat" / "0.png")
        message = f"{pics / 'dog' / '9.png'}: the image {pics / 'cat' / '0.png'} again (through a symbolic link); " \
                  f"each image must be read once, in one class: remove the link"
    elif case == "broken link":
        (pics / "dog" / "9.png").symlink_to(tmp_path / "gone.png")
        message = f"{pics / 'dog' / '9.png'}: a broken symbolic link (to {tmp_path / 'gone.png'}); fix or remove it"
    elif case == "test folder is the training one":
        test = str(tmp_path / "same")
        (tmp_path / "same").symlink_to(pics)
        message = f"{pics}: data.test_path: the training folder itself; a test image must not be trained on: give a " \
                  f"test folder of other images, or leave data.test_path out to hold out data.test_split of each class"
    else:
        test = str(tmp_path / "test")
        shades(tmp_path / "test" / "dog", 2, start=5)
        (tmp_path / "test" / "cat").symlink_to(pics / "cat")
        message = f"{tmp_path / 'test'}: data.test_path: 3 image(s) of the training folder (e.g. " \
                  f"{tmp_path / 'test' / 'cat' / '0.png'} is {pics / 'cat' / '0.png'}); a test image must not be " \
                  f"trained on: give a test folder of other images, or leave data.test_path out to hold out " \
                  f"data.test_split of each class"
    with pytest.raises(DataError) as error:
        load_dataset(DataConfig(dataset="images", path=str(pics), test_path=test, image_size=(2, 2)), None)
    assert str(error.value) == message


NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


def test_one_class_name_in_two_unicode_forms_is_refused(tmp_path):
    shades(tmp_path / "pics" / NFC, 3)
    shades(tmp_path / "pics" / NFD, 3)
    shades(tmp_path / "pics" / "tea", 3)
    with pytest.raises(DataError) as error:
        load_dataset(DataConfig(dataset="images", path=str(tmp_path / "pics"), image_size=(2, 2)), None)
    assert str(error.value) == (f"{tmp_path / 'pics'}: class folders 'cafe\\u0301' and 'caf\\xe9' are one name in two "
                                f"Unicode forms (NFC and NFD) that look the same; merge them into one folder")


def test_a_test_folder_written_in_nfd_matches_the_training_folder_in_nfc(tmp_path):
    for part, name in (("train", NFC), ("test", NFD)):
        shades(tmp_path / part / name, 4)
        shades(tmp_path / part / "tea", 4, start=2)
    dataset = load_dataset(DataConfig(dataset="images", path=str(tmp_path / "train"),
                                      test_path=str(tmp_path / "test"), image_size=(2, 2)), None)
    assert dataset.classes == (NFC, "tea") and sorted(dataset.y_test.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]


def test_classes_of_a_single_image_are_warned_about_in_plan_and_run(tmp_path):
    shades(tmp_path / "pics" / "cat", 5)
    shades(tmp_path / "pics" / "dog", 5, start=1)
    shades(tmp_path / "pics" / "owl", 1)
    warning = (f"{tmp_path / 'pics'}: 1 class(es) hold a single image ('owl'): one image lands in only one of the "
               f"training, validation and test parts, so the model is trained on such a class or measured on it, "
               f"never both; add images to those classes")
    data = DataConfig(dataset="images", path=str(tmp_path / "pics"), image_size=(2, 2))
    assert describe_images(data, None).splitlines()[1] == f"warning: {warning}"
    assert warning in load_dataset(data, None).warnings


def test_a_link_loop_stops_plan_with_one_line_not_an_unknown_run_id(tmp_path, cli):
    shades(tmp_path / "pics" / "cat", 3)
    shades(tmp_path / "pics" / "dog", 3)
    (tmp_path / "pics" / "dog" / "up").symlink_to(tmp_path / "pics")
    config = tmp_path / "pics.yaml"
    config.write_text(yaml.safe_dump({
        "name": "pics", "seeds": [0], "model": {"dense": [4]},
        "data": {"dataset": "images", "path": str(tmp_path / "pics"), "image_size": [2, 2]},
        "train": {"epochs": 1, "batch_size": 2, "steps_per_execution": 1, "log_every_steps": 1},
    }))
    for command in ("plan", "run"):
        out = cli(command, config)
        assert (out.exit_code, out.output) == (2, (
            f"Error: {tmp_path / 'pics' / 'dog' / 'up'}: the folder {tmp_path / 'pics'} again (through a symbolic "
            f"link); each image must be read once, in one class: remove the link\n"))


def test_a_truncated_16_bit_colour_png_is_one_line_without_tensorflow_internals(tmp_path):
    def cut(path):
        png(path, np.array(COLOURS_16), 16, 2)
        path.write_bytes(path.read_bytes()[:60])  # the header is intact, the pixels are cut off

    assert refused(tmp_path, cut) == (f"{tmp_path / 'train' / 'a' / '0.png'}: not a readable image (Invalid PNG data, "
                                      f"size 60); replace or remove the file")
