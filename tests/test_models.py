"""The model factory: BN positions per placement, exact parameter counts, shared initial weights."""

import numpy as np
import pytest

from bnexp.config.schema import ModelConfig, expand_preset
from bnexp.models import build_model, count_params


def model_config(**changes) -> ModelConfig:
    base = {"conv": [{"filters": 4, "kernel_size": 3, "pool": 2}], "dense": [8]}
    return ModelConfig.model_validate(base | changes)


def names(model):
    return [layer.name for layer in model.layers]


@pytest.mark.parametrize(
    "batch_norm, expected",
    [
        ({"enabled": False}, ["input", "conv_0", "conv_0_act", "pool_0", "flatten", "dense_0", "dense_0_act", "output"]),
        ({"placement": "before_activation"},
         ["input", "conv_0", "conv_0_bn", "conv_0_act", "pool_0", "flatten", "dense_0", "dense_0_bn", "dense_0_act",
          "output"]),
        ({"placement": "after_activation"},
         ["input", "conv_0", "conv_0_act", "conv_0_bn", "pool_0", "flatten", "dense_0", "dense_0_act", "dense_0_bn",
          "output"]),
        ({"placement": "after_activation", "after_pooling": True},
         ["input", "conv_0", "conv_0_act", "conv_0_bn", "pool_0", "pool_0_bn", "flatten", "dense_0", "dense_0_act",
          "dense_0_bn", "output"]),
    ],
)
def test_bn_layers_sit_where_the_placement_says(batch_norm, expected):
    assert names(build_model(model_config(batch_norm=batch_norm), (8, 8, 1), 3, seed=0)) == expected


@pytest.mark.parametrize(
    "dropout, expected_after",
    [
        ({"rate": 0.25, "placement": "before_pooling"}, ["conv_0_act", "dropout_0", "pool_0"]),
        ({"rate": 0.25, "placement": "after_pooling"}, ["conv_0_act", "pool_0", "dropout_0"]),
        ({"rate": 0.25, "placement": "after_dense"}, ["dense_0_act", "dense_0_dropout", "output"]),
    ],
)
def test_dropout_placement(dropout, expected_after):
    layer_names = names(build_model(model_config(dropout=dropout, batch_norm={"enabled": False}), (8, 8, 1), 3, 0))
    start = layer_names.index(expected_after[0])
    assert layer_names[start:start + 3] == expected_after


def test_bn_adds_exactly_gamma_beta_and_moving_statistics():
    plain = count_params(build_model(model_config(batch_norm={"enabled": False}), (8, 8, 1), 3, 0))
    with_bn = count_params(build_model(model_config(), (8, 8, 1), 3, 0))
    channels = 4 + 8  # one BN per conv filter and dense unit
    # conv 3*3*1*4+4 = 40, dense 4*4*4*8+8 = 520, output 8*3+3 = 27
    assert plain == (587, 0)
    assert with_bn == (587 + 2 * channels, 2 * channels)


def test_use_bias_false_drops_the_bias_bn_makes_redundant():
    trainable, frozen = count_params(build_model(model_config(batch_norm={"use_bias": False}), (8, 8, 1), 3, 0))
    assert (trainable, frozen) == (587 + 2 * 12 - 12, 24)


def test_e1_preset_matches_the_article_parameter_counts():
    def counts(enabled):
        config = ModelConfig.model_validate(expand_preset({"preset": "e1_cifar_cnn", "batch_norm": {"enabled": enabled}}, "t"))
        return count_params(build_model(config, (32, 32, 3), 10, 0))

    (plain, _), (with_bn, _) = counts(False), counts(True)
    assert abs(plain - 37_000) < 1_500  # "about 37k trainable parameters"
    assert with_bn - plain == 512  # "gamma and beta on 256 channels"


def test_arms_share_initial_weights_for_every_common_layer():
    plain = build_model(model_config(batch_norm={"enabled": False}), (8, 8, 1), 3, seed=7)
    with_bn = build_model(model_config(dropout={"rate": 0.5, "placement": "after_dense"}), (8, 8, 1), 3, seed=7)
    shared = [name for name in names(plain) if name in names(with_bn) and plain.get_layer(name).weights]
    assert shared == ["conv_0", "dense_0", "output"]
    for name in shared:
        for a, b in zip(plain.get_layer(name).get_weights(), with_bn.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_another_seed_gives_other_weights():
    a = build_model(model_config(), (8, 8, 1), 3, seed=0).get_layer("conv_0").get_weights()[0]
    b = build_model(model_config(), (8, 8, 1), 3, seed=1).get_layer("conv_0").get_weights()[0]
    assert not np.array_equal(a, b)


def test_mlp_on_images_flattens_first():
    config = ModelConfig.model_validate({"dense": [5]})
    assert names(build_model(config, (8, 8, 1), 3, 0))[:3] == ["input", "flatten", "dense_0"]
