"""Experiment configs: YAML file + --set overrides -> validated, locked pydantic models.

Every section forbids unknown keys, so a typo is an error with a "did you mean" instead of
a silently ignored setting. Errors are raised as ConfigError with one line naming the
source (file or --set), the dotted key path, what was received and what is allowed.
"""

from __future__ import annotations

import itertools
import json
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, PositiveInt, PrivateAttr, ValidationInfo, field_validator,
    model_validator,
)

from bnexp.errors import ConfigError
from bnexp.config.keypaths import (FrozenDict, deep_merge, freeze, point_label, set_dotted,
                                   thaw)
from bnexp.metrics import EPOCH_METRICS, VAL_LOSS
from bnexp.norms import DEFAULT_GROUPS, NORM_KINDS, norm_kind
from bnexp.optimizers import OPTIMIZER_NAMES
from bnexp.config.presets import PRESETS
from bnexp.config.messages import did_you_mean, format_value, validate

DEFAULT_ARMS = freeze({
    "no_bn": {"model.batch_norm.enabled": False},
    "bn": {"model.batch_norm.enabled": True},
})

# The sections an arm may change. The arms of a pair must see the same data (so not data.*) and
# share the run seed (so not seed): otherwise a paired difference measures the data or the seed.
ARM_SECTIONS = ("model", "train")

# keras.utils.set_random_seed (train.py) seeds NumPy's global generator, which takes 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1


class Strict(BaseModel):
    # frozen: a config is validated once and then carried as it is; its lists are tuples, so that no
    # part of it can change either, and a section can key a cache (bnexp.data.datasets).
    # allow_inf_nan=False: YAML reads 1e400 as inf and .nan as NaN; no field means either.
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true as 1: `batch_size: true` would train with batches of one.
        kind = _number_kind(cls.model_fields[info.field_name].annotation)
        if kind and (isinstance(value, bool) or isinstance(value, list) and any(isinstance(v, bool) for v in value)):
            raise ValueError(f"expected {kind}, got {format_value(value)}; true and false are not numbers")
        return value


def _number_kind(annotation: Any) -> str | None:
    """'an integer' or 'a number' for int and float fields, also inside `X | None`, `list[X]` and
    constrained types; None for other fields."""
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (list, tuple) and args:
        kind = _number_kind(args[0])
        return kind and f"a list of {'integers' if kind == 'an integer' else 'numbers'}"
    if origin in (Union, types.UnionType, Annotated):
        return next((kind for arg in args if (kind := _number_kind(arg))), None)
    return None


class DataConfig(Strict):
    dataset: Literal["mnist", "fashion_mnist", "cifar10", "csv", "npz", "images"]
    path: str | None = None  # the file for csv / npz; for images the folder of class subfolders
    test_path: str | None = None  # images: a test folder with the same class subfolders; None = test_split
    image_size: tuple[PositiveInt, PositiveInt] | None = None  # images: (height, width) every image is resized to
    color_mode: Literal["rgb", "grayscale"] = "rgb"  # images: 3 channels or 1
    label_column: str | None = None  # csv only
    feature_columns: tuple[str, ...] | None = None  # csv: None = every column but the label and ignored ones
    ignore_columns: tuple[str, ...] = ()
    test_split: float = Field(0.2, gt=0, lt=1)  # csv, and images without test_path: no separate test file
    validation_split: float = Field(0.2, gt=0, lt=1)  # last fraction of the training pool, as in Keras
    train_subset: PositiveInt | None = None  # first N training rows: smoke runs and reduced scales
    test_subset: PositiveInt | None = None
    scaling: Literal["unit", "standardize", "none"] | None = None  # None: unit for images, standardize for csv
    split_seed: int = Field(0, ge=0)  # fixed across runs so every run sees the same split; NumPy needs >= 0

    @model_validator(mode="after")
    def _needs_path(self):
        if self.dataset in ("csv", "npz", "images") and not self.path:
            raise ValueError(f"path: required when dataset is '{self.dataset}'")
        if self.dataset == "images" and self.image_size is None:
            raise ValueError("image_size: required when dataset is 'images' ([height, width], e.g. [32, 32])")
        if self.dataset != "images":
            for key, value in (("test_path", self.test_path), ("image_size", self.image_size),
                               ("color_mode", self.color_mode != "rgb")):
                if value:
                    raise ValueError(f"{key}: only for dataset 'images', not '{self.dataset}'")
        if self.test_path and "test_split" in self.model_fields_set:
            raise ValueError("test_split: not used with test_path (the test folder is the test set); give one of them")
        if self.dataset == "csv" and not self.label_column:
            raise ValueError("label_column: required when dataset is 'csv'")
        return self


