"""bnexp.data.datasets on tiny files written in each dataset's official format."""

import gzip
import io
import pickle
import struct
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest

from bnexp.config.schema import DataConfig
from bnexp.data.datasets import dataset_info, load_dataset
from bnexp.errors import DataError

REAL_DATA = Path("/work/shared/data")


def make_config(**fields):
    defaults = dict(
        dataset="mnist", path=None, label_column=None, feature_columns=None, ignore_columns=[],
        test_split=0.2, validation_split=0.25, train_subset=None, test_subset=None,
        scaling=None, split_seed=0,
    )
    return DataConfig(**{**defaults, **fields})


def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def cifar_row(image):
    """The official layout: the 1024 red values, then green, then blue, each plane row-major."""
    return np.concatenate([image[:, :, channel].ravel() for channel in range(3)])


@pytest.fixture
def mnist_arrays():
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        "y_train": np.arange(40, dtype=np.uint8) % 10,
        "x_test": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "y_test": np.arange(12, dtype=np.uint8) % 10,
    }


@pytest.fixture
def mnist_dir(tmp_path, mnist_arrays):
    np.savez(tmp_path / "mnist.npz", **mnist_arrays)
    return tmp_path


@pytest.fixture
def fashion_arrays():
    rng = np.random.default_rng(1)
    return (
        rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        np.arange(20, dtype=np.uint8) % 10,  # every class in the training part, as the test labels need
        rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 8, dtype=np.uint8),
    )


def write_fashion(folder, arrays):
    folder.mkdir(parents=True, exist_ok=True)
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    for name, array, magic in zip(names, arrays, (2051, 2049, 2051, 2049)):
        write_idx(folder / name, array, magic)


@pytest.fixture
def cifar_images():
    """Six batches of 10 HWC images and labels: data_batch_1..5 then test_batch."""
    rng = np.random.default_rng(2)
    return [(rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 10).tolist())
            for _ in range(6)]


def cifar_batches(images):
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {
        name: pickle.dumps({b"batch_label": name.encode(), b"labels": labels,
                            b"data": np.stack([cifar_row(image) for image in batch])}, protocol=2)
        for name, (batch, labels) in zip(names, images)
    }


def write_cifar_folder(folder, batches):
    folder.mkdir(parents=True)
    for name, raw in batches.items():
        (folder / name).write_bytes(raw)


def write_cifar_archive(path, batches):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in batches.items():
            member = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            member.size = len(raw)
            tar.addfile(member, io.BytesIO(raw))


LABELS = ["oak"] * 15 + ["ash"] * 10 + ["elm"] * 5  # ash -> 0, elm -> 1, oak -> 2


@pytest.fixture
def leaf_csv(tmp_path):
    """30 rows; f1 equals the row id so a test can find each row's original label."""
    rows = ["id,f1,f2,const,species"]
    rows += [f"{i},{i}.0,{(i * 7) % 11}.5,5.0,{label}" for i, label in enumerate(LABELS)]
    path = tmp_path / "leaf.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def csv_config(path, **fields):
    return make_config(**{"dataset": "csv", "path": str(path), "label_column": "species", "ignore_columns": ["id"],
                          **fields})


@pytest.mark.parametrize("where", [".", "mnist"])
def test_mnist_npz_keeps_the_last_rows_for_validation_and_scales_to_unit(tmp_path, mnist_arrays, where):
    (tmp_path / where).mkdir(exist_ok=True)
    np.savez(tmp_path / where / "mnist.npz", **mnist_arrays)

    ds = load_dataset(make_config(validation_split=0.25), tmp_path)

    assert ds.name == "mnist"
    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((30, 28, 28, 1), (10, 28, 28, 1), (12, 28, 28, 1))
    assert {a.dtype for a in (ds.x_train, ds.x_val, ds.x_test)} == {np.dtype(np.float32)}
    assert {a.dtype for a in (ds.y_train, ds.y_val, ds.y_test)} == {np.dtype(np.int32)}
    np.testing.assert_array_equal(ds.x_train[..., 0], mnist_arrays["x_train"][:30] / np.float32(255))
    np.testing.assert_array_equal(ds.x_val[..., 0], mnist_arrays["x_train"][30:] / np.float32(255))
    np.testing.assert_array_equal(ds.y_val, mnist_arrays["y_train"][30:])
    np.testing.assert_array_equal(ds.y_test, mnist_arrays["y_test"])
    assert (ds.input_shape, ds.num_classes) == ((28, 28, 1), 10)


