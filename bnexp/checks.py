"""What `bnexp plan` and `bnexp run` check before training: that the experiment's
folder holds no other experiment, the data can serve each run (batch size, steps per epoch) and each
model can take the data's shape and fits in memory."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bnexp.builders import Anatomy, Builder
from bnexp.config.schema import RECORDING_FIELDS, ExperimentConfig, ModelConfig, RunConfig, TrainConfig
from bnexp.errors import ConfigError, DataError, ResultsError
from bnexp.machine import physical_memory
from bnexp.optimizers import OPTIMIZERS
from bnexp.store import read_experiment
from bnexp.sweep import RunSpec


@dataclass
class RunsCheck:
    params: dict[tuple, tuple[int, int]] = field(default_factory=dict)  # (trainable, non-trainable) per _model_key
    warnings: list[str] = field(default_factory=list)  # parts of the data too small to mean much
    missing: str | None = None  # why some runs went unchecked: their data file is not there (plan only)
    shapes: dict = field(default_factory=dict)  # DataConfig -> (input_shape, num_classes) of each checked dataset
    anatomies: dict = field(default_factory=dict)  # bnexp.builders.Anatomy per _model_key


def check_same_experiment(experiment: ExperimentConfig, runs: list[RunSpec], results_dir: Path,
                          config_file: Path) -> None:
    """ConfigError when the experiment's folder holds another config file's experiment with other runs:
    mixing them would report two experiments as one. The same file, edited, may add runs (a resumed sweep)."""
    try:
        record = read_experiment(results_dir / experiment.name)
    except (OSError, ValueError, ResultsError):  # damaged, or in another format: check_results_dir refuses it
        return
    if record is None or not isinstance(record.get("config_file"), str):
        return
    previous = Path(record["config_file"])
    if previous.resolve() == config_file.resolve() or set(record.get("run_ids") or []) == {s.run_id for s in runs}:
        return
    raise ConfigError(
        f"{config_file}: {results_dir / experiment.name} holds experiment '{experiment.name}' of {previous}, "
        f"with other runs; give {config_file} another name: (or use another --results folder)"
    )


def check_data(runs: list[RunSpec], data_dir: Path | None) -> RunsCheck:
    """Load each distinct dataset and build each distinct model (without its weights) once, so missing
    or unusable data, or a model it cannot feed, stops the sweep before any training (DataError);
    warnings about parts too small to mean much are printed once."""
    checked = check_runs(runs, data_dir, strict=True)
    for warning in checked.warnings:
        print(f"Warning: {warning}", file=sys.stderr, flush=True)
    return checked


def audit_builders_apart(runs: list[RunSpec], checked: RunsCheck) -> list[str]:
    """audit_builders for `bnexp run`, in a child process of its own: the audit allocates every arm's weights,
    which in the driver would start the backend on a device the workers need. Nothing to do (no process) when
    no run has a model.builder."""
    if not any(spec.builder for spec in runs):
        return []
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(audit_builders, runs, checked).result()


def check_runs(runs: list[RunSpec], data_dir: Path | None, *, strict: bool) -> RunsCheck:
    """Check every run against its data, loading each distinct dataset and building each distinct model
    (without its weights) once; DataError, one line naming the data file and the key, for the first
    run that cannot train.

    strict (`bnexp run`): every dataset is loaded (a built-in one downloaded if need be) and a missing
    file is an error. Otherwise (`bnexp plan`) a built-in dataset's shape comes from its published
    constants, without reading it, and the runs of a missing csv/npz file are left unchecked.
    """
    from bnexp.data.datasets import dataset_info, load_dataset

    checked, datasets = RunsCheck(), {}
    for spec in runs:
        if spec.data_error:
            if strict:
                raise DataError(spec.data_error)
            checked.missing = spec.data_error
            continue
        config = spec.config
        if config.data not in datasets:
            if strict or config.data.dataset in ("csv", "npz"):
                dataset = load_dataset(config.data, data_dir)
                datasets[config.data] = (dataset.name, dataset.input_shape, dataset.num_classes, len(dataset.x_train))
                checked.warnings += dataset.warnings
            else:
                datasets[config.data] = (config.data.dataset, *dataset_info(config.data, data_dir), None)
        name, input_shape, num_classes, train_samples = datasets[config.data]
        checked.shapes[config.data] = input_shape, num_classes
        if train_samples is not None:
            _check_batches(config, name, train_samples)
        key = model_key(spec)
        if key not in checked.params:
            checked.params[key], checked.anatomies[key] = _check_model(config, name, input_shape, num_classes,
                                                                       spec.builder)
        _check_memory(config.train, checked.params[key], name, input_shape)
    _check_arms(runs, checked)
    _check_meaning(runs, checked)
    return checked


# Settings that act only under others, and what they need: a setting no run meets trains nothing new.
_USED_WHEN: dict[str, tuple[Callable[[RunConfig], bool], str]] = {
    "train.momentum": (lambda c: c.train.optimizer in ("sgd", "rmsprop"), "optimizer sgd or rmsprop"),
    "train.nesterov": (lambda c: c.train.optimizer == "sgd" and c.train.momentum > 0,
                       "optimizer sgd with train.momentum > 0"),
    "train.decay_steps": (lambda c: c.train.schedule != "constant", "schedule exponential or inverse_time"),
    "train.decay_rate": (lambda c: c.train.schedule != "constant", "schedule exponential or inverse_time"),
    "train.staircase": (lambda c: c.train.schedule != "constant", "schedule exponential or inverse_time"),
    "model.batch_norm.precise_stats": (lambda c: c.model.norm_kind in ("batch", "batch_renorm"),
                                       "an arm of model.norm.kind batch or batch_renorm"),
    "model.batch_norm.momentum": (lambda c: c.model.norm_kind in ("batch", "batch_renorm"),
                                  "an arm of model.norm.kind batch or batch_renorm"),
    "model.norm.groups": (lambda c: c.model.norm_kind == "group", "an arm of model.norm.kind group"),
}


def _check_meaning(runs: list[RunSpec], checked: RunsCheck) -> None:
    """ConfigError for a sweep axis that changes nothing in any run (every value would train the same networks
    again, and the report would show seed noise as its effect); a warning for a setting that changes nothing.

    A setting acts only under others (_USED_WHEN); a model.* axis changes nothing when every value builds
    the same graph (bnexp.builders.Anatomy: the same layers with the same configuration) in every arm."""
    axes = list(runs[0].point) if runs else []
    for key in axes:
        values = list({json.dumps(spec.point[key], sort_keys=True, default=str): spec.point[key]
                       for spec in runs}.values())
        if len(values) < 2:
            continue
        why = "it changes what is recorded, not what is trained" if key in RECORDING_FIELDS else _unused(key, runs)
        if why is None and key.startswith("model.") and key != "model.batch_norm.precise_stats":
            why = _same_networks(key, runs, checked)
        if why:
            raise ConfigError(f"sweep {key}: {values} changes nothing in any run: {why}; every value would train "
                              f"the same networks again, and the report would show seed noise as its effect; remove "
                              f"the axis")
    for key, (used, needs) in _USED_WHEN.items():
        if key in axes or not runs:
            continue
        section, field_name = key.split(".", 1)
        default = _default(section, field_name)
        set_values = {str(_value(spec.config, key)) for spec in runs if _value(spec.config, key) != default}
        if set_values and not any(used(spec.config) for spec in runs):
            checked.warnings.append(f"{key}: {', '.join(sorted(set_values))} changes nothing: it acts only with "
                                    f"{needs}, which no run has")


def _unused(key: str, runs: list[RunSpec]) -> str | None:
    if key in _USED_WHEN:
        used, needs = _USED_WHEN[key]
        if not any(used(spec.config) for spec in runs):
            return f"it acts only with {needs}, which no run has"
    return None


def _same_networks(key: str, runs: list[RunSpec], checked: RunsCheck) -> str | None:
    """Why every value of the model.* axis `key` builds the same network in every arm, or None."""
    import inspect

    groups: dict[tuple, set] = {}
    for spec in runs:
        anatomy = checked.anatomies.get(model_key(spec))
        if anatomy is None:  # its data went unchecked (plan, a missing file): nothing to compare
            return None
        rest = json.dumps({k: v for k, v in spec.point.items() if k != key}, sort_keys=True, default=str)
        groups.setdefault((spec.arm, spec.seed, rest), set()).add(anatomy)
    if any(len(found) > 1 for found in groups.values()):
        return None
    arms = ", ".join(dict.fromkeys(f"{spec.arm} ({spec.config.model.norm_kind})" for spec in runs))
    if key.startswith("model.args.") and runs[0].builder:
        builder = runs[0].builder
        try:
            named = key.split(".")[2] in inspect.signature(builder.load()).parameters
        except (TypeError, ValueError):
            named = True
        if named:  # it may change what Keras does not record (a seed, a closure): say so, do not refuse
            return None
        return (f"{builder.function} takes it only through **kwargs, and every value builds the same layers with "
                f"the same settings in arms {arms}")
    return f"every value builds the same layers with the same settings in arms {arms}"


def _default(section: str, path: str):
    # model_construct: the defaults alone, which as a whole model (no hidden layer) would not validate
    config = {"train": TrainConfig.model_construct(), "model": ModelConfig.model_construct()}[section]
    for part in path.split("."):
        config = getattr(config, part)
    return config


def _value(config: RunConfig, key: str):
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _check_batches(config: RunConfig, name: str, samples: int) -> None:
    """Refuse a batch, an epoch or a count of batches the training part cannot fill, and step
    evaluations that would never fall inside an epoch: training would silently do less than asked."""
    train = config.train
    if train.batch_size > samples:
        raise DataError(
            f"{name}: train.batch_size: {train.batch_size} is more than the {samples} samples of the training part "
            f"(after data.train_subset and data.validation_split); allowed: 1 to {samples}"
        )
    batches = math.ceil(samples / train.batch_size)
    if train.steps_per_epoch and train.steps_per_epoch > batches:
        raise DataError(
            f"{name}: train.steps_per_epoch: {train.steps_per_epoch} is more than the {batches} batches of "
            f"{train.batch_size} that the {samples} training samples give (an epoch sees each sample at most once); "
            f"allowed: 1 to {batches}, or leave it unset for the whole training part"
        )
    batches = train.steps_per_epoch or batches
    precise = config.model.batch_norm.precise_stats
    if precise > batches:
        raise DataError(
            f"{name}: model.batch_norm.precise_stats: {precise} is more than the {batches} training batches of an "
            f"epoch (batch_size {train.batch_size}); allowed: 1 to {batches}, or 0 for Keras' moving averages"
        )
    every, steps = train.eval_every_steps, batches * train.epochs
    if every and not any(step % batches for step in range(every, steps, every)):
        raise DataError(
            f"{name}: train.eval_every_steps: {every} never falls inside an epoch of {batches} steps in the "
            f"{steps} steps of training (epoch ends have their own validation); allowed: a number of steps "
            f"below {steps} that is not a multiple of {batches}, or 0"
        )


def _check_model(config: RunConfig, name: str, input_shape: tuple[int, ...], num_classes: int,
                 builder: Builder | None) -> tuple[tuple[int, int], Anatomy]:
    from bnexp.models import inspect_model

    try:
        return inspect_model(config.model, input_shape, num_classes, builder)
    except DataError as exc:
        raise DataError(f"{name}: {exc}") from None


def _check_memory(train: TrainConfig, params: tuple[int, int], name: str, input_shape: tuple[int, ...]) -> None:
    """Refuse a model whose float32 weights, gradients and optimizer slots alone exceed this machine's
    memory (a lower bound: the activations of a batch come on top)."""
    trainable, frozen = params
    slots = OPTIMIZERS[train.optimizer].slot_count(train.momentum)
    needed, available = 4 * (trainable * (2 + slots) + frozen), physical_memory()
    if available and needed > available:
        raise DataError(
            f"{name}: model: {trainable:,} trainable and {frozen:,} non-trainable parameters for inputs of shape "
            f"{input_shape} need at least {needed / 2**30:.1f} GiB to train with {train.optimizer} (float32 weights, "
            f"gradients and {slots} optimizer slot(s) per weight) but this machine has {available / 2**30:.1f} GiB; "
            f"make model.dense or model.conv smaller, or pool more before the dense layers"
        )




def model_key(spec: RunSpec) -> tuple:
    return spec.config.model, spec.config.data, spec.builder


def audit_builders(runs: list[RunSpec], checked: RunsCheck) -> list[str]:
    """For each distinct pair of a model.builder's networks, build every arm with its weights (first seed), one
    arm at a time, and say how many layers start alike (bnexp.builders.audit_pair; ConfigError when one does
    not), on the data shapes `checked` found (runs whose data went unchecked are not audited). `bnexp run` calls
    it through audit_builders_apart."""
    from bnexp.builders import audit_pair
    from bnexp.models import build_model

    lines, audited = [], set()
    for pair in _pairs(runs, checked, first_seed=True):
        # Arms that set other model.args themselves ask for other layers, whose weights cannot match.
        pair = [spec for spec in pair if spec.config.model.args == pair[0].config.model.args]
        key = tuple(model_key(spec) for spec in pair)
        if key in audited or len(pair) < 2:
            continue
        audited.add(key)
        input_shape, num_classes = checked.shapes[pair[0].config.data]

        def maker(spec):
            return lambda: build_model(spec.config.model, input_shape, num_classes, spec.seed, spec.builder)

        line = audit_pair(pair[0].builder, [(spec.arm, maker(spec)) for spec in pair], pair[0].seed)
        if line not in lines:
            lines.append(line)
    return lines


def _pairs(runs: list[RunSpec], checked: RunsCheck, first_seed: bool = False) -> list[list[RunSpec]]:
    """The runs of a model.builder whose data was checked, grouped by sweep point and seed (the reference arm
    first); only the first seed's with `first_seed`."""
    groups: dict[tuple, list[RunSpec]] = {}
    for spec in runs:
        if spec.builder and spec.config.data in checked.shapes and (not first_seed or spec.seed == runs[0].seed):
            groups.setdefault((spec.seed, json.dumps(spec.point, sort_keys=True, default=str)), []).append(spec)
    return [sorted(pair, key=lambda spec: spec.arm != spec.reference_arm) for pair in groups.values()]