class ConvBlock(Strict):
    filters: PositiveInt
    kernel_size: PositiveInt = 3
    strides: PositiveInt = 1
    padding: Literal["valid", "same"] = "same"
    pool: PositiveInt | None = None  # MaxPooling2D pool size after the block; None = no pooling


class InitializerConfig(Strict):
    name: Literal[
        "glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
        "lecun_uniform", "lecun_normal", "uniform", "normal", "truncated_normal", "orthogonal",
    ] = "glorot_uniform"
    minval: float = -0.05  # uniform
    maxval: float = 0.05  # uniform
    mean: float = 0.0  # normal, truncated_normal
    stddev: float = Field(0.05, gt=0)  # normal, truncated_normal


class BatchNormConfig(Strict):
    """Where normalisation goes and how it is set; model.norm.kind says which. placement, after_pooling,
    axis, epsilon, center, scale and use_bias apply to every kind; momentum to the batch kinds."""

    enabled: bool = True  # false: no normalisation, the older spelling of model.norm.kind: none
    placement: Literal["before_activation", "after_activation"] = "before_activation"
    after_pooling: bool = False  # E2 also normalises each pooled map
    axis: int = -1
    momentum: float = Field(0.99, ge=0, lt=1)  # 1 would never update the moving statistics evaluation uses
    epsilon: float = Field(0.001, gt=0)
    center: bool = True
    scale: bool = True
    renorm: bool = False  # true: the older spelling of model.norm.kind: batch_renorm
    use_bias: bool = True  # bias on the layers BN follows; BN's beta makes it redundant (E4 drops it)
    # > 0: before every evaluation, BN's moving statistics are recomputed as the mean over this many
    # training batches (PreciseBN), then put back: early moving averages lag far behind the weights.
    precise_stats: int = Field(0, ge=0)
    # Ghost batch normalisation (Hoffer et al. 2017): the batch kinds normalise each group of this many
    # samples of a training batch with the group's own statistics; None: the whole batch. It must divide
    # train.batch_size. Group, layer and none arms normalise per sample (or not at all) and ignore it.
    # At least 2: a group of one sample has variance 0, so BN would output its shift alone and never train.
    virtual_batch_size: int | None = Field(None, ge=2)


class NormConfig(Strict):
    kind: Literal[NORM_KINDS] = "batch"  # bnexp.norms.NORMS says what each makes
    groups: PositiveInt = DEFAULT_GROUPS  # group only. It must divide every normalised layer's channels

    @field_validator("kind", mode="before")
    @classmethod
    def _known_kind(cls, value):
        if isinstance(value, str) and value not in NORM_KINDS:
            raise ValueError(f"expected one of {', '.join(NORM_KINDS)}, got {value!r}" + did_you_mean(value, NORM_KINDS))
        return value


class DropoutConfig(Strict):
    rate: float = Field(0.0, ge=0, lt=1)
    placement: Literal["before_pooling", "after_pooling", "after_dense"] = "after_pooling"


BUILDER_ARGUMENTS = ("input_shape", "num_classes", "norm")  # what bnexp passes every model.builder


