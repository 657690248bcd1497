"""`bnexp status`: every state of a sweep's runs, damaged files, the targets and the results format it
shares with `bnexp report`, and one-line errors for what it cannot find."""

import json

import pytest

import bnexp.store
from bnexp import report, store
from bnexp.errors import ResultsError
from bnexp.status import experiments_status
from bnexp.store import RESULTS_FORMAT, run_lock
from test_report import ExperimentWriter, completed, epochs
from test_runner import cli, one_line_error, record_runs


def test_status_lists_every_state_of_a_sweep(write_config, tmp_path):
    config = write_config({"seeds": [0, 1, 2]})
    results = tmp_path / "results"
    dirs = record_runs(config, results, [{"status": "completed", "test_error": 0.125},
                                         {"status": "diverged", "diverged_epoch": 3, "diverged_steps": [410, 420]},
                                         {"status": "failed", "error": "MemoryError: out of memory"}, {}, {}])
    (dirs[4] / "checkpoint.keras").write_bytes(b"")
    with run_lock(dirs[3]):
        out = cli("status", "tiny", "--results", results)
    assert out.exit_code == 0, out.output
    rows = {line.split()[0]: line.split(None, 3)[1:] for line in out.output.splitlines()[1:7]}
    assert rows[dirs[0].name] == ["completed", "1/1", "test error 0.1250"]
    assert rows[dirs[1].name] == ["diverged", "1/1", "loss NaN or infinite in epoch 3 (steps 410-420)"]
    assert rows[dirs[2].name] == ["failed", "1/1", "MemoryError: out of memory (retried by the next bnexp run)"]
    assert rows[dirs[3].name] == ["running", "1/1", "another bnexp process holds its lock"]
    assert rows[dirs[4].name] == ["incomplete", "1/1", "interrupted; resumes from its last checkpoint"]
    assert rows[dirs[5].name] == ["pending"]
    assert out.output.strip().endswith(
        f"tiny: 6 runs: 1 completed, 1 diverged, 1 failed, 1 running, 1 incomplete, 1 pending ({results / 'tiny'})")


def test_status_names_what_it_cannot_find(tmp_path):
    assert "no experiments here yet" in one_line_error(cli("status", "--results", tmp_path))
    (tmp_path / "lr_sweep").mkdir()
    bnexp.store.write_json(tmp_path / "lr_sweep" / "experiment.json", {"format": 1, "run_ids": []})
    error = one_line_error(cli("status", "lr_swep", "--results", tmp_path))
    assert error.endswith("no experiment 'lr_swep'; found: lr_sweep; did you mean 'lr_sweep'?")


def test_status_help_ends_with_an_example():
    out = cli("status", "-h")
    assert out.exit_code == 0 and "Example:" in out.output and "bnexp status" in out.output


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


@pytest.mark.parametrize("found", [0, RESULTS_FORMAT + 1])
def test_report_and_status_refuse_an_experiment_in_another_format_alike(tmp_path, found):
    writer = ExperimentWriter(tmp_path, "old")
    writer.run("no_bn", 0, history=epochs([0.9]), result=completed(0.1))
    path = writer.plan()
    store.write_json(path / "experiment.json", {"format": found, "bnexp_version": "0.0.1", "run_ids": []})
    expected = (f"{path / 'experiment.json'}: written in results format {found} (bnexp 0.0.1); this bnexp 0.1.0 "
                f"reads format {RESULTS_FORMAT}; use another --results folder or that bnexp version "
                "(nothing was changed)")
    for command in (lambda: report.write_reports(tmp_path, "old"), lambda: experiments_status(tmp_path, "old")):
        with pytest.raises(ResultsError) as error:
            command()
        assert str(error.value) == expected
    assert not (path / "report").exists()


def test_a_run_in_another_format_stops_the_report_as_it_stops_status(tmp_path):
    writer = ExperimentWriter(tmp_path, "mixed")
    writer.run("no_bn", 0, history=epochs([0.9]), result=completed(0.1))
    newer = writer.run("bn", 0, history=epochs([0.9]), result=completed(0.1))
    path = writer.plan()
    spec = store.read_object(path / newer / "spec.json")
    store.write_json(path / newer / "spec.json", {**spec, "format": RESULTS_FORMAT + 1})
    for command in (lambda: report.write_reports(tmp_path, "mixed"), lambda: experiments_status(tmp_path, "mixed")):
        with pytest.raises(ResultsError, match=f"^{path / newer / 'spec.json'}: written in results format "
                                               f"{RESULTS_FORMAT + 1} "):
            command()


@pytest.mark.parametrize("edit", [{"run_ids": [1, 2]}, {"reference_arm": "ghost"}, {"arms": "no_bn"}])
def test_an_experiment_json_whose_plan_is_not_names_is_damaged_in_status_and_report(damaged, tmp_path, edit):
    """run_ids that are not names, or a reference arm the plan lacks (the attack on issue 16): both commands
    fall back to the run folders and say experiment.json is damaged."""
    path, _ = damaged
    plan = json.loads((path / "experiment.json").read_text())
    (path / "experiment.json").write_text(json.dumps({**plan, **edit}))
    out = cli("status", str(path))
    assert out.output.strip().endswith("experiment.json is damaged, so only the run folders are listed"), out.output
    exp = report.load_experiment(path)
    assert exp.warnings[0].startswith("experiment.json damaged (") and len(exp.runs) + len(exp.missing) == 5
    assert exp.reference_arm != "ghost"
