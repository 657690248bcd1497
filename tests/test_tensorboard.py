"""Fail fast: --tensorboard, Ray clusters that cannot run a sweep, and damaged run files each give
one line (or a `damaged` row) instead of a late failure, a wait forever or a traceback."""

import socket
import sys
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from bnexp.cli import main
from bnexp.config.schema import load_config
from bnexp.errors import BnexpError
from bnexp.executors import RunContext, _check_ray_resources, run_ray
from bnexp.sweep import expand_runs
from test_report import ExperimentWriter, completed, epochs

TENSORBOARD_MISSING = ("Error: --tensorboard: the tensorboard package is not installed; pip install tensorboard "
                       "(bnexp depends on it: reinstalling bnexp adds it), or run without --tensorboard")


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def one_line_error(out) -> str:
    assert out.exit_code == 2, out.output
    assert out.output.startswith("Error: ") and out.output.count("\n") == 1, out.output
    return out.output.strip()


def closed_port() -> int:
    """A local port nothing listens on: bound once to find a free one, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@pytest.fixture
def damaged(tmp_path):
    """An experiment of five completed runs, four of them with a damaged file."""
    writer = ExperimentWriter(tmp_path, "dmg")
    ids = [writer.run(arm, seed, history=epochs([0.5, 0.9]), result=completed(0.1))
           for arm, seed in (("no_bn", 0), ("bn", 0), ("no_bn", 1), ("bn", 1), ("no_bn", 2))]
    writer.plan()
    (writer.path / ids[0] / "history.jsonl").write_text('{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "lo')
    (writer.path / ids[1] / "result.json").write_text('{"status": "comp')
    (writer.path / ids[2] / "spec.json").write_bytes(b"\xff\xfe")
    (writer.path / ids[3] / "result.json").write_text("[1, 2]")
    return writer.path, ids


def test_status_shows_damaged_runs_with_the_file_and_the_reason(damaged, tmp_path):
    path, ids = damaged
    out = cli("status", "dmg", "--results", tmp_path)
    assert out.exit_code == 0, out.output
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in out.output.splitlines()[1:6]}
    assert rows == {
        ids[0]: ["damaged", "history.jsonl: line 2: Unterminated string starting at: line 1 column 14 (char 13)"],
        ids[1]: ["damaged", "result.json: Unterminated string starting at: line 1 column 12 (char 11)"],
        ids[2]: ["damaged", "spec.json: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"],
        ids[3]: ["damaged", "result.json: not a JSON object"],
        ids[4]: ["completed", "2/?  test error 0.1000"],  # the hand-written spec has no epochs
    }
    assert out.output.strip().endswith(f"dmg: 5 runs: 1 completed, 4 damaged ({path})")


def test_status_lists_the_run_folders_when_experiment_json_is_damaged(damaged, tmp_path):
    path, ids = damaged
    (path / "experiment.json").write_text('{"format": 1, "run_')
    out = cli("status", str(path))
    assert out.exit_code == 0, out.output
    assert out.output.strip().endswith(
        f"dmg: 5 runs: 1 completed, 4 damaged ({path}); experiment.json is damaged, so only the run folders "
        "are listed")


def test_report_describes_damaged_runs_and_reports_the_rest(damaged, tmp_path):
    path, ids = damaged
    out = cli("report", "dmg", "--results", tmp_path)
    assert out.exit_code == 0, out.output
    page = (path / "report" / "index.html").read_text()
    assert f"{ids[0]}/history.jsonl damaged (line 2: Unterminated string" in page
    assert "2 of 5 finished (2 completed, 3 damaged)" in page
    for run_id, detail in ((ids[1], "result.json: Unterminated string"), (ids[2], "spec.json: &#x27;utf-8&#x27;"),
                           (ids[3], "result.json: not a JSON object")):
        assert f"<td>{run_id}</td>" in page and f"<td>{detail}" in page


@pytest.mark.parametrize("command", ["status", "report"])
def test_status_and_report_take_the_same_targets(command, damaged, tmp_path):
    path, _ = damaged
    said = {"status": f"dmg: 5 runs: 1 completed, 4 damaged ({path})", "report": f"wrote {path / 'report'}"}
    # A name is looked up under --results; a folder is taken as given, wherever --results points.
    for target, results in (("dmg", tmp_path), (path, tmp_path / "elsewhere"), (tmp_path, tmp_path / "elsewhere")):
        out = cli(command, target, "--results", results)
        assert out.exit_code == 0 and out.output.strip().endswith(said[command]), (target, out.output)
    assert one_line_error(cli(command, "dgm", "--results", tmp_path)) == (
        f"Error: {tmp_path}: no experiment 'dgm'; found: dmg; did you mean 'dmg'?")