class ModelConfig(Strict):
    preset: str | None = None  # name from bnexp.config.presets, already merged under these keys
    conv: tuple[ConvBlock, ...] = ()  # empty: an MLP
    dense: tuple[PositiveInt, ...] = ()  # hidden units; the softmax output layer is always added
    activation: Literal[
        "relu", "sigmoid", "tanh", "elu", "selu", "gelu", "swish", "leaky_relu", "softplus", "linear",
    ] = "relu"
    kernel_initializer: InitializerConfig = InitializerConfig()
    batch_norm: BatchNormConfig = BatchNormConfig()
    norm: NormConfig = NormConfig()
    dropout: DropoutConfig = DropoutConfig()
    head: Literal["flatten", "global_average"] = "flatten"  # what feeds the conv stack's maps to the dense layers
    # A user's network instead of conv/dense (bnexp.builders): "package.module:function" or "file.py:function",
    # called with input_shape, num_classes, norm and these keyword arguments.
    builder: str | None = None
    args: dict[str, Any] = {}

    @field_validator("builder")
    @classmethod
    def _builder_form(cls, value):
        target, _, function = (value or "").rpartition(":")
        if value is not None and not (target.strip() and function.isidentifier()):
            raise ValueError(f"expected 'package.module:function' or 'path/to/file.py:function', got {value!r}")
        return value

    def __hash__(self) -> int:  # args is a dict, which pydantic's frozen hash cannot take
        return hash(json.dumps(self.model_dump(mode="json"), sort_keys=True))

    @field_validator("kernel_initializer", mode="before")
    @classmethod
    def _initializer_name(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @property
    def norm_kind(self) -> str:
        return norm_kind(self.batch_norm.enabled, self.batch_norm.renorm, self.norm.kind)

    @model_validator(mode="after")
    def _one_norm_kind(self):
        kind = self.norm.kind
        if not self.batch_norm.enabled and kind not in ("batch", "none"):
            raise ValueError(f"batch_norm.enabled: false means model.norm.kind: none, which contradicts model.norm.kind: "
                             f"{kind}; give each arm its kind instead, e.g. arms: {{none: {{model.norm.kind: none}}, "
                             f"{kind}: {{model.norm.kind: {kind}}}}}")
        # Named at the key the arms usually set (the default arms set enabled, kind arms the kind), so that
        # the error names the arm.
        if self.batch_norm.renorm and kind in ("group", "layer"):
            raise ValueError(f"norm.kind: {kind} contradicts model.batch_norm.renorm: true, the older spelling of "
                             "model.norm.kind: batch_renorm; set renorm only where the kind is batch, or use "
                             "model.norm.kind: batch_renorm for that arm")
        return self

    @model_validator(mode="after")
    def _builder_makes_the_network(self):
        if self.builder is None:
            if self.args:
                raise ValueError("args: keyword arguments for model.builder, which is not set; set model.builder "
                                 "or remove model.args")
            return self
        # The keys that describe the built-in networks would be silently ignored next to a builder.
        ignored = [k for k in ("preset", "conv", "dense", "activation", "kernel_initializer", "dropout", "head")
                   if k in self.model_fields_set]
        ignored += [f"batch_norm.{k}" for k in ("placement", "after_pooling") if k in self.batch_norm.model_fields_set]
        if ignored:
            raise ValueError(f"{ignored[0]}: the builder {self.builder} makes the network, so model.{ignored[0]} would "
                             f"be ignored; remove it (pass settings to the builder in model.args)")
        for name in self.args:
            if not name.isidentifier() or name in BUILDER_ARGUMENTS:
                raise ValueError(f"args.{name}: not a keyword argument bnexp can pass to {self.builder}; allowed: "
                                 f"Python identifiers other than {', '.join(BUILDER_ARGUMENTS)} (bnexp passes those)")
        return self

    @model_validator(mode="after")
    def _something_to_normalise(self):
        # Without a hidden layer the built-in network is input -> softmax: no normalisation position, so a
        # normalised arm would train the very network the arm without normalisation trains.
        if self.builder is None and not self.conv and not self.dense and self.norm_kind != "none":
            raise ValueError(f"dense: the network has no hidden layer (model.conv and model.dense are empty), so "
                             f"there is nothing for model.norm.kind {self.norm_kind} to normalise and the arm would "
                             "train the same network as one without normalisation; add a hidden layer "
                             "(e.g. model.dense: [64]) or use model.norm.kind: none")
        return self

    @model_validator(mode="after")
    def _global_average_has_maps(self):
        if self.head == "global_average" and not self.conv:
            raise ValueError("head: 'global_average' averages the conv blocks' feature maps, but model.conv is empty; "
                             "allowed without conv blocks: flatten")
        return self

    @model_validator(mode="after")
    def _dropout_has_a_place(self):
        if self.dropout.rate > 0:
            if self.dropout.placement.endswith("pooling") and not any(b.pool for b in self.conv):
                raise ValueError(f"dropout.placement: '{self.dropout.placement}' needs a conv block with a pool")
            if self.dropout.placement == "after_dense" and not self.dense:
                raise ValueError("dropout.placement: 'after_dense' needs at least one dense layer")
        return self


def older_norm_spelling(model: dict) -> dict:
    """A model section as JSON with norm kinds none and batch_renorm written as batch_norm.enabled: false and
    batch_norm.renorm: true, the spelling run ids were first given in: both spellings of one network then
    share a run id, so migrating a config keeps its results and two arms cannot train the same network."""
    kind = model["norm"]["kind"]
    if kind in ("none", "batch_renorm"):
        flag = {"none": {"enabled": False}, "batch_renorm": {"renorm": True}}[kind]
        model = model | {"batch_norm": model["batch_norm"] | flag, "norm": model["norm"] | {"kind": "batch"}}
    return model


class EarlyStoppingConfig(Strict):
    monitor: Literal[EPOCH_METRICS] = VAL_LOSS
    patience: int = Field(10, ge=0)
    min_delta: float = Field(0.0, ge=0)
    restore_best_weights: bool = True


class TrainConfig(Strict):
    optimizer: Literal[OPTIMIZER_NAMES] = "adam"  # bnexp.optimizers.OPTIMIZERS says what each makes
    learning_rate: float = Field(0.001, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)  # sgd and rmsprop
    nesterov: bool = False  # sgd
    schedule: Literal["constant", "exponential", "inverse_time"] = "constant"
    decay_steps: PositiveInt = 1  # exponential / inverse_time
    decay_rate: float = Field(0.0, ge=0)  # inverse_time with decay_steps 1 is the old Keras `decay`
    staircase: bool = False
    batch_size: PositiveInt = 32
    epochs: PositiveInt = 10
    steps_per_epoch: PositiveInt | None = None  # cap on batches per epoch; None = the whole training set
    early_stopping: EarlyStoppingConfig | None = None
    log_every_steps: PositiveInt = 50  # training-loss samples for steps-to-target analysis
    steps_per_execution: PositiveInt = 32  # batches per compiled call: far less Python overhead at small batches
    deterministic: bool = False  # bit-identical reruns on CPU, at some speed cost
    # > 0: validation loss and accuracy every this many optimizer steps too (history.jsonl step_evals),
    # for steps-to-target at step resolution; each costs one pass over the validation rows evaluated.
    eval_every_steps: int = Field(0, ge=0)
    eval_subset: PositiveInt | None = None  # first N validation rows for those step evaluations; None = all
    # > 0: every this many optimizer steps (and at step 0), the 15th/50th/85th percentiles, mean and sd of the
    # input to every activation after a normalisation position, on a fixed validation probe (activations.jsonl,
    # bnexp.activations); 0: off. Training is unchanged.
    activation_stats_every: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _eval_subset_has_evaluations(self):
        if self.eval_subset is not None and not self.eval_every_steps:
            raise ValueError("eval_subset: used only by the evaluations every eval_every_steps steps; "
                             "set eval_every_steps > 0 or drop eval_subset")
        # Keras calls back once per steps_per_execution steps, so other step counts would not be kept.
        if self.eval_every_steps % self.steps_per_execution:
            default = "" if "steps_per_execution" in self.model_fields_set else ", its default"
            raise ValueError(f"eval_every_steps: {self.eval_every_steps} is not a multiple of train.steps_per_execution "
                             f"{self.steps_per_execution}{default}, the steps between Keras' callbacks; use a multiple "
                             f"of it or set train.steps_per_execution to a divisor of {self.eval_every_steps}")
        return self

    @model_validator(mode="after")
    def _activation_stats_fall_on_callbacks(self):
        if self.activation_stats_every % self.steps_per_execution:
            raise ValueError(f"activation_stats_every: {self.activation_stats_every} is not a multiple of "
                             f"steps_per_execution {self.steps_per_execution}, the steps between Keras' callbacks; use "
                             f"a multiple of it, 0 (off), or set steps_per_execution to a divisor of "
                             f"{self.activation_stats_every}")
        return self


# Settings that change what a run records, not what it trains: a sweep over one would train the same networks
# again under other ids (bnexp.checks refuses it).
RECORDING_FIELDS = ("train.log_every_steps", "train.eval_every_steps", "train.eval_subset",
                    "train.activation_stats_every")


class RunConfig(Strict):
    """Everything one training run depends on; its hash is the run id."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _ghost_batches_divide_the_batch(self):
        size, batch = self.model.batch_norm.virtual_batch_size, self.train.batch_size
        if size is not None and batch % size:
            divisors = [d for d in range(2, batch + 1) if batch % d == 0]
            raise ValueError(f"model.batch_norm.virtual_batch_size: {size} does not divide train.batch_size {batch}, "
                             f"so a batch would not split into ghost batches of {size}; allowed: a divisor of "
                             f"{batch} ({', '.join(map(str, divisors))}), or leave it unset for the whole batch")
        return self


# A section of the experiment as written (YAML, then --set and --sweep), read-only all the way down
# (keypaths.freeze: FrozenDicts and tuples): it is checked per run, as part of a RunConfig, and must not
# change after loading.
Frozen = Annotated[Mapping[str, Any], AfterValidator(freeze)]

# --set and option overrides of data/model/train keys: {key: (value, where it came from)}.
Overrides = Mapping[str, tuple[Any, str]]


@dataclass(frozen=True)
class ResolvedRun:
    """One run of the experiment before its id: where it sits (sweep point, seed, arm) and its validated config."""

    point: Mapping[str, Any]  # swept key -> value, as written (plain lists and dicts)
    seed: int
    arm: str
    config: RunConfig


class ExperimentConfig(Strict):
    """The keys that describe the experiment; data/model/train are checked per run as RunConfig."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seeds: tuple[int, ...] = Field((0, 1, 2), min_length=1)
    arms: Annotated[Mapping[str, Mapping[str, Any]], AfterValidator(freeze)] = DEFAULT_ARMS
    reference: str | None = None  # the arm others are compared with; None = the first arm (reference_arm)
    sweep: Annotated[Mapping[str, tuple[Any, ...]], AfterValidator(freeze)] = {}
    data: Frozen
    model: Frozen = {}
    train: Frozen = {}
    # The overrides, given to validation as its context (load_config). They are applied per run, after the
    # preset is expanded, so they can reach into a preset's lists.
    _overrides: Overrides = PrivateAttr(default_factory=FrozenDict)
    _runs: dict[str, tuple[ResolvedRun, ...]] = PrivateAttr(default_factory=dict)  # source -> runs (resolved_runs)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds):
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {list(seeds)}")
        for seed in seeds:
            if not 0 <= seed <= MAX_SEED:
                raise ValueError(f"seed {seed} is outside 0 to {MAX_SEED} (2**32 - 1), "
                                 "the seeds NumPy and Keras accept")
        return seeds

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, arms):
        if not arms:
            raise ValueError("at least one arm is needed")
        for name in arms:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"arm name {name!r} may hold only letters, digits, '_' and '-'")
        return arms

    @field_validator("sweep")
    @classmethod
    def _sweep_values(cls, sweep):
        for key, values in sweep.items():
            if not values:
                raise ValueError(f"{key}: needs at least one value")
            if key.split(".")[0] not in ("data", "model", "train"):
                raise ValueError(f"{key}: a swept key starts with data., model. or train.")
        return sweep

    @model_validator(mode="after")
    def _reference_is_an_arm(self, info: ValidationInfo):
        if self.reference is not None and self.reference not in self.arms:
            raise ValueError(f"reference: {self.reference!r} is not an arm; arms: {', '.join(self.arms)}")
        # A private attribute, set while validating: the frozen model is not changed afterwards.
        self._overrides = freeze((info.context or {}).get("overrides", {}))
        return self

    @property
    def overrides(self) -> Overrides:
        """The --set and option overrides of data/model/train keys: {key: (value, where it came from)}."""
        return self._overrides

    @property
    def reference_arm(self) -> str:
        """The arm the others are compared with: `reference`, else the first arm."""
        return self.reference if self.reference is not None else next(iter(self.arms))

    def run_config(self, overrides: Overrides, seed: int, source: str) -> RunConfig:
        """The RunConfig with dotted `overrides` ({key: (value, where it came from)}) applied
        after the --set ones; an error names the --set, sweep point or arm that caused it."""
        overrides = {**self._overrides, **overrides}
        key_sources = {key: origin for key, (_, origin) in overrides.items()}
        raw = {"data": thaw(self.data), "model": thaw(self.model), "train": thaw(self.train)}
        preset_source = key_sources.get("model.preset", source)
        if "model.preset" in overrides and isinstance(raw["model"], dict):
            raw["model"]["preset"] = thaw(overrides["model.preset"][0])
        # The preset first, so that `model.conv.2.pool` can change one value of a preset's list.
        raw["model"] = expand_preset(raw["model"], preset_source)
        for key, (value, origin) in overrides.items():
            set_dotted(raw, key, thaw(value), origin)
        raw["model"] = expand_preset(raw["model"], preset_source)  # a replaced model section may name a preset
        raw["seed"] = seed
        return validate(RunConfig, raw, source, key_sources)

    def resolved_runs(self, source: str) -> tuple[ResolvedRun, ...]:
        """Every run, grouped by sweep point, then seed, then arm, each RunConfig validated once (and kept);
        an error names the sweep point or arm that caused it, as run_config's do."""
        if source not in self._runs:
            keys = list(self.sweep)
            runs = []
            for values in itertools.product(*(self.sweep[k] for k in keys)):
                point = {key: thaw(value) for key, value in zip(keys, values)}
                where = point_label(point)
                for seed in self.seeds:
                    for arm, changes in self.arms.items():
                        overrides = {k: (v, f"{source}: sweep point {where}") for k, v in point.items()}
                        overrides |= {k: (v, f"{source}: arms.{arm}") for k, v in changes.items()}
                        runs.append(ResolvedRun(point, seed, arm, self.run_config(overrides, seed, source)))
            self._runs[source] = tuple(runs)
        return self._runs[source]


def expand_preset(model: dict, source: str) -> dict:
    """Merge the model's own keys over its named preset."""
    name = model.get("preset") if isinstance(model, dict) else None  # a non-mapping is reported by validation
    if name is None:
        return model
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(
            f"{source}: model.preset: unknown preset {name!r}; allowed: {', '.join(sorted(PRESETS))}"
            + did_you_mean(str(name), PRESETS)
        )
    return deep_merge(PRESETS[name], model)
