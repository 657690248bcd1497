"""Run an experiment (`bnexp run`): check everything, record the experiment, then train every run
not complete yet through an executor (bnexp.executors), showing progress and a summary."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bnexp import store
from bnexp.config.schema import ExperimentConfig
from bnexp.errors import ResultsError
from bnexp.executors import (RETRIED, Executor, NotTrained, RunContext, check_executor_options, check_tensorboard,
                             make_executor, run_sequential)
from bnexp.config.keypaths import point_label
from bnexp.metrics import EPOCH_METRICS
from bnexp.checks import audit_builders_apart, check_data, check_same_experiment
from bnexp.sweep import RunSpec, load_runs


def run_experiment(config_file: Path, overrides: Sequence[str] = (), sweeps: Sequence[str] = (), *,
                   results_dir: Path = Path("results"), data_dir: Path | None = None, deterministic: bool = False,
                   tensorboard: bool = False, executor: str | None = None, workers: int | None = None,
                   address: str | None = None, cpus_per_run: float | None = None, gpus_per_run: float | None = None,
                   quiet: bool = False) -> SweepSummary:
    """Train every run of the experiment in `config_file` that is not complete yet; the summary says
    what happened (`interrupted` on Ctrl-C: the same call resumes).

    `overrides` and `sweeps` are `--set KEY=VALUE` and `--sweep KEY=[VALUES]` items; `executor` is
    processes, sequential or ray (None: ray with an `address`, else processes), and the options
    it does not use must be None. Everything is checked before anything is written: the options
    (ConfigError), the config and its runs, the results folder (ResultsError), the data and each model
    (DataError), the Ray cluster (BnexpError). Then experiment.json is written and the runs train.
    """
    config_file, results_dir = Path(config_file), Path(results_dir)
    executor = check_executor_options(executor, workers, address, cpus_per_run, gpus_per_run)
    if tensorboard:
        check_tensorboard()
    experiment, runs = load_runs(config_file, overrides, sweeps, data_dir, deterministic=deterministic)
    check_same_experiment(experiment, runs, results_dir, config_file)
    todo = pending_runs(runs, results_dir)
    store.check_results_dir(results_dir, experiment.name, [spec.run_id for spec in runs])  # cheap: before loading data
    checked = check_data(todo, data_dir)
    audit_builders_apart(runs, checked)  # the weight audit `bnexp plan` shows: one line (ConfigError) when it fails
    # With nothing to train, no executor starts (nor connects to a Ray cluster).
    execute = make_executor(executor, workers, address, cpus_per_run, gpus_per_run) if todo else run_sequential
    write_experiment(experiment, runs, results_dir, config_file)
    return run_sweep(runs, RunContext(results_dir, data_dir, tensorboard=tensorboard), execute, SweepProgress(quiet))


def pending_runs(runs: list[RunSpec], results_dir: Path) -> list[RunSpec]:
    """The runs without a final record (never started, interrupted or failed)."""
    return [spec for spec in runs
            if not store.open_run(store.run_dir(results_dir, spec.experiment, spec.run_id)).is_complete]


def write_experiment(experiment: ExperimentConfig, runs: list[RunSpec], results_dir: Path,
                     config_file: str | Path) -> None:
    """Record the experiment as planned now in its experiment.json, with the runs an earlier plan
    started that this one only left out (earlier_runs): they stay results of the experiment."""
    folder = results_dir / experiment.name
    kept = earlier_runs(folder, runs)
    store.write_experiment(folder, store.ExperimentRecord(
        experiment=experiment.name,
        description=experiment.description,
        config_file=str(Path(config_file).resolve()),  # absolute: check_same_experiment compares it from any folder
        sweep_keys=list(experiment.sweep),
        arms=list(experiment.arms),
        reference_arm=experiment.reference_arm,
        seeds=sorted({*experiment.seeds, *kept.values()}),
        run_ids=[*kept, *(spec.run_id for spec in runs if spec.run_id not in kept)],
    ))


def earlier_runs(folder: Path, runs: list[RunSpec]) -> dict[str, int]:
    """The runs (id -> seed) of the experiment's last plan that started and that `runs` left out without
    replacing them: a narrower --sweep or seed list keeps them, as they are the same runs at other sweep
    points or seeds. A run whose settings apart from its sweep point and seed differ from every planned
    run of its arm (an edited config, --set) was replaced, and is dropped as before."""
    try:
        record = store.read_experiment(folder)
    except (OSError, ValueError, ResultsError):  # damaged or another format: check_results_dir refuses it
        return {}
    if not record or not isinstance(record.get("run_ids"), list):
        return {}
    current = {spec.run_id for spec in runs}
    settings = {_setting(spec.record()) for spec in runs}
    places = {(spec.arm, spec.seed, _canonical(spec.point)) for spec in runs}
    kept = {}
    for run_id in dict.fromkeys(str(run_id) for run_id in record["run_ids"] if str(run_id) not in current):
        try:
            spec = store.read_spec(folder / run_id)
        except (OSError, ValueError, ResultsError):  # never started, or unreadable: not a result
            continue
        point = spec.get("point") or {}
        if (spec["arm"], spec["seed"], _canonical(point)) not in places and _setting(spec) in settings:
            kept[run_id] = spec["seed"]
    return kept


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _setting(spec: dict) -> str:
    """What a run is apart from its seed and its sweep point: arm, config and file fingerprints."""
    config = json.loads(_canonical(spec.get("config") or {}))
    config.pop("seed", None)
    for key in spec.get("point") or {}:
        *parents, leaf = key.split(".")
        section = config
        for name in parents:
            section = section.get(name) if isinstance(section, dict) else None
        if isinstance(section, dict):
            section.pop(leaf, None)
    return _canonical({"arm": spec.get("arm"), "config": config, "data_sha256": spec.get("data_sha256"),
                       "builder_sha256": spec.get("builder_sha256")})


@dataclass
class SweepSummary:
    total: int
    skipped: int  # complete before this sweep, or completed meanwhile by another process
    statuses: Counter = field(default_factory=Counter)  # of the runs this process trained
    elsewhere: int = 0  # being trained by another process when their turn came
    interrupted: bool = False
    retried: int = 0  # runs submitted again after their Ray node or worker was lost

    @property
    def left(self) -> int:
        return self.total - self.skipped - self.elsewhere - sum(self.statuses.values())

    def add(self, result: dict) -> None:
        self.retried += bool(result.get(RETRIED))
        if isinstance(result, NotTrained) and result["status"] == store.RUNNING:
            self.elsewhere += 1
        elif isinstance(result, NotTrained):
            self.skipped += 1
        else:
            self.statuses[result["status"]] += 1

    @property
    def failed(self) -> int:
        """Runs this process trained that failed: the next `bnexp run` retries them."""
        return self.statuses[store.FAILED]

    def line(self) -> str:
        done = ", ".join(f"{n} {status}" for status, n in sorted(self.statuses.items())) or "none trained"
        elsewhere = f"{self.elsewhere} running in another bnexp process; " if self.elsewhere else ""
        line = (f"{self.total} runs: {done}; {self.skipped} already complete (skipped); "
                f"{elsewhere}{self.left} left")
        if self.retried:
            line += f"; {self.retried} retried after losing their Ray node or worker"
        if self.interrupted:
            line = f"interrupted: {line} (run the same command again to resume)"
        return line


def run_sweep(runs: list[RunSpec], context: RunContext, executor: Executor, progress: SweepProgress) -> SweepSummary:
    """Train every pending run; stops early only on KeyboardInterrupt, returning the summary so far
    with `interrupted` set (an interrupted run resumes from its last finished epoch next time)."""
    todo = pending_runs(runs, context.results_dir)
    summary = SweepSummary(total=len(runs), skipped=len(runs) - len(todo))
    context.on_epoch = progress.epoch_done
    with progress.start(len(todo)):
        try:
            for spec, result in executor(todo, context):
                summary.add(result)
                progress.run_done(spec, result)
        except KeyboardInterrupt:
            summary.interrupted = True
    return summary


class SweepProgress:
    """Runs done/total with ETA and the current run's last epoch; one plain line per run when the
    output is not a terminal (CI logs); only the summary with `quiet`."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.live = not quiet and sys.stderr.isatty()
        self._bar = None

    def start(self, total: int):
        self.total, self.done, self.started = total, 0, time.perf_counter()
        if not self.live:
            return contextlib.nullcontext()
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._bar = Progress(
            TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[current]}"),
            transient=False,
        )
        self._task = self._bar.add_task("sweep", total=total, current="")
        return self._bar

    def epoch_done(self, spec: RunSpec, record: dict) -> None:
        if self._bar is not None:
            self._bar.update(self._task, current=f"{spec.run_id} epoch {record['epoch']}: {_metrics(record)}")

    def run_done(self, spec: RunSpec, result: dict) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1)
        elif not self.quiet and isinstance(result, NotTrained):
            print(f"[{self.done}/{self.total}] {spec.run_id} {_point(spec)} not trained here: {result.reason}",
                  flush=True)
        elif not self.quiet:
            elapsed = time.perf_counter() - self.started
            eta = elapsed / self.done * (self.total - self.done)
            outcome = (f"test error {result['test_error']:.4f}" if result["status"] == store.COMPLETED
                       else result.get("error") or f"epoch {result.get('diverged_epoch')}")
            print(f"[{self.done}/{self.total}] {spec.run_id} {_point(spec)} {result['status']}: {outcome} "
                  f"({result['wall_seconds']:.1f}s, ETA {eta:.0f}s)", flush=True)


def _metrics(record: dict) -> str:
    return " ".join(f"{k} {record[k]:.4f}" for k in EPOCH_METRICS if record.get(k) is not None)


def _point(spec: RunSpec) -> str:
    return point_label(spec.point, " ", short=True)
