"""The typed run (store.open_run): one status and one damage per run folder, the facts a run records
for the report when it starts, and the report's boundary (it imports no config, data or backend)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bnexp import report, store
from bnexp.cli import main
from bnexp.config.load import load_config
from bnexp.runner import write_experiment
from bnexp.store import open_run, run_lock, write_history, write_json, write_spec
from bnexp.sweep import expand_runs


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def planned_runs(write_config, results: Path, changes: dict | None = None, name: str = "tiny") -> list:
    """Plan the config's runs into `results` (experiment.json) without writing any run folder."""
    config = write_config({"seeds": [0, 1], **(changes or {})}, name=name)
    experiment = load_config(config)
    runs = expand_runs(experiment, str(config))
    write_experiment(experiment, runs, results, str(config))
    return runs


def started(results: Path, spec, result: dict | None = None, epochs: int = 1) -> Path:
    """Write what `bnexp run` leaves for `spec`: spec.json, `epochs` epochs of history, and `result`."""
    run_dir = store.run_dir(results, spec.experiment, spec.run_id)
    write_spec(run_dir, spec.record())
    write_history(run_dir / store.HISTORY, [{"epoch": e, "loss": 0.5} for e in range(1, epochs + 1)])
    if result is not None:
        write_json(run_dir / store.RESULT, result)
    return run_dir


def test_open_run_reads_the_files_once_into_one_status(write_config, tmp_path):
    results = tmp_path / "results"
    spec = planned_runs(write_config, results)[0]
    run_dir = store.run_dir(results, spec.experiment, spec.run_id)

    pending = open_run(run_dir)
    assert (pending.status, pending.damage, pending.spec, pending.history, pending.result) == (
        "pending", None, None, (), None)
    assert pending.facts is None and not pending.is_complete

    started(results, spec, epochs=2)
    interrupted = open_run(run_dir)
    assert (interrupted.status, interrupted.damage, len(interrupted.history)) == ("incomplete", None, 2)
    assert interrupted.detail == "interrupted; restarts from epoch 1" and interrupted.epochs_planned == 1
    with run_lock(run_dir):
        assert open_run(run_dir).status == "running"

    write_json(run_dir / store.RESULT, {"status": "failed", "error": "RuntimeError: boom"})
    assert open_run(run_dir).status == "failed" and not open_run(run_dir).is_complete
    with run_lock(run_dir):  # a failed run being retried
        assert open_run(run_dir).status == "running"

    write_json(run_dir / store.RESULT, {"status": "completed", "test_error": 0.25})
    done = open_run(run_dir)
    assert (done.status, done.is_complete, done.detail, done.id) == ("completed", True, "test error 0.2500", spec.run_id)
    with run_lock(run_dir):  # a final result is final, whoever holds the lock
        assert open_run(run_dir).status == "completed"


