"""The library behind the commands: one call per command, a frozen typed config carried from the
YAML to the worker, and results written through store's records."""

import json
import pickle
import sys
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from bnexp.config.load import load_config
from bnexp.errors import BnexpError, ConfigError
from bnexp.plan import plan_experiment
from bnexp.runner import run_experiment
from bnexp.store import RESULTS_FORMAT, read_spec, write_spec
from bnexp.sweep import expand_runs, load_runs, run_id


def test_the_config_is_frozen_all_the_way_down(write_config):
    path = write_config()
    experiment = load_config(path, ["train.epochs=2"])
    spec = expand_runs(experiment, str(path))[0]
    with pytest.raises(ValidationError, match="frozen"):
        spec.config.train.epochs = 3
    with pytest.raises(ValidationError, match="frozen"):
        experiment.reference = "bn"
    # Lists are tuples, so no part of a run's config can change in place either.
    assert spec.config.model.dense == (8,) and isinstance(spec.config.model.conv, tuple)
    assert spec.config.train.epochs == 2  # the --set reached the run through validation, not a later change
    assert experiment.reference is None and experiment.reference_arm == "no_bn"


def test_a_run_spec_crosses_a_process_boundary_unchanged(write_config):
    # Worker processes and Ray tasks receive the RunSpec, RunConfig included, by pickle.
    path = write_config()
    spec = expand_runs(load_config(path), str(path))[1]
    copy = pickle.loads(pickle.dumps(spec))
    assert copy == spec and copy.config == spec.config
    assert run_id(copy.arm, copy.config, copy.data_sha256) == spec.run_id


def test_spec_json_is_written_through_the_store_with_the_format_first(write_config, tmp_path):
    path = write_config()
    spec = expand_runs(load_config(path), str(path))[0]
    write_spec(tmp_path / "run", spec.record())
    on_disk = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert list(on_disk)[:2] == ["format", "bnexp_version"] and on_disk["format"] == RESULTS_FORMAT
    assert on_disk["config"] == spec.config.model_dump(mode="json")
    assert read_spec(tmp_path / "run")["run_id"] == spec.run_id


def test_run_experiment_checks_the_options_before_reading_the_config(tmp_path):
    with pytest.raises(ConfigError) as error:
        run_experiment(tmp_path / "missing.yaml", executor="sequential", workers=2, results_dir=tmp_path / "results")
    assert str(error.value) == ("--executor sequential -j 2: sequential trains one run at a time in this process; "
                                "drop -j, or use --executor processes -j 2")
    with pytest.raises(ConfigError, match=r"^--cpus-per-run 0.5: only Ray tasks ask for CPUs and GPUs, not "
                                          r"--executor processes;"):
        run_experiment(tmp_path / "missing.yaml", cpus_per_run=0.5)
    assert not (tmp_path / "results").exists()


def test_a_ray_cluster_without_the_resources_is_refused_before_experiment_json(write_config, tmp_path, monkeypatch):
    cluster = SimpleNamespace(is_initialized=lambda: True,
                              nodes=lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    monkeypatch.setitem(sys.modules, "ray", cluster)
    with pytest.raises(BnexpError, match=r"^--gpus-per-run 1: no node of the Ray cluster offers that"):
        run_experiment(write_config(), executor="ray", gpus_per_run=1, results_dir=tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_plan_experiment_lists_the_runs_run_experiment_would_train(write_config, tmp_path):
    path = write_config()
    table = plan_experiment(path, ["train.epochs=2"], results_dir=tmp_path / "results")
    _, runs = load_runs(path, ["train.epochs=2"])
    assert [line.split()[2] for line in table.splitlines()[1:3]] == [spec.run_id for spec in runs]
    assert "tiny: 2 runs = 1 sweep point(s) x 2 arm(s) x 1 seed(s); 0 complete, 2 to run" in table



def test_a_later_field_at_its_default_is_left_out_of_the_run_id(monkeypatch):
    from bnexp import sweep

    monkeypatch.setitem(sweep.LATER_FIELDS, "model.head", "flatten")
    earlier = {"seed": 0, "model": {"dense": [8]}}
    assert sweep._without_later_defaults({"seed": 0, "model": {"dense": [8], "head": "flatten"}}) == earlier
    assert sweep._without_later_defaults({"seed": 0, "model": {"dense": [8], "head": "gap"}}) != earlier
