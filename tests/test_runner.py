"""`bnexp run` when things go wrong: killed and interrupted sweeps resume, concurrent sweeps share work,
bad input and unusable results folders give one-line errors, determinism, divergence.

The tests marked slow start real `bnexp run` processes and kill them; `pytest -m slow` runs them (.ci/run).
"""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import bnexp.store
from bnexp.cli import main
from bnexp.config.load import load_config
from bnexp.executors import RunContext, train_one
from bnexp.runner import write_experiment
from bnexp.store import LOCK, run_lock, write_history, write_json, write_spec
from bnexp.sweep import expand_runs


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def one_line_error(out) -> str:
    """The CLI's output, checked to be a single `Error:` line with exit status 2 and no traceback."""
    assert out.exit_code == 2, out.output
    assert out.output.startswith("Error: ") and out.output.count("\n") == 1, out.output
    assert "Traceback" not in out.output
    return out.output.strip()


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes, to prove a failed command changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def history_epochs(run_dir: Path) -> list[int]:
    path = run_dir / "history.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.exists() else []


def record_runs(config: Path, results: Path, outcomes: list[dict]) -> list[Path]:
    """Write the files `bnexp run` would leave for `config`, without training: each run gets spec.json,
    one epoch of history and the result in `outcomes` (runs past its end get nothing)."""
    experiment = load_config(config)
    runs = expand_runs(experiment, str(config))
    write_experiment(experiment, runs, results, str(config))
    dirs = [results / experiment.name / spec.run_id for spec in runs]
    for spec, run_dir, result in zip(runs, dirs, outcomes):
        write_spec(run_dir, spec.record())
        write_history(run_dir / "history.jsonl", [{"epoch": 1, "loss": 0.5}])
        if result:
            write_json(run_dir / "result.json", result)
    return dirs


def without_timing(history_path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"}
            for line in history_path.read_text().splitlines()]


# --- interruption -------------------------------------------------------------------------------

def test_an_interrupted_run_resumes_from_its_checkpoint_with_the_same_result(write_config, tmp_path):
    path = write_config({"train.epochs": 4, "train.deterministic": True,
                         "train.early_stopping": {"patience": 3, "restore_best_weights": True}})
    spec = expand_runs(load_config(path), str(path))[0]
    whole = train_one(spec, RunContext(tmp_path / "whole", None))

    def interrupt_in_epoch_3(_, record):  # history.jsonl has epoch 3; the checkpoint is still epoch 2
        if record["epoch"] == 3:
            raise KeyboardInterrupt

    context = RunContext(tmp_path / "resumed", None)
    run_dir = context.run_dir(spec)
    with pytest.raises(KeyboardInterrupt):
        train_one(spec, RunContext(tmp_path / "resumed", None, on_epoch=interrupt_in_epoch_3))
    assert history_epochs(run_dir) == [1, 2, 3]
    assert not (run_dir / "result.json").exists()
    with zipfile.ZipFile(run_dir / "checkpoint.keras") as archive:
        assert json.loads(archive.read("bnexp_state.json"))["epoch"] == 2

    resumed = train_one(spec, context)
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] == 2
    assert whole["resumed_from_epoch"] is None
    assert history_epochs(run_dir) == [1, 2, 3, 4]
    assert without_timing(run_dir / "history.jsonl") == without_timing(tmp_path / "whole" / "tiny" / spec.run_id
                                                                        / "history.jsonl")
    assert resumed["test_loss"] == whole["test_loss"] and resumed["test_accuracy"] == whole["test_accuracy"]
    assert not (run_dir / "checkpoint.keras").exists()