# Keras' normalisation layers: one a builder makes itself, rather than through norm(x), is in every arm.
_NORMALISATIONS = {"BatchNormalization", "GroupNormalization", "LayerNormalization", "UnitNormalization",
                   "RMSNormalization", "SpectralNormalization"}


def _check_arms(runs: list[RunSpec], checked: RunsCheck) -> None:
    """ConfigError when the arms of a model.builder's pair build networks that differ in more than the
    normalisation (bnexp.builders.differences), read from the graphs check_runs built, unless the arms set
    model.args differently themselves; a warning for an arm without normalisation that makes its own."""
    from bnexp.builders import differences

    for pair in _pairs(runs, checked):
        for spec in pair:
            own = [kind for kind, _, _ in checked.anatomies[model_key(spec)].layers if kind in _NORMALISATIONS]
            warning = (f"{spec.builder.where}: arm {spec.arm} (model.norm.kind none) still has "
                       f"{len(own)} normalisation layer(s) of the builder's own ({', '.join(sorted(set(own)))}), in "
                       f"every arm: the pairs compare norm(x)'s normalisation, not a network with and without one")
            if own and spec.config.model.norm_kind == "none" and warning not in checked.warnings:
                checked.warnings.append(warning)
        reference = pair[0]
        for spec in pair[1:]:
            if spec.config.model.args != reference.config.model.args:  # the arms ask for other networks themselves
                continue
            found = differences((reference.arm, checked.anatomies[model_key(reference)]),
                                (spec.arm, checked.anatomies[model_key(spec)]))
            if found:
                raise ConfigError(f"{spec.builder.where}: the arms differ in more than the normalisation: "
                                  f"{found}; build the same layers with the same settings in every arm and let "
                                  f"norm(x) make the only difference")
