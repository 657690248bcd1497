"""One model factory for every arm: the arm's normalisation kind (ModelConfig.norm_kind) is its only switch."""

from __future__ import annotations

import hashlib
import math

import keras
from keras import layers

from bnexp import builders
from bnexp.builders import Builder
from bnexp.config.schema import InitializerConfig, ModelConfig
from bnexp.errors import DataError, one_line
from bnexp.layers import GhostBatchNormalization

_INITIALIZERS = {
    "glorot_uniform": keras.initializers.GlorotUniform,
    "glorot_normal": keras.initializers.GlorotNormal,
    "he_uniform": keras.initializers.HeUniform,
    "he_normal": keras.initializers.HeNormal,
    "lecun_uniform": keras.initializers.LecunUniform,
    "lecun_normal": keras.initializers.LecunNormal,
    "orthogonal": keras.initializers.Orthogonal,
}


def layer_seed(seed: int, layer_name: str) -> int:
    """A seed per (run seed, layer name): a layer gets the same initial weights in every arm,
    however many BN or dropout layers the arm adds before it."""
    digest = hashlib.sha256(f"{seed}:{layer_name}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def make_initializer(config: InitializerConfig, seed: int):
    if config.name == "uniform":
        return keras.initializers.RandomUniform(config.minval, config.maxval, seed=seed)
    if config.name == "normal":
        return keras.initializers.RandomNormal(config.mean, config.stddev, seed=seed)
    if config.name == "truncated_normal":
        return keras.initializers.TruncatedNormal(config.mean, config.stddev, seed=seed)
    return _INITIALIZERS[config.name](seed=seed)


def build_model(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int,
                builder: Builder | None = None) -> keras.Model:
    """The functional model described by `config`, or made by its model.builder (`builder`, located by
    bnexp.sweep); compile and fit stay with the caller.

    Layer names are fixed (conv_0, dense_1, output, ...) so arms can be compared layer by layer.
    A model the data's shape cannot feed (conv blocks on flat features, a kernel or pool larger than
    the map it gets) raises DataError naming the config key; the caller adds the data file's name.
    """
    if config.builder:
        def make_layer(x, name):
            return norm_layer(config, x, name, f"the tensor norm(x) got ({name})", tuple(input_shape))
        return builders.build(builder, config, tuple(input_shape), num_classes, seed, make_layer)
    try:
        return _build(config, tuple(input_shape), num_classes, seed)
    except ValueError as exc:  # a mismatch the checks in _build do not foresee: Keras' own words
        raise DataError(f"model: Keras cannot build it for data of shape {tuple(input_shape)}: {one_line(exc)}") from None


def model_size(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int,
               builder: Builder | None = None) -> tuple[int, int]:
    """(trainable, non-trainable) parameter counts of the model, built without allocating its weights.

    Sizing a model too large for memory must not try to allocate it, and the process that plans a
    sweep must not start the backend on a device (TensorFlow would take the GPU its workers need).
    """
    try:
        with keras.StatelessScope(initialize_variables=False):
            return count_params(build_model(config, input_shape, num_classes, seed=0, builder=builder))
    finally:
        keras.utils.clear_session(free_memory=False)  # Keras keeps the weights to initialise later: drop them


def _build(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int) -> keras.Model:
    bn, dropout, kind = config.batch_norm, config.dropout, config.norm_kind
    normalized = kind != "none"

    def transform(x, layer_cls, name, **kwargs):
        """layer -> [norm] -> activation -> [norm], the placement taken from the config."""
        use_bias = not (normalized and not bn.use_bias)
        init = make_initializer(config.kernel_initializer, layer_seed(seed, name))
        x = layer_cls(use_bias=use_bias, kernel_initializer=init, name=name, **kwargs)(x)
        if normalized and bn.placement == "before_activation":
            x = normalize(x, name)
        x = layers.Activation(config.activation, name=f"{name}_act")(x)
        if normalized and bn.placement == "after_activation":
            x = normalize(x, name)
        return x

    def normalize(x, name):
        """The arm's normalisation of `name`'s outputs, named after it (conv_0_bn, conv_0_gn, conv_0_ln)."""
        suffix = {"batch": "bn", "batch_renorm": "bn", "group": "gn", "layer": "ln"}[kind]
        return norm_layer(config, x, f"{name}_{suffix}", f"{name}'s outputs", input_shape, _channels(config))(x)

    def drop(x, name):
        return layers.Dropout(dropout.rate, seed=layer_seed(seed, name), name=name)(x)

    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    for i, block in enumerate(config.conv):
        if len(x.shape) != 4:
            raise DataError(
                f"model.conv: conv blocks need images (height, width, channels) but the samples have shape "
                f"{input_shape}; remove model.conv (an MLP) for flat features"
            )
        if block.padding == "valid" and block.kernel_size > min(x.shape[1:3]):
            raise DataError(
                f"model.conv.{i}.kernel_size: {block.kernel_size} is larger than the {_map(x)} map the block gets "
                f"(data shape {input_shape}); allowed: at most {min(x.shape[1:3])}, or padding: same"
            )
        x = transform(x, layers.Conv2D, f"conv_{i}", filters=block.filters, kernel_size=block.kernel_size,
                      strides=block.strides, padding=block.padding)
        if block.pool and block.pool > min(x.shape[1:3]):
            raise DataError(
                f"model.conv.{i}.pool: {block.pool} is larger than the {_map(x)} feature map it pools "
                f"(data shape {input_shape}); allowed: at most {min(x.shape[1:3])}"
            )
        if block.pool:
            if dropout.rate and dropout.placement == "before_pooling":
                x = drop(x, f"dropout_{i}")
            x = layers.MaxPooling2D(block.pool, name=f"pool_{i}")(x)
            if normalized and bn.after_pooling:
                x = normalize(x, f"pool_{i}")
            if dropout.rate and dropout.placement == "after_pooling":
                x = drop(x, f"dropout_{i}")
    if len(x.shape) > 2 and config.head == "global_average":
        x = layers.GlobalAveragePooling2D(name="global_average")(x)
    elif len(x.shape) > 2:
        x = layers.Flatten(name="flatten")(x)
    for j, units in enumerate(config.dense):
        x = transform(x, layers.Dense, f"dense_{j}", units=units)
        if dropout.rate and dropout.placement == "after_dense":
            x = drop(x, f"dense_{j}_dropout")
    init = make_initializer(config.kernel_initializer, layer_seed(seed, "output"))
    outputs = layers.Dense(num_classes, activation="softmax", kernel_initializer=init, name="output")(x)
    return keras.Model(inputs, outputs, name=kind)


def norm_layer(config: ModelConfig, x, name: str, what: str, input_shape: tuple[int, ...],
               channels: list[int] | None = None) -> layers.Layer:
    """The arm's normalisation layer for tensor `x` (`what`, for errors), named `name`; DataError when the
    config's axis or group count does not fit x. `channels`: every normalised layer's channels, where known
    (the built-in models), so that the error lists the group counts that fit them all."""
    bn, kind, ndim = config.batch_norm, config.norm_kind, len(x.shape)
    if not (-ndim <= bn.axis < ndim and bn.axis % ndim != 0):  # axis 0 is the batch
        raise DataError(
            f"model.batch_norm.axis: {bn.axis} is not a feature axis of {what} of shape "
            f"{tuple(x.shape[1:])} (data shape {input_shape}); allowed: 1 to {ndim - 1} or -1 to -{ndim - 1}"
        )
    if kind in ("batch", "batch_renorm"):
        settings = dict(axis=bn.axis, momentum=bn.momentum, epsilon=bn.epsilon, center=bn.center, scale=bn.scale,
                        renorm=kind == "batch_renorm", name=name)
        if bn.virtual_batch_size:
            return GhostBatchNormalization(bn.virtual_batch_size, **settings)
        return layers.BatchNormalization(**settings)
    groups, count = (config.norm.groups if kind == "group" else 1), x.shape[bn.axis]
    if count % groups:
        every = [count] if channels is None or bn.axis != -1 else [*channels, count]
        allowed = [g for g in range(1, count + 1) if all(c % g == 0 for c in every)]
        some = "" if channels is not None and bn.axis == -1 else f" (of these {count}: {', '.join(map(str, allowed))})"
        listed = "" if some else f": {', '.join(map(str, allowed))}"
        raise DataError(
            f"model.norm.groups: {groups} does not divide the {count} channels of {what}; "
            f"allowed: a divisor of every normalised layer's channels{listed}{some}"
        )
    return layers.GroupNormalization(groups=groups, axis=bn.axis, epsilon=bn.epsilon, center=bn.center,
                                     scale=bn.scale, name=name)


def _channels(config: ModelConfig) -> list[int]:
    """The channels of every layer the built-in network normalises, on the last axis."""
    return [block.filters for block in config.conv] + list(config.dense)


def _map(x) -> str:
    return f"{x.shape[1]}x{x.shape[2]}"


def count_params(model: keras.Model) -> tuple[int, int]:
    """(trainable, non-trainable) parameter counts."""
    return (
        sum(math.prod(w.shape) for w in model.trainable_weights),
        sum(math.prod(w.shape) for w in model.non_trainable_weights),
    )