@pytest.fixture
def slow_config(tmp_path) -> Path:
    """4 runs (2 arms x 2 seeds) of 4 epochs of 30 single-batch steps: long enough to kill mid-epoch."""
    rng = np.random.default_rng(0)
    y = np.arange(200) % 3
    x = (rng.random((200, 8, 8)) * 60 + y[:, None, None] * 80).astype("uint8")
    np.savez(tmp_path / "slow.npz", x_train=x[:160], y_train=y[:160].astype("uint8"),
             x_test=x[160:], y_test=y[160:].astype("uint8"))
    config = {
        "name": "slow", "seeds": [0, 1],
        "data": {"dataset": "npz", "path": str(tmp_path / "slow.npz"), "validation_split": 0.25},
        "model": {"dense": [16]},
        "train": {"epochs": 4, "batch_size": 4, "steps_per_execution": 1, "log_every_steps": 50},
    }
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# `python -m bnexp` with Ctrl-C handled as in a terminal, even when this test runs where SIGINT is
# ignored (a background job of a non-interactive shell), which every child would inherit. The
# driver's handler is reset to the default on exec in its spawned workers, so they get it too.
WITH_CTRL_C = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "sys.argv[0] = 'bnexp'; runpy.run_module('bnexp', run_name='__main__')")


