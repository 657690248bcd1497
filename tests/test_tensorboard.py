"""--tensorboard: refused in one line without its package, else event files with the run's metrics."""

import sys

import pytest
from click.testing import CliRunner

from bnexp.cli import main

TENSORBOARD_MISSING = ("Error: --tensorboard: the tensorboard package is not installed; pip install tensorboard "
                       "(bnexp depends on it: reinstalling bnexp adds it), or run without --tensorboard")


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def one_line_error(out) -> str:
    assert out.exit_code == 2, out.output
    assert out.output.startswith("Error: ") and out.output.count("\n") == 1, out.output
    return out.output.strip()


def test_tensorboard_without_its_package_is_refused_before_anything_is_written(tmp_path, write_config,
                                                                                monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what `import tensorboard` meets when not installed
    out = cli("run", write_config(), "--results", tmp_path / "results", "--tensorboard")
    assert one_line_error(out) == TENSORBOARD_MISSING
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_tensorboard_run_writes_event_files_with_its_metrics(tmp_path, write_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = cli("run", write_config(), "--results", tmp_path, "--tensorboard", "-q", "-j", "1")
    assert out.exit_code == 0, out.output
    logs = sorted(tmp_path.glob("tiny/*/tensorboard"))
    assert [log.parent.name.split("-")[0] for log in logs] == ["bn", "no_bn"]
    for log in logs:
        for split, tag in (("train", "epoch_loss"), ("validation", "epoch_accuracy")):
            events = EventAccumulator(str(log / split))
            events.Reload()
            assert tag in events.Tags()["tensors"], (log, split)
