"""Ghost batch normalisation (Hoffer et al. 2017), which Keras 3 dropped from BatchNormalization.

Written with keras.ops only, so it runs on every Keras backend.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="bnexp")
class GhostBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose training-mode statistics come from groups of `virtual_batch_size` samples.

    In training each group of consecutive samples is normalised with its own mean and variance; a batch whose
    size is not a multiple of the group (an epoch's last, short batch) ends with one smaller group. The moving
    statistics are updated once per batch from the mean of the group means and variances, each weighted by its
    group's size (for equal groups the plain mean, as TensorFlow 1's virtual_batch_size did). Inference, and
    everything else (weights, renorm, moving statistics), is BatchNormalization's own; a group as large as the
    batch is BatchNormalization exactly.
    """

    def __init__(self, virtual_batch_size: int, **kwargs):
        super().__init__(**kwargs)
        if int(virtual_batch_size) < 1:
            raise ValueError(f"virtual_batch_size: expected an integer >= 1, got {virtual_batch_size!r}")
        self.virtual_batch_size = int(virtual_batch_size)

    def get_config(self):
        return super().get_config() | {"virtual_batch_size": self.virtual_batch_size}

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable):
            return super().call(inputs, training=training, mask=mask)
        if mask is not None:
            raise ValueError(f"{self.name}: ghost batch normalisation does not take a mask")
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))  # as BatchNormalization: no overflow
        # Features last, so that every per-feature vector (gamma, beta, the moving and renorm statistics)
        # broadcasts against the grouped tensor (groups, samples, ..., features).
        axis = self.axis % len(x.shape)
        x = ops.moveaxis(x, axis, -1)
        grouped, weights = self._groups(x)
        axes = list(range(1, len(grouped.shape) - 1))
        count = ops.sum(ops.ones_like(grouped) * weights, axis=axes, keepdims=True)
        mean = ops.sum(grouped * weights, axis=axes, keepdims=True) / count
        variance = ops.sum(ops.square(grouped - mean) * weights, axis=axes, keepdims=True) / count
        share = count / ops.sum(count, axis=0, keepdims=True)  # each group's share of the batch's samples
        batch_mean = ops.sum(mean * share, axis=[0, *axes])
        batch_variance = ops.sum(variance * share, axis=[0, *axes])
        gamma = ops.cast(self.gamma, x.dtype) if self.scale else None
        beta = ops.cast(self.beta, x.dtype) if self.center else None
        if self.renorm:
            # Each group's correction against the renorm statistics; those are updated from the batch's.
            r, d, _, _ = self._renorm_correction_and_moments(mean, variance)
            gamma, beta = self._compose_transforms(r, d, gamma, beta, x.dtype)
            self._update_renorm_statistics(batch_mean, batch_variance)
        else:
            momentum = self.momentum
            self.moving_mean.assign(ops.cast(self.moving_mean, x.dtype) * momentum + batch_mean * (1.0 - momentum))
            self.moving_variance.assign(
                ops.cast(self.moving_variance, x.dtype) * momentum + batch_variance * (1.0 - momentum))
        outputs = (grouped - mean) * ops.rsqrt(variance + self.epsilon)
        if gamma is not None:
            outputs = outputs * gamma
        if beta is not None:
            outputs = outputs + beta
        outputs = ops.reshape(outputs, (-1, *ops.shape(x)[1:]))[: ops.shape(x)[0]]
        return ops.cast(ops.moveaxis(outputs, -1, axis), self.compute_dtype)

    def _groups(self, x):
        """x as (groups, virtual_batch_size, ...), zero rows padding the last group, and the weights (1 for a
        sample, 0 for padding) shaped to broadcast against it."""
        size, rest = self.virtual_batch_size, ops.shape(x)[1:]
        n = ops.shape(x)[0]
        padding = (size - n % size) % size
        padded = ops.concatenate([x, ops.zeros((padding, *rest), dtype=x.dtype)], axis=0)
        weights = ops.concatenate([ops.ones((n,), dtype=x.dtype), ops.zeros((padding,), dtype=x.dtype)], axis=0)
        grouped = ops.reshape(padded, (-1, size, *rest))
        return grouped, ops.reshape(weights, (-1, size) + (1,) * (len(x.shape) - 1))
