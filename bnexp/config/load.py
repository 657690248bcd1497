"""An experiment file read: YAML, `--set` and `--sweep` applied, validated by the schema
(bnexp.config.schema) and checked for meaning (bnexp.config.consistency)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bnexp.config.consistency import check_arm_keys, check_conflicts, check_repeated_sweep_values
from bnexp.config.keypaths import load_yaml, parse_override, set_dotted
from bnexp.config.messages import validate
from bnexp.config.schema import ExperimentConfig
from bnexp.errors import ConfigError


def load_config(path: str | Path, overrides: Sequence[str] = (), sweeps: Sequence[str] = (), *,
                deterministic: bool = False) -> ExperimentConfig:
    """Read a YAML experiment file, apply `--set key=value` overrides and `--sweep key=[values]` axes,
    validate it and check that it means one experiment: every setting takes effect and every run differs.
    `deterministic` (the --deterministic option) sets train.deterministic in every run."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.__class__.__name__})") from None
    raw = load_yaml(text, str(path))
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; expected a mapping with keys data, model, train")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    run_overrides, key_sources = {}, {}
    for item in overrides:
        key, value = parse_override(item)
        if key.split(".")[0] in ("data", "model", "train"):
            run_overrides[key] = (value, f"--set {item}")
        else:
            set_dotted(raw, key, value, f"--set {item}")
            key_sources[key] = f"--set {item}"
    if deterministic:
        run_overrides["train.deterministic"] = (True, "--deterministic")
    for item in sweeps:
        key, values = parse_override(item, "--sweep", "'train.learning_rate=[0.01, 0.1]'")
        if not isinstance(values, list):
            raise ConfigError(f"--sweep {item}: expected KEY=[VALUES], a YAML list, e.g. --sweep '{key}=[{values}]'")
        if raw.get("sweep") is None:
            raw["sweep"] = {}
        if isinstance(raw["sweep"], dict):  # else validation names the file's bad sweep
            raw["sweep"][key] = values
            key_sources[f"sweep.{key}"] = f"--sweep {item}"
    raw.setdefault("name", path.stem)
    experiment = validate(ExperimentConfig, raw, str(path), key_sources, context={"overrides": run_overrides})
    sweep_sources = {key: key_sources.get(f"sweep.{key}") or key_sources.get("sweep", f"{path}: sweep.{key}")
                     for key in experiment.sweep}
    check_arm_keys(experiment, path)
    check_conflicts(experiment, sweep_sources)
    # The file as written must be valid too, even where every arm changes what is wrong in it; checked first, so
    # that its errors point at the file, not at a sweep point.
    experiment.run_config({}, experiment.seeds[0], str(path))
    try:
        runs = experiment.resolved_runs(str(path))
    except ConfigError:
        # Name an arm rather than a sweep point when the arm is the cause (expand_runs raises the sweep point's
        # error again when the arms are right).
        for arm, changes in experiment.arms.items():
            experiment.run_config({k: (v, f"{path}: arms.{arm}") for k, v in changes.items()}, experiment.seeds[0],
                                  str(path))
        runs = None
    check_repeated_sweep_values(experiment, path, sweep_sources, runs)
    return experiment
