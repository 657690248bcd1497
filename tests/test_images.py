"""dataset: images, a folder of class subfolders of PNG/JPEG files: loading, splits, the run id's
fingerprint, and the one-line errors of `bnexp plan` and `bnexp run` for a bad folder."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bnexp.config.schema import DataConfig
from bnexp.config.load import load_config
from bnexp.data.datasets import describe_images, fingerprint, load_dataset
from bnexp.errors import ConfigError
from bnexp.sweep import expand_runs


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch):
    """Keep the image hashes these tests write out of the user's cache folder."""
    monkeypatch.setenv("BNEXP_CACHE_DIR", str(tmp_path / "cache"))


def shade(label: int) -> int:
    return 40 + 60 * label  # the class is the brightness: 40, 100, 160, ...


def image_folder(root: Path, classes=("cat", "dog", "fox"), per_class=4, size=(8, 8)) -> Path:
    """Even-numbered images as PNG, odd ones as JPEG; every pixel of an image is its class's shade."""
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((*size, 3), shade(label), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 == 0 else 'jpg'}")
    return root


def images_config(tmp_path, data: dict, name="pics") -> Path:
    config = {
        "name": name,
        "seeds": [0],
        "data": {"dataset": "images", "image_size": [8, 8], "validation_split": 0.25, **data},
        "model": {"conv": [{"filters": 4, "kernel_size": 3, "pool": 2}], "dense": [8]},
        "train": {"epochs": 1, "batch_size": 2, "log_every_steps": 2, "steps_per_execution": 1},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_classes_are_the_sorted_subfolders_and_labels_follow_them(tmp_path):
    train = image_folder(tmp_path / "train", classes=("owl", "cat", "dog"), per_class=4)
    test = image_folder(tmp_path / "test", classes=("owl", "cat", "dog"), per_class=2)
    data = DataConfig(dataset="images", path=str(train), test_path=str(test), image_size=(8, 8), validation_split=0.25)
    dataset = load_dataset(data, None)
    assert dataset.classes == ("cat", "dog", "owl") and dataset.num_classes == 3
    assert dataset.x_train.shape == (9, 8, 8, 3) and dataset.x_val.shape == (3, 8, 8, 3)
    assert dataset.x_test.shape == (6, 8, 8, 3) and dataset.x_train.dtype == np.float32
    assert sorted(dataset.y_test.tolist()) == [0, 0, 1, 1, 2, 2]
    # The folder order was owl, cat, dog; sorted names give cat 0, dog 1, owl 2, so cat's shade is owl's folder's.
    written_shade = {"owl": shade(0), "cat": shade(1), "dog": shade(2)}
    for x, y in ((dataset.x_train, dataset.y_train), (dataset.x_val, dataset.y_val), (dataset.x_test, dataset.y_test)):
        for image, label in zip(x, y):
            # PNG keeps the shade exactly; JPEG may move a flat image by a level or two.
            assert abs(image.mean() * 255 - written_shade[dataset.classes[label]]) <= 2
    # Shuffled with split_seed, so the validation part (the last rows) is not one class.
    assert len(set(dataset.y_val.tolist())) > 1


def test_images_are_resized_and_greyscale_has_one_channel(tmp_path):
    train = image_folder(tmp_path / "train", per_class=5, size=(12, 6))
    data = DataConfig(dataset="images", path=str(train), image_size=(4, 8), color_mode="grayscale")
    dataset = load_dataset(data, None)
    # test_split 0.2 of 5 per class: 1 per class; validation_split 0.2 of the 12 left: the last 3 rows.
    assert dataset.x_train.shape == (9, 4, 8, 1) and dataset.x_val.shape == (3, 4, 8, 1)
    assert dataset.x_test.shape == (3, 4, 8, 1) and sorted(dataset.y_test.tolist()) == [0, 1, 2]


def test_test_split_is_stratified_and_fixed_by_split_seed(tmp_path):
    train = image_folder(tmp_path / "train", per_class=10)
    data = DataConfig(dataset="images", path=str(train), image_size=(8, 8), test_split=0.3)
    first = load_dataset(data, None)
    assert sorted(first.y_test.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(first.y_train) + len(first.y_val) == 21
    again = load_dataset(data.model_copy(update={"split_seed": 0, "train_subset": 21}), None)
    assert np.array_equal(first.y_val, again.y_val) and np.array_equal(first.x_test, again.x_test)
    other = load_dataset(data.model_copy(update={"split_seed": 1}), None)
    assert not np.array_equal(np.concatenate([first.y_train, first.y_val]), np.concatenate([other.y_train, other.y_val]))


def test_test_path_and_test_split_together_are_refused(tmp_path):
    config = images_config(tmp_path, {"path": "train", "test_path": "test", "test_split": 0.3})
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert str(error.value) == (f"{config}: data.test_split: not used with test_path (the test folder is the test set); "
                                "give one of them")


@pytest.mark.parametrize(("data", "message"), [
    ({"dataset": "images", "path": "train"}, "data.image_size: required when dataset is 'images' ([height, width], e.g. [32, 32])"),
    ({"dataset": "npz", "path": "x.npz", "color_mode": "grayscale"}, "data.color_mode: only for dataset 'images', not 'npz'"),
    ({"dataset": "csv", "path": "x.csv", "label_column": "y", "test_path": "t"}, "data.test_path: only for dataset 'images', not 'csv'"),
])
def test_image_fields_need_dataset_images(tmp_path, data, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": data, "model": {"dense": [4]}}))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: {message}"


def test_the_fingerprint_covers_every_image_and_the_test_folder(tmp_path):
    train = image_folder(tmp_path / "train")
    test = image_folder(tmp_path / "test", per_class=2)
    data = DataConfig(dataset="images", path=str(train), test_path=str(test), image_size=(8, 8))
    before = fingerprint(data, None)
    assert fingerprint(data, None) == before
    assert fingerprint(data.model_copy(update={"test_path": None}), None) != before

    # One pixel of one image in the test folder.
    pixels = np.full((8, 8, 3), shade(1), dtype=np.uint8)
    pixels[0, 0] = 0
    Image.fromarray(pixels).save(test / "dog" / "0.png")
    changed = fingerprint(data, None)
    assert changed != before
    # A renamed image, same content.
    (train / "cat" / "0.png").rename(train / "cat" / "9.png")
    assert fingerprint(data, None) not in (before, changed)
    # Files that are not images are not read, so they do not change the id.
    renamed = fingerprint(data, None)
    (train / "cat" / "notes.txt").write_text("taken in May")
    assert fingerprint(data, None) == renamed


def test_the_run_id_follows_the_images(tmp_path):
    image_folder(tmp_path / "train")
    config = images_config(tmp_path, {"path": str(tmp_path / "train")})
    before = [spec.run_id for spec in expand_runs(load_config(config), str(config))]
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "train" / "fox" / "0.png")
    after = [spec.run_id for spec in expand_runs(load_config(config), str(config))]
    assert len(set(before + after)) == 4


def test_a_relative_folder_is_found_in_the_data_dir(tmp_path, monkeypatch):
    image_folder(tmp_path / "data" / "pics" / "train")
    monkeypatch.chdir(tmp_path)
    data = DataConfig(dataset="images", path="pics/train", image_size=(8, 8))
    assert load_dataset(data, tmp_path / "data").name == str(tmp_path / "data" / "pics" / "train")


def test_describe_images_counts_files_and_gives_the_shape(tmp_path):
    train = image_folder(tmp_path / "train", per_class=3)
    test = image_folder(tmp_path / "test", per_class=1)
    data = DataConfig(dataset="images", path=str(train), test_path=str(test), image_size=(8, 6), color_mode="grayscale")
    assert describe_images(data, None) == (
        f"{train}: 3 classes (cat, dog, fox), 9 images (test folder {test}: 3 images), input shape (8, 6, 1) (grayscale)"
    )


def test_a_tiny_conv_net_trains_one_epoch_on_an_image_folder(cli, tmp_path):
    image_folder(tmp_path / "train", per_class=6)
    image_folder(tmp_path / "test", per_class=2)
    config = images_config(tmp_path, {"path": str(tmp_path / "train"), "test_path": str(tmp_path / "test")})
    plan = cli("plan", config)
    assert plan.exit_code == 0, plan.output
    assert "2 runs = 1 sweep point(s) x 2 arm(s) x 1 seed(s); 0 complete, 2 to run" in plan.output
    out = cli("run", config)
    assert out.exit_code == 0, out.output
    results = sorted((tmp_path / "results" / "pics").glob("*/result.json"))
    assert len(results) == 2
    for path in results:
        result = json.loads(path.read_text())
        assert result["status"] == "completed" and result["num_classes"] == 3
        assert 1 / 3 <= result["majority_share"] < 1  # the largest class's share of the validation images


def corrupt(folder: Path) -> None:
    (folder / "dog" / "2.png").write_bytes(b"not an image")


def truncated(folder: Path) -> None:
    path = folder / "dog" / "2.png"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:2000])  # the header is intact, the pixels are cut off


