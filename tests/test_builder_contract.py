"""The builder contract, checked at `plan` and again in `run` before anything trains: norm(x)'s output is on the
path to the output, the arms differ only by the normalisation, the output is one softmax over the classes, the
files a sweep was planned with are the files it trains, and a builder's own layer classes resume or restart."""

import json
from pathlib import Path

import pytest

from bnexp.sweep import load_runs

ARMS = {"none": {"model.norm.kind": "none"}, "batch": {"model.norm.kind": "batch"}}

NETWORKS = '''
import keras
from keras import layers


def build(input_shape, num_classes, norm, width=4):
    x = inputs = keras.Input(input_shape)
    x = layers.Dense(width, use_bias=norm.use_bias)(layers.Flatten()(x))
    x = layers.ReLU()(norm(x))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))


def keeps_x(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    x = layers.Dense(4)(layers.Flatten()(x))
    norm(x)
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(layers.ReLU()(x)))


def one_of_two_unused(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    x = norm(layers.Dense(4)(layers.Flatten()(x)))
    norm(layers.Dense(4)(x))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))


def activation_by_kind(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    x = layers.Dense(4, activation="relu" if norm.kind == "none" else "gelu")(layers.Flatten()(x))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(norm(x)))


def dropout_by_kind(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    x = layers.Dropout(0.5 if norm.kind == "none" else 0.2)(norm(layers.Dense(4)(layers.Flatten()(x))))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))


def extra_layer_in_one_arm(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    x = norm(layers.Dense(4)(layers.Flatten()(x)))
    if norm.kind == "none":
        x = layers.ReLU()(x)
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))


def logits(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    return keras.Model(inputs, layers.Dense(num_classes)(norm(layers.Dense(4)(layers.Flatten()(x)))))


def sigmoid(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    x = norm(layers.Dense(4)(layers.Flatten()(x)))
    return keras.Model(inputs, layers.Dense(num_classes, activation="sigmoid")(x))


def two_classes(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    return keras.Model(inputs, layers.Dense(2, activation="softmax")(norm(layers.Dense(4)(layers.Flatten()(x)))))


def spatial_map(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    x = norm(layers.Conv2D(4, 3, padding="same")(x))
    return keras.Model(inputs, layers.Conv2D(num_classes, 1, activation="softmax")(x))


def softmax_over_one(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    x = layers.Dense(num_classes)(norm(layers.Dense(4)(layers.Flatten()(x))))
    x = layers.Softmax(axis=-1)(layers.Reshape((num_classes, 1))(x))  # a softmax over a size-1 axis: all ones
    return keras.Model(inputs, layers.Reshape((num_classes,))(x))


def exits(input_shape, num_classes, norm):
    raise SystemExit(0)


def wrong_input(input_shape, num_classes, norm):
    x = inputs = keras.Input((5,))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(norm(layers.Dense(4)(x))))


def two_outputs(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    out = layers.Dense(num_classes, activation="softmax")(norm(layers.Dense(4)(layers.Flatten()(x))))
    return keras.Model(inputs, [out, out])


def softmax_layer_in_a_nested_model(input_shape, num_classes, norm):
    inner = keras.Input((4,))
    block = keras.Model(inner, layers.ReLU()(norm(layers.Dense(4)(inner))))
    x = inputs = keras.Input(input_shape)
    x = block(layers.Dense(4)(layers.Flatten()(x)))
    return keras.Model(inputs, layers.Softmax()(layers.Dense(num_classes)(layers.Dropout(0.1)(x))))


class Scale(layers.Layer):
    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor


class Apply(layers.Layer):
    """A layer Keras cannot save: its argument is a function, and it has no get_config."""

    def __init__(self, function, **kwargs):
        super().__init__(**kwargs)
        self.function = function

    def call(self, x):
        return self.function(x)


def custom(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    x = layers.ReLU()(norm(layers.Dense(4)(Scale(0.5)(layers.Flatten()(x)))))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))


def unsaveable(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    x = layers.ReLU()(norm(layers.Dense(4)(Apply(lambda t: t * 0.5)(layers.Flatten()(x)))))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))
'''

END = 'end the network with layers.Dense(3, activation="softmax") (or layers.Softmax() after a last layer of 3 units)'
DIFFER = ("the arms differ in more than the normalisation: {}; build the same layers with the same settings in every "
          "arm and let norm(x) make the only difference")