@pytest.mark.parametrize("file, text, damage", [
    ("spec.json", '{"format": 1, "arm": "bn"', "spec.json: Expecting ',' delimiter"),
    ("spec.json", '{"format": 1, "arm": "bn"}', "spec.json: no 'seed'"),
    ("result.json", '{"status": "weird"}', "result.json: unknown status 'weird'"),
    ("result.json", "[1, 2]", "result.json: not a JSON object"),
    ("history.jsonl", '{"epoch": 1}\n{"epo', "history.jsonl: line 2: Unterminated string"),
    # Values of the wrong kind are damage too, not some other number (the attack on issue 16).
    ("result.json", '{"status": "completed", "test_error": "0.05", "test_accuracy": 0.95}',
     "result.json: test_error: expected a fraction in [0, 1], got '0.05'"),
    ("result.json", '{"status": "completed", "test_error": 5.0}', "result.json: test_error: expected a fraction"),
    ("result.json", '{"status": "completed", "test_error": 0.1, "test_accuracy": "high"}',
     "result.json: test_accuracy: expected a fraction"),
    ("result.json", '{"status": "completed", "test_error": 0.1, "epochs_run": "2"}',
     "result.json: epochs_run: expected a whole number >= 0, got '2'"),
    ("result.json", '{"status": "completed", "test_error": 0.1, "eval_statistics": "fine"}',
     "result.json: eval_statistics: expected a mapping"),
    ("result.json", '{"status": "completed", "test_error": 0.1, "eval_statistics": {"moving": {"test_error": 0.1}, '
                    '"precise": {"test_error": "0.1"}, "batch": {"test_error": 0.1}}}',
     "result.json: eval_statistics.precise.test_error: expected a fraction"),
    ("result.json", '{"status": "completed", "test_error": 0.1, "test_accuracy": 0.45}',
     "result.json: test_error 0.1 and test_accuracy 0.45 contradict each other"),
    ("result.json", '{"status": "diverged", "test_error": 0.1}', "result.json: test_error: a diverged run has no test"),
    ("history.jsonl", '{"epoch": 1, "val_accuracy": "0.9"}', "history.jsonl: line 1: val_accuracy: expected a fraction"),
    ("history.jsonl", '{"epoch": 1, "step_losses": [[10, "x"]]}', "history.jsonl: line 1: step_losses: expected a number"),
])
def test_a_file_that_cannot_be_read_makes_the_run_damaged_naming_it(write_config, tmp_path, file, text, damage):
    results = tmp_path / "results"
    spec = planned_runs(write_config, results)[0]
    run_dir = started(results, spec, {"status": "completed", "test_error": 0.25})
    (run_dir / file).write_text(text)
    run = open_run(run_dir)
    assert run.status == "damaged" and run.damage.startswith(damage) and run.detail == run.damage
    # Only a damaged history leaves the records the report can still table.
    assert run.recorded_status == ("completed" if file == "history.jsonl" else "damaged")


def test_a_result_with_an_unknown_status_is_damaged_in_status_and_report_alike(write_config, tmp_path):
    results = tmp_path / "results"
    runs = planned_runs(write_config, results)
    started(results, runs[0], {"status": "completed", "test_error": 0.25})
    weird = started(results, runs[1], {"status": "weird", "test_error": 0.25})

    status = cli("status", "tiny", "--results", results)
    assert status.exit_code == 0, status.output
    row = next(line for line in status.output.splitlines() if line.startswith(weird.name))
    assert row.split(None, 2)[1:] == ["damaged", "result.json: unknown status 'weird'"]
    assert "tiny: 4 runs: 1 completed, 2 pending, 1 damaged" in status.output

    exp = report.load_experiment(results / "tiny")
    missing = exp.missing.set_index("run_id")
    assert missing.loc[weird.name, ["status", "detail"]].tolist() == ["damaged", "result.json: unknown status 'weird'"]
    assert weird.name not in set(exp.runs.run_id)


def test_status_plan_and_report_use_one_word_for_a_run_not_started(write_config, tmp_path):
    results = tmp_path / "results"
    runs = planned_runs(write_config, results)
    started(results, runs[0], {"status": "completed", "test_error": 0.25})
    not_started = runs[-1].run_id
    status = cli("status", "tiny", "--results", results).output
    assert next(line for line in status.splitlines() if line.startswith(not_started)).split() == [not_started, "pending"]
    missing = report.load_experiment(results / "tiny").missing.set_index("run_id")
    assert missing.loc[not_started, ["status", "detail"]].tolist() == ["pending", store.STATUS_TEXTS["pending"]]


GROUP_ARMS = {"arms": {"none": {"model.norm.kind": "none"},
                       "group": {"model.norm.kind": "group", "model.norm.groups": 2}}}
NO_FACTS = {"norm_groups": None, "precise_stats": 0, "builder": None, "num_classes": None, "virtual_batch_size": None}


