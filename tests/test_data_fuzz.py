"""Property-based: a user's own tiny CSV or npz file, however odd (NaN or inf, one class, wrong
shapes, empty parts, test labels never trained on, batches and models that do not fit), either plans
and trains, or `plan` and `run` both stop with the same one line and exit 2 before anything is written."""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bnexp.cli import main

# At most one defect per generated experiment, none in about half of them, so both outcomes are exercised.
DEFECTS = ["nan", "inf", "one class", "unseen test label", "labels from 1", "float labels", "empty training part",
           "empty test part", "y_train length", "x_test shape", "batch too large", "steps too many", "pool too large",
           "conv on flat features", "tiny subset"]


@st.composite
def experiments(draw, folder: Path):
    defect = draw(st.one_of(st.none(), st.sampled_from(DEFECTS)))
    kind = draw(st.sampled_from(["csv", "npz"]))
    shape = draw(st.sampled_from([(3,), (4, 4), (4, 4, 2)])) if kind == "npz" else (draw(st.integers(1, 3)),)
    classes = draw(st.integers(2, 3))
    n_train, n_test = draw(st.integers(10, 16)), draw(st.integers(2, 4))
    x = draw(arrays(np.float32, (n_train + n_test, *shape), elements=st.floats(-5, 5, width=32)))
    y = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=n_train + n_test, max_size=n_train + n_test)))
    y[:classes] = np.arange(classes)  # every class in the training rows
    if defect in ("nan", "inf"):
        x.flat[draw(st.integers(0, x.size - 1))] = np.nan if defect == "nan" else draw(st.sampled_from([np.inf, -np.inf]))
    if defect == "one class":
        y[:] = 0
    if defect == "unseen test label":
        y[n_train:] = classes
    x_train, y_train, x_test, y_test = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    if defect == "empty training part":
        x_train, y_train = x_train[:0], y_train[:0]
    if defect == "empty test part":
        x_test, y_test = x_test[:0], y_test[:0]

    if kind == "npz":
        if defect == "labels from 1":
            y_train, y_test = y_train + 1, y_test + 1
        if defect == "float labels":
            y_train = y_train + 0.5
        if defect == "y_train length":
            y_train = y_train[1:]
        if defect == "x_test shape":
            x_test = x_test.reshape(len(x_test), -1)[:, :1]
        path = folder / "data.npz"
        np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        data = {"dataset": "npz", "path": str(path)}
    else:
        # A CSV has no test file: bnexp splits one off by data.test_split, so its parts come from the rows.
        rows = (x_train, x_test) if defect != "empty training part" else (x_test,)
        labels = (y_train, y_test) if defect != "empty training part" else (y_test,)
        frame = pd.DataFrame(np.concatenate(rows), columns=[f"f{i}" for i in range(shape[0])])
        frame["label"] = [f"class_{label}" for label in np.concatenate(labels)]
        path = folder / "data.csv"
        frame.to_csv(path, index=False)
        data = {"dataset": "csv", "path": str(path), "label_column": "label",
                "test_split": 0.01 if defect == "empty test part" else draw(st.sampled_from([0.2, 0.3]))}
    data["validation_split"] = draw(st.sampled_from([0.2, 0.4]))
    if defect == "tiny subset":
        data["train_subset"] = draw(st.integers(1, 3))

    images = len(shape) > 1
    pool = draw(st.integers(5, 9)) if defect == "pool too large" else draw(st.integers(1, 2))
    conv = images and draw(st.booleans()) or defect in ("pool too large", "conv on flat features")
    if defect == "conv on flat features":
        data["path"] = str(folder / "flat.npz")
        np.savez(data["path"], x_train=x_train.reshape(len(x_train), -1), y_train=y_train,
                 x_test=x_test.reshape(len(x_test), -1), y_test=y_test)
        data = {"dataset": "npz", "path": data["path"], "validation_split": data["validation_split"]}
    train = {"epochs": 1, "batch_size": 40 if defect == "batch too large" else draw(st.integers(1, 4)),
             "steps_per_execution": 1, "log_every_steps": 1}
    if defect == "steps too many":
        train["steps_per_epoch"] = 50
    return {
        "name": "fuzz", "seeds": [0],
        "arms": {"bn": {"model.batch_norm.enabled": True}},  # one run per example keeps the test short
        "data": data, "model": {"conv": [{"filters": 2, "pool": pool}] if conv else [], "dense": [4]}, "train": train,
    }


def invoke(folder: Path, *args):
    return CliRunner().invoke(main, [*args, str(folder / "fuzz.yaml"), "--results", str(folder / "results")])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_data_file_trains_or_is_one_line_before_training(data):
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        experiment = data.draw(experiments(folder))
        (folder / "fuzz.yaml").write_text(yaml.safe_dump(experiment))
        plan = invoke(folder, "plan")
        run = invoke(folder, "run", "--workers", "1", "--quiet")
        results = folder / "results"
        event("refused" if run.exit_code == 2 else "trained")
        if run.exit_code == 2:
            assert run.output.startswith("Error: ") and run.output.count("\n") == 1, run.output
            assert "Traceback" not in run.output
            assert plan.output == run.output  # plan reads the file and says the same
            assert not [p for p in results.rglob("*") if p.is_file()]
        else:
            assert run.exit_code == 0 and plan.exit_code == 0, (plan.output, run.output)
            *warnings, summary = run.output.splitlines()
            assert summary == "1 runs: 1 completed; 0 already complete (skipped); 0 left", run.output
            assert all(line.startswith("Warning: ") for line in warnings), run.output