def test_loaded_arrays_are_cached_and_read_only(mnist_dir):
    first = load_dataset(make_config(), mnist_dir)

    assert load_dataset(make_config(), mnist_dir) is first
    assert load_dataset(make_config(split_seed=1), mnist_dir) is not first
    for array in (first.x_train, first.y_train, first.x_val, first.y_val, first.x_test, first.y_test):
        assert not array.flags.writeable
    with pytest.raises(ValueError):
        first.x_train[0, 0, 0, 0] = 1.0


def test_subsets_take_the_first_rows_before_the_validation_split(mnist_dir, mnist_arrays):
    ds = load_dataset(make_config(train_subset=20, test_subset=4, validation_split=0.25), mnist_dir)

    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (15, 5, 4)
    np.testing.assert_array_equal(ds.y_val, mnist_arrays["y_train"][15:20])
    np.testing.assert_array_equal(ds.y_test, mnist_arrays["y_test"][:4])


@pytest.mark.parametrize("key, value, message", [
    ("train_subset", 41, "data.train_subset: 41 is more than the 40 training rows available in mnist"),
    ("test_subset", 13, "data.test_subset: 13 is more than the 12 test rows available in mnist"),
])
def test_a_subset_larger_than_the_data_names_the_key_and_the_size(mnist_dir, key, value, message):
    with pytest.raises(DataError) as error:
        load_dataset(make_config(**{key: value}), mnist_dir)
    assert str(error.value) == message


def test_standardize_uses_per_channel_statistics_of_the_training_part(mnist_dir, mnist_arrays):
    ds = load_dataset(make_config(scaling="standardize", validation_split=0.25), mnist_dir)

    train = mnist_arrays["x_train"][:30].astype(np.float64)
    expected_test = (mnist_arrays["x_test"] - train.mean()) / train.std()
    np.testing.assert_allclose(ds.x_test[..., 0], expected_test, rtol=1e-5)
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std()) - 1) < 1e-5


@pytest.mark.parametrize("folder", ["fashion-mnist", "fashion_mnist", "."])
def test_fashion_mnist_reads_the_four_idx_files(tmp_path, fashion_arrays, folder):
    write_fashion(tmp_path / folder, fashion_arrays)

    ds = load_dataset(make_config(dataset="fashion_mnist", scaling="none", validation_split=0.25), tmp_path)

    x_train, y_train, x_test, y_test = fashion_arrays
    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((15, 28, 28, 1), (5, 28, 28, 1), (8, 28, 28, 1))
    np.testing.assert_array_equal(ds.x_train[..., 0], x_train[:15])
    np.testing.assert_array_equal(ds.y_val, y_train[15:])
    np.testing.assert_array_equal(ds.x_test[..., 0], x_test)
    np.testing.assert_array_equal(ds.y_test, y_test)


@pytest.mark.parametrize("layout", ["cifar-10-batches-py", "cifar-10-python.tar.gz", "cifar10/cifar-10-python.tar.gz"])
def test_cifar10_turns_channel_major_rows_into_hwc_images(tmp_path, cifar_images, layout):
    batches = cifar_batches(cifar_images)
    if layout.endswith(".tar.gz"):
        write_cifar_archive(tmp_path / layout, batches)
    else:
        write_cifar_folder(tmp_path / layout, batches)

    ds = load_dataset(make_config(dataset="cifar10", scaling="none", validation_split=0.2), tmp_path)

    train_images = np.concatenate([images for images, _ in cifar_images[:5]])
    train_labels = np.concatenate([labels for _, labels in cifar_images[:5]])
    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((40, 32, 32, 3), (10, 32, 32, 3), (10, 32, 32, 3))
    np.testing.assert_array_equal(ds.x_train, train_images[:40])
    np.testing.assert_array_equal(ds.y_val, train_labels[40:])
    np.testing.assert_array_equal(ds.x_test, cifar_images[5][0])
    # Green (plane 1) at row 1, column 2 sits at 1024 + 1 * 32 + 2 in the official row.
    assert ds.x_test[3, 1, 2, 1] == cifar_row(cifar_images[5][0][3])[1024 + 32 + 2]


