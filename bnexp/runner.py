"""Run an experiment (`bnexp run`): check everything, record the experiment, then train every run
not complete yet through an executor (bnexp.executors), showing progress and a summary."""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bnexp import store
from bnexp.config.schema import ExperimentConfig
from bnexp.executors import (NOT_TRAINED, RETRIED, SKIPPED, Executor, RunContext, check_executor_options, check_tensorboard,
                             make_executor, run_sequential)
from bnexp.config.keypaths import short_key
from bnexp.metrics import EPOCH_METRICS
from bnexp.checks import check_data, check_same_experiment
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
    deterministic_override = ["train.deterministic=true"] if deterministic else []
    experiment, runs = load_runs(config_file, [*overrides, *deterministic_override], sweeps, data_dir)
    check_same_experiment(experiment, runs, results_dir, config_file)
    todo = pending_runs(runs, results_dir)
    store.check_results_dir(results_dir, experiment.name, [spec.run_id for spec in runs])  # cheap: before loading data
    check_data(todo, data_dir)
    # With nothing to train, no executor starts (nor connects to a Ray cluster).
    execute = make_executor(executor, workers, address, cpus_per_run, gpus_per_run) if todo else run_sequential
    write_experiment(experiment, runs, results_dir, config_file)
    return run_sweep(runs, RunContext(results_dir, data_dir, tensorboard=tensorboard), execute, SweepProgress(quiet))


def pending_runs(runs: list[RunSpec], results_dir: Path) -> list[RunSpec]:
    """The runs without a final record (never started, interrupted or failed)."""
    return [spec for spec in runs if not store.is_complete(store.run_dir(results_dir, spec.experiment, spec.run_id))]


def write_experiment(experiment: ExperimentConfig, runs: list[RunSpec], results_dir: Path,
                     config_file: str | Path) -> None:
    """Record the experiment as planned now in its experiment.json."""
    store.write_experiment(results_dir / experiment.name, store.ExperimentRecord(
        experiment=experiment.name,
        description=experiment.description,
        config_file=str(Path(config_file).resolve()),  # absolute: check_same_experiment compares it from any folder
        sweep_keys=list(experiment.sweep),
        arms=list(experiment.arms),
        reference_arm=experiment.reference_arm,
        seeds=experiment.seeds,
        run_ids=[spec.run_id for spec in runs],
    ))


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
        if result["status"] == SKIPPED:
            self.skipped += 1
        elif result["status"] == store.RUNNING:
            self.elsewhere += 1
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
        elif not self.quiet and result["status"] in NOT_TRAINED:
            print(f"[{self.done}/{self.total}] {spec.run_id} {_point(spec)} not trained here: "
                  f"{NOT_TRAINED[result['status']]}", flush=True)
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
    return " ".join(f"{short_key(k)}={v}" for k, v in spec.point.items())
