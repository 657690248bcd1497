"""Shared fixtures: tiny synthetic datasets and configs, so tests never need real data."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from click.testing import CliRunner  # noqa: E402


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    """48 train + 16 test 8x8 grey images in 3 classes whose mean brightness tells the class."""
    rng = np.random.default_rng(0)

    def images(n):
        y = np.arange(n) % 3
        x = (rng.random((n, 8, 8)) * 60 + y[:, None, None] * 80).astype("uint8")
        return x, y.astype("uint8")

    x_train, y_train = images(48)
    x_test, y_test = images(16)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture
def write_config(tmp_path, tiny_npz):
    """Write a config for the tiny dataset: a 2-block CNN, 1 epoch; `changes` are merged on top."""

    def write(changes: dict | None = None, name: str = "tiny") -> Path:
        config = {
            "name": name,
            "seeds": [0],
            "data": {"dataset": "npz", "path": str(tiny_npz), "validation_split": 0.25},
            "model": {"conv": [{"filters": 4, "kernel_size": 3, "pool": 2}], "dense": [8]},
            "train": {"epochs": 1, "batch_size": 8, "log_every_steps": 2, "steps_per_execution": 1},
        }
        for key, value in (changes or {}).items():
            section, _, field = key.partition(".")
            if field:
                config.setdefault(section, {})[field] = value
            else:
                config[key] = value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture
def cli(tmp_path):
    """Invoke `bnexp` in-process with a results folder under tmp_path."""

    def invoke(*args):
        # One worker trains in this process, so tests can patch what it calls.
        own_executor = "--executor" in args or "-j" in args
        workers = ["--workers", "1"] if args[0] == "run" and not own_executor else []
        from bnexp.cli import main

        return CliRunner().invoke(main, [*map(str, args), *workers, "--results", str(tmp_path / "results")])

    return invoke


@pytest.fixture
def damaged(tmp_path):
    """An experiment of five completed runs, four of them with a damaged file."""
    from test_report import ExperimentWriter, completed, epochs

    writer = ExperimentWriter(tmp_path, "dmg")
    ids = [writer.run(arm, seed, history=epochs([0.5, 0.9]), result=completed(0.1))
           for arm, seed in (("no_bn", 0), ("bn", 0), ("no_bn", 1), ("bn", 1), ("no_bn", 2))]
    writer.plan()
    (writer.path / ids[0] / "history.jsonl").write_text('{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "lo')
    (writer.path / ids[1] / "result.json").write_text('{"status": "comp')
    (writer.path / ids[2] / "spec.json").write_bytes(b"\xff\xfe")
    (writer.path / ids[3] / "result.json").write_text("[1, 2]")
    return writer.path, ids
