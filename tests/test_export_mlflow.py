"""`bnexp export mlflow`: finished runs reach a real MLflow store, read back with MLflow's own client."""

import json
import math
import socket
import sys

import pytest

from bnexp import store
from bnexp.export import export_mlflow, flatten

mlflow = pytest.importorskip("mlflow", reason="bnexp[mlflow] is not installed (pip install 'bnexp[mlflow]')")
from mlflow import MlflowClient  # noqa: E402

LR = "train.learning_rate"
CONFIG = {"seed": 0, "data": {"dataset": "mnist", "train_subset": 100},
          "model": {"conv": [{"filters": 4, "kernel_size": 3}], "dense": [8], "batch_norm": {"enabled": True}},
          "train": {"learning_rate": 0.01, "epochs": 2, "early_stopping": None}}


def write_run(folder, run_id, arm, seed, lr, status="completed", history=True):
    run_dir = folder / run_id
    store.write_spec(run_dir, {"experiment": folder.name, "run_id": run_id, "arm": arm, "reference_arm": "no_bn",
                               "arms": ["no_bn", "bn"], "seed": seed, "point": {LR: lr},
                               "config": {**CONFIG, "seed": seed, "train": {**CONFIG["train"], "learning_rate": lr}}})
    if history:
        store.write_history(run_dir / store.HISTORY, [
            {"epoch": 1, "step": 10, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4,
             "learning_rate": lr, "epoch_seconds": 2.0, "step_losses": [[5, 1.5], [10, 1.0]]},
            {"epoch": 2, "step": 20, "loss": 0.5 if status == "completed" else None, "accuracy": 0.75,
             "val_loss": 0.6, "val_accuracy": 0.7, "learning_rate": lr, "epoch_seconds": 2.0,
             "step_losses": [[15, 0.7], [20, 0.5]], "step_evals": [[15, 0.65, 0.6]]},
        ])
    if status is None:
        return
    store.write_result(run_dir, {
        "status": status, "epochs_run": 2, "diverged_epoch": 2 if status == "diverged" else None,
        "error": None, "test_loss": 0.25 if status == "completed" else None,
        "test_accuracy": 0.875 if status == "completed" else None,
        "test_error": 0.125 if status == "completed" else None, "trainable_params": 1234,
        "non_trainable_params": 16, "wall_seconds": 4.5,
        "started_at": "2026-01-02T03:04:05+00:00", "finished_at": f"2026-01-02T03:04:{10 + seed:02d}+00:00"})


@pytest.fixture
def results(tmp_path):
    """lr_sweep: 2 learning rates x 2 arms x 2 seeds, all completed but one diverged."""
    folder = tmp_path / "results" / "lr_sweep"
    run_ids = []
    for lr in (0.01, 0.1):
        for seed in (0, 1):
            for arm in ("no_bn", "bn"):
                run_id = f"{arm}-s{seed}-{int(lr * 100):03d}"
                write_run(folder, run_id, arm, seed, lr,
                          "diverged" if (arm, seed, lr) == ("no_bn", 1, 0.1) else "completed")
                run_ids.append(run_id)
    store.write_experiment(folder, {"experiment": "lr_sweep", "sweep_keys": [LR], "arms": ["no_bn", "bn"],
                                    "reference_arm": "no_bn", "seeds": [0, 1], "run_ids": run_ids})
    return tmp_path / "results"


def children(client, name):
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    return ([r for r in runs if "bnexp.run_id" in r.data.tags],
            [r for r in runs if "bnexp.parent" in r.data.tags])


def history(client, run, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def test_every_run_is_logged_with_params_tags_histories_and_status(results, tmp_path):
    uri = str(tmp_path / "mlruns")
    [summary] = export_mlflow(results, "lr_sweep", uri)

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    runs, [parent] = children(client, "lr_sweep")
    assert summary.lines() == [f"lr_sweep: 8 runs exported, 0 updated, 0 unchanged, to MLflow experiment 'lr_sweep' "
                               f"at {(tmp_path / 'mlruns').as_uri()} (parent run {parent.info.run_id})"]
    assert len(runs) == 8
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    by_id = {r.data.tags["bnexp.run_id"]: r for r in runs}

    run = by_id["bn-s1-010"]
    assert run.data.params == flatten({**CONFIG, "seed": 1, "train": {**CONFIG["train"], "learning_rate": 0.1}})
    assert run.data.params["train.learning_rate"] == "0.1"
    assert run.data.params["model.conv"] == json.dumps([{"filters": 4, "kernel_size": 3}])
    assert run.data.params["model.batch_norm.enabled"] == "true"
    tags = run.data.tags
    assert (tags["bnexp.arm"], tags["bnexp.seed"], tags[f"bnexp.point.{LR}"], tags["bnexp.status"],
            tags["bnexp.experiment"], tags["mlflow.runName"]) == ("bn", "1", "0.1", "completed", "lr_sweep", "bn-s1-010")
    assert run.info.status == "FINISHED"
    assert history(client, run, "val_accuracy") == [(10, 0.4), (20, 0.7)]
    assert history(client, run, "loss") == [(10, 1.0), (20, 0.5)]
    assert history(client, run, "epoch") == [(10, 1.0), (20, 2.0)]
    assert history(client, run, "step_loss") == [(5, 1.5), (10, 1.0), (15, 0.7), (20, 0.5)]
    assert history(client, run, "step_val_accuracy") == [(15, 0.6)]
    assert history(client, run, "test_error") == [(20, 0.125)]
    assert run.data.metrics["trainable_params"] == 1234
    assert run.info.start_time == 1767323045000 and run.info.end_time == 1767323051000

    diverged = by_id["no_bn-s1-010"]
    assert diverged.data.tags["bnexp.status"] == "diverged" and diverged.info.status == "FINISHED"
    assert math.isnan(history(client, diverged, "loss")[1][1])
    assert "test_error" not in diverged.data.metrics

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "tables")}
    assert "tables/paired_difference.csv" in artifacts
    local = client.download_artifacts(parent.info.run_id, "tables/paired_difference.csv", str(tmp_path))
    assert "diff_mean" in open(local).readline()


