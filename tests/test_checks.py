"""A user's own data either trains as meant or stops `plan` and `run` with one line naming the file
and the key, before anything is written; and a run id covers the content of the file it reads."""

import hashlib
import json

import numpy as np
import pytest
import yaml

from bnexp.config.load import load_config
from bnexp.sweep import expand_runs




def written(tmp_path):
    return sorted(p for p in (tmp_path / "results").rglob("*") if p.is_file())


def assert_refused(cli, tmp_path, config, message, *args):
    """`plan` and `run` both exit 2 with exactly `message`, and nothing lands in the results folder."""
    for command in ("plan", "run"):
        out = cli(command, config, *args)
        assert out.exit_code == 2, out.output
        assert out.output == f"Error: {message}\n"
        assert written(tmp_path) == []


def write_csv(path, rows, header="f1,f2,y"):
    path.write_text(header + "\n" + "".join(f"{row}\n" for row in rows))
    return path


def table_rows(n=40):
    """Two classes; f1 tells them apart."""
    return [f"{i % 2 + 0.1 * (i % 5)},{(i * 7) % 11},{'ab'[i % 2]}" for i in range(n)]


@pytest.fixture
def csv_config(write_config):
    def write(path, **changes):
        return write_config({"data": {"dataset": "csv", "path": str(path), "label_column": "y"}, "model.conv": [],
                             **changes})

    return write


