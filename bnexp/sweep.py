"""Expand an experiment into run specs: grid points x arms x seeds, each with a stable id.

A run id covers the run's config and, for csv/npz data or an image folder, the SHA-256 of its content, so an
edited data file trains again while unchanged data is skipped. The built-in datasets are known by
name (see bnexp.data.fingerprint), so their ids do not depend on where the files came from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bnexp.builders import Builder, check, locate
from bnexp.config.keypaths import point_label
from bnexp.config.schema import DataConfig, ExperimentConfig, RunConfig, older_norm_spelling
from bnexp.config.load import load_config
from bnexp.errors import ConfigError, DataError
from bnexp.norms import DEFAULT_GROUPS, NORMS
from bnexp.store import RunFacts, SpecRecord

# Ends a run id whose data file could not be read: `bnexp plan` lists such runs, `bnexp run` refuses them.
UNKNOWN_DATA = "?"


@dataclass(frozen=True)
class RunSpec:
    """One training run: a fully resolved config plus where it sits in the experiment."""

    experiment: str
    arm: str
    reference_arm: str
    arms: tuple[str, ...]
    seed: int
    point: dict[str, Any]  # swept key -> value
    config: RunConfig
    run_id: str
    data_sha256: str | None = None  # content of the csv/npz file the run reads; None for a built-in dataset
    data_error: str | None = None  # why the file, and so the run id, is unknown (the id ends in UNKNOWN_DATA)
    builder: Builder | None = None  # where model.builder lives; its file's content is part of the run id

    def facts(self) -> RunFacts:
        """What the report needs to know of this run (store.RunFacts), from its typed config."""
        from bnexp.data.datasets import builtin_num_classes

        model = self.config.model
        kind = model.norm_kind
        # PreciseBN recomputes moving statistics, which only BN has (bnexp.callbacks.PreciseBatchNorm).
        norm = NORMS[kind]
        precise = model.batch_norm.precise_stats if norm.moving_statistics else 0
        groups = norm.group_count(model.norm.groups)
        return RunFacts(norm=kind, norm_groups=groups if norm.groups is None else None,
                        precise_stats=precise, builder=model.builder,
                        num_classes=builtin_num_classes(self.config.data.dataset),
                        virtual_batch_size=model.batch_norm.virtual_batch_size if norm.moving_statistics else None)

    def record(self) -> SpecRecord:
        """What spec.json holds (store.write_spec writes it)."""
        record = SpecRecord(
            experiment=self.experiment,
            run_id=self.run_id,
            arm=self.arm,
            reference_arm=self.reference_arm,
            arms=list(self.arms),
            seed=self.seed,
            point=self.point,
            config=self.config.model_dump(mode="json"),
            data_sha256=self.data_sha256,
            facts=self.facts(),
        )
        if self.builder:
            record["builder_sha256"] = self.builder.sha256
        return record


def load_runs(config_file: Path, overrides: Sequence[str] = (), sweeps: Sequence[str] = (),
              data_dir: Path | None = None, *, deterministic: bool = False) -> tuple[ExperimentConfig, list[RunSpec]]:
    """The experiment in `config_file` with `--set` `overrides`, `--sweep` axes and the --deterministic option,
    and its runs, each training a configuration of its own (ConfigError otherwise)."""
    experiment = load_config(config_file, overrides, sweeps, deterministic=deterministic)
    runs = expand_runs(experiment, str(config_file), data_dir)
    check_distinct_runs(runs, str(config_file))
    return experiment, runs


def expand_runs(experiment: ExperimentConfig, source: str, data_dir: Path | None = None) -> list[RunSpec]:
    """Every run of the experiment, grouped by sweep point, then seed, then arm.

    `data_dir` is where relative csv/npz paths are looked for after the current directory (as in
    bnexp.data.load_dataset). A missing file does not stop the expansion: its runs get `data_error`.
    """
    from bnexp.data.datasets import fingerprint

    runs = []
    builders: dict[str, Builder] = {}  # model.builder -> located, imported and its signature checked
    checked_args: set[tuple[str, str]] = set()
    fingerprints: dict[DataConfig, tuple[str | None, str | None]] = {}  # data section -> (sha256, error)
    for resolved in experiment.resolved_runs(source):
        config, arm, seed = resolved.config, resolved.arm, resolved.seed
        if config.data not in fingerprints:
            try:
                fingerprints[config.data] = fingerprint(config.data, data_dir), None
            except DataError as exc:
                fingerprints[config.data] = None, str(exc)
        sha256, error = fingerprints[config.data]
        builder = None
        if config.model.builder:
            builder = builders.get(config.model.builder) or locate(config.model.builder, Path(source))
            builders[config.model.builder] = builder
            args = (config.model.builder, json.dumps(config.model.args, sort_keys=True, default=str))
            if args not in checked_args:
                check(builder, config.model)
                checked_args.add(args)
        identity = run_id(arm, config, sha256, builder.sha256 if builder else None)
        runs.append(RunSpec(experiment.name, arm, experiment.reference_arm, tuple(experiment.arms), seed,
                            dict(resolved.point), config, identity + (UNKNOWN_DATA if error else ""), sha256, error,
                            builder))
    return runs


def check_unchanged(spec: RunSpec, data_dir: Path | None) -> None:
    """ConfigError (the builder) or DataError (the data) when a file the run's id covers no longer holds what
    the run was planned with: trained now, the new content's results would be stored under the old one's id.
    Each run calls it when it starts, so a file edited while a sweep runs stops the sweep."""
    from bnexp.data.datasets import fingerprint

    def stop(what: str, planned: str | None, now: str | None) -> str:
        found = f"sha256 {now[:12]}" if now else "unreadable"
        return (f"{what} changed while the sweep ran: run {spec.run_id} was planned with sha256 {str(planned)[:12]}, "
                f"now {found}; the sweep stops here (results already written stay); run the same command again to "
                f"train the new content under new run ids")

    if spec.builder is not None:
        try:
            now = hashlib.sha256(Path(spec.builder.file).read_bytes()).hexdigest()
        except OSError:
            now = None
        if now != spec.builder.sha256:
            raise ConfigError(stop(f"{spec.builder.file} (model.builder {spec.builder.spec})", spec.builder.sha256, now))
    if spec.data_sha256 is not None:
        try:
            now = fingerprint(spec.config.data, data_dir)
        except DataError:
            now = None
        if now != spec.data_sha256:
            raise DataError(stop(f"{spec.config.data.path} (data.path)", spec.data_sha256, now))


def run_id(arm: str, config: RunConfig, data_sha256: str | None = None, builder_sha256: str | None = None) -> str:
    """`<arm>-s<seed>-<hash>`: the hash covers everything the run depends on (its config as JSON, the
    content of its data file when it reads one, and of its model.builder's source file), so a changed
    value or file gives a new id (and a new run) while an unchanged run keeps its id and is skipped."""
    as_json = config.model_dump(mode="json")
    as_json["model"] = older_norm_spelling(as_json["model"])
    as_json = _without_later_defaults(as_json)
    identity = as_json if data_sha256 is None else {"config": as_json, "data_sha256": data_sha256}
    if builder_sha256 is not None:
        identity = {"config": identity, "builder_sha256": builder_sha256}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
    return f"{arm}-s{config.seed}-{digest}"


# Config fields added after run ids were first handed out (dotted paths). At their default value
# they are left out of the hash, so adding a field keeps every earlier run's id (and its results);
# set to anything else, they count like every other field. Add each new field here.
LATER_FIELDS: dict[str, object] = {
    "data.test_path": None,
    "data.image_size": None,
    "data.color_mode": "rgb",
    "model.norm": {"kind": "batch", "groups": DEFAULT_GROUPS},
    "model.head": "flatten",
    "model.batch_norm.precise_stats": 0,
    "model.batch_norm.virtual_batch_size": None,
    "train.eval_every_steps": 0,
    "train.eval_subset": None,
    "train.activation_stats_every": 0,
    "model.builder": None,
    "model.args": {},
}


def _without_later_defaults(as_json: dict) -> dict:
    for path, default in LATER_FIELDS.items():
        *parents, leaf = path.split(".")
        section = as_json
        for key in parents:
            section = section.get(key) if isinstance(section, dict) else None
        if isinstance(section, dict) and leaf in section and section[leaf] == default:
            del section[leaf]
    return as_json


def check_distinct_runs(runs: list[RunSpec], source: str) -> None:
    """ConfigError when two runs would train the same configuration: under one run id the second
    would be skipped as done, and under two arms a pair would compare a model with itself."""
    seen: dict[str, RunSpec] = {}
    for spec in runs:
        digest = spec.run_id.rsplit("-", 1)[-1]  # the hash of the run's config, whatever its arm
        first = seen.setdefault(digest, spec)
        if first is not spec:
            raise ConfigError(f"{source}: {_describe(first)} and {_describe(spec)} would train the same configuration; "
                              "make every sweep value and every arm change the run")


def _describe(spec: RunSpec) -> str:
    return " ".join([f"arm {spec.arm}", f"seed {spec.seed}", *([point_label(spec.point, " ")] if spec.point else [])])
