"""Normalisation kinds as arms (model.norm), their older spellings, and the global-average-pooling head."""

import json
from pathlib import Path

import numpy as np
import pytest

from bnexp.config.schema import ModelConfig, RunConfig
from bnexp.config.load import load_config
from bnexp.errors import ConfigError
from bnexp.models import build_model, count_params
from bnexp.sweep import run_id

NORM_ARMS = {"none": {"model.norm.kind": "none"}, "batch": {"model.norm.kind": "batch"},
             "group": {"model.norm.kind": "group"}, "layer": {"model.norm.kind": "layer"}}


def model_config(**changes) -> ModelConfig:
    base = {"conv": [{"filters": 4, "kernel_size": 3, "pool": 2}], "dense": [8]}
    return ModelConfig.model_validate(base | changes)


def names(model):
    return [layer.name for layer in model.layers]


# The tiny model on 8x8x1 inputs, 3 classes, without normalisation: conv 3*3*1*4 + 4 = 40,
# dense (4*4*4)*8 + 8 = 520, output 8*3 + 3 = 27, so 587. Normalisation acts on 4 + 8 = 12 channels:
# BN adds gamma and beta (trainable) and the moving mean and variance (not trainable), 4 per channel;
# renormalisation keeps a moving stddev and the renorm mean and stddev on top, 3 more non-trainable;
# group and layer normalisation learn only gamma and beta, 2 per channel.
@pytest.mark.parametrize("kind, expected", [
    ("none", (587, 0)),
    ("batch", (587 + 2 * 12, 2 * 12)),
    ("batch_renorm", (587 + 2 * 12, 5 * 12)),
    ("group", (587 + 2 * 12, 0)),
    ("layer", (587 + 2 * 12, 0)),
])
def test_parameter_counts_per_kind(kind, expected):
    assert count_params(build_model(model_config(norm={"kind": kind, "groups": 2}), (8, 8, 1), 3, 0)) == expected


def test_group_and_layer_normalisation_use_the_configured_groups_and_one_group():
    group = build_model(model_config(norm={"kind": "group", "groups": 2}), (8, 8, 1), 3, 0)
    layer = build_model(model_config(norm={"kind": "layer"}), (8, 8, 1), 3, 0)
    assert [(group.get_layer(n).groups, layer.get_layer(n.replace("_gn", "_ln")).groups)
            for n in ("conv_0_gn", "dense_0_gn")] == [(2, 1), (2, 1)]


@pytest.mark.parametrize("kind, suffix", [("group", "gn"), ("layer", "ln"), ("batch_renorm", "bn")])
def test_placement_applies_to_every_kind(kind, suffix):
    config = model_config(norm={"kind": kind, "groups": 2},
                          batch_norm={"placement": "after_activation", "after_pooling": True})
    assert names(build_model(config, (8, 8, 1), 3, 0)) == [
        "input", "conv_0", "conv_0_act", f"conv_0_{suffix}", "pool_0", f"pool_0_{suffix}", "flatten",
        "dense_0", "dense_0_act", f"dense_0_{suffix}", "output"]


def test_every_kind_starts_from_the_same_weights_in_the_layers_they_share():
    models = {kind: build_model(model_config(norm={"kind": kind, "groups": 2}), (8, 8, 1), 3, seed=5)
              for kind in ("none", "batch", "batch_renorm", "group", "layer")}
    for name in ("conv_0", "dense_0", "output"):
        first = models["none"].get_layer(name).get_weights()
        for kind, model in models.items():
            for a, b in zip(first, model.get_layer(name).get_weights()):
                np.testing.assert_array_equal(a, b, err_msg=f"{kind}: {name}")


@pytest.mark.parametrize("batch_norm, norm, kind", [
    ({"enabled": False}, {}, "none"),
    ({"renorm": True}, {}, "batch_renorm"),
    ({"enabled": False, "renorm": True}, {}, "none"),  # as before model.norm: off means off
    ({"enabled": False}, {"kind": "none"}, "none"),
    ({"renorm": True}, {"kind": "batch_renorm"}, "batch_renorm"),
    ({"renorm": True}, {"kind": "none"}, "none"),
    ({}, {"kind": "layer"}, "layer"),
])
def test_the_older_batch_norm_switches_spell_a_kind(batch_norm, norm, kind):
    assert model_config(batch_norm=batch_norm, norm=norm).norm_kind == kind


def test_default_norm_and_head_keep_the_run_ids_given_before_they_existed():
    # The ids bnexp gave these configs before model.norm and model.head were added.
    def identity(arm, model):
        return run_id(arm, RunConfig.model_validate({"data": {"dataset": "mnist"}, "model": {
            "conv": [{"filters": 4, "pool": 2}], "dense": [8], **model}}))

    assert identity("bn", {}) == "bn-s0-0f98b76847"
    assert identity("bn", {"norm": {"kind": "batch", "groups": 32}, "head": "flatten"}) == "bn-s0-0f98b76847"
    assert identity("no_bn", {"batch_norm": {"enabled": False}}) == "no_bn-s0-9710c10f29"
    assert identity("no_bn", {"norm": {"kind": "none"}}) == "no_bn-s0-9710c10f29"  # the same network
    assert identity("bn", {"norm": {"kind": "batch_renorm"}}) == identity("bn", {"batch_norm": {"renorm": True}})
    assert identity("bn", {"norm": {"kind": "group"}}) != "bn-s0-0f98b76847"
    assert identity("bn", {"head": "global_average"}) != "bn-s0-0f98b76847"


