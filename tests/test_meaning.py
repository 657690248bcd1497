"""Every value means one thing: a sweep axis that changes nothing in any run is refused before training (it would
train the same networks again and report seed noise as its effect), and a setting that changes nothing is said."""

import pytest

BUILDER = '''
import keras
from keras import layers


def build(input_shape, num_classes, norm, width=4, seed=0, **options):
    x = inputs = keras.Input(input_shape)
    x = layers.ReLU()(norm(layers.Dense(width)(layers.Flatten()(x))))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))
'''
KINDS = {"none": {"model.norm.kind": "none"}, "group": {"model.norm.kind": "group"}}
AGAIN = ("; every value would train the same networks again, and the report would show seed noise as its effect; "
         "remove the axis\n")


@pytest.fixture
def plan(cli, write_config, tmp_path):
    """`bnexp plan` of the tiny config with `changes`; the builder's file is next to it."""
    (tmp_path / "nets.py").write_text(BUILDER)

    def run(changes, command="plan"):
        return cli(command, write_config(changes))

    return run


@pytest.mark.parametrize("changes, line", [
    ({"sweep": {"model.dropout.placement": ["after_pooling", "after_dense"]}},
     "sweep model.dropout.placement: ['after_pooling', 'after_dense'] changes nothing in any run: every value builds "
     "the same layers with the same settings in arms no_bn (none), bn (batch)"),
    ({"sweep": {"model.kernel_initializer.minval": [-0.1, -0.2]}},  # glorot_uniform has no minval
     "sweep model.kernel_initializer.minval: [-0.1, -0.2] changes nothing in any run: every value builds the same "
     "layers with the same settings in arms no_bn (none), bn (batch)"),
    ({"sweep": {"model.batch_norm.momentum": [0.9, 0.99]}, "arms": KINDS, "model.norm": {"groups": 2}},
     "sweep model.batch_norm.momentum: [0.9, 0.99] changes nothing in any run: it acts only with an arm of "
     "model.norm.kind batch or batch_renorm, which no run has"),
    ({"sweep": {"model.batch_norm.precise_stats": [0, 2]}, "arms": KINDS, "model.norm": {"groups": 2}},
     "sweep model.batch_norm.precise_stats: [0, 2] changes nothing in any run: it acts only with an arm of "
     "model.norm.kind batch or batch_renorm, which no run has"),
    ({"sweep": {"train.momentum": [0.5, 0.9]}},
     "sweep train.momentum: [0.5, 0.9] changes nothing in any run: it acts only with optimizer sgd or rmsprop, "
     "which no run has"),
    ({"sweep": {"train.nesterov": [True, False]}, "train.optimizer": "sgd"},
     "sweep train.nesterov: [True, False] changes nothing in any run: it acts only with optimizer sgd with "
     "train.momentum > 0, which no run has"),
    ({"sweep": {"train.decay_rate": [0.1, 0.5]}},
     "sweep train.decay_rate: [0.1, 0.5] changes nothing in any run: it acts only with schedule exponential or "
     "inverse_time, which no run has"),
    # settings that change what is recorded, not what is trained (the attack on issue 16)
    ({"sweep": {"train.log_every_steps": [1, 2]}},
     "sweep train.log_every_steps: [1, 2] changes nothing in any run: it changes what is recorded, not what is "
     "trained"),
    ({"sweep": {"train.activation_stats_every": [0, 2]}},
     "sweep train.activation_stats_every: [0, 2] changes nothing in any run: it changes what is recorded, not what "
     "is trained"),
    ({"model": {"builder": "nets.py:build"}, "sweep": {"model.args.depth": [1, 2]}},
     "sweep model.args.depth: [1, 2] changes nothing in any run: build takes it only through **kwargs, and every "
     "value builds the same layers with the same settings in arms no_bn (none), bn (batch)"),
])
def test_a_sweep_axis_that_changes_no_run_is_one_line_in_plan_and_run(plan, tmp_path, changes, line):
    for command in ("plan", "run"):
        result = plan(changes, command)
        assert result.exit_code == 2, result.output
        assert result.output == f"Error: {line}{AGAIN}"
    assert not (tmp_path / "results" / "tiny").exists()


@pytest.mark.parametrize("changes", [
    {"sweep": {"model.batch_norm.momentum": [0.9, 0.99]}},  # the bn arm uses it
    {"sweep": {"model.dropout.rate": [0.1, 0.5]}},
    {"sweep": {"model.batch_norm.use_bias": [True, False]}},  # drops the bias before BN: another network
    {"sweep": {"train.momentum": [0.5, 0.9]}, "train.optimizer": "sgd"},
    {"model": {"builder": "nets.py:build"}, "sweep": {"model.args.width": [4, 8]}},
    # named by the builder: it may change what Keras does not record (here nothing, but bnexp cannot know)
    {"model": {"builder": "nets.py:build"}, "sweep": {"model.args.seed": [1, 2]}},
])
def test_an_axis_that_changes_some_run_plans(plan, changes):
    result = plan(changes)
    assert result.exit_code == 0, result.output
    assert "changes nothing" not in result.output


def test_a_setting_that_changes_nothing_is_said_once_before_training(plan):
    result = plan({"train.momentum": 0.9})
    assert result.exit_code == 0, result.output
    assert result.output.count("train.momentum") == 1
    assert ("\nwarning: train.momentum: 0.9 changes nothing: it acts only with optimizer sgd or rmsprop, which no run "
            "has\n") in result.output
    result = plan({"train.momentum": 0.9, "train.optimizer": "sgd"})
    assert "changes nothing" not in result.output