def test_csv_maps_sorted_string_labels_and_stratifies_the_test_set(leaf_csv):
    ds = load_dataset(csv_config(leaf_csv, scaling="none", test_split=0.2, validation_split=0.25), None)

    assert ds.num_classes == 3 and ds.input_shape == (3,)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (18, 6, 6)
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=3), [2, 1, 3])  # round(0.2 * 10, 5, 15)
    ids = np.concatenate([ds.x_train[:, 0], ds.x_val[:, 0], ds.x_test[:, 0]]).astype(int)
    assert sorted(ids) == list(range(30))
    labels = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    np.testing.assert_array_equal(labels, [["ash", "elm", "oak"].index(LABELS[i]) for i in ids])


def test_csv_split_depends_only_on_the_split_seed(leaf_csv):
    def test_ids(seed):
        return load_dataset(csv_config(leaf_csv, split_seed=seed, scaling="none"), None).x_test[:, 0].tolist()

    assert test_ids(0) == test_ids(0)
    assert test_ids(0) != test_ids(1)


def test_csv_standardizes_with_training_statistics_and_leaves_constant_columns_at_zero(leaf_csv):
    raw = load_dataset(csv_config(leaf_csv, scaling="none"), None)
    ds = load_dataset(csv_config(leaf_csv), None)

    mean, std = raw.x_train.mean(axis=0, dtype=np.float64), raw.x_train.std(axis=0, dtype=np.float64)
    np.testing.assert_allclose(ds.x_train[:, :2].mean(axis=0), [0, 0], atol=1e-6)
    np.testing.assert_allclose(ds.x_train[:, :2].std(axis=0), [1, 1], rtol=1e-5)
    np.testing.assert_allclose(ds.x_test[:, :2], (raw.x_test[:, :2] - mean[:2]) / std[:2], rtol=1e-5)
    assert not ds.x_train[:, 2].any() and not ds.x_test[:, 2].any()


def test_csv_feature_columns_pick_the_inputs(leaf_csv):
    ds = load_dataset(csv_config(leaf_csv, feature_columns=["f2"]), None)
    assert ds.input_shape == (1,)