def test_exporting_twice_doubles_nothing_and_replaces_a_run_trained_again(results, tmp_path):
    uri = str(tmp_path / "mlruns")
    export_mlflow(results, None, uri)
    write_run(results / "lr_sweep", "bn-s1-010", "bn", 5, 0.1)  # trained again: another finish time
    [summary] = export_mlflow(results, None, uri)

    assert summary.counts == {"unchanged": 7, "updated": 1}
    runs, parents = children(MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri()), "lr_sweep")
    assert len(runs) == 8 and len(parents) == 1
    assert sorted(r.data.tags["bnexp.run_id"] for r in runs) == sorted({r.data.tags["bnexp.run_id"] for r in runs})


def test_unfinished_runs_are_left_out_with_one_line(results, tmp_path):
    write_run(results / "lr_sweep", "bn-s2-010", "bn", 2, 0.1, status=None)  # started, interrupted
    experiment = store.read_experiment(results / "lr_sweep")
    store.write_experiment(results / "lr_sweep", {**experiment, "run_ids": [*experiment["run_ids"], "bn-s2-010",
                                                                           "no_bn-s2-010"]})
    [summary] = export_mlflow(results, "lr_sweep", str(tmp_path / "mlruns"), experiment_name="bn study")

    assert summary.lines()[1] == ("lr_sweep: 2 runs not exported, not finished (1 incomplete, 1 pending); "
                                  "export again when they end")
    runs, _ = children(MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri()), "bn study")
    assert len(runs) == 8


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_one_line(results, cli):
    port = free_port()
    out = cli("export", "mlflow", "lr_sweep", "--tracking-uri", f"http://127.0.0.1:{port}")
    assert out.exit_code == 2
    assert out.output == (f"Error: --tracking-uri http://127.0.0.1:{port}: no MLflow tracking server answers at "
                          f"127.0.0.1:{port} (Connection refused); start one with `mlflow server`, or give a folder "
                          "to log to (--tracking-uri mlruns)\n")


def test_missing_mlflow_is_one_line_on_how_to_install_it(results, cli, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    out = cli("export", "mlflow", "lr_sweep", "--tracking-uri", tmp_path / "mlruns")
    assert (out.exit_code, out.output) == (2, "Error: bnexp export mlflow needs MLflow: pip install 'bnexp[mlflow]'\n")


def test_the_cli_exports_a_trained_sweep(tmp_path, write_config, cli):
    assert cli("run", write_config({"sweep": {LR: [0.01, 0.1]}}), "-q").exit_code == 0
    out = cli("export", "mlflow", "tiny", "--tracking-uri", tmp_path / "mlruns")
    assert out.exit_code == 0, out.output
    assert out.output.startswith("tiny: 4 runs exported, 0 updated, 0 unchanged, to MLflow experiment 'tiny'")

    runs, _ = children(MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri()), "tiny")
    for run in runs:
        run_dir = tmp_path / "results" / "tiny" / run.data.tags["bnexp.run_id"]
        result = json.loads((run_dir / "result.json").read_text())
        epochs = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
        assert run.data.metrics["test_error"] == pytest.approx(result["test_error"])
        assert history(MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri()), run, "loss") == \
            [(e["step"], pytest.approx(e["loss"])) for e in epochs]


@pytest.mark.parametrize("uri, env, message", [
    ("{tmp}/afile", None, "--tracking-uri {tmp}/afile: a file, not a folder; give a folder for MLflow's folder store, "
                          "or a tracking server (http://HOST:PORT)"),
    ("foo://bar", None, "--tracking-uri foo://bar: unknown scheme 'foo'; allowed: a folder (or file:), "
                        "http(s)://HOST:PORT, or a database (mssql, mysql, postgresql, sqlite)"),
    ("/proc/mlruns", None, "--tracking-uri /proc/mlruns: cannot use it as a folder store (No such file or directory); "
                           "give a folder bnexp can write, or a tracking server (http://HOST:PORT)"),
    ("", None, "--tracking-uri: empty; give a folder (e.g. mlruns) or a tracking server (http://HOST:PORT)"),
    ("http://", None, "--tracking-uri http://: no host; give http(s)://HOST:PORT"),
    ("{tmp}/m", "maybe", "MLFLOW_ALLOW_FILE_STORE=maybe: MLflow accepts true, false, 1 or 0; unset it to let bnexp "
                         "opt into the folder store"),
    ("{tmp}/m", "false", "--tracking-uri {tmp}/m: MLFLOW_ALLOW_FILE_STORE=false forbids MLflow's folder store; unset "
                         "it or set it to true, or give a tracking server (http://HOST:PORT)"),
])
def test_a_tracking_uri_bnexp_cannot_log_to_is_one_line(results, cli, monkeypatch, tmp_path, uri, env, message):
    (tmp_path / "afile").write_text("not a folder")
    if env is None:
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", env)
    out = cli("export", "mlflow", "lr_sweep", "--tracking-uri", uri.format(tmp=tmp_path))
    assert (out.exit_code, out.output) == (2, f"Error: {message.format(tmp=tmp_path)}\n")


def test_an_empty_allow_file_store_variable_counts_as_unset(results, cli, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    out = cli("export", "mlflow", "lr_sweep", "--tracking-uri", tmp_path / "mlruns")
    assert out.exit_code == 0 and "8 runs exported" in out.output, out.output
