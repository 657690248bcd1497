"""Executors: worker processes and Ray tasks store the same runs a sequential sweep stores, and Ray
clusters that cannot run a sweep stop at once with one line instead of a wait forever."""

import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from bnexp.config.load import load_config
from bnexp.errors import BnexpError
from bnexp.executors import (
    RunContext, _check_ray_resources, default_workers, make_executor, run_processes, run_ray, run_sequential,
)
from bnexp.runner import SweepProgress, run_sweep
from bnexp.store import HISTORY, RESULT, SPEC, read_history, read_json
from bnexp.sweep import expand_runs



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two arms x two batch sizes of a tiny CNN on 8x8 images, deterministic kernels: 4 short runs."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    y = np.arange(64) % 3
    x = (rng.random((64, 8, 8)) * 60 + y[:, None, None] * 80).astype("uint8")
    np.savez(folder / "tiny.npz", x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    config = {
        "name": "tiny", "seeds": [0], "sweep": {"train.batch_size": [8, 16]},
        "data": {"dataset": "npz", "path": str(folder / "tiny.npz"), "validation_split": 0.25},
        "model": {"conv": [{"filters": 4, "kernel_size": 3, "pool": 2}], "dense": [8]},
        "train": {"epochs": 2, "log_every_steps": 2, "steps_per_execution": 1, "deterministic": True},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return expand_runs(load_config(path), str(path))


def stored(results_dir, runs):
    """Each run's spec, history and result, without the fields that time or place a run."""
    out = {}
    for spec in runs:
        run_dir = results_dir / spec.experiment / spec.run_id
        history = [{k: v for k, v in epoch.items() if k != "epoch_seconds"} for epoch in read_history(run_dir / HISTORY)]
        result = {k: v for k, v in read_json(run_dir / RESULT).items()
                  if k not in ("wall_seconds", "started_at", "finished_at", "environment")}
        if isinstance(result.get("eval_statistics"), dict):
            result["eval_statistics"] = {k: v for k, v in result["eval_statistics"].items() if k != "seconds"}
        out[spec.run_id] = (read_json(run_dir / SPEC), history, result)
    return out


def sweep_with(executor, runs, results_dir):
    epochs = []
    progress = SweepProgress(quiet=True)
    progress.epoch_done = lambda spec, record: epochs.append((spec.run_id, record["epoch"]))
    summary = run_sweep(runs, RunContext(results_dir, None), executor, progress)
    return summary, epochs


def assert_close_runs(a, b):
    """Equal specs and steps; metrics equal to float32 rounding: a different thread count per run
    sums in a different order (docs/PERFORMANCE.md)."""
    assert a.keys() == b.keys()
    for run_id in a:
        (spec_a, history_a, result_a), (spec_b, history_b, result_b) = a[run_id], b[run_id]
        assert spec_a == spec_b
        assert [e["step"] for e in history_a] == [e["step"] for e in history_b]
        for epoch_a, epoch_b in zip(history_a, history_b):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                assert epoch_a[key] == pytest.approx(epoch_b[key], rel=1e-4, abs=1e-5), (run_id, key)
        assert_close(result_a, result_b, run_id)


def assert_close(a, b, where):
    """Equal, floats at any depth (eval_statistics' scores) to float32 rounding."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def sequential_results(tmp_path_factory, runs):
    results_dir = tmp_path_factory.mktemp("sequential")
    run_sweep(runs, RunContext(results_dir, None), run_sequential, SweepProgress(quiet=True))
    return stored(results_dir, runs)


@pytest.fixture(scope="module")
def process_results(tmp_path_factory, runs):
    results_dir = tmp_path_factory.mktemp("processes")
    summary, epochs = sweep_with(run_processes(2), runs, results_dir)
    return summary, epochs, stored(results_dir, runs)


@pytest.mark.slow  # real worker processes and a local Ray: tens of seconds
def test_worker_processes_store_the_sequential_results(runs, process_results, sequential_results):
    summary, epochs, in_workers = process_results
    assert summary.statuses == {"completed": 4}
    # Epoch progress crosses the process boundary.
    assert sorted(epochs) == sorted((spec.run_id, epoch) for spec in runs for epoch in (1, 2))
    assert_close_runs(in_workers, sequential_results)


@pytest.mark.slow  # real worker processes and a local Ray: tens of seconds
def test_ray_tasks_store_the_sequential_results(tmp_path, runs, process_results, sequential_results):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        summary, _ = sweep_with(run_ray(cpus_per_run=1), runs, tmp_path)
    finally:
        ray.shutdown()
    assert summary.statuses == {"completed": 4}
    on_ray = stored(tmp_path, runs)
    assert_close_runs(on_ray, sequential_results)
    # One thread per run, as in the worker processes: bit-identical records.
    assert on_ray == process_results[2]


def test_missing_ray_is_one_line_on_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(BnexpError, match=r"^--executor ray needs Ray: pip install 'bnexp\[ray\]'$"):
        run_ray()


def test_executor_choice():
    assert make_executor("sequential", workers=4) is run_sequential
    assert make_executor("processes", workers=1) is run_sequential
    assert make_executor("processes", workers=2) is not run_sequential
    assert default_workers(runs=1) == 1


def test_cli_import_loads_no_backend():
    code = "import sys, bnexp.cli; print(sorted({'tensorflow', 'keras', 'jax', 'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def closed_port() -> int:
    """A local port nothing listens on: bound once to find a free one, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tiny_runs(write_config):
    path = write_config()
    return expand_runs(load_config(path), str(path))


def test_an_unreachable_ray_address_stops_at_once_with_one_line(tmp_path, tiny_runs, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail("ray.init would retry for 30 s or more"))
    port = closed_port()
    with pytest.raises(BnexpError) as error:
        list(run_ray(f"ray://127.0.0.1:{port}")(tiny_runs, RunContext(tmp_path, None)))
    assert str(error.value) == (
        f"--address ray://127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port} (Connection refused); "
        "start one there with `ray start --head`, or leave out --address to start a local Ray")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(BnexpError, match=rf"^\$RAY_ADDRESS 127\.0\.0\.1:{port}: no Ray cluster answers at "
                                         rf"127\.0\.0\.1:{port} \(Connection refused\); start one there with "
                                         r"`ray start --head`, or unset RAY_ADDRESS to start a local Ray$"):
        list(run_ray()(tiny_runs, RunContext(tmp_path, None)))
    assert not (tmp_path / "tiny").exists()


def fake_ray(*nodes):
    """A stand-in for the ray module whose cluster has `nodes` (their resources) alive, plus a dead one."""
    dead = {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}
    return SimpleNamespace(nodes=lambda: [*({"Alive": True, "Resources": r} for r in nodes), dead])


@pytest.mark.parametrize("cpus, gpus, expected", [
    (1, 1, "--gpus-per-run 1: no node of the Ray cluster offers that (the 2 node(s) offer at most 8 CPUs and "
           "0 GPUs each); ask for less, or add a node that has it"),
    (16, 0, "--cpus-per-run 16: no node of the Ray cluster offers that (the 2 node(s) offer at most 8 CPUs and "
            "0 GPUs each); ask for less, or add a node that has it"),
])
def test_resources_no_node_offers_are_one_line(cpus, gpus, expected):
    with pytest.raises(BnexpError) as error:
        _check_ray_resources(fake_ray({"CPU": 8.0}, {"CPU": 2.0}), cpus, gpus)
    assert str(error.value) == expected


def test_resources_each_on_some_node_but_never_together_are_refused():
    ray = fake_ray({"CPU": 16.0}, {"CPU": 2.0, "GPU": 1.0})
    with pytest.raises(BnexpError, match=r"^--cpus-per-run 8 with --gpus-per-run 0.5: no node of the Ray cluster"):
        _check_ray_resources(ray, 8, 0.5)
    _check_ray_resources(ray, 2, 0.5)  # the GPU node has room for that
    _check_ray_resources(ray, 16, 0)


@pytest.mark.slow
def test_a_local_ray_without_a_gpu_refuses_gpus_per_run_before_claiming_a_run(tmp_path, tiny_runs):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, num_gpus=0, include_dashboard=False, logging_level="ERROR")
    try:
        with pytest.raises(BnexpError, match=r"^--gpus-per-run 1: no node of the Ray cluster offers that "
                                             r"\(the 1 node\(s\) offer at most 1 CPUs and 0 GPUs each\)"):
            list(run_ray(gpus_per_run=1)(tiny_runs, RunContext(tmp_path, None)))
        with pytest.raises(BnexpError, match=r"^--cpus-per-run 2: no node"):
            list(run_ray(cpus_per_run=2)(tiny_runs, RunContext(tmp_path, None)))
    finally:
        ray.shutdown()
    assert not (tmp_path / "tiny").exists()
