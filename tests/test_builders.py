"""model.builder: a user's own Keras network, with the arm's normalisation wherever it calls norm(x)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import bnexp
from bnexp import report
from bnexp.report import sections
from bnexp.config.load import load_config
from bnexp.sweep import load_runs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "resnet.py"
KIND_ARMS = {"none": {"model.norm.kind": "none"}, "batch": {"model.norm.kind": "batch"},
             "group": {"model.norm.kind": "group"}}

NETWORKS = '''
import keras
from keras import layers


def build(input_shape, num_classes, norm, width=4):
    x = inputs = keras.Input(input_shape)
    x = layers.Flatten()(x)
    x = layers.Dense(width, use_bias=norm.use_bias)(x)
    x = layers.ReLU()(norm(x))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))


def arm_dependent(input_shape, num_classes, norm):
    if norm.kind != "none":
        layers.Dense(3)  # made but unused: it draws an initializer seed in the normalised arms only
    return build(input_shape, num_classes, norm)


def no_norm(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(layers.Flatten()(x)))


def too_few(input_shape, num_classes):
    pass


def crashes(input_shape, num_classes, norm):
    raise RuntimeError("no GPU\\nhere")


def not_a_model(input_shape, num_classes, norm):
    return norm
'''


@pytest.fixture
def builder_config(write_config, tmp_path):
    """A config whose network is `function` of nets.py (next to the config), or `builder` as given."""
    (tmp_path / "nets.py").write_text(NETWORKS)

    def write(function="build", arms=None, **model):
        model = {"builder": f"nets.py:{function}", **model}
        return write_config({"model": model, "arms": arms or {"none": KIND_ARMS["none"], "batch": KIND_ARMS["batch"]}})

    return write


@pytest.mark.slow  # the shipped example network, trained
def test_the_example_resnet_plans_with_its_audit_and_trains_one_epoch(cli, write_config, tmp_path):
    config = write_config({"model": {"builder": f"{EXAMPLE}:build", "args": {"width": 4, "stages": 2},
                                     "norm": {"groups": 2}, "batch_norm": {"precise_stats": 2}}, "arms": KIND_ARMS})
    plan = cli("plan", config)
    assert plan.exit_code == 0, plan.output
    # (the fixture writes the arms in sorted order)
    assert (f"builder {EXAMPLE}:build: 7 layers start with identical weights in arms batch, group, none (seed 0); "
            "normalisation layers per arm: batch 6, group 6, none 0") in plan.output
    run = cli("run", config, "--quiet")
    assert run.exit_code == 0, run.output
    assert "3 runs: 3 completed" in run.output
    experiment = bnexp.load_experiment(tmp_path / "results" / "tiny")
    facts = dict(sections.header_facts(experiment))
    assert facts["normalisation"] == "batch: batch; group: group (2 groups); none: none"
    assert facts["network"] == f"model.builder {EXAMPLE}:build"
    # precise_stats is set for every arm, but only the BN arm has statistics to recompute
    assert facts["precise BN statistics"].startswith("batch: 1 of 1 runs, from 2 training batches (")
    runs = experiment.runs.set_index("arm")
    assert runs.status.to_dict() == {"batch": "completed", "group": "completed", "none": "completed"}
    assert runs.epochs_run.tolist() == [1, 1, 1]
    # Shared: the convolutions and the output layer; BN adds a scale and shift (trainable) and two moving
    # statistics per channel, GroupNorm a scale and shift only. The normalised arms' convolutions keep
    # their biases (model.batch_norm.use_bias is true), so both add the same trainable parameters.
    assert runs.trainable_params["batch"] == runs.trainable_params["group"] > runs.trainable_params["none"]
    assert runs.non_trainable_params.to_dict() == {"batch": runs.trainable_params["batch"]
                                                   - runs.trainable_params["none"], "group": 0, "none": 0}
    sha256 = hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
    specs = (tmp_path / "results" / "tiny").glob("*/spec.json")
    assert {json.loads(spec.read_text())["builder_sha256"] for spec in specs} == {sha256}


def test_arms_share_the_initial_weights_of_every_layer_of_the_builder(builder_config):
    from bnexp.builders import shared_weights
    from bnexp.models import build_model

    experiment, runs = load_runs(builder_config(arms=KIND_ARMS, norm={"groups": 2}))
    models = {spec.arm: build_model(spec.config.model, (8, 8), 3, spec.seed, spec.builder) for spec in runs}
    weights = {arm: shared_weights(model) for arm, model in models.items()}
    kernels = {arm: [w[0] for w in layers.values()] for arm, layers in weights.items()}
    assert [k.shape for k in kernels["none"]] == [(64, 4), (4, 3)]
    for arm in ("batch", "group"):
        for mine, reference in zip(kernels[arm], kernels["none"], strict=True):
            np.testing.assert_array_equal(mine, reference)
    assert len(models["batch"].bnexp_norm_layers) == 1 and not models["none"].bnexp_norm_layers


def test_norm_tells_the_layer_before_it_whether_to_keep_its_bias(builder_config):
    from bnexp.models import model_size

    _, runs = load_runs(builder_config(batch_norm={"use_bias": False}))
    sizes = {spec.arm: model_size(spec.config.model, (8, 8), 3, spec.builder) for spec in runs}
    # Dense(4) on 64 inputs + Dense(3): 260 + 15 weights; the BN arm drops the first bias (4) and adds a
    # scale and shift (8) and two moving statistics (8).
    assert sizes == {"none": (275, 0), "batch": (279, 8)}


def test_model_args_reach_the_builder_and_count_in_the_run_id(builder_config):
    from bnexp.models import model_size

    sizes, ids = {}, {}
    for width in (4, 6):
        _, runs = load_runs(builder_config(args={"width": width}))
        none = next(spec for spec in runs if spec.arm == "none")
        sizes[width] = model_size(none.config.model, (8, 8), 3, none.builder)
        ids[width] = {spec.run_id for spec in runs}
    assert sizes == {4: (64 * 4 + 4 + 4 * 3 + 3, 0), 6: (64 * 6 + 6 + 6 * 3 + 3, 0)}
    assert ids[4].isdisjoint(ids[6])


def test_editing_the_builder_file_changes_the_run_ids_and_keeping_it_keeps_them(builder_config, tmp_path):
    config = builder_config()
    before = [s.run_id for s in load_runs(config)[1]]
    assert [s.run_id for s in load_runs(config)[1]] == before
    nets = tmp_path / "nets.py"
    nets.write_text(nets.read_text() + "\n# a comment is an edit too\n")
    after = [s.run_id for s in load_runs(config)[1]]
    assert not set(before) & set(after)


def test_a_module_on_the_python_path_is_a_builder(write_config, tmp_path, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(NETWORKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    _, runs = load_runs(write_config({"model": {"builder": "mypkg.nets:build"}}))
    assert runs[0].builder.module == "mypkg.nets" and runs[0].builder.file == str((package / "nets.py").resolve())


def test_a_file_is_found_from_the_working_directory_after_the_config_folder(write_config, tmp_path, monkeypatch):
    elsewhere = tmp_path / "models"
    elsewhere.mkdir()
    (elsewhere / "net.py").write_text(NETWORKS)
    monkeypatch.chdir(tmp_path)
    config = write_config({"model": {"builder": "models/net.py:build"}})
    (tmp_path / "configs").mkdir()
    moved = config.rename(tmp_path / "configs" / config.name)
    assert load_runs(moved)[1][0].builder.file == str((elsewhere / "net.py").resolve())


@pytest.mark.parametrize("model, message", [
    ({"builder": "nets.py:buidl"},
     "model.builder: nets.py:buidl: {nets} defines no 'buidl'; functions there: arm_dependent, build, crashes, "
     "no_norm, not_a_model, too_few"),
    ({"builder": "broken.py:build"},
     "model.builder: broken.py:build: importing {broken} raised ModuleNotFoundError: No module named 'nosuchpackage'"),
    ({"builder": "nets.py:too_few"},
     "model.builder: nets.py:too_few: too_few(input_shape, num_classes) cannot be called as too_few(input_shape, "
     "num_classes, norm) (got an unexpected keyword argument 'norm'); it must take input_shape, num_classes and "
     "norm, and a keyword for each model.args key"),
    ({"builder": "nets.py:build", "args": {"depth": 3}},
     "model.builder: nets.py:build: build(input_shape, num_classes, norm, width=4) cannot be called as "
     "build(input_shape, num_classes, norm, depth=...) (got an unexpected keyword argument 'depth')"),
    ({"builder": "missing.py:build"},
     "model.builder: missing.py:build: no file missing.py in {folder} (the config file's folder) or in"),
    ({"builder": "no_such_package.nets:build"},
     "model.builder: no_such_package.nets:build: cannot import no_such_package.nets: No module named "
     "'no_such_package'"),
])
def test_a_broken_builder_is_one_line_at_plan_time(cli, write_config, tmp_path, model, message):
    (tmp_path / "nets.py").write_text(NETWORKS)
    (tmp_path / "broken.py").write_text("import nosuchpackage\n")
    config = write_config({"model": model})
    result = cli("plan", config)
    assert result.exit_code == 2
    expected = message.format(nets=tmp_path / "nets.py", broken=tmp_path / "broken.py", folder=tmp_path)
    assert result.output.startswith(f"Error: {config}: {expected}")
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("function, message", [
    ("no_norm", "Error: {config}: model.builder: nets.py:no_norm never calls norm(x), so every arm would train "
                "the same network; call norm(x) where the normalisation goes"),
    ("arm_dependent", "Error: {config}: model.builder: nets.py:arm_dependent: 2 of the 2 layers of arm batch start "
                      "with other weights in arm none (seed 0; first: dense"),
    ("crashes", "Error: {config}: model.builder: nets.py:crashes raised RuntimeError for inputs of shape (8, 8, 1) "
                "and 3 classes: no GPU here"),
    ("not_a_model", "Error: {config}: model.builder: nets.py:not_a_model returned Norm, not a keras.Model"),
])
def test_a_builder_that_would_break_the_pairs_stops_before_training(cli, builder_config, tmp_path, function, message):
    config = builder_config(function)
    for command in ("plan", "run"):  # run audits the weights too, in a child process, before any run trains
        result = cli(command, config)
        assert result.exit_code == 2, result.output
        assert result.output.startswith(message.format(config=config)), result.output
    assert not list((tmp_path / "results").glob("**/spec.json"))


@pytest.mark.parametrize("model, message", [
    ({"builder": "nets.py:build", "conv": [{"filters": 4}]},
     "model.conv: the builder nets.py:build makes the network, so model.conv would be ignored; remove it"),
    ({"builder": "nets.py:build", "batch_norm": {"after_pooling": True}},
     "model.batch_norm.after_pooling: the builder nets.py:build makes the network, so "
     "model.batch_norm.after_pooling would be ignored"),
    ({"args": {"width": 3}}, "model.args: keyword arguments for model.builder, which is not set"),
    ({"builder": "nets.py:build", "args": {"norm": 1}},
     "model.args.norm: not a keyword argument bnexp can pass to nets.py:build; allowed: Python identifiers other "
     "than input_shape, num_classes, norm"),
    ({"builder": "nets.py"},
     "model.builder: expected 'package.module:function' or 'path/to/file.py:function', got 'nets.py'"),
])
def test_builder_keys_that_would_be_ignored_or_misread_are_refused(tmp_path, model, message):
    config = {"name": "b", "data": {"dataset": "mnist"}, "model": model}
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(config))
    from bnexp.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        load_runs(path) if "args" not in model or "builder" in model else load_config(path)
    assert message in str(error.value)


def test_builder_fields_at_their_defaults_keep_earlier_run_ids():
    from bnexp.config.schema import RunConfig
    from bnexp.sweep import run_id

    def identity(model):  # the config and id of test_norms' test of the ids given before model.norm existed
        return run_id("bn", RunConfig.model_validate({"data": {"dataset": "mnist"}, "model": {
            "conv": [{"filters": 4, "pool": 2}], "dense": [8], **model}}))

    assert identity({}) == identity({"builder": None, "args": {}}) == "bn-s0-0f98b76847"


def test_the_example_config_finds_its_builder_next_to_it():
    runs = load_runs(EXAMPLE.with_suffix(".yaml"))[1]
    assert {spec.builder.file for spec in runs} == {str(EXAMPLE)}
    assert {spec.config.model.norm_kind for spec in runs} == {"none", "batch", "group"}


def test_a_group_count_that_does_not_fit_the_tensor_norm_got_is_one_line(cli, write_config):
    config = write_config({"model": {"builder": f"{EXAMPLE}:build", "args": {"width": 4}, "norm": {"groups": 3}},
                           "arms": KIND_ARMS})
    result = cli("plan", config)
    assert result.exit_code == 2
    assert result.output == (f"Error: {config.parent / 'tiny.npz'}: model.norm.groups: 3 does not divide the 4 channels "
                             "of the tensor norm(x) got (norm_1); allowed: a divisor of every normalised layer's "
                             "channels (of these 4: 1, 2, 4)\n")


def test_a_package_that_fails_on_import_is_one_line(cli, write_config, tmp_path, monkeypatch):
    package = tmp_path / "badpkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('broken package')\n")
    (package / "nets.py").write_text(NETWORKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = write_config({"model": {"builder": "badpkg.nets:build"}})
    result = cli("plan", config)
    assert result.exit_code == 2
    assert result.output == f"Error: {config}: model.builder: badpkg.nets:build: cannot import badpkg.nets: broken package\n"


def test_precise_statistics_reach_the_bn_layers_of_a_nested_model():
    import keras

    from bnexp.callbacks import recompute_bn_statistics

    inner_in = keras.Input((4,))
    block = keras.Model(inner_in, keras.layers.BatchNormalization()(keras.layers.Dense(3)(inner_in)))
    outer_in = keras.Input((4,))
    model = keras.Model(outer_in, keras.layers.Dense(2)(block(outer_in)))
    bn = block.layers[-1]
    x = np.random.default_rng(0).normal(5.0, 1.0, (16, 4)).astype("float32")
    recompute_bn_statistics(model, [(x, None)])
    expected = keras.ops.convert_to_numpy(block.layers[1](x)).mean(axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), expected, rtol=1e-5, atol=1e-5)


def test_a_builder_that_changes_the_working_folder_cannot_move_the_results(write_config, tmp_path, monkeypatch):
    """--results is made absolute before user code runs (the attack on issue 16: os.chdir in a builder)."""
    from click.testing import CliRunner

    from bnexp.cli import main

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "wander.py").write_text(NETWORKS.replace(
        "def build(input_shape, num_classes, norm, width=4):\n",
        f"def build(input_shape, num_classes, norm, width=4):\n    import os; os.chdir({str(tmp_path / 'elsewhere')!r})\n"))
    config = write_config({"model": {"builder": "wander.py:build"},
                           "arms": {"none": KIND_ARMS["none"], "batch": KIND_ARMS["batch"]}})
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["run", str(config), "--results", "results", "--workers", "1", "--quiet"])
    assert out.exit_code == 0, out.output
    assert len(list((tmp_path / "results" / "tiny").glob("*/result.json"))) == 2
    assert not (tmp_path / "elsewhere" / "results").exists()