def test_relative_paths_are_tried_from_the_current_directory_then_from_data_dir(tmp_path, leaf_csv, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_dataset(csv_config("leaf.csv"), tmp_path).name == str(leaf_csv)

    monkeypatch.chdir(tmp_path)
    assert load_dataset(csv_config("leaf.csv"), None).name == str(leaf_csv)

    with pytest.raises(DataError) as error:
        load_dataset(csv_config("nope.csv"), elsewhere)
    assert str(error.value) == f"data.path: nope.csv not found (looked for nope.csv, {elsewhere / 'nope.csv'})"


def test_npz_of_8x8_images_gets_a_channel_axis_and_unit_scaling(tmp_path):
    rng = np.random.default_rng(3)
    x_train = rng.integers(0, 256, (24, 8, 8), dtype=np.uint8)
    y_train = np.arange(24) % 4
    np.savez(tmp_path / "digits.npz", x_train=x_train, y_train=y_train,
             x_test=x_train[:6], y_test=np.arange(6) % 4)

    ds = load_dataset(make_config(dataset="npz", path="digits.npz"), tmp_path)

    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((18, 8, 8, 1), (6, 8, 8, 1), (6, 8, 8, 1))
    assert ds.num_classes == 4  # the largest label + 1 (a label only in the test set is refused: test_checks)
    np.testing.assert_array_equal(ds.x_val[..., 0], x_train[18:] / np.float32(255))
    assert dataset_info(make_config(dataset="npz", path="digits.npz"), tmp_path) == ((8, 8, 1), 4)


def test_npz_table_of_floats_is_kept_as_is(tmp_path):
    x = np.linspace(-3, 3, 60).reshape(10, 6)
    np.savez(tmp_path / "table.npz", x_train=x, y_train=np.arange(10) % 2, x_test=x[:2], y_test=[0, 1])

    ds = load_dataset(make_config(dataset="npz", path=str(tmp_path / "table.npz"), validation_split=0.2), None)

    assert ds.input_shape == (6,) and ds.num_classes == 2
    np.testing.assert_array_equal(ds.x_train, x[:8].astype(np.float32))


def test_dataset_info_knows_the_builtin_shapes_without_files(tmp_path, leaf_csv):
    assert dataset_info(make_config(dataset="mnist"), tmp_path / "missing") == ((28, 28, 1), 10)
    assert dataset_info(make_config(dataset="fashion_mnist"), None) == ((28, 28, 1), 10)
    assert dataset_info(make_config(dataset="cifar10"), None) == ((32, 32, 3), 10)
    assert dataset_info(csv_config(leaf_csv), None) == ((3,), 3)


WHERE = "; give --data-dir (or BNEXP_DATA_DIR) the folder that holds them, or leave it out to let Keras download them"


@pytest.mark.parametrize("dataset, message", [
    ("mnist", "MNIST not found: looked for {d}/mnist.npz, {d}/mnist/mnist.npz"),
    ("fashion_mnist", "Fashion-MNIST not found: looked for train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                      "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in {d}/fashion-mnist, {d}/fashion_mnist, {d}"),
    ("cifar10", "CIFAR-10 not found: looked for {d}/cifar-10-batches-py, {d}/cifar-10-python.tar.gz, "
                "{d}/cifar10/cifar-10-batches-py, {d}/cifar10/cifar-10-python.tar.gz"),
])
def test_missing_files_name_the_paths_looked_at(tmp_path, dataset, message):
    with pytest.raises(DataError) as error:
        load_dataset(make_config(dataset=dataset), tmp_path)
    assert str(error.value) == message.format(d=tmp_path) + WHERE


@pytest.fixture
def failing_keras(monkeypatch):
    def fail():
        raise OSError("URL fetch failure on https://example.invalid: [Errno -3] Temporary failure\nin name resolution")

    datasets = types.SimpleNamespace(mnist=types.SimpleNamespace(load_data=fail))
    monkeypatch.setitem(sys.modules, "keras", types.SimpleNamespace(datasets=datasets))


def test_without_data_dir_a_failed_download_says_where_to_put_the_files(failing_keras):
    with pytest.raises(DataError) as error:
        load_dataset(make_config(dataset="mnist"), None)
    assert str(error.value) == (
        "MNIST not found and could not be downloaded: put mnist.npz (keys x_train, y_train, x_test, y_test) "
        "in a folder and pass --data-dir DIR or set BNEXP_DATA_DIR (download error: URL fetch failure on "
        "https://example.invalid: [Errno -3] Temporary failure in name resolution)"
    )


def test_without_data_dir_keras_downloads_and_column_labels_are_flattened(monkeypatch):
    x = np.zeros((10, 32, 32, 3), dtype=np.uint8)
    labels = (np.arange(10) % 10).reshape(10, 1)
    cifar10 = types.SimpleNamespace(load_data=lambda: ((x, labels), (x[:2], labels[:2])))
    monkeypatch.setitem(sys.modules, "keras",
                        types.SimpleNamespace(datasets=types.SimpleNamespace(cifar10=cifar10)))

    ds = load_dataset(make_config(dataset="cifar10", validation_split=0.2), None)

    assert ds.y_train.shape == (8,) and ds.y_val.tolist() == [8, 9] and ds.x_test.shape == (2, 32, 32, 3)


def test_truncated_gzip_names_the_file(tmp_path, fashion_arrays):
    write_fashion(tmp_path, fashion_arrays)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])

    with pytest.raises(DataError) as error:
        load_dataset(make_config(dataset="fashion_mnist"), tmp_path)
    assert str(error.value) == (
        f"{path}: not a readable gzip file (Compressed file ended before the end-of-stream marker was reached)"
    )


def test_wrong_idx_magic_names_the_file(tmp_path, fashion_arrays):
    write_fashion(tmp_path, fashion_arrays)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, fashion_arrays[1], 2049)

    with pytest.raises(DataError) as error:
        load_dataset(make_config(dataset="fashion_mnist"), tmp_path)
    assert str(error.value) == f"{path}: not an IDX image file (magic number 2049, expected 2051)"


def test_idx_data_shorter_than_its_header_says_names_the_file(tmp_path, fashion_arrays):
    write_fashion(tmp_path, fashion_arrays)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">II", 2049, 9) + bytes(8)))

    with pytest.raises(DataError) as error:
        load_dataset(make_config(dataset="fashion_mnist"), tmp_path)
    assert str(error.value) == f"{path}: IDX header says 9 = 9 bytes of data, found 8"


@pytest.mark.parametrize("cut", [0, 500])
def test_corrupt_npz_names_the_file(mnist_dir, cut):
    path = mnist_dir / "mnist.npz"
    path.write_bytes(path.read_bytes()[:cut] or b"not a zip archive")

    with pytest.raises(DataError) as error:
        load_dataset(make_config(), mnist_dir)
    assert str(error.value) == f"{path}: not an npz file (no complete zip archive: truncated or another format)"


