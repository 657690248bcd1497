"""A sweep on a real multi-node Ray cluster (ray.cluster_utils.Cluster: a head and a worker node on
this machine) through `bnexp run --address`, losing the worker node while a run trains on it."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="bnexp[ray] is not installed (pip install 'bnexp[ray]')")
from ray._common.utils import reset_ray_address  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    # The Cluster advertises itself in /tmp/ray/ray_current_cluster, where a plain ray.init() in another
    # test process (pytest -n) would find it and join it instead of starting its own instance.
    reset_ray_address()
    yield cluster
    cluster.shutdown()


def bnexp(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "bnexp", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_losing_a_node_mid_sweep_retrains_its_run_once_and_loses_none(cluster, tmp_path, write_config):
    # The worker node's tasks train in scratch folders under its own TMPDIR, where the test sees them start.
    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    worker = cluster.add_node(num_cpus=1, env_vars={"TMPDIR": str(worker_tmp)})
    cluster.wait_for_nodes()
    epochs = 20
    config = write_config({"sweep": {"train.learning_rate": [0.01, 0.1]}, "train.epochs": epochs})
    results = tmp_path / "results"

    sweep = bnexp("run", config, "--address", cluster.address, "--results", results)
    deadline = time.monotonic() + 120
    while not list(worker_tmp.glob("bnexp-*/tiny/*/spec.json")):
        assert sweep.poll() is None and time.monotonic() < deadline, "no run started on the worker node"
        time.sleep(0.05)
    cluster.remove_node(worker, allow_graceful=False)
    out, err = sweep.communicate(timeout=300)

    assert sweep.returncode == 0, err[-3000:]
    # The last of bnexp's lines: Ray's own log lines (a raylet's lost connection) may come after it.
    summary = [line for line in out.splitlines() if re.match(r"\d+ runs: ", line)][-1]
    print(f"worker node removed while training; the sweep printed:\n{out}")
    assert summary == ("4 runs: 4 completed; 0 already complete (skipped); 0 left; "
                       "1 retried after losing their Ray node or worker")
    run_ids = json.loads((results / "tiny" / "experiment.json").read_text())["run_ids"]
    # Every run reported once, stored once, whole: nothing of the lost try, no staging or temporary file.
    reported = re.findall(r"^\[\d/4\] (\S+) .* completed: ", out, re.MULTILINE)
    assert sorted(reported) == sorted(run_ids)
    assert sorted(p.name for p in (results / "tiny").iterdir()) == sorted([*run_ids, "experiment.json"])
    for run_id in run_ids:
        run_dir = results / "tiny" / run_id
        assert sorted(p.name for p in run_dir.iterdir()) == ["history.jsonl", "result.json", "run.lock", "spec.json"]
        assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"
        history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
        assert [row["epoch"] for row in history] == list(range(1, epochs + 1))


def test_a_node_without_the_data_folder_fails_its_run_with_one_line(cluster, tmp_path, write_config):
    missing = tmp_path / "not-on-the-nodes"
    sweep = bnexp("run", write_config(), "--address", cluster.address, "--results", tmp_path / "results",
                  "--data-dir", missing)
    out, err = sweep.communicate(timeout=300)

    assert sweep.returncode == 1, err[-3000:]
    lines = out.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in err
    for line in lines[:2]:
        assert re.fullmatch(rf"\[\d/2\] \S+  failed: Ray node \S+ \([\d.]+\) has no data folder {missing} "
                            r"\(--data-dir\); put the data there on every node, or pass the folder the nodes have "
                            r"\(0\.0s, ETA \d+s\)", line), line
    assert lines[2] == "2 runs: 2 failed; 0 already complete (skipped); 0 left"
    assert not list((tmp_path / "results" / "tiny").glob("*/result.json"))
