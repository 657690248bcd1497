"""Expand an experiment into run specs: grid points x arms x seeds, each with a stable id."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from bnexp import RESULTS_FORMAT, __version__
from bnexp.config import ExperimentConfig


@dataclass(frozen=True)
class RunSpec:
    """One training run: a fully resolved config plus where it sits in the experiment."""

    experiment: str
    arm: str
    reference_arm: str
    arms: tuple[str, ...]
    seed: int
    point: dict[str, Any]  # swept key -> value
    config: dict[str, Any]  # RunConfig as JSON: data, model, train, seed
    run_id: str

    def record(self) -> dict[str, Any]:
        """The spec.json content."""
        return {
            "format": RESULTS_FORMAT,
            "bnexp_version": __version__,
            "experiment": self.experiment,
            "run_id": self.run_id,
            "arm": self.arm,
            "reference_arm": self.reference_arm,
            "arms": list(self.arms),
            "seed": self.seed,
            "point": self.point,
            "config": self.config,
        }


def expand_runs(experiment: ExperimentConfig, source: str) -> list[RunSpec]:
    """Every run of the experiment, grouped by sweep point, then seed, then arm."""
    keys = list(experiment.sweep)
    runs = []
    for values in itertools.product(*(experiment.sweep[k] for k in keys)):
        point = dict(zip(keys, values))
        where = ", ".join(f"{k}={v}" for k, v in point.items())
        for seed in experiment.seeds:
            for arm, changes in experiment.arms.items():
                overrides = {k: (v, f"{source}: sweep point {where}") for k, v in point.items()}
                overrides |= {k: (v, f"{source}: arms.{arm}") for k, v in changes.items()}
                config = experiment.run_config(overrides, seed, source).model_dump(mode="json")
                runs.append(RunSpec(experiment.name, arm, experiment.reference, tuple(experiment.arms), seed, point,
                                    config, run_id(arm, config)))
    return runs


def run_id(arm: str, config: dict[str, Any]) -> str:
    """`<arm>-s<seed>-<hash>`: the hash covers everything the run depends on, so a changed value
    gives a new id (and a new run) while an unchanged run keeps its id and is skipped."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
    return f"{arm}-s{config['seed']}-{digest}"
