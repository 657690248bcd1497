"""A loaded experiment is read-only all the way down, and each of its runs is validated once."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from bnexp.config import schema
from bnexp.config.load import load_config
from bnexp.sweep import expand_runs

CONFIG = """\
data: {dataset: mnist, train_subset: 64}
model: {dense: [8, 4]}
train: {epochs: 1}
seeds: [0, 1]
sweep: {train.learning_rate: [0.01, 0.1, 1.0]}
"""


@pytest.fixture
def experiment(tmp_path):
    path = tmp_path / "frozen.yaml"
    path.write_text(CONFIG)
    return load_config(path, ["train.batch_size=16"])


@pytest.mark.parametrize("mutate", [
    lambda e: e.data.__setitem__("dataset", "cifar10"),
    lambda e: e.model.__setitem__("dense", [64]),
    lambda e: e.model["dense"].append(64),
    lambda e: e.train.__setitem__("epochs", 5),
    lambda e: e.seeds.append(3),
    lambda e: e.arms.__setitem__("gn", {"model.norm.kind": "group"}),
    lambda e: e.arms["bn"].__setitem__("model.batch_norm.momentum", 0.9),
    lambda e: e.sweep.__setitem__("train.batch_size", [8]),
    lambda e: e.sweep["train.learning_rate"].append(3.0),
    lambda e: e.overrides.__setitem__("train.epochs", (2, "--set train.epochs=2")),
], ids=["data", "model", "model list", "train", "seeds", "arms", "arm", "sweep", "sweep values", "overrides"])
def test_a_loaded_config_cannot_be_changed(experiment, mutate):
    with pytest.raises((TypeError, AttributeError)):
        mutate(experiment)


@pytest.mark.parametrize("field", ["data", "model", "train", "seeds", "arms", "sweep", "overrides"])
def test_a_loaded_configs_sections_cannot_be_replaced(experiment, field):
    with pytest.raises((ValidationError, AttributeError)):
        setattr(experiment, field, {})


def test_the_sections_read_as_what_the_file_says(experiment):
    assert experiment.data == {"dataset": "mnist", "train_subset": 64}
    assert experiment.model == {"dense": (8, 4)}
    assert experiment.seeds == (0, 1)
    assert experiment.sweep == {"train.learning_rate": (0.01, 0.1, 1.0)}
    assert experiment.overrides == {"train.batch_size": (16, "--set train.batch_size=16")}


def test_a_sweep_point_holds_the_values_as_written(tmp_path):
    path = tmp_path / "lists.yaml"
    path.write_text(CONFIG.replace("train.learning_rate: [0.01, 0.1, 1.0]", "model.dense: [[8], [16, 4]]"))
    runs = expand_runs(load_config(path), str(path))
    assert [spec.point for spec in runs[::4]] == [{"model.dense": [8]}, {"model.dense": [16, 4]}]
    assert [spec.config.model.dense for spec in runs[::4]] == [(8,), (16, 4)]


def test_deterministic_is_an_option_not_a_set_string(experiment, tmp_path):
    path = tmp_path / "frozen.yaml"
    experiment = load_config(path, deterministic=True)
    assert experiment.overrides == {"train.deterministic": (True, "--deterministic")}
    assert all(spec.config.train.deterministic for spec in expand_runs(experiment, str(path)))


def test_each_run_is_validated_once(experiment, tmp_path, monkeypatch):
    """The 12 runs (3 sweep points x 2 arms x 2 seeds) and the file as written: 13 RunConfigs, none twice."""
    path = tmp_path / "frozen.yaml"
    validated = []
    original = schema.validate
    monkeypatch.setattr(schema, "validate", lambda cls, *a, **k: validated.append(cls) or original(cls, *a, **k))
    runs = expand_runs(load_config(path), str(path))
    assert len(runs) == 12
    assert validated.count(schema.RunConfig) == 13


def test_expanding_reuses_the_runs_load_config_validated(tmp_path, monkeypatch):
    path = Path(__file__).parent.parent / "configs" / "lr_sweep.yaml"
    experiment = load_config(path)
    validated = []
    original = schema.validate
    monkeypatch.setattr(schema, "validate", lambda cls, *a, **k: validated.append(cls) or original(cls, *a, **k))
    assert len(expand_runs(experiment, str(path))) == 36 and validated == []


def test_a_loaded_config_copies_pickles_and_serialises_as_written(experiment):
    import copy
    import pickle

    for copied in (copy.deepcopy(experiment), pickle.loads(pickle.dumps(experiment))):
        assert copied == experiment and copied.overrides == experiment.overrides
        with pytest.raises(TypeError):
            copied.data["dataset"] = "cifar10"
    dumped = experiment.model_dump(mode="json")
    assert (dumped["seeds"], dumped["model"], dumped["sweep"]) == (
        [0, 1], {"dense": [8, 4]}, {"train.learning_rate": [0.01, 0.1, 1.0]})
