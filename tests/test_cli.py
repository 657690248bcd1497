"""End to end through the CLI on a tiny synthetic dataset: plan, run, rerun, errors, help."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from bnexp.cli import main




def result_files(tmp_path, experiment="tiny"):
    return sorted((tmp_path / "results" / experiment).glob("*/result.json"))


def test_plan_lists_every_run_without_training(cli, write_config, tmp_path):
    config = write_config({"sweep": {"train.learning_rate": [0.01, 0.1]}, "seeds": [0, 1]})
    out = cli("plan", config)
    assert out.exit_code == 0, out.output
    assert "tiny: 8 runs = 2 sweep point(s) x 2 arm(s) x 2 seed(s); 0 complete, 8 to run" in out.output
    assert out.output.count("pending") == 8
    # conv 4 filters + dense 8: BN adds 2 x 12 trainable and 2 x 12 moving statistics
    assert " 587 " in out.output and " 611 " in out.output and " 24 " in out.output
    assert not (tmp_path / "results").exists()


def test_run_stores_every_run_and_rerun_skips_them(cli, write_config, tmp_path):
    config = write_config({"sweep": {"train.learning_rate": [0.01, 0.05]}})
    first = cli("run", config, "--quiet")
    assert first.exit_code == 0, first.output
    assert "4 runs: 4 completed; 0 already complete (skipped); 0 left" in first.output
    files = result_files(tmp_path)
    assert len(files) == 4
    for path in files:
        result = json.loads(path.read_text())
        spec = json.loads((path.parent / "spec.json").read_text())
        history = [json.loads(line) for line in (path.parent / "history.jsonl").read_text().splitlines()]
        assert result["status"] == "completed"
        assert result["test_error"] == pytest.approx(1 - result["test_accuracy"])
        assert spec["run_id"] == path.parent.name and spec["point"]["train.learning_rate"] in (0.01, 0.05)
        assert [h["epoch"] for h in history] == [1]
        assert history[0]["step"] == 5  # 36 training images / batch 8
        assert set(history[0]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "step_losses"}
        assert result["environment"]["backend"] == "tensorflow"
    experiment = json.loads((tmp_path / "results" / "tiny" / "experiment.json").read_text())
    assert experiment["sweep_keys"] == ["train.learning_rate"] and experiment["reference_arm"] == "no_bn"

    mtimes = [p.stat().st_mtime_ns for p in files]
    again = cli("run", config, "--quiet")
    assert again.exit_code == 0 and "4 already complete (skipped); 0 left" in again.output
    assert [p.stat().st_mtime_ns for p in files] == mtimes

    # Changing one swept value trains only the runs it affects.
    changed = cli("run", config, "--quiet", "--set", "sweep={train.learning_rate: [0.01, 0.02]}")
    assert "4 runs: 2 completed; 2 already complete (skipped); 0 left" in changed.output
    assert len(result_files(tmp_path)) == 6


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(cli, write_config, tmp_path, monkeypatch):
    import bnexp.train

    real_build = bnexp.train.build_model

    def build_or_fail(config, *args):
        if config.batch_norm.enabled:
            raise RuntimeError("boom")
        return real_build(config, *args)

    monkeypatch.setattr(bnexp.train, "build_model", build_or_fail)
    out = cli("run", write_config(), "--quiet")
    assert out.exit_code == 1
    assert "2 runs: 1 completed, 1 failed" in out.output
    failed = [json.loads(p.read_text()) for p in result_files(tmp_path) if "bn-" in p.parent.name[:3]]
    assert failed[0]["status"] == "failed" and failed[0]["error"] == "RuntimeError: boom"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "train.epoch=1"], "Error: --set train.epoch=1: train.epoch: unknown key; did you mean 'epochs'?"),
        (["--set", "train.batch_size=0"], "Error: --set train.batch_size=0: train.batch_size: expected a number > 0, got 0"),
    ],
)
def test_user_errors_exit_2_with_one_line(cli, write_config, args, message):
    for command in ("plan", "run"):
        out = cli(command, write_config(), *args)
        assert out.exit_code == 2
        assert out.output.strip() == message
        assert "Traceback" not in out.output


def test_missing_dataset_is_one_line_before_any_training(cli, write_config, tmp_path):
    config = write_config({"data.dataset": "mnist", "data.path": None})
    out = cli("run", config, "--data-dir", tmp_path / "empty")
    assert out.exit_code == 2
    assert out.output.startswith("Error: ") and "mnist.npz" in out.output and out.output.count("\n") == 1
    assert not result_files(tmp_path)


@pytest.mark.parametrize("command", ["plan", "run", "report", "status", "export", "export mlflow"])
def test_every_command_has_help_with_an_example(command):
    out = CliRunner().invoke(main, [*command.split(), "-h"])
    assert out.exit_code == 0 and "Example:" in out.output and "bnexp " + command in out.output


def test_version():
    from bnexp import __version__

    assert CliRunner().invoke(main, ["--version"]).output.strip() == f"bnexp, version {__version__}"


def test_help_does_not_import_tensorflow():
    code = "import sys; from bnexp.cli import main; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "bnexp", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage: bnexp" in out.stdout


def test_plan_without_the_data_file_still_lists_the_runs(cli, write_config, tmp_path):
    config = write_config({"data.dataset": "csv", "data.path": "missing.csv", "data.label_column": "y"})
    out = cli("plan", config)
    assert out.exit_code == 0, out.output
    assert out.output.count(" ? ") >= 2
    assert "parameter counts need the data ('?' above): " in out.output and "missing.csv" in out.output