class Sweep:
    """`bnexp run` in a real process group (the driver and its workers), with its output in files (a
    pipe could fill up and block it). Signals go to the whole group, as Ctrl-C in a terminal or a job
    scheduler's kill would send them."""

    def __init__(self, config: Path, results: Path, name: str, *options: str):
        self.out, self.err = config.parent / f"{name}.out", config.parent / f"{name}.err"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen([sys.executable, "-c", WITH_CTRL_C, "run", str(config), "--results",
                                             str(results), *options], stdout=out, stderr=err, env=env,
                                            start_new_session=True)

    def wait_until(self, condition, timeout=240.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"bnexp run ended (status {self.process.returncode}) before the kill point:\n"
                            f"{self.out.read_text()}{self.err.read_text()}")
            assert time.monotonic() < deadline, "timed out waiting for the kill point"
            time.sleep(0.02)

    def stop(self, sig: int) -> int:
        """Signal the group; return the driver's exit status once every process of the group is gone."""
        os.killpg(self.process.pid, sig)
        status = self.process.wait(timeout=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return status
            time.sleep(0.05)
        os.killpg(self.process.pid, signal.SIGKILL)
        pytest.fail(f"workers of the stopped sweep were still alive a minute after signal {sig}")

    def finish(self) -> int:
        return self.process.wait(timeout=240)

    @property
    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()


@pytest.mark.slow
def test_killed_and_interrupted_sweeps_finish_with_every_run_exactly_once(slow_config, tmp_path):
    results = tmp_path / "results"
    experiment = results / "slow"
    runs = [experiment / spec.run_id for spec in expand_runs(load_config(slow_config), str(slow_config))]

    def finished():
        return [run for run in runs if (run / "result.json").exists()]

    # Phases 1 and 2 use two worker processes (runs 0 and 1 train side by side), 3 and 4 none.
    # 1. SIGKILL in the middle of run 0's third epoch (or while it saves its checkpoint).
    sweep = Sweep(slow_config, results, "kill-mid-epoch", "--workers", "2")
    sweep.wait_until(lambda: len(history_epochs(runs[0])) >= 2)
    assert sweep.stop(signal.SIGKILL) == -signal.SIGKILL
    epochs_at_kill = len(history_epochs(runs[0]))
    assert not finished()
    assert (runs[0] / "checkpoint.keras").exists() and (runs[0] / LOCK).exists()  # a stale lock file
    assert "running" not in cli("status", "slow", "--results", results).output  # the OS dropped the locks

    # 2. Ctrl-C as soon as the driver has counted run 0's result (its progress line: the result file
    # alone can land before the driver collects it): one summary line, exit status 130.
    sweep = Sweep(slow_config, results, "ctrl-c", "--workers", "2")
    sweep.wait_until(lambda: any(runs[0].name in line and " completed: " in line for line in sweep.lines))
    assert sweep.stop(signal.SIGINT) == 130
    summary = re.fullmatch(r"interrupted: 4 runs: (\d) completed; 0 already complete \(skipped\); (\d) left "
                           r"\(run the same command again to resume\)", sweep.lines[-1])
    assert summary and int(summary[1]) + int(summary[2]) == 4, sweep.lines
    assert "Traceback" not in sweep.err.read_text()
    first = json.loads((runs[0] / "result.json").read_text())
    assert first["resumed_from_epoch"] in (epochs_at_kill - 1, epochs_at_kill)  # not from scratch

    # 3. SIGKILL between runs, as soon as one more run has its result; then leave a half-written
    #    temporary result behind, as a kill during a write would.
    done = len(finished())
    sweep = Sweep(slow_config, results, "kill-between-runs", "--workers", "1")
    sweep.wait_until(lambda: len(finished()) > done)
    sweep.stop(signal.SIGKILL)
    unfinished = next(run for run in runs if run not in finished())
    unfinished.mkdir(parents=True, exist_ok=True)
    (unfinished / ".result.json.x1y2z3.tmp").write_text('{"status": "compl')

    # 4. The same command once more finishes the sweep.
    sweep = Sweep(slow_config, results, "finish", "--workers", "1")
    assert sweep.finish() == 0, sweep.err.read_text()
    assert sweep.lines[-1].startswith("4 runs: ") and sweep.lines[-1].endswith("; 0 left")

    assert sorted(p.name for p in experiment.iterdir() if p.is_dir()) == sorted(run.name for run in runs)
    for run in runs:
        assert len(list(run.glob("result.json"))) == 1
        result = json.loads((run / "result.json").read_text())
        assert result["status"] == "completed" and result["epochs_run"] == 4
        assert history_epochs(run) == [1, 2, 3, 4]
        assert json.loads((run / "spec.json").read_text())["run_id"] == run.name
        assert not (run / "checkpoint.keras").exists()
    for path in experiment.rglob("*.json"):
        json.loads(path.read_text())
    assert "slow: 4 runs: 4 completed" in cli("status", "slow", "--results", results).output


@pytest.mark.slow
def test_two_sweeps_on_the_same_results_never_train_a_run_twice(slow_config, tmp_path):
    results = tmp_path / "results"
    sweeps = [Sweep(slow_config, results, f"sweep{i}", "--workers", "1") for i in (1, 2)]
    assert [sweep.finish() for sweep in sweeps] == [0, 0], [sweep.err.read_text() for sweep in sweeps]

    lines = [line for sweep in sweeps for line in sweep.lines]
    trained = [line.split()[1] for line in lines if " completed: " in line]
    run_ids = json.loads((results / "slow" / "experiment.json").read_text())["run_ids"]
    assert sorted(trained) == sorted(run_ids)  # each run trained once, by one of the two
    assert any("another bnexp process is training it" in line for line in lines)  # they did overlap
    for run_id in run_ids:
        assert history_epochs(results / "slow" / run_id) == [1, 2, 3, 4]
        assert json.loads((results / "slow" / run_id / "result.json").read_text())["status"] == "completed"


def test_a_run_locked_by_another_process_is_skipped_and_shown_running(write_config, tmp_path):
    path = write_config()
    results = tmp_path / "results"
    spec = expand_runs(load_config(path), str(path))[0]
    context = RunContext(results, None)
    with run_lock(context.run_dir(spec)):  # a second FileLock on the same file conflicts, as another process's would
        assert train_one(spec, context) == {"status": "running"}
        assert bnexp.store.open_run(context.run_dir(spec)).status == "running"
    assert bnexp.store.open_run(context.run_dir(spec)).status == "pending"
    assert not (context.run_dir(spec) / "spec.json").exists()


def test_a_lock_held_for_an_instant_by_bnexp_status_does_not_skip_the_run(write_config, tmp_path):
    import bnexp.train  # noqa: F401  (loaded now, so train_one reaches the lock while the probe holds it)

    path = write_config()
    spec = expand_runs(load_config(path), str(path))[0]
    context = RunContext(tmp_path / "results", None)
    probing = threading.Event()

    def status_probe():
        with run_lock(context.run_dir(spec)):
            probing.set()
            time.sleep(0.2)

    probe = threading.Thread(target=status_probe)
    probe.start()
    probing.wait()
    assert train_one(spec, context)["status"] == "completed"
    probe.join()


# --- bad input ----------------------------------------------------------------------------------

def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    "data, make_file, message",
    [
        ({"dataset": "npz", "path": "absent.npz"}, None, "data.path: absent.npz not found"),
        ({"dataset": "npz", "path": "random.npz"}, lambda p: p.write_bytes(os.urandom(300)), "not an npz file"),
        ({"dataset": "npz", "path": "cut.npz"}, "truncated", "not an npz file"),
        ({"dataset": "csv", "path": "t.csv", "label_column": "label"},
         lambda p: write_csv(p, "a,b,klass", [f"{i},{i + 1},{i % 2}" for i in range(20)]),
         "data.label_column: no column 'label'"),
        ({"dataset": "csv", "path": "t.csv", "label_column": "label"},
         lambda p: write_csv(p, "a,colour,label", [f"{i},red,{i % 2}" for i in range(20)]),
         "feature column(s) colour are not numeric"),
    ],
)
def test_unusable_data_is_one_line_and_leaves_results_untouched(write_config, tiny_npz, tmp_path, monkeypatch,
                                                               data, make_file, message):
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    record_runs(write_config(name="bad"), results, [{"status": "completed", "test_error": 0.5}])
    before = tree(results)
    if make_file == "truncated":
        (tmp_path / data["path"]).write_bytes(tiny_npz.read_bytes()[:200])
    elif make_file:
        make_file(tmp_path / data["path"])
    error = one_line_error(cli("run", write_config({"data": data, "model": {"dense": [4]}}, name="bad"),
                               "--results", results))
    assert message in error
    assert tree(results) == before