def write_npz(path, x_train, y_train, x_test, y_test):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def images(n, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return (rng.random((n, 8, 8)) * 60 + y[:, None, None] * 80).astype("float32"), y


@pytest.fixture
def npz_config(write_config):
    def write(path, **changes):
        return write_config({"data": {"dataset": "npz", "path": str(path), "validation_split": 0.25}, **changes})

    return write


# Classes


def test_a_csv_with_one_class_is_refused(cli, tmp_path, csv_config):
    path = write_csv(tmp_path / "one.csv", [row[:-1] + "a" for row in table_rows()])
    assert_refused(cli, tmp_path, csv_config(path),
                   f"{path}: data.label_column 'y' holds only one class ('a'); a classifier needs at least two")


def test_an_npz_with_one_class_is_refused(cli, tmp_path, npz_config):
    x, y = images(40)
    path = write_npz(tmp_path / "one.npz", x[:30], y[:30] * 0, x[30:], y[30:] * 0)
    assert_refused(cli, tmp_path, npz_config(path),
                   f"{path}: y_train holds only class 0; a classifier needs at least two classes")


def test_a_training_part_left_with_one_class_by_the_subset_is_refused(cli, tmp_path, npz_config, tiny_npz):
    assert_refused(cli, tmp_path, npz_config(tiny_npz, **{"data.train_subset": 2}),
                   f"{tiny_npz}: the training part holds only class 0 (1 sample(s), after data.train_subset and "
                   "data.validation_split); a classifier needs at least two classes")


# Finite inputs


def test_nan_and_inf_in_an_npz_name_the_part_the_count_and_the_first_sample(cli, tmp_path, npz_config):
    x, y = images(48)
    x[7, 2, 3], x[9, 0, 0], x[40, 1, 1] = np.nan, np.inf, -np.inf
    path = write_npz(tmp_path / "nan.npz", x[:36], y[:36], x[36:], y[36:])
    assert_refused(cli, tmp_path, npz_config(path),
                   f"{path}: x_train: 1 NaN and 1 infinite value(s), the first at sample 7, position (2, 3); "
                   "bnexp needs finite inputs: fix or drop those samples")
    path = write_npz(tmp_path / "inf.npz", np.nan_to_num(x[:36], nan=0, posinf=0), y[:36], x[36:], y[36:])
    assert_refused(cli, tmp_path, npz_config(path),
                   f"{path}: x_test: 0 NaN and 1 infinite value(s), the first at sample 4, position (1, 1); "
                   "bnexp needs finite inputs: fix or drop those samples")


def test_inf_in_a_csv_names_the_line_and_the_column(cli, tmp_path, csv_config):
    rows = table_rows()
    rows[5] = "1.0,inf,b"
    path = write_csv(tmp_path / "inf.csv", rows)
    assert_refused(cli, tmp_path, csv_config(path),
                   f"{path}: 1 infinite value(s) (or beyond float32's range), the first at line 7 (column f2); "
                   "bnexp needs finite inputs: fix or drop those rows")


def test_nan_in_a_csv_names_the_line_and_the_column(cli, tmp_path, csv_config):
    rows = table_rows()
    rows[2] = "nan,1.0,a"
    path = write_csv(tmp_path / "nan.csv", rows)
    assert_refused(cli, tmp_path, csv_config(path),
                   f"{path}: empty or NaN cells in column(s) f1, the first at line 4 (column f1); "
                   "fill or drop those rows")


# Labels


def test_a_test_label_never_seen_in_training_is_refused(cli, tmp_path, npz_config):
    x, y = images(48)
    path = write_npz(tmp_path / "unseen.npz", x[:36], y[:36] % 2, x[36:], y[36:])
    assert_refused(cli, tmp_path, npz_config(path),
                   f"{path}: y_test label(s) 2 never occur in y_train (4 of 12 test samples), so the model cannot "
                   "learn them; add training samples of those classes or drop them from the test set")


def test_labels_numbered_from_one_are_refused(cli, tmp_path, npz_config):
    x, y = images(48)
    path = write_npz(tmp_path / "from1.npz", x[:36], y[:36] + 1, x[36:], y[36:] + 1)
    assert_refused(cli, tmp_path, npz_config(path),
                   f"{path}: y_train should hold class indices 0..K-1 without gaps, but class 0 has no samples "
                   "(labels found: 1, 2, 3); renumber the classes from 0")


def test_float_labels_are_refused(cli, tmp_path, npz_config):
    x, y = images(48)
    path = write_npz(tmp_path / "float.npz", x[:36], y[:36] + 0.5, x[36:], y[36:])
    assert_refused(cli, tmp_path, npz_config(path), f"{path}: y_train should hold integer class indices, found float64")


def test_a_subset_that_drops_a_test_class_from_training_is_refused(cli, tmp_path, npz_config, tiny_npz):
    # 3 rows: classes 0, 1 train and class 2 validates; 5 of the 16 test images are class 2.
    assert_refused(cli, tmp_path, npz_config(tiny_npz, **{"data.train_subset": 3}),
                   f"{tiny_npz}: test label(s) 2 never occur in the training part (5 of 16 test samples), so the "
                   "model cannot learn them; give the training part samples of every test class "
                   "(data.train_subset, data.validation_split)")


# Parts


def test_a_test_split_that_leaves_no_test_rows_is_refused(cli, tmp_path, csv_config):
    path = write_csv(tmp_path / "t.csv", table_rows())
    assert_refused(cli, tmp_path, csv_config(path, **{"data.test_split": 0.01}),
                   f"{path}: data.test_split: 0.01 of 40 rows leaves no test rows (each class gives "
                   "round(test_split x its rows)); raise data.test_split or add rows")


def test_an_npz_without_test_samples_is_refused(cli, tmp_path, npz_config):
    x, y = images(36)
    path = write_npz(tmp_path / "notest.npz", x, y, x[:0], y[:0])
    assert_refused(cli, tmp_path, npz_config(path), f"{path}: x_test has no samples; the test error needs at least one")


def test_a_validation_split_that_leaves_no_validation_rows_is_refused(cli, tmp_path, npz_config, tiny_npz):
    assert_refused(cli, tmp_path, npz_config(tiny_npz, **{"data.validation_split": 1e-17}),
                   f"data.validation_split: 1e-17 of 48 training rows in {tiny_npz} leaves no rows to validate on")


def test_a_part_smaller_than_the_classes_is_a_warning_said_once(cli, tmp_path, npz_config, tiny_npz):
    config = npz_config(tiny_npz, **{"data.validation_split": 0.04})  # 46 train, 2 validation images, 3 classes
    warning = (f"{tiny_npz}: the validation part has 2 sample(s) for 3 classes; its accuracy means little "
               "(at least one sample per class, and far more for a clear difference)")
    plan = cli("plan", config)
    assert plan.exit_code == 0 and f"\nwarning: {warning}\n" in plan.output
    run = cli("run", config, "--quiet")
    assert run.exit_code == 0, run.output
    assert run.output == f"Warning: {warning}\n2 runs: 2 completed; 0 already complete (skipped); 0 left\n"


# Batches


def test_a_batch_larger_than_the_training_part_is_refused(cli, tmp_path, npz_config, tiny_npz):
    assert_refused(cli, tmp_path, npz_config(tiny_npz, **{"train.batch_size": 37}),
                   f"{tiny_npz}: train.batch_size: 37 is more than the 36 samples of the training part "
                   "(after data.train_subset and data.validation_split); allowed: 1 to 36")


def test_steps_per_epoch_beyond_the_training_part_is_refused(cli, tmp_path, npz_config, tiny_npz):
    assert_refused(cli, tmp_path, npz_config(tiny_npz, **{"train.steps_per_epoch": 6}),
                   f"{tiny_npz}: train.steps_per_epoch: 6 is more than the 5 batches of 8 that the 36 training "
                   "samples give (an epoch sees each sample at most once); allowed: 1 to 5, or leave it unset for "
                   "the whole training part")



def test_more_precise_statistics_batches_than_an_epoch_has_are_refused(cli, tmp_path, npz_config, tiny_npz):
    assert_refused(cli, tmp_path, npz_config(tiny_npz, **{"model.batch_norm": {"precise_stats": 6}}),
                   f"{tiny_npz}: model.batch_norm.precise_stats: 6 is more than the 5 training batches of an epoch "
                   "(batch_size 8); allowed: 1 to 5, or 0 for Keras' moving averages")


def test_step_evaluations_that_never_fall_inside_an_epoch_are_refused(cli, tmp_path, npz_config, tiny_npz):
    assert_refused(cli, tmp_path, npz_config(tiny_npz, **{"train.eval_every_steps": 5, "train.epochs": 2}),
                   f"{tiny_npz}: train.eval_every_steps: 5 never falls inside an epoch of 5 steps in the 10 steps "
                   "of training (epoch ends have their own validation); allowed: a number of steps below 10 that "
                   "is not a multiple of 5, or 0")


def test_step_evaluations_between_keras_callbacks_are_refused(cli, tmp_path, npz_config, tiny_npz):
    out = cli("plan", npz_config(tiny_npz, **{"train.eval_every_steps": 3, "train.steps_per_execution": 2}))
    assert out.exit_code == 2
    assert out.output.endswith("train.eval_every_steps: 3 is not a multiple of train.steps_per_execution 2, the "
                               "steps between Keras' callbacks; use a multiple of it or set train.steps_per_execution "
                               "to a divisor of 3\n")
    # a user who never set steps_per_execution is told it is the default
    config = npz_config(tiny_npz, **{"train.eval_every_steps": 50})
    raw = yaml.safe_load(config.read_text())
    del raw["train"]["steps_per_execution"]
    config.write_text(yaml.safe_dump(raw))
    out = cli("plan", config)
    assert out.exit_code == 2 and "is not a multiple of train.steps_per_execution 32, its default, the steps" in out.output


# Models


def test_conv_blocks_on_flat_features_name_the_key_and_the_shape(cli, tmp_path, npz_config):
    x, y = images(48)
    path = write_npz(tmp_path / "flat.npz", x[:36].reshape(36, 64), y[:36], x[36:].reshape(12, 64), y[36:])
    assert_refused(cli, tmp_path, npz_config(path),
                   f"{path}: model.conv: conv blocks need images (height, width, channels) but the samples have "
                   "shape (64,); remove model.conv (an MLP) for flat features")


@pytest.mark.parametrize("blocks, message", [
    ([{"filters": 4, "pool": 9}],
     "model.conv.0.pool: 9 is larger than the 8x8 feature map it pools (data shape (8, 8, 1)); allowed: at most 8"),
    # The second block gets the first one's pooled 4x4 map: the check follows the shapes through the model.
    ([{"filters": 4, "pool": 2}, {"filters": 4, "pool": 5}],
     "model.conv.1.pool: 5 is larger than the 4x4 feature map it pools (data shape (8, 8, 1)); allowed: at most 4"),
    ([{"filters": 4, "pool": 2}, {"filters": 4, "kernel_size": 5, "padding": "valid"}],
     "model.conv.1.kernel_size: 5 is larger than the 4x4 map the block gets (data shape (8, 8, 1)); "
     "allowed: at most 4, or padding: same"),
])
def test_a_kernel_or_pool_larger_than_the_map_names_the_key(cli, tmp_path, npz_config, tiny_npz, blocks, message):
    assert_refused(cli, tmp_path, npz_config(tiny_npz, **{"model.conv": blocks}), f"{tiny_npz}: {message}")


def test_a_pool_as_large_as_the_map_fits(cli, npz_config, tiny_npz):
    out = cli("plan", npz_config(tiny_npz, **{"model.conv": [{"filters": 4, "pool": 2}, {"filters": 4, "pool": 4}]}))
    assert out.exit_code == 0, out.output


def test_a_batch_norm_axis_the_outputs_lack_is_refused(cli, tmp_path, npz_config, tiny_npz):
    assert_refused(cli, tmp_path, npz_config(tiny_npz, **{"model.batch_norm": {"axis": 4}}),
                   f"{tiny_npz}: model.batch_norm.axis: 4 is not a feature axis of conv_0's outputs of shape "
                   "(8, 8, 4) (data shape (8, 8, 1)); allowed: 1 to 3 or -1 to -3")


def test_a_model_too_large_for_memory_says_the_numbers(cli, tmp_path, npz_config, monkeypatch):
    import bnexp.checks

    monkeypatch.setattr(bnexp.checks, "physical_memory", lambda: 2**30)
    x, y = images(48)
    path = write_npz(tmp_path / "flat.npz", x[:36].reshape(36, 64), y[:36], x[36:].reshape(12, 64), y[36:])
    # 64 x 20000 + 20000 + 20000 x 20000 + 20000 + 20000 x 3 + 3 weights, x 4 (weight, gradient, 2 Adam slots) x 4 bytes
    assert_refused(cli, tmp_path, npz_config(path, **{"model.conv": [], "model.dense": [20000, 20000]}),
                   f"{path}: model: 401,380,003 trainable and 0 non-trainable parameters for inputs of shape (64,) "
                   "need at least 6.0 GiB to train with adam (float32 weights, gradients and 2 optimizer slot(s) "
                   "per weight) but this machine has 1.0 GiB; make model.dense or model.conv smaller, or pool more "
                   "before the dense layers")


def test_inputs_that_are_not_numbers_are_refused(cli, tmp_path, npz_config):
    x, y = images(48)
    path = write_npz(tmp_path / "text.npz", x[:36].astype(str), y[:36], x[36:].astype(str), y[36:])
    assert_refused(cli, tmp_path, npz_config(path),
                   f"{path}: x_train should hold numbers (bool, integer or float), found <U32")


def test_samples_without_features_are_refused(cli, tmp_path, npz_config):
    _, y = images(48)
    empty = np.zeros((48, 4, 4, 0), "float32")
    path = write_npz(tmp_path / "empty.npz", empty[:36], y[:36], empty[36:], y[36:])
    assert_refused(cli, tmp_path, npz_config(path),
                   f"{path}: x_train should have a sample axis and features, found shape (36, 4, 4, 0)")


def test_every_optimizer_has_its_slot_count_for_the_memory_estimate():
    from typing import get_args

    from bnexp.config.schema import TrainConfig
    from bnexp.optimizers import OPTIMIZERS as _OPTIMIZER_SLOTS

    assert set(_OPTIMIZER_SLOTS) == set(get_args(TrainConfig.model_fields["optimizer"].annotation))


# Fingerprints


def test_editing_a_csv_changes_the_run_ids_and_trains_again(cli, tmp_path, csv_config):
    path = write_csv(tmp_path / "t.csv", table_rows())
    config = csv_config(path)
    first = cli("run", config, "--quiet")
    assert first.output.endswith("2 runs: 2 completed; 0 already complete (skipped); 0 left\n"), first.output
    old = {p.parent.name for p in (tmp_path / "results" / "tiny").glob("*/result.json")}
    specs = [json.loads(p.read_text()) for p in (tmp_path / "results" / "tiny").glob("*/spec.json")]
    assert {s["data_sha256"] for s in specs} == {hashlib.sha256(path.read_bytes()).hexdigest()}

    again = cli("run", config, "--quiet")
    assert again.output.endswith("2 runs: none trained; 2 already complete (skipped); 0 left\n"), again.output

    write_csv(path, table_rows()[:-2])  # the user drops two rows
    edited = cli("run", config, "--quiet")
    assert edited.output.endswith("2 runs: 2 completed; 0 already complete (skipped); 0 left\n"), edited.output
    new = {p.parent.name for p in (tmp_path / "results" / "tiny").glob("*/result.json")} - old
    assert len(new) == 2 and {name.split("-")[0] for name in new} == {"no_bn", "bn"}
    plan = cli("plan", config)
    assert all(f"{name} " in plan.output for name in new) and "2 complete, 0 to run" in plan.output


def test_builtin_dataset_ids_do_not_depend_on_where_the_files_are(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("seeds: [0]\ndata: {dataset: mnist}\nmodel: {dense: [8]}\n")
    downloaded = expand_runs(load_config(path), str(path))
    local = expand_runs(load_config(path), str(path), tmp_path / "data")
    assert [s.run_id for s in downloaded] == [s.run_id for s in local]
    assert [s.data_sha256 for s in local] == [None, None] and local[0].record()["data_sha256"] is None


def test_a_missing_file_is_planned_with_unknown_ids_and_refused_by_run(cli, tmp_path, csv_config):
    config = csv_config(tmp_path / "gone.csv")
    plan = cli("plan", config)
    assert plan.exit_code == 0
    assert plan.output.count("-s0-") == 2 and all(line.split()[2].endswith("?") for line in plan.output.splitlines()
                                                  if "-s0-" in line)
    assert "run ids end in '?' until the data file is there: an id covers the file's content\n" in plan.output
    out = cli("run", config)
    assert out.exit_code == 2
    assert out.output == f"Error: data.path: {tmp_path / 'gone.csv'} not found (looked for {tmp_path / 'gone.csv'})\n"
    assert written(tmp_path) == []