@pytest.fixture
def nets(write_config, tmp_path):
    """A config whose network is `function` of nets.py, next to the config."""
    (tmp_path / "nets.py").write_text(NETWORKS)

    def write(function="build", arms=None, **changes):
        model = {"builder": f"nets.py:{function}", **changes.pop("model", {})}
        return write_config({"model": model, "arms": arms or ARMS, **changes})

    return write


@pytest.mark.parametrize("function, message", [
    ("keeps_x", "calls norm(x) 1 time(s) but 1 of the 1 normalisation layers it made for arm batch are not on the "
                "path from the input to the output: the network keeps using x; write x = norm(x) and use what norm "
                "returns"),
    ("one_of_two_unused", "calls norm(x) 2 time(s) but 1 of the 2 normalisation layers it made for arm batch are not "
                          "on the path from the input to the output"),
    # (the fixture writes the arms in sorted order: batch is the reference)
    ("activation_by_kind", DIFFER.format("layer 3 of 4 besides normalisation (Dense) has activation gelu in arm "
                                         "batch but relu in arm none")),
    ("dropout_by_kind", DIFFER.format("layer 4 of 5 besides normalisation (Dropout) has rate 0.2 in arm batch but "
                                      "0.5 in arm none")),
    # an extra layer in an arm that is not the reference is found too
    ("extra_layer_in_one_arm", DIFFER.format("layer 4 of 4 besides normalisation is a Dense in arm batch but a ReLU "
                                             "in arm none")),
    ("logits", "returned a model whose output comes from Dense with activation linear, not a softmax: bnexp trains "
               "with sparse categorical cross-entropy on class probabilities, and logits would be read as "
               f"probabilities; {END}"),
    ("sigmoid", "returned a model whose output comes from Dense with activation sigmoid, not a softmax"),
    ("two_classes", f"returned a model whose output has shape (2,), not (3,), one probability per class of the "
                    f"data's 3: {END}"),
    ("spatial_map", "returned a model whose output has shape (8, 8, 3), not (3,), one probability per class"),
    ("two_outputs", f"returned a model with 2 outputs; bnexp trains one, the class probabilities: {END}"),
    ("exits", "raised SystemExit for inputs of shape (8, 8, 1) and 3 classes: 0"),
    ("wrong_input", "returned a model whose input(s) have shape (5,), but the data's samples have shape (8, 8, 1): "
                    "build one keras.Input(input_shape)"),
    ("softmax_over_one", "returned a model whose output does not sum to 1 over the classes (a probe batch gives 3): "
                         f"its softmax is over another axis; {END}"),
])
def test_a_builder_that_breaks_the_contract_stops_plan_and_run_with_one_line(cli, nets, tmp_path, function, message):
    config = nets(function)
    for command in ("plan", "run"):
        result = cli(command, config)
        assert result.exit_code == 2, result.output
        separator = (" " if function in ("keeps_x", "one_of_two_unused") or "returned" in message
                     or message.startswith("raised") else ": ")
        assert result.output.startswith(f"Error: {config}: model.builder: nets.py:{function}{separator}{message}"), \
            result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "results" / "tiny").exists()


def test_a_nested_model_and_a_softmax_layer_after_dropout_keep_the_contract(cli, nets):
    result = cli("plan", nets("softmax_layer_in_a_nested_model"))
    assert result.exit_code == 0, result.output
    assert "normalisation layers per arm: batch 1, none 0" in result.output


def test_the_weight_audit_builds_one_arm_at_a_time(nets, monkeypatch):
    """A builder's weights in plan: never two arms' models alive at once (a large network must fit once)."""
    import gc
    import weakref

    import keras

    from bnexp.checks import audit_builders, check_runs

    _, runs = load_runs(nets(arms={**ARMS, "group": {"model.norm.kind": "group"}}, model={"norm": {"groups": 2}}))
    checked = check_runs(runs, None, strict=False)
    alive, most = [], []
    original = keras.Model.__init__

    def counting(self, *args, **kwargs):
        original(self, *args, **kwargs)
        gc.collect()
        alive[:] = [ref for ref in alive if ref() is not None]
        alive.append(weakref.ref(self))
        most.append(len(alive))

    monkeypatch.setattr(keras.Model, "__init__", counting)
    assert audit_builders(runs, checked) == ["builder nets.py:build: 2 layers start with identical weights in arms "
                                             "batch, group, none (seed 0); normalisation layers per arm: batch 1, "
                                             "group 1, none 0"]
    assert len(most) == 3 and max(most) == 1