def test_results_from_another_format_are_refused_and_left_untouched(write_config, tmp_path):
    results = tmp_path / "results"
    config = write_config()
    record_runs(config, results, [{"status": "completed"}])
    experiment_json = results / "tiny" / "experiment.json"
    experiment_json.write_text(experiment_json.read_text().replace('"format": 1', '"format": 99'))
    before = tree(results)
    error = one_line_error(cli("run", config, "--set", "train.epochs=2", "--results", results))
    assert "experiment.json: written in results format 99" in error and "this bnexp" in error
    assert one_line_error(cli("status", "--results", results)) == error
    assert tree(results) == before


def test_an_unwritable_results_folder_stops_before_training(write_config, tmp_path):
    (tmp_path / "disk").write_text("a file where a folder should be")
    results = tmp_path / "disk" / "results"
    error = one_line_error(cli("run", write_config(), "--results", results))
    assert f"{results}/tiny: results folder is not writable (Not a directory)" in error and "--results" in error
    assert (tmp_path / "disk").read_text() == "a file where a folder should be"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_a_read_only_results_folder_stops_before_training(write_config, tmp_path):
    results = tmp_path / "results"
    (results / "tiny").mkdir(parents=True)
    (results / "tiny").chmod(0o500)
    try:
        assert "results folder is not writable" in one_line_error(cli("run", write_config(), "--results", results))
    finally:
        (results / "tiny").chmod(0o700)


def test_a_full_disk_stops_the_sweep_and_keeps_earlier_files(write_config, tmp_path, monkeypatch):
    results = tmp_path / "results"
    config = write_config({"arms": {"bn": {}}})
    assert cli("run", config, "--workers", 1, "--results", results).exit_code == 0
    before = tree(results / "tiny")
    real_mkstemp = tempfile.mkstemp

    def history_on_a_full_disk(dir=None, prefix=None, suffix=None):
        fd, name = real_mkstemp(dir=dir, prefix=prefix, suffix=suffix)
        if prefix.startswith(".history.jsonl"):
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
        return fd, name

    monkeypatch.setattr(bnexp.store.tempfile, "mkstemp", history_on_a_full_disk)
    error = one_line_error(cli("run", config, "--workers", 1, "--set", "train.epochs=2", "--results", results))
    assert error.endswith(f"history.jsonl: cannot write ({os.strerror(errno.ENOSPC)}); the previous version is kept")
    after = tree(results / "tiny")
    assert {name: data for name, data in after.items() if name in before and name != "experiment.json"} == \
        {name: data for name, data in before.items() if name != "experiment.json"}
    assert not [name for name in after if name.endswith((".tmp", "result.json")) and name not in before]


