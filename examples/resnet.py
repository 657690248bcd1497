"""A small ResNet (He et al., 2016) for bnexp's model.builder: a stem, `stages` stages of `blocks`
residual blocks each (two 3x3 convolutions, the second stage onwards halving the map and doubling
the width), global average pooling and a softmax.

bnexp calls build(input_shape=..., num_classes=..., norm=..., **model.args). `norm(x)` puts the arm's
normalisation where the original puts BatchNorm (after each convolution, before the ReLU and before the
residual sum); for the arm without normalisation it returns x. A convolution keeps its bias when
`norm.use_bias` says so.
"""

import keras
from keras import layers


def build(input_shape, num_classes, norm, width=16, stages=2, blocks=1):
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(width, 3, padding="same", use_bias=norm.use_bias)(inputs)
    x = layers.ReLU()(norm(x))
    for stage in range(stages):
        filters = width * 2**stage
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = residual_block(x, filters, strides, norm)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="resnet")


def residual_block(x, filters, strides, norm):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=norm.use_bias)(x)
    y = layers.ReLU()(norm(y))
    y = layers.Conv2D(filters, 3, padding="same", use_bias=norm.use_bias)(y)
    y = norm(y)
    if strides != 1 or x.shape[-1] != filters:  # a 1x1 projection where the shapes change
        shortcut = norm(layers.Conv2D(filters, 1, strides=strides, use_bias=norm.use_bias)(x))
    return layers.ReLU()(layers.Add()([y, shortcut]))
