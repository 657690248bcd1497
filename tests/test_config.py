"""Config loading: exact one-line errors for bad input, overrides, presets, shipped configs."""

from pathlib import Path

import pytest

from bnexp.config.load import load_config
from bnexp.errors import ConfigError
from bnexp.sweep import expand_runs

DATA = "data: {dataset: mnist}\n"
BASE = DATA + "model: {preset: e2_mnist_cnn}\n"


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        (BASE + "train: {epoch: 3}\n", [], "{f}: train.epoch: unknown key; did you mean 'epochs'?"),
        (BASE + "train: {batch_size: -3}\n", [], "{f}: train.batch_size: expected a number > 0, got -3"),
        (BASE + "train: {learning_rate: 0}\n", [], "{f}: train.learning_rate: expected a number > 0, got 0"),
        # no hidden layer: nothing to normalise, so both arms would train one network (the attack on issue 16)
        (DATA + "model: {dense: []}\n", [], "{f}: model.dense: the network has no hidden layer (model.conv and "
         "model.dense are empty), so there is nothing for model.norm.kind batch to normalise and the arm would train "
         "the same network as one without normalisation; add a hidden layer (e.g. model.dense: [64]) or use "
         "model.norm.kind: none"),
        (DATA + "model: {preset: e2_mnist_cnn, batch_norm: {momentum: 1.0}}\n", [],
         "{f}: model.batch_norm.momentum: expected a number < 1, got 1.0"),
        (BASE + "train: {learning_rate: 1.0e+400}\n", [], "{f}: train.learning_rate: expected a finite number, got inf"),
        (BASE + "train: {learning_rate: .nan}\n", [], "{f}: train.learning_rate: expected a finite number, got nan"),
        (BASE + "train: {epochs: many}\n", [], "{f}: train.epochs: expected an integer, got 'many'"),
        (DATA + "model: {dropout: {rate: 1.0}}\n", [], "{f}: model.dropout.rate: expected a number < 1, got 1.0"),
        ("data: {dataset: mnist, validation_split: 0}\n", [],
         "{f}: data.validation_split: expected a number > 0, got 0"),
        ("data: {dataset: imagenet}\n", [],
         "{f}: data.dataset: expected one of mnist, fashion_mnist, cifar10, csv, npz or images, got 'imagenet'"),
        (DATA + "model: {activation: relu6}\n", [],
         "{f}: model.activation: expected one of relu, sigmoid, tanh, elu, selu, gelu, swish, leaky_relu, "
         "softplus or linear, got 'relu6'"),
        (BASE + "train: {optimizer: adamax}\n", [],
         "{f}: train.optimizer: expected one of adam, sgd, rmsprop, adamw, nadam or adagrad, got 'adamax'"),
        ("data: {dataset: mnist}\nmodel: {preset: e2_mnst_cnn}\n", [],
         "{f}: model.preset: unknown preset 'e2_mnst_cnn'; allowed: e1_cifar_cnn, e2_mnist_cnn, e3_cifar_nopool, "
         "e4_mnist_cnn, e5_leaf_mlp; did you mean 'e2_mnist_cnn'?"),
        (BASE + "trian: {}\n", [], "{f}: trian: unknown key; did you mean 'train'?"),
        (BASE + "seeds: [1, 1]\n", [], "{f}: seeds: seeds must be distinct, got [1, 1]"),
        (BASE + "reference: nobn\n", [], "{f}: reference: 'nobn' is not an arm; arms: no_bn, bn"),
        (BASE + "sweep: {train.learning_rate: []}\n", [], "{f}: sweep.train.learning_rate: needs at least one value"),
        ("data: {dataset: csv}\n", [], "{f}: data.path: required when dataset is 'csv'"),
        (DATA + "model: {dense: [8], dropout: {rate: 0.5, placement: after_dense}}\n"
         "arms: {a: {model.dense: [], model.conv: [{filters: 4}]}}\n", [],
         "{f}: model.dropout.placement: 'after_dense' needs at least one dense layer"),
        (BASE + "sweep: {train.learning_rate: [0.1, -1]}\n", [], None),
        (BASE, ["train.epochs=0"], "--set train.epochs=0: train.epochs: expected a number > 0, got 0"),
        (BASE, ["train.epoch=1"], "--set train.epoch=1: train.epoch: unknown key; did you mean 'epochs'?"),
        (BASE, ["train.epochs"], "--set train.epochs: expected KEY=VALUE, e.g. --set train.epochs=1"),
        ("", [], "{f}: the file is empty; expected a mapping with keys data, model, train"),
        ("- a\n- b\n", [], "{f}: expected a mapping at the top level, got list"),
        ("data: {dataset: mnist\n", [], "{f}: invalid YAML at line 2, column 1: expected ',' or '}', but got '<stream end>'"),
    ],
)
def test_bad_config_gives_one_exact_line(tmp_path, text, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        expand_runs(load_config(path, overrides), str(path))
    if message is None:  # a bad sweep value names the sweep point
        message = "{f}: sweep point train.learning_rate=-1: train.learning_rate: expected a number > 0, got -1"
    assert str(caught.value) == message.replace("{f}", str(path))
    assert "\n" not in str(caught.value)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_set_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE)
    config = load_config(path, ["train.epochs=2", "model.dense=[16, 8]", "model.batch_norm.renorm=true", "seeds=[4]"])
    run = config.run_config({}, 4, str(path))
    assert (run.train.epochs, run.model.dense, run.model.batch_norm.renorm, config.seeds) == (2, (16, 8), True, (4,))


def test_preset_keys_merge_under_the_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {dataset: mnist}\nmodel: {preset: e2_mnist_cnn, dense: [32], batch_norm: {momentum: 0.9}}\n")
    model = load_config(path).run_config({}, 0, str(path)).model
    assert [b.filters for b in model.conv] == [32, 64]  # from the preset
    assert model.dense == (32,)  # the config wins
    assert model.batch_norm.after_pooling is True and model.batch_norm.momentum == 0.9  # merged, not replaced


def test_name_defaults_to_the_file_stem(tmp_path):
    path = tmp_path / "my_sweep.yaml"
    path.write_text(BASE)
    assert load_config(path).name == "my_sweep"


CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_expands(path):
    config = load_config(path)
    runs = expand_runs(config, str(path))
    assert len(runs) == len(config.arms) * len(config.seeds) * _grid_size(config.sweep)
    assert len({spec.run_id for spec in runs}) == len(runs)
    assert path.read_text().startswith("#"), "a shipped config starts with a comment saying what it reproduces"


def _grid_size(sweep):
    size = 1
    for values in sweep.values():
        size *= len(values)
    return size


def test_set_can_change_one_value_inside_a_preset_list(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {dataset: fashion_mnist}\nmodel: {preset: e1_cifar_cnn}\n")
    config = load_config(path, ["model.conv.2.pool=7"])
    model = config.run_config({}, 0, str(path)).model
    assert [block.pool for block in model.conv] == [2, 2, 7]
    assert [block.filters for block in model.conv] == [32, 32, 64]


def test_an_arm_may_switch_the_preset(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {dataset: mnist}\nmodel: {preset: e2_mnist_cnn}\n"
                    "seeds: [0]\narms: {e2: {}, e4: {model.preset: e4_mnist_cnn}}\n")
    e2, e4 = expand_runs(load_config(path), str(path))
    assert e2.config.model.dense == (256,) and e4.config.model.dense == (64,)
    assert e4.config.model.batch_norm.use_bias is False