# --- determinism and divergence ------------------------------------------------------------------

def test_deterministic_runs_give_bit_identical_histories_and_test_metrics(write_config, tmp_path):
    config = write_config({"train.epochs": 2, "arms": {"bn": {}}})  # a CNN with BN: convolutions and moving statistics
    for copy in ("a", "b"):
        assert cli("run", config, "--deterministic", "--workers", 1, "--results", tmp_path / copy).exit_code == 0
    runs = sorted(p.name for p in (tmp_path / "a" / "tiny").iterdir() if p.is_dir())
    assert len(runs) == 1
    for run_id in runs:
        a, b = tmp_path / "a" / "tiny" / run_id, tmp_path / "b" / "tiny" / run_id
        assert json.loads((a / "spec.json").read_text())["config"]["train"]["deterministic"] is True
        assert without_timing(a / "history.jsonl") == without_timing(b / "history.jsonl")
        result_a, result_b = (json.loads((run / "result.json").read_text()) for run in (a, b))
        assert [result_a[k] for k in ("test_loss", "test_accuracy")] == [result_b[k] for k in ("test_loss",
                                                                                                 "test_accuracy")]


def test_a_diverging_arm_is_recorded_as_diverged_while_the_bn_arm_trains(write_config, tmp_path):
    # Weights drawn with stddev 1 through four ReLU layers: without BN the activations grow about
    # 8-fold per layer and SGD at 0.1 overflows to NaN in the first epoch; BN rescales every layer.
    config = write_config({
        "model": {"dense": [64, 64, 64, 64], "kernel_initializer": {"name": "normal", "stddev": 1.0}},
        "train.optimizer": "sgd", "train.learning_rate": 0.1, "train.epochs": 2,
    })
    results = tmp_path / "results"
    out = cli("run", config, "--workers", 1, "--results", results)
    assert out.exit_code == 0, out.output
    statuses = {json.loads((p / "spec.json").read_text())["arm"]: json.loads((p / "result.json").read_text())
                for p in (results / "tiny").iterdir() if p.is_dir()}
    assert statuses["no_bn"]["status"] == "diverged" and statuses["no_bn"]["diverged_epoch"] == 1
    assert statuses["no_bn"]["test_error"] is None
    assert statuses["bn"]["status"] == "completed" and statuses["bn"]["test_error"] is not None
    status = cli("status", "tiny", "--results", results).output
    assert "loss NaN or infinite in epoch 1" in status and "tiny: 2 runs: 1 completed, 1 diverged" in status
    assert cli("report", "tiny", "--results", results).exit_code == 0
    report = (results / "tiny" / "report" / "report.md").read_text()
    assert "diverged" in report and "no_bn" in report and "bn" in report


@pytest.mark.slow
def test_workers_of_a_killed_driver_exit_and_free_their_runs(slow_config, tmp_path):
    results = tmp_path / "results"
    first = results / "slow" / expand_runs(load_config(slow_config), str(slow_config))[0].run_id
    sweep = Sweep(slow_config, results, "kill-driver", "--workers", "2")
    sweep.wait_until(lambda: len(history_epochs(first)) >= 1)
    os.kill(sweep.process.pid, signal.SIGKILL)  # the driver alone, as an out-of-memory killer would
    sweep.process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while True:  # its workers notice within a second or two and exit, which drops their runs' locks
        try:
            os.killpg(sweep.process.pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            os.killpg(sweep.process.pid, signal.SIGKILL)
            pytest.fail("the workers outlived their killed driver by 30 s, keeping their runs locked")
        time.sleep(0.1)
    assert "running" not in cli("status", "slow", "--results", results).output