# (how to spoil a good train folder with a test folder beside it, data changes, the one line, its folder)
BAD_FOLDERS = {
    "empty folder": (lambda root: [os.rename(root / "train", root / "old"), (root / "train").mkdir()], {},
                     "{root}/train: data.path: no class subfolders; dataset 'images' needs one subfolder of PNG/JPEG "
                     "images per class (e.g. {root}/train/cat/1.png)"),
    "one class": (lambda root: [os.rename(root / "train" / c, root / c) for c in ("dog", "fox")], {},
                  "{root}/train: data.path: only one class subfolder ('cat'); a classifier needs at least two"),
    "a class without images": (lambda root: [p.unlink() for p in (root / "train" / "fox").iterdir()], {},
                               "{root}/train/fox: class folder 'fox' holds no PNG or JPEG images (.png, .jpg, .jpeg); "
                               "add some or remove the folder"),
    "not an image": (lambda root: corrupt(root / "train"), {},
                     "{root}/train/dog/2.png: not a readable image (not a PNG or JPEG file); replace or remove the file"),
    "test folder with other classes": (lambda root: os.rename(root / "test" / "fox", root / "test" / "owl"),
                                       {"test_path": "test"},
                                       "{root}/test: data.test_path: the test folder's class subfolders differ from the "
                                       "training folder's (missing 'fox'; extra 'owl'); give both folders the same "
                                       "class names"),
}


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_a_bad_image_folder_stops_plan_and_run_with_one_line(cli, tmp_path, monkeypatch, case):
    spoil, data, message = BAD_FOLDERS[case]
    image_folder(tmp_path / "train")
    image_folder(tmp_path / "test", per_class=1)
    spoil(tmp_path)
    monkeypatch.chdir(tmp_path)
    config = images_config(tmp_path, {"path": "train", **data})
    for command in ("plan", "run"):
        out = cli(command, config)
        assert (command, out.exit_code, out.output) == (command, 2, f"Error: {message.format(root=tmp_path)}\n")
    assert not (tmp_path / "results").exists()


