"""Edges a user meets around the results (issue 16, parts 4 and 5): a narrower re-run keeps the runs
it did not ask for, and status, the notebook loader and --address give one line, never a traceback."""

import json

import pytest

import bnexp
from bnexp import report, store
from bnexp.errors import ResultsError
from bnexp.runner import write_experiment
from bnexp.sweep import load_runs
from test_report import ExperimentWriter, completed, epochs
from test_runner import cli, one_line_error


def record(experiment, runs, results):
    """Plan the runs as `bnexp run` does, and write each a completed result without training."""
    write_experiment(experiment, runs, results, "unused.yaml")
    for spec in runs:
        folder = results / experiment.name / spec.run_id
        store.write_spec(folder, spec.record())
        store.write_history(folder / "history.jsonl", [{"epoch": 1, "step": 6, "loss": 0.5, "accuracy": 0.9}])
        store.write_json(folder / "result.json", completed(0.1, epochs_run=1))


def planned_ids(results, name="tiny"):
    return json.loads((results / name / "experiment.json").read_text())["run_ids"]


@pytest.fixture
def swept(write_config, tmp_path):
    """A 2 learning rates x 2 seeds x 2 arms experiment, every run completed."""
    config = write_config({"seeds": [0, 1], "sweep": {"train.learning_rate": [0.01, 0.1]}})
    results = tmp_path / "results"
    experiment, runs = load_runs(config)
    record(experiment, runs, results)
    return config, results, {spec.run_id for spec in runs}


def test_a_narrower_sweep_or_seed_list_keeps_the_runs_it_did_not_ask_for(swept):
    config, results, first = swept
    for narrower in ({"sweeps": ["train.learning_rate=[0.1]"]}, {"overrides": ["seeds=[1]"]}):
        experiment, runs = load_runs(config, **narrower)
        assert len(runs) == 4
        write_experiment(experiment, runs, results, config)
        assert set(planned_ids(results)) == first
    assert json.loads((results / "tiny" / "experiment.json").read_text())["seeds"] == [0, 1]
    status = cli("status", "tiny", "--results", results)
    assert status.exit_code == 0 and status.output.splitlines()[-1].startswith("tiny: 8 runs: 8 completed")
    exp = report.load_experiment(results / "tiny")
    assert len(exp.runs) == 8 and exp.warnings == []


def test_a_changed_setting_still_replaces_the_runs_of_the_earlier_plan(swept):
    config, results, first = swept
    experiment, runs = load_runs(config, ["train.epochs=2"], ["train.learning_rate=[0.1]"])
    write_experiment(experiment, runs, results, config)
    assert set(planned_ids(results)) == {spec.run_id for spec in runs} and not first & set(planned_ids(results))
    assert report.load_experiment(results / "tiny").warnings == [
        "8 run folder(s) not in the current plan (experiment.json) were left out"]


def test_a_run_of_the_earlier_plan_that_never_started_is_not_kept(write_config, tmp_path):
    config = write_config({"sweep": {"train.learning_rate": [0.01, 0.1]}})
    results = tmp_path / "results"
    experiment, runs = load_runs(config)
    write_experiment(experiment, runs, results, config)  # planned, nothing trained (interrupted at once)
    experiment, narrower = load_runs(config, sweeps=["train.learning_rate=[0.1]"])
    write_experiment(experiment, narrower, results, config)
    assert planned_ids(results) == [spec.run_id for spec in narrower]


def results_with_bad_numbers(tmp_path):
    writer = ExperimentWriter(tmp_path / "results", "bad")
    writer.run("no_bn", 0, history=epochs([0.9]), result={**completed(0.1), "test_error": "0.1", "test_accuracy": "x"})
    writer.run("bn", 0, history=epochs([0.9]), result={**completed(0.1), "test_error": None, "test_accuracy": None})
    writer.run("no_bn", 1, history=epochs([0.9, None]),
               result={"status": "diverged", "diverged_epoch": "two", "diverged_steps": 7, "epochs_run": None})
    writer.run("bn", 1, history=epochs([0.9]), result=completed(0.05))
    return writer.plan()