def test_npz_missing_keys_are_named(tmp_path, mnist_arrays):
    np.savez(tmp_path / "mnist.npz", x_train=mnist_arrays["x_train"], y_train=mnist_arrays["y_train"])

    with pytest.raises(DataError) as error:
        load_dataset(make_config(), tmp_path)
    assert str(error.value) == f"{tmp_path / 'mnist.npz'}: missing key(s) x_test, y_test; found x_train, y_train"


def test_corrupt_cifar_batch_names_the_member(tmp_path, cifar_images):
    batches = cifar_batches(cifar_images)
    batches["data_batch_3"] = b"garbage"
    write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", batches)

    with pytest.raises(DataError) as error:
        load_dataset(make_config(dataset="cifar10"), tmp_path)
    assert str(error.value).startswith(f"{tmp_path / 'cifar-10-python.tar.gz'}/data_batch_3: not a readable CIFAR-10 batch (")


def test_missing_label_column_suggests_the_closest_and_lists_the_columns(leaf_csv):
    with pytest.raises(DataError) as error:
        load_dataset(csv_config(leaf_csv, label_column="specis"), None)
    assert str(error.value) == (
        f"{leaf_csv}: data.label_column: no column 'specis' (did you mean 'species'?); "
        "columns: id, f1, f2, const, species"
    )


def test_unknown_ignore_column_is_named(leaf_csv):
    with pytest.raises(DataError) as error:
        load_dataset(csv_config(leaf_csv, ignore_columns=["ID"]), None)
    assert str(error.value) == (
        f"{leaf_csv}: data.ignore_columns: no column 'ID' (did you mean 'id'?); columns: id, f1, f2, const, species"
    )


def test_non_numeric_feature_column_is_named(tmp_path):
    path = tmp_path / "colors.csv"
    path.write_text("id,color,size,label\n1,red,2.0,a\n2,blue,3.0,b\n")

    with pytest.raises(DataError) as error:
        load_dataset(csv_config(path, label_column="label"), None)
    assert str(error.value) == (
        f"{path}: feature column(s) color are not numeric (e.g. color='red' at line 2); list them in "
        "data.ignore_columns"
    )


def test_the_non_numeric_example_is_a_cell_that_is_not_a_number(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("id,size,label\n1,2,a\n2,3,b\n3,big,a\n4,4,b\n")
    with pytest.raises(DataError) as error:
        load_dataset(csv_config(path, label_column="label"), None)
    assert "(e.g. size='big' at line 4)" in str(error.value)


def test_a_label_column_of_fractional_numbers_is_refused_not_made_into_classes(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("id,f1,price\n" + "".join(f"{i},{i},{i * 1.5}\n" for i in range(12)))
    with pytest.raises(DataError) as error:
        load_dataset(csv_config(path, label_column="price"), None)
    assert str(error.value) == (
        f"{path}: data.label_column 'price' holds fractional numbers (e.g. 1.5 at line 3), a quantity rather than "
        "classes; bnexp trains classifiers: give a column of class names or whole numbers")
    whole = tmp_path / "whole.csv"  # whole numbers written as floats are classes
    whole.write_text("id,f1,label\n" + "".join(f"{i},{i},{float(i % 2)}\n" for i in range(12)))
    assert load_dataset(csv_config(whole, label_column="label"), None).num_classes == 2


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"{REAL_DATA} (offline copies of the real datasets) is absent")
def test_real_datasets_have_their_published_sizes():
    for name in ("mnist", "fashion_mnist"):
        ds = load_dataset(make_config(dataset=name, validation_split=0.1), REAL_DATA)
        assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == (
            (54000, 28, 28, 1), (6000, 28, 28, 1), (10000, 28, 28, 1))
        assert float(ds.x_train.max()) == 1.0 and ds.num_classes == 10

    leaf = load_dataset(csv_config("leaf-classification/train.csv", test_split=0.2, validation_split=0.1), REAL_DATA)
    assert leaf.input_shape == (192,) and leaf.num_classes == 99
    assert (len(leaf.x_train), len(leaf.x_val), len(leaf.x_test)) == (712, 80, 198)  # 990 rows, 2 of each species tested
    np.testing.assert_array_equal(np.bincount(leaf.y_test), np.full(99, 2))
