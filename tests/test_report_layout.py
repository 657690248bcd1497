"""The results layout's one owner (bnexp.store) as the report reads it: running and interrupted
runs apart, damaged run files described, the report folder written in one piece."""

import pathlib
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner

from bnexp import report, store
from bnexp.cli import main
from bnexp.store import RESULTS_FORMAT
from bnexp.errors import ResultsError
from bnexp.metrics import EPOCH_METRICS
from test_report import ExperimentWriter, completed, epochs


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def test_the_report_shows_a_running_run_apart_from_an_interrupted_one(tmp_path):
    writer = ExperimentWriter(tmp_path, "live")
    writer.run("no_bn", 0, history=epochs([0.9]), result=completed(0.1))
    writer.run("bn", 0, history=epochs([0.9]), result=completed(0.08))
    running = writer.run("no_bn", 1, history=epochs([0.5]))
    interrupted = writer.run("bn", 1, history=epochs([0.5]))
    path = writer.plan()
    with store.run_lock(path / running):  # a second FileLock on the same file conflicts, as another process's would
        (out,) = report.write_reports(tmp_path, "live")
    missing = pd.read_csv(out / "tables" / "missing.csv")
    assert missing[["run_id", "status", "detail"]].values.tolist() == [
        [running, "running", "another bnexp process holds its lock: still training"],
        [interrupted, "incomplete", "spec.json but no result.json: interrupted; the next `bnexp run` resumes it"]]
    assert "2 of 4 finished (2 completed, 1 running, 1 incomplete)" in (out / "report.md").read_text()
    # The test-error table counts every run without a result yet as incomplete, as before.
    assert pd.read_csv(out / "tables" / "test_error.csv").incomplete.tolist() == [1, 1]


def test_the_lock_gone_the_same_run_reads_as_interrupted(tmp_path):
    writer = ExperimentWriter(tmp_path, "live")
    run_id = writer.run("no_bn", 0, history=epochs([0.5]))
    path = writer.plan()
    with store.run_lock(path / run_id):
        assert report.load_experiment(path).runs.status.tolist() == ["running"]
    assert report.load_experiment(path).runs.status.tolist() == ["incomplete"]


def test_a_new_report_replaces_the_old_one_whole_and_a_failed_write_keeps_it(tmp_path, monkeypatch):
    writer = ExperimentWriter(tmp_path, "exp")
    writer.run("no_bn", 0, history=epochs([0.9]), result=completed(0.1))
    writer.run("bn", 0, history=epochs([0.9]), result=completed(0.08))
    path = writer.plan()
    (out,) = report.write_reports(tmp_path, "exp")
    (out / "stale.txt").write_text("from an older report")
    (out,) = report.write_reports(tmp_path, "exp")
    assert not (out / "stale.txt").exists() and (out / "tables" / "runs.csv").is_file()
    page = (out / "index.html").read_bytes()

    def full_disk(f, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_write_synced", full_disk)
    with pytest.raises(ResultsError, match=f"^{out}: cannot write \\(No space left on device\\); "
                                           "the previous version is kept$"):
        report.write_reports(tmp_path, "exp")
    assert (out / "index.html").read_bytes() == page
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith(("no_bn", "bn"))) == [
        "experiment.json", "report"]  # no staging folder left behind


def test_store_readers_name_what_is_wrong(tmp_path):
    run_dir = store.run_dir(tmp_path, "exp", "bn-s0-abc")
    assert run_dir == tmp_path / "exp" / "bn-s0-abc"
    assert store.read_result(run_dir) is None and store.read_experiment(tmp_path / "exp") is None
    store.write_json(run_dir / "result.json", {"status": "finished"})
    with pytest.raises(ValueError, match="^unknown status 'finished'$"):
        store.read_result(run_dir)
    store.write_json(run_dir / "spec.json", {"format": RESULTS_FORMAT, "arm": "bn", "seed": True})
    with pytest.raises(ValueError, match="^seed: expected an integer, got True$"):
        store.read_spec(run_dir)
    store.write_json(run_dir / "spec.json", [1, 2])
    with pytest.raises(ValueError, match="^not a JSON object$"):
        store.read_spec(run_dir)


def test_importing_bnexp_leaves_the_store_unloaded():
    code = "import sys, bnexp; print('bnexp.store' in sys.modules, hasattr(bnexp, 'RESULTS_FORMAT'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]  # the format is store's alone


def test_a_report_that_cannot_be_renamed_into_place_puts_the_previous_one_back(tmp_path, monkeypatch):
    writer = ExperimentWriter(tmp_path, "exp")
    writer.run("no_bn", 0, history=epochs([0.9]), result=completed(0.1))
    path = writer.plan()
    (out,) = report.write_reports(tmp_path, "exp")
    page = (out / "index.html").read_bytes()
    rename = pathlib.Path.rename

    def staging_refused(self, target):
        if self.name.startswith(".report-") and not self.name.startswith(".report-old-"):
            raise OSError(13, "Permission denied")
        return rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", staging_refused)
    with pytest.raises(ResultsError, match="Permission denied\\); the previous version is kept$"):
        report.write_reports(tmp_path, "exp")
    assert (out / "index.html").read_bytes() == page
    assert not [p.name for p in path.iterdir() if p.name.startswith(".")]


def test_a_history_row_holds_every_epoch_metric():
    assert set(EPOCH_METRICS) <= set(store.HistoryRow.__annotations__)


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