def test_status_shows_a_result_whose_numbers_are_text_or_null_as_damaged(tmp_path):
    results_with_bad_numbers(tmp_path)
    out = cli("status", "bad", "--results", tmp_path / "results")
    assert out.exit_code == 0 and "Traceback" not in out.output, out.output
    lines = out.output.splitlines()
    assert lines[1].split() == ["no_bn-s0", "damaged", *"result.json: test_error: expected a fraction in [0, 1], "
                                "got '0.1'".split()]
    assert lines[2].split()[-1] == "None" and lines[2].split()[1] == "damaged"
    # a diverged run whose numbers are text is damaged too: bnexp cannot say when it diverged
    assert lines[3].split()[:2] == ["no_bn-s1", "damaged"]
    assert lines[3].endswith("result.json: diverged_epoch: expected a whole number >= 0, got 'two'")
    assert lines[-1].startswith("bad: 4 runs: 1 completed, 3 damaged")


def test_the_report_of_such_results_is_written_without_a_traceback(tmp_path):
    path = results_with_bad_numbers(tmp_path)
    out = cli("report", str(path))
    assert out.exit_code == 0, out.output
    paired = report.load_experiment(path).tables["paired_difference"]
    assert paired.pairs.tolist() == [0] and paired.note.tolist() == [
        "2 seed(s) without two finished runs"]


def test_load_experiment_on_a_results_run_or_report_folder_says_which_folder_to_pass(tmp_path):
    path = results_with_bad_numbers(tmp_path)
    (path / "report").mkdir()
    run = path / "bn-s1"
    cases = {
        tmp_path / "results": f"{tmp_path / 'results'}: a results folder holding experiment(s) bad; pass one of them: "
                              f"bnexp.load_experiment('{path}')",
        run: f"{run}: a run folder of experiment 'bad'; pass the experiment folder: bnexp.load_experiment('{path}')",
        path / "report": f"{path / 'report'}: the report folder of experiment 'bad'; pass the experiment folder: "
                         f"bnexp.load_experiment('{path}')",
        tmp_path / "nowhere": f"{tmp_path / 'nowhere'}: cannot list the experiment folder (No such file or directory)",
        tmp_path / "results" / "bad" / "report" / ".." / "..": None,  # the results folder again, spelled otherwise
    }
    for given, message in cases.items():
        with pytest.raises(ResultsError) as caught:
            bnexp.load_experiment(given)
        if message is not None:
            assert str(caught.value) == message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match=r"empty: not an experiment folder \(experiment.json, or run folders"):
        bnexp.load_experiment(tmp_path / "empty")
    assert set(bnexp.load_experiment(path).tables) >= {"test_error", "paired_difference"}


def test_an_experiment_with_no_run_started_still_has_its_tables(tmp_path):
    path = ExperimentWriter(tmp_path, "planned").plan(extra_run_ids=["a", "b"])
    tables = bnexp.load_experiment(path).tables
    assert tables["parameters"].empty and tables["missing"].run_id.tolist() == ["a", "b"]


@pytest.mark.parametrize("address", ["localhost", "http://head:6379", "head:port", "head:0", "head:70000",
                                     "ray://head", ":6379", ""])
def test_a_malformed_ray_address_is_one_line(write_config, tmp_path, address):
    out = cli("run", write_config(), "--address", address, "--results", tmp_path / "results")
    assert one_line_error(out) == (f"Error: --address {address!r}: expected a Ray cluster's HOST:PORT (head:6379), "
                                   "ray://HOST:PORT (ray://head:10001) or auto (the cluster this machine joined)")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("address", ["auto", "head:6379", "ray://head:10001", "10.0.0.2:6379", "[::1]:6379"])
def test_well_formed_ray_addresses_pass_the_check(address):
    from bnexp.executors import check_executor_options
    assert check_executor_options(None, None, address, None, None) == "ray"