def test_a_truncated_image_passes_plan_and_stops_run(cli, tmp_path):
    image_folder(tmp_path / "train")
    truncated(tmp_path / "train")
    config = images_config(tmp_path, {"path": str(tmp_path / "train")})
    assert cli("plan", config).exit_code == 0  # plan reads headers only
    out = cli("run", config)
    assert out.exit_code == 2
    assert out.output == (f"Error: {tmp_path}/train/dog/2.png: not a readable image (image file is truncated); "
                          "replace or remove the file\n")
    assert not (tmp_path / "results").exists()


def test_a_missing_folder_is_planned_with_unknown_ids_and_refused_by_run(cli, tmp_path):
    config = images_config(tmp_path, {"path": str(tmp_path / "nowhere")})
    plan = cli("plan", config)
    assert plan.exit_code == 0 and "run ids end in '?' until the data file is there" in plan.output
    out = cli("run", config)
    assert out.exit_code == 2
    assert out.output == f"Error: data.path: {tmp_path / 'nowhere'} not found (looked for {tmp_path / 'nowhere'})\n"
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(("data", "message"), [
    ({"train_subset": 50}, "data.train_subset: 50 is more than the 9 training rows available in {root}/train"),
    ({"validation_split": 0.95}, "data.validation_split: 0.95 of 9 training rows in {root}/train leaves no rows "
                                 "to train on"),
])
def test_the_array_checks_apply_to_image_folders(cli, tmp_path, data, message):
    image_folder(tmp_path / "train", per_class=4)  # test_split 0.2 of 4 per class: 1 each, 9 left to train
    config = images_config(tmp_path, {"path": str(tmp_path / "train"), **data})
    out = cli("run", config)
    assert (out.exit_code, out.output) == (2, f"Error: {message.format(root=tmp_path)}\n")
    assert not (tmp_path / "results").exists()


def test_image_hashes_are_kept_on_disk_until_an_image_changes(tmp_path):
    from bnexp.data.images import _folder_content_sha256, _hash_cache_file

    train = image_folder(tmp_path / "train")
    data = DataConfig(dataset="images", path=str(train), image_size=(8, 8))
    first = fingerprint(data, None)
    cache_file = _hash_cache_file(train.resolve())
    assert cache_file.parent == tmp_path / "cache" / "image-sha256"
    cached = json.loads(cache_file.read_text())
    assert sorted(cached) == [f"{name}/{i}.{'png' if i % 2 == 0 else 'jpg'}" for name in ("cat", "dog", "fox")
                              for i in range(4)]
    # A new process (no in-process cache) takes an unchanged image's hash from the file, without reading it:
    # a hash planted there shows through.
    cached["cat/0.png"][-1] = "0" * 64
    cache_file.write_text(json.dumps(cached))
    _folder_content_sha256.cache_clear()
    assert fingerprint(data, None) != first
    # An image whose time changes is read again.
    os.utime(train / "cat" / "0.png", ns=(1, 1))
    assert fingerprint(data, None) == first
    # A damaged cache is read as none.
    cache_file.write_text("{not json")
    _folder_content_sha256.cache_clear()
    assert fingerprint(data, None) == first and json.loads(cache_file.read_text())["cat/0.png"][1] == 1
