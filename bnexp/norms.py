"""The normalisation kinds an arm may use, in one table: the layer each makes, the suffix of that layer's
name, whether it keeps moving statistics, and its defaults. Config, models, builders, checks and the report
read it; Keras is imported only when a layer is made, so the report can read the names without it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# Wu & He's default group count for GroupNormalization; it must divide every normalised layer's channels.
DEFAULT_GROUPS = 32


def _batch_norm(settings: Any, groups: int | None, name: str, renorm: bool = False):
    """BatchNormalization; GhostBatchNormalization when settings.virtual_batch_size is set."""
    from keras import layers

    options = dict(axis=settings.axis, momentum=settings.momentum, epsilon=settings.epsilon,
                   center=settings.center, scale=settings.scale, renorm=renorm, name=name)
    if getattr(settings, "virtual_batch_size", None):
        from bnexp.layers import GhostBatchNormalization

        return GhostBatchNormalization(settings.virtual_batch_size, **options)
    return layers.BatchNormalization(**options)


def _group_norm(settings: Any, groups: int | None, name: str):
    from keras import layers

    return layers.GroupNormalization(groups=groups, axis=settings.axis, epsilon=settings.epsilon,
                                     center=settings.center, scale=settings.scale, name=name)


@dataclass(frozen=True)
class NormKind:
    """One normalisation kind. `make(settings, groups, name)` is its Keras layer (settings: the model's
    batch_norm section; groups: group_count's answer); None for the kind without a layer."""

    name: str
    suffix: str | None  # of the layer's name: conv_0_bn, conv_0_gn, conv_0_ln
    moving_statistics: bool  # BN's moving mean and variance: what evaluation uses and PreciseBN recomputes
    make: Callable[..., Any] | None
    groups: int | None = None  # a fixed group count (layer: 1); None: model.norm.groups (group) or no groups

    @property
    def normalizes(self) -> bool:
        """False for the kind that inserts nothing (the arm without normalisation)."""
        return self.make is not None

    def group_count(self, configured: int) -> int | None:
        """The groups this kind normalises over given model.norm.groups; None for the batch kinds."""
        if self.make is not _group_norm:
            return None
        return self.groups if self.groups is not None else configured


# The order is the one error messages list the kinds in.
NORMS: dict[str, NormKind] = {
    "batch": NormKind("batch", "bn", True, _batch_norm),
    "batch_renorm": NormKind("batch_renorm", "bn", True, lambda s, g, name: _batch_norm(s, g, name, renorm=True)),
    # group normalises each sample over groups of channels, model.norm.groups of them
    "group": NormKind("group", "gn", False, _group_norm),
    # layer is GroupNormalization with one group, as Wu & He define it: each sample normalised over all
    # its features (height, width and channels), a scale and shift per channel.
    "layer": NormKind("layer", "ln", False, _group_norm, groups=1),
    "none": NormKind("none", None, False, None),
}
NORM_KINDS = tuple(NORMS)
WITH_MOVING_STATISTICS = tuple(kind for kind, norm in NORMS.items() if norm.moving_statistics)


def norm_kind(enabled: bool, renorm: bool, kind: str) -> str:
    """The normalisation a model inserts: model.norm.kind, or what the older batch_norm switches (enabled,
    renorm) say while the kind is left at batch."""
    if not enabled:
        return "none"
    return "batch_renorm" if kind == "batch" and renorm else kind