@pytest.mark.parametrize("arm, changes, facts", [
    ("bn", {}, {**NO_FACTS, "norm": "batch"}),
    ("no_bn", {"model.batch_norm": {"precise_stats": 3}}, {**NO_FACTS, "norm": "none"}),
    ("bn", {"model.batch_norm": {"precise_stats": 3}}, {**NO_FACTS, "norm": "batch", "precise_stats": 3}),
    ("bn", {"model.batch_norm": {"renorm": True}}, {**NO_FACTS, "norm": "batch_renorm"}),
    ("bn", {"model.batch_norm": {"virtual_batch_size": 2}}, {**NO_FACTS, "norm": "batch", "virtual_batch_size": 2}),
    ("no_bn", {"model.batch_norm": {"virtual_batch_size": 2}}, {**NO_FACTS, "norm": "none"}),
    ("group", {**GROUP_ARMS, "model.batch_norm": {"precise_stats": 3}},
     {**NO_FACTS, "norm": "group", "norm_groups": 2}),
])
def test_a_run_records_the_facts_the_report_needs_and_older_specs_derive_the_same(write_config, tmp_path,
                                                                                   arm, changes, facts):
    results = tmp_path / "results"
    spec = next(spec for spec in planned_runs(write_config, results, changes) if spec.arm == arm)
    run_dir = started(results, spec)
    on_disk = json.loads((run_dir / store.SPEC).read_text())
    assert on_disk["facts"] == facts and open_run(run_dir).facts == facts
    # A spec.json from a bnexp that did not record facts: derived from its config, to the same values.
    write_json(run_dir / store.SPEC, {k: v for k, v in on_disk.items() if k != "facts"})
    assert open_run(run_dir).facts == facts


def test_facts_of_an_older_spec_name_a_built_in_dataset_s_classes(tmp_path):
    run_dir = tmp_path / "old-run"
    write_json(run_dir / store.SPEC, {"format": store.RESULTS_FORMAT, "arm": "bn", "seed": 0,
                                      "config": {"data": {"dataset": "cifar10"}, "model": {"builder": "m.py:f"}}})
    assert open_run(run_dir).facts == {"norm": "batch", "norm_groups": None, "precise_stats": 0,
                                       "builder": "m.py:f", "num_classes": 10, "virtual_batch_size": None}


def test_the_report_reads_runs_without_config_data_or_a_backend(write_config, tmp_path):
    results = tmp_path / "results"
    group = next(spec for spec in planned_runs(write_config, results, GROUP_ARMS) if spec.arm == "group")
    started(results, group, {"status": "completed", "test_error": 0.25, "num_classes": 3})
    code = ("import sys, bnexp.report\n"
            f"exp = bnexp.report.load_experiment({str(results / 'tiny')!r})\n"
            "print(exp.runs.norm.iloc[0], exp.tables['runs'].shape[0])\n"
            "heavy = ('pydantic', 'PIL', 'keras', 'tensorflow', 'jax', 'torch', 'bnexp.config.schema', 'bnexp.data')\n"
            "print(sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + '.' for h in heavy))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent)
    assert out.stdout.splitlines() == ["group (2 groups) 1", "[]"], out.stderr


@pytest.mark.parametrize("edit, damage", [
    (lambda spec, first: {**spec, "arm": first["arm"], "seed": first["seed"], "point": first.get("point")},
     "spec.json: the same arm, seed and sweep point as run "),
    (lambda spec, first: {**spec, "arm": "zzz"}, "spec.json: arm 'zzz' is not one of the experiment's arms ("),
])
def test_a_spec_that_contradicts_the_plan_is_damaged_in_the_report_not_tabled(write_config, tmp_path, edit, damage):
    """An edited or copied spec.json that repeats another run's arm, seed and point, or names an arm the
    experiment has not, would be paired or shown as a new arm: the report lists it as damaged instead."""
    results = tmp_path / "results"
    runs = planned_runs(write_config, results)
    dirs = [started(results, spec, {"status": "completed", "test_error": 0.25}) for spec in runs]
    first = json.loads((dirs[0] / store.SPEC).read_text())
    edited = json.loads((dirs[1] / store.SPEC).read_text())
    (dirs[1] / store.SPEC).write_text(json.dumps(edit(edited, first)))

    exp = report.load_experiment(results / "tiny")
    details = dict(zip(exp.missing.run_id, exp.missing.detail))
    assert details[dirs[1].name].startswith(damage)
    if "same arm" in damage:  # neither copy is trusted
        assert details[dirs[0].name] == f"spec.json: the same arm, seed and sweep point as run {dirs[1].name}"
    assert dirs[1].name not in set(exp.runs.run_id) and set(exp.runs.arm) <= set(exp.arms) - {"zzz"}
    out = cli("report", "tiny", "--results", results)
    assert out.exit_code == 0, out.output
    status = cli("status", "tiny", "--results", results)  # status says the same
    row = next(line for line in status.output.splitlines() if line.startswith(dirs[1].name))
    assert row.split(None, 2)[1:] == ["damaged", details[dirs[1].name]]