def test_two_arms_spelling_the_same_kind_are_refused(cli, write_config):
    config = write_config({"arms": {"no_bn": {"model.batch_norm.enabled": False}, "none": {"model.norm.kind": "none"}}})
    assert_error(cli("plan", config), f"{config}: arm no_bn seed 0 and arm none seed 0 would train the same "
                                      "configuration; make every sweep value and every arm change the run")


def assert_error(out, message):
    assert (out.exit_code, out.output) == (2, f"Error: {message}\n")


def test_plan_shows_each_arms_kind_and_parameter_counts(cli, write_config, tmp_path):
    config = write_config({"arms": NORM_ARMS, "model.norm": {"groups": 2}})
    out = cli("plan", config)
    assert out.exit_code == 0, out.output
    rows = [line.split() for line in out.output.splitlines()[1:5]]
    assert {row[0]: (row[3], row[4], row[5]) for row in rows} == {
        "none": ("none", "587", "0"), "batch": ("batch", "611", "24"),
        "group": ("group", "611", "0"), "layer": ("layer", "611", "0")}
    assert not (tmp_path / "results").exists()


def test_every_kind_trains_as_an_arm_from_the_same_start(cli, write_config, tmp_path):
    config = write_config({"arms": NORM_ARMS | {"renorm": {"model.norm.kind": "batch_renorm"}},
                           "model.norm": {"groups": 2}})
    out = cli("run", config, "--quiet")
    assert out.exit_code == 0, out.output
    runs = {}
    for path in (tmp_path / "results" / "tiny").glob("*/result.json"):
        spec = json.loads((path.parent / "spec.json").read_text())
        result = json.loads(path.read_text())
        runs[spec["arm"]] = (result["status"], result["trainable_params"], result["non_trainable_params"])
    assert runs == {"none": ("completed", 587, 0), "batch": ("completed", 611, 24), "group": ("completed", 611, 0),
                    "layer": ("completed", 611, 0), "renorm": ("completed", 611, 60)}


def test_a_kind_that_does_not_exist_is_refused_with_the_closest(cli, write_config):
    config = write_config({"arms": {"batch": {}, "group": {"model.norm.kind": "grup"}}})
    assert_error(cli("plan", config), f"{config}: arms.group: model.norm.kind: expected one of batch, batch_renorm, "
                                      "group, layer, none, got 'grup'; did you mean 'group'?")


def test_groups_that_do_not_divide_a_layers_channels_are_refused_at_plan_time(cli, write_config, tmp_path):
    config = write_config({"arms": NORM_ARMS, "model.norm": {"groups": 3},
                           "model.conv": [{"filters": 6, "kernel_size": 3, "pool": 2}], "model.dense": [8]})
    assert_error(cli("plan", config), f"{tmp_path / 'tiny.npz'}: model.norm.groups: 3 does not divide the 8 channels "
                                      "of dense_0's outputs; allowed: a divisor of every normalised layer's channels: "
                                      "1, 2")
    assert not (tmp_path / "results").exists()


def test_the_default_arms_with_another_kind_are_a_contradiction(cli, write_config):
    config = write_config({"model.norm": {"kind": "group", "groups": 2}})
    assert_error(cli("plan", config), f"{config}: arms.no_bn: model.batch_norm.enabled: false means model.norm.kind: "
                                      "none, which contradicts model.norm.kind: group; give each arm its kind instead, "
                                      "e.g. arms: {none: {model.norm.kind: none}, group: {model.norm.kind: group}}")


def test_renorm_with_layer_normalisation_is_a_contradiction(cli, write_config):
    config = write_config({"arms": {"batch": {}, "layer": {"model.norm.kind": "layer"}},
                           "model.batch_norm": {"renorm": True}})
    assert_error(cli("plan", config), f"{config}: arms.layer: model.norm.kind: layer contradicts "
                                      "model.batch_norm.renorm: true, the older spelling of model.norm.kind: "
                                      "batch_renorm; set renorm only where the kind is batch, or use model.norm.kind: "
                                      "batch_renorm for that arm")


def test_global_average_head_averages_each_map_into_one_value_per_filter():
    config = model_config(head="global_average", norm={"kind": "none"})
    model = build_model(config, (8, 8, 1), 3, 0)
    assert names(model)[4:6] == ["global_average", "dense_0"]
    # conv 40, dense 4*8 + 8 = 40 (4 averages instead of 4*4*4 flattened values), output 27
    assert count_params(model) == (107, 0)


def test_global_average_head_needs_conv_blocks(write_config):
    config = write_config({"model.conv": [], "model.head": "global_average"})
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert str(error.value) == (f"{config}: model.head: 'global_average' averages the conv blocks' feature maps, "
                                "but model.conv is empty; allowed without conv blocks: flatten")


def test_the_norm_batch_size_study_plans_every_kind_at_every_batch_size(cli):
    out = cli("plan", Path(__file__).parent.parent / "configs" / "norm_batch_size.yaml")
    assert out.exit_code == 0, out.output
    assert "norm_batch_size: 84 runs = 7 sweep point(s) x 4 arm(s) x 3 seed(s)" in out.output
