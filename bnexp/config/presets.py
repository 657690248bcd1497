"""Named model architectures of the five published experiments (../shared/EXPERIMENTS.md).

A config says `model: {preset: e2_mnist_cnn, ...}`; its own model keys are merged over the preset.
"""

PRESETS: dict[str, dict] = {
    # E1: small CIFAR-10 CNN, Conv -> BN -> ReLU. 38,250 trainable parameters without BN and
    # 512 more with it (gamma and beta on 32 + 32 + 64 + 128 = 256 channels). The last pool
    # (8x8) leaves a 1x1 map, so Flatten feeds 64 values to the dense layer.
    "e1_cifar_cnn": {
        "conv": [
            {"filters": 32, "kernel_size": 3, "padding": "same", "pool": 2},
            {"filters": 32, "kernel_size": 3, "padding": "same", "pool": 2},
            {"filters": 64, "kernel_size": 3, "padding": "same", "pool": 8},
        ],
        "dense": [128],
        "activation": "relu",
        "batch_norm": {"placement": "before_activation"},
    },
    # E2: MNIST CNN with BN after each activation and after each pooling layer.
    "e2_mnist_cnn": {
        "conv": [
            {"filters": 32, "kernel_size": 3, "padding": "valid", "pool": 2},
            {"filters": 64, "kernel_size": 3, "padding": "valid", "pool": 2},
        ],
        "dense": [256],
        "activation": "relu",
        "batch_norm": {"placement": "after_activation", "after_pooling": True},
    },
    # E3: CIFAR-10 CNN without pooling; BN after each activation, scale and shift on.
    "e3_cifar_nopool": {
        "conv": [
            {"filters": 30, "kernel_size": 3, "strides": 2, "padding": "valid"},
            {"filters": 50, "kernel_size": 3, "strides": 1, "padding": "valid"},
            {"filters": 60, "kernel_size": 3, "strides": 1, "padding": "valid"},
        ],
        "dense": [3500, 700],
        "activation": "relu",
        "batch_norm": {"placement": "after_activation", "center": True, "scale": True},
    },
    # E4: three stacked convolutions and two dense layers; with BN the layers drop their bias
    # and BN sits before the activation. The article gives no filter counts: 32/64/64 with
    # stride 2 on the last two keeps the dense input small (5x5x64).
    "e4_mnist_cnn": {
        "conv": [
            {"filters": 32, "kernel_size": 3, "strides": 1, "padding": "valid"},
            {"filters": 64, "kernel_size": 3, "strides": 2, "padding": "valid"},
            {"filters": 64, "kernel_size": 3, "strides": 2, "padding": "valid"},
        ],
        "dense": [64],
        "activation": "relu",
        "batch_norm": {"placement": "before_activation", "use_bias": False},
    },
    # E5: MLP 192 -> 100 -> 100 -> 100 on the Leaf table, uniform initial weights.
    "e5_leaf_mlp": {
        "conv": [],
        "dense": [192, 100, 100, 100],
        "activation": "relu",
        "kernel_initializer": {"name": "uniform", "minval": -0.05, "maxval": 0.05},
        "batch_norm": {"placement": "before_activation"},
    },
}