def test_list_valued_args_and_image_sizes_sweep_with_a_builder(cli, nets, tmp_path):
    (tmp_path / "nets.py").write_text(NETWORKS + '''

def widths(input_shape, num_classes, norm, widths=(4,)):
    x = inputs = keras.Input(input_shape)
    x = layers.Flatten()(x)
    for width in widths:
        x = layers.ReLU()(norm(layers.Dense(width)(x)))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))
''')
    config = nets("widths", sweep={"model.args.widths": [[4], [4, 8]]})
    result = cli("plan", config)
    assert result.exit_code == 0, result.output
    assert "4 runs = 2 sweep point(s) x 2 arm(s) x 1 seed(s)" in result.output
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for label in ("a", "b", "c"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray((rng.random((10, 10, 3)) * 255).astype("uint8")).save(tmp_path / "images" / label / f"{i}.png")
    config = nets(data={"dataset": "images", "path": str(tmp_path / "images"), "image_size": [8, 8],
                        "validation_split": 0.25}, sweep={"data.image_size": [[8, 8], [6, 6]]})
    result = cli("plan", config)
    assert result.exit_code == 0, result.output
    assert result.output.count("input shape (6, 6, 3)") == 1


def test_a_builder_edited_while_the_sweep_runs_stops_it_and_keeps_what_was_written(cli, nets, tmp_path, monkeypatch):
    import bnexp.train

    config = nets()
    trained = []
    original = bnexp.train.train_run

    def train_then_edit(spec, *args, **kwargs):
        result = original(spec, *args, **kwargs)
        trained.append(spec.run_id)
        (tmp_path / "nets.py").write_text(NETWORKS.replace("width=4", "width=6"))
        return result

    monkeypatch.setattr(bnexp.train, "train_run", train_then_edit)
    result = cli("run", config, "--quiet")
    assert result.exit_code == 2, result.output
    second = [path.name for path in (tmp_path / "results" / "tiny").iterdir() if path.is_dir()]
    assert trained and len(trained) == 1 and trained[0] in second
    planned = json.loads((tmp_path / "results" / "tiny" / trained[0] / "spec.json").read_text())["builder_sha256"]
    assert result.output.startswith(f"Error: {tmp_path / 'nets.py'} (model.builder nets.py:build) changed while the "
                                    f"sweep ran: run none-s0-")
    assert result.output.endswith(f"was planned with sha256 {planned[:12]}, now sha256 "
                                  f"{__import__('hashlib').sha256((tmp_path / 'nets.py').read_bytes()).hexdigest()[:12]}"
                                  "; the sweep stops here (results already written stay); run the same command again "
                                  "to train the new content under new run ids\n")
    result_file = tmp_path / "results" / "tiny" / trained[0] / "result.json"
    assert json.loads(result_file.read_text())["status"] == "completed"


def test_a_data_file_edited_while_the_sweep_runs_stops_it(cli, nets, tmp_path, tiny_npz, monkeypatch):
    import numpy as np

    import bnexp.train

    original = bnexp.train.train_run

    def train_then_edit(spec, *args, **kwargs):
        result = original(spec, *args, **kwargs)
        with np.load(tiny_npz) as data:
            arrays = dict(data)
        arrays["y_train"] = arrays["y_train"][::-1].copy()
        np.savez(tiny_npz, **arrays)
        return result

    monkeypatch.setattr(bnexp.train, "train_run", train_then_edit)
    result = cli("run", nets(), "--quiet")
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {tiny_npz} (data.path) changed while the sweep ran: run none-s0-")
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("function, resumed, warning", [
    ("custom", 1, None),  # its classes come from the builder's module: Keras rebuilds it
    ("unsaveable", None, "cannot checkpoint this network (NotImplementedError: Object Apply was created by passing "
                         "non-serializable argument values in `__init__()`,"),
])
def test_a_builder_with_its_own_layer_classes_resumes_or_restarts_with_one_warning(
        cli, nets, tmp_path, monkeypatch, caplog, function, resumed, warning):
    from bnexp import callbacks

    config = nets(function, arms={"batch": ARMS["batch"]}, train={"epochs": 2, "batch_size": 8, "log_every_steps": 2,
                                                                   "steps_per_execution": 1})
    original = callbacks.Checkpoint.on_epoch_end

    def interrupt(self, epoch, logs=None):  # Ctrl-C right after epoch 1's checkpoint (if any) is on disk
        original(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.Checkpoint, "on_epoch_end", interrupt)
    first = cli("run", config, "--quiet")
    assert "interrupted" in first.output, first.output
    monkeypatch.setattr(callbacks.Checkpoint, "on_epoch_end", original)
    caplog.clear()
    second = cli("run", config, "--quiet")
    assert second.exit_code == 0, second.output
    assert "1 runs: 1 completed" in second.output
    (run,) = [path for path in (tmp_path / "results" / "tiny").iterdir() if path.is_dir()]
    record = json.loads((run / "result.json").read_text())
    assert record["status"] == "completed" and record["resumed_from_epoch"] == resumed and record["epochs_run"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "checkpoint" in r.getMessage()]
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warning in warnings[0]
        assert warnings[0].endswith("; if the run is interrupted it trains again from its start")
        assert "\n" not in warnings[0]


def test_keras_ops_a_sequential_block_and_a_softmax_activation_keep_the_contract(cli, nets, tmp_path):
    (tmp_path / "nets.py").write_text(NETWORKS + '''

def mixed(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    x = layers.Flatten()(x)
    block = keras.Sequential([keras.Input((x.shape[-1],)), layers.Dense(4), layers.ReLU()])
    x = keras.ops.relu(norm(layers.Dense(4)(block(x))))
    return keras.Model(inputs, layers.Activation("softmax")(layers.Dense(num_classes)(x)))
''')
    result = cli("plan", nets("mixed"))
    assert result.exit_code == 0, result.output
    assert "builder nets.py:mixed: 3 layers start with identical weights in arms batch, none" in result.output


def test_a_normalisation_the_builder_makes_itself_is_said_for_the_arm_without_one(cli, nets, tmp_path):
    (tmp_path / "nets.py").write_text(NETWORKS + '''

def own_bn(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    x = layers.BatchNormalization()(layers.Dense(4)(layers.Flatten()(x)))
    x = norm(layers.Dense(4)(x))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))
''')
    config = nets("own_bn")
    result = cli("plan", config)
    assert result.exit_code == 0, result.output
    assert (f"\nwarning: {config}: model.builder: nets.py:own_bn: arm none (model.norm.kind none) still has 1 normalisation "
            "layer(s) of the builder's own (BatchNormalization), in every arm: the pairs compare norm(x)'s "
            "normalisation, not a network with and without one\n") in result.output


def test_arms_that_set_other_model_args_themselves_may_build_other_layers(cli, nets):
    arms = {"none": {"model.norm.kind": "none", "model.args.width": 4},
            "batch": {"model.norm.kind": "batch", "model.args.width": 8}}
    result = cli("plan", nets(arms=arms))
    assert result.exit_code == 0, result.output

    assert "start with identical weights" not in result.output  # nothing to audit: the config asks for others


def test_a_module_that_makes_layers_when_imported_gives_the_same_weights_in_plan_and_run(cli, nets, tmp_path):
    """An unused module-level layer (an augmentation block, say) draws from the seed when the module is
    imported: bnexp imports it before seeding, so every arm starts alike (the attack on issue 16)."""
    (tmp_path / "modlayer.py").write_text(NETWORKS.split("def build(")[0] + """
AUGMENT = layers.Dense(4)  # made on import, never used


def ok(input_shape, num_classes, norm):
    x = inputs = keras.Input(input_shape)
    x = layers.ReLU()(norm(layers.Dense(4)(layers.Flatten()(x))))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))
""")
    config = nets("build", model={"builder": "modlayer.py:ok"})
    plan = cli("plan", config)
    assert plan.exit_code == 0 and "start with identical weights" in plan.output, plan.output
    run = cli("run", config, "--quiet")
    assert run.exit_code == 0, run.output
