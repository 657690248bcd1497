"""`bnexp.load_experiment` for notebooks: the runs, the epochs and the report's own tables as
pandas frames, read from a hand-written results folder without TensorFlow or Keras."""

import io
import subprocess
import sys

import pandas as pd
import pytest

import bnexp
from bnexp import report
from bnexp.errors import ResultsError
from test_report import LR, lr_sweep, row

ERRORS = {(0.001, "no_bn"): [0.03, 0.05], (0.001, "bn"): [0.02, 0.03],
          (0.1, "no_bn"): [None, 0.9], (0.1, "bn"): [0.04, 0.05]}


def test_runs_and_history_have_one_row_per_run_and_per_epoch_with_pinned_columns(tmp_path):
    exp = bnexp.load_experiment(str(lr_sweep(tmp_path, ERRORS)))
    assert list(exp.runs.columns) == [
        "run_id", "arm", "seed", LR, "status", "error", "num_classes", "norm", "builder", "precise_stats",
        "history_damaged", "epochs_run",
        "diverged_epoch", "test_loss", "test_accuracy", "test_error", "trainable_params", "non_trainable_params",
        "majority_share", "wall_seconds", "diverged_steps", "keras", "backend", "device", "point_id", "arm_order",
        "final_loss", "final_accuracy", "final_val_loss",
        "final_val_accuracy", "chance_threshold", "stuck", "trained"]
    assert list(exp.history.columns) == [
        "run_id", "epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy", "arm", "seed", LR, "point_id"]
    assert len(exp.runs) == 8
    assert len(exp.history) == 3 * 7 + 2  # completed runs log 3 epochs, the diverged one 2
    one = row(exp.runs, **{LR: 0.001, "arm": "bn", "seed": 1})
    assert (one.status, one.test_error, one.epochs_run) == ("completed", 0.03, 3)
    broke = row(exp.runs, **{LR: 0.1, "arm": "no_bn", "seed": 0})
    assert (broke.status, broke.diverged_epoch) == ("diverged", 2)
    assert exp.history[exp.history.run_id == one.run_id].val_accuracy.tolist() == pytest.approx([0.5, 0.97, 0.97])


def test_tables_are_the_reports_csv_files(tmp_path):
    path = lr_sweep(tmp_path, ERRORS)
    out = report.write_report(path)
    exp = bnexp.load_experiment(path)
    written = {csv.stem: csv for csv in (out / "tables").glob("*.csv")}
    assert set(exp.tables) == set(written)  # a learning-rate sweep has every table
    for name, csv in written.items():
        # Through CSV on both sides: the file holds what the frame holds, to the last digit.
        frame = pd.read_csv(io.StringIO(exp.tables[name].to_csv(index=False)))
        pd.testing.assert_frame_equal(frame, pd.read_csv(csv), check_exact=True, obj=name)
    paired = row(exp.tables["paired_difference"], **{LR: 0.001})
    assert paired.diff_mean == pytest.approx(-0.015)


def test_loading_an_experiment_and_its_tables_does_not_import_tensorflow_or_keras(tmp_path):
    path = lr_sweep(tmp_path, ERRORS)
    code = ("import sys, bnexp; "
            f"exp = bnexp.load_experiment({str(path)!r}); tables = exp.tables; "
            "print(len(exp.runs), sorted(tables), "
            "sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ("8 ['largest_learning_rate', 'missing', 'paired_difference', 'parameters', 'runs', "
                                  "'stability', 'steps_to_target', 'steps_to_target_runs', 'test_error'] []")


def test_a_folder_that_is_not_there_is_one_line(tmp_path):
    with pytest.raises(ResultsError, match=r"nowhere: cannot list the experiment folder \(No such file"):
        bnexp.load_experiment(tmp_path / "nowhere")
