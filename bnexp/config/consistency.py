"""What an experiment means, checked after its form (bnexp.config.schema validates the form): the arms of a pair
differ only where an arm may change them, and every sweep value, --set and arm takes effect."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from bnexp.config.schema import ARM_SECTIONS, DEFAULT_ARMS, ExperimentConfig, ResolvedRun
from bnexp.errors import ConfigError
from bnexp.config.keypaths import covers, get_dotted, thaw
from bnexp.config.messages import did_you_mean, format_value


def check_arm_keys(experiment: ExperimentConfig, path: Path) -> None:
    """An arm may change only the model and the training: not the data or the seed its pair shares."""
    for arm, changes in experiment.arms.items():
        for key in changes:
            section = key.split(".")[0]
            if section in ARM_SECTIONS:
                continue
            where = f"{path}: arms.{arm}.{key}"
            if section == "seed":
                raise ConfigError(f"{where}: an arm may not set the seed: the arms of a pair share each seed; "
                                  "list the seeds in seeds:")
            if section == "data":
                raise ConfigError(f"{where}: an arm may not change the data: the arms of a pair must see the same "
                                  f"data; sweep it instead (sweep: {{{key}: [...]}}) or write a second config")
            raise ConfigError(f"{where}: unknown key; an arm may set only model.* and train.* keys"
                              + did_you_mean(section, ARM_SECTIONS))


def check_conflicts(experiment: ExperimentConfig, sweep_sources: dict[str, str]) -> None:
    """A swept key no arm overrides, and no --set that a sweep axis or every arm would override."""
    for key, source in sweep_sources.items():
        for arm, changes in experiment.arms.items():
            covering = next((k for k in changes if covers(k, key)), None)
            if covering:
                raise ConfigError(
                    f"{source}: arm {arm!r} sets {covering} too, so this sweep would not change its runs; "
                    f"sweep another key, or take {covering} out of the arms"
                    + (" (arms: {run: {}} gives one arm whose runs the sweep tells apart)"
                       if experiment.arms == DEFAULT_ARMS else ""))
    for key, (value, source) in experiment.overrides.items():
        swept = next((k for k in experiment.sweep if covers(k, key)), None)
        if swept:
            raise ConfigError(f"{source}: {key} is swept (sweep.{swept}), so this --set would be ignored; "
                              f"to change the swept values use --sweep '{swept}=[...]'")
        arm_keys = [next((k for k in changes if covers(k, key)), None) for changes in experiment.arms.values()]
        if all(arm_keys):
            raise ConfigError(f"{source}: every arm sets {arm_keys[0]} ({', '.join(experiment.arms)}), so this --set "
                              "would be ignored; change the arms instead, e.g. --set 'arms={...}'")


def check_repeated_sweep_values(experiment: ExperimentConfig, path: Path, sweep_sources: dict[str, str],
                                runs: Sequence[ResolvedRun] | None = None) -> None:
    """No sweep axis lists a value twice, also after reading (0.1 and 1.0e-1, '1e-3' and 0.001). The values are
    read from the validated `runs` when there are (every run valid), else from a run per value on its own."""
    for key, values in experiment.sweep.items():
        seen = {}
        for index, value in enumerate(values, 1):
            resolved = next((run.config for run in runs if run.point[key] == thaw(value)), None) if runs else None
            if runs is None:
                try:
                    resolved = experiment.run_config({key: (value, "")}, experiment.seeds[0], str(path))
                except ConfigError:
                    # Invalid, or valid only with another axis's value: expand_runs names its sweep point,
                    # and check_distinct_runs catches a repeat among such values.
                    continue
            canonical = json.dumps(get_dotted(resolved.model_dump(mode="json"), key), sort_keys=True)
            if canonical in seen:
                first, first_value = seen[canonical]
                raise ConfigError(f"{sweep_sources[key]}: values {first} ({format_value(thaw(first_value))}) and "
                                  f"{index} ({format_value(thaw(value))}) are the same {key}; list each value once")
            seen[canonical] = (index, value)
