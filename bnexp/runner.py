"""Run a sweep: skip completed runs, train the others through an executor, show progress.

An executor is a function `(runs, context) -> iterator of (RunSpec, result record)`; it may
train in this process, in worker processes or on a cluster, and yields each run as it ends.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from bnexp import RESULTS_FORMAT, __version__
from bnexp.config import ExperimentConfig
from bnexp.errors import ConfigError
from bnexp.store import EXPERIMENT, RunLocked, is_complete, read_json, run_lock, write_json
from bnexp.sweep import RunSpec


@dataclass
class RunContext:
    """What every run of a sweep shares, whichever executor trains it."""

    results_dir: Path
    data_dir: Path | None
    tensorboard: bool = False
    on_epoch: Callable[[RunSpec, dict], None] | None = None

    def run_dir(self, spec: RunSpec) -> Path:
        return self.results_dir / spec.experiment / spec.run_id


Executor = Callable[[list[RunSpec], RunContext], Iterator[tuple[RunSpec, dict]]]


# Records for runs this process did not train; never written to disk.
NOT_TRAINED = {
    "running": "another bnexp process is training it",
    "skipped": "another bnexp process completed it",
}


# `bnexp status` takes a run's lock for an instant to see whether it is held; waiting this long
# keeps such a look from making a sweep skip the run.
LOCK_WAIT = 1.0


@contextlib.contextmanager
def claim_run(run_dir: Path) -> Iterator[dict | None]:
    """Hold the run's lock while the caller trains it; yields None when the run is this process's to
    train, else the record saying why not (status `running` or `skipped`, see NOT_TRAINED).

    Holding the lock while training is what lets several `bnexp run` share a results folder: a run
    locked by another process, or completed by one since this sweep was planned, is not trained again.
    """
    try:
        with run_lock(run_dir, wait=LOCK_WAIT):
            yield {"status": "skipped"} if is_complete(run_dir) else None
    except RunLocked:
        yield {"status": "running"}


def train_one(spec: RunSpec, context: RunContext) -> dict:
    """Claim and train one run into its folder: what every executor calls for a run that trains
    where its results are stored."""
    from bnexp.train import train_run

    run_dir = context.run_dir(spec)
    with claim_run(run_dir) as not_trained:
        if not_trained:
            return not_trained
        return train_run(spec, run_dir, context.data_dir,
                         tensorboard=context.tensorboard, on_epoch=context.on_epoch)


def run_sequential(runs: list[RunSpec], context: RunContext) -> Iterator[tuple[RunSpec, dict]]:
    """Train the runs one after another in this process."""
    for spec in runs:
        yield spec, train_one(spec, context)


def pending_runs(runs: list[RunSpec], results_dir: Path) -> list[RunSpec]:
    """The runs without a final record (never started, interrupted or failed)."""
    return [spec for spec in runs if not is_complete(results_dir / spec.experiment / spec.run_id)]


def check_data(runs: list[RunSpec], data_dir: Path | None) -> None:
    """Load each distinct dataset and build each distinct model (without its weights) once, so missing
    or unusable data, or a model it cannot feed, stops the sweep before any training (DataError);
    warnings about parts too small to mean much are printed once."""
    from bnexp.planning import check_runs

    for warning in check_runs(runs, data_dir, strict=True).warnings:
        print(f"Warning: {warning}", file=sys.stderr, flush=True)


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
    return " ".join([f"arm {spec.arm}", f"seed {spec.seed}", *(f"{k}={v}" for k, v in spec.point.items())])


def check_same_experiment(experiment: ExperimentConfig, runs: list[RunSpec], results_dir: Path,
                          config_file: Path) -> None:
    """ConfigError when the experiment's folder holds another config file's experiment with other runs:
    mixing them would report two experiments as one. The same file, edited, may add runs (a resumed sweep)."""
    record = read_json(results_dir / experiment.name / EXPERIMENT)
    if not isinstance(record, dict) or not isinstance(record.get("config_file"), str):
        return
    previous = Path(record["config_file"])
    if previous.resolve() == config_file.resolve() or set(record.get("run_ids") or []) == {s.run_id for s in runs}:
        return
    raise ConfigError(
        f"{config_file}: {results_dir / experiment.name} holds experiment '{experiment.name}' of {previous}, "
        f"with other runs; give {config_file} another name: (or use another --results folder)"
    )


@contextlib.contextmanager
def removed_if_refused(folder: Path) -> Iterator[None]:
    """Remove `folder` and its parents that the block creates, if they are still empty when it
    fails: a run refused before training leaves no empty experiment folder behind."""
    created = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        yield
    except BaseException:
        for path in created:  # deepest first
            with contextlib.suppress(OSError):  # not empty, or already gone: leave it
                path.rmdir()
        raise


def write_experiment(experiment: ExperimentConfig, runs: list[RunSpec], results_dir: Path,
                     config_file: str | Path) -> None:
    write_json(results_dir / experiment.name / EXPERIMENT, {
        "format": RESULTS_FORMAT,
        "bnexp_version": __version__,
        "experiment": experiment.name,
        "description": experiment.description,
        "config_file": str(Path(config_file).resolve()),  # absolute: check_same_experiment compares it from any folder
        "sweep_keys": list(experiment.sweep),
        "arms": list(experiment.arms),
        "reference_arm": experiment.reference_arm,
        "seeds": experiment.seeds,
        "run_ids": [spec.run_id for spec in runs],
    })


@dataclass
class SweepSummary:
    total: int
    skipped: int  # complete before this sweep, or completed meanwhile by another process
    statuses: Counter = field(default_factory=Counter)  # of the runs this process trained
    elsewhere: int = 0  # being trained by another process when their turn came
    interrupted: bool = False

    @property
    def left(self) -> int:
        return self.total - self.skipped - self.elsewhere - sum(self.statuses.values())

    def add(self, result: dict) -> None:
        if result["status"] == "skipped":
            self.skipped += 1
        elif result["status"] == "running":
            self.elsewhere += 1
        else:
            self.statuses[result["status"]] += 1

    def line(self) -> str:
        done = ", ".join(f"{n} {status}" for status, n in sorted(self.statuses.items())) or "none trained"
        elsewhere = f"{self.elsewhere} running in another bnexp process; " if self.elsewhere else ""
        line = (f"{self.total} runs: {done}; {self.skipped} already complete (skipped); "
                f"{elsewhere}{self.left} left")
        if self.interrupted:
            line = f"interrupted: {line} (run the same command again to resume)"
        return line


def run_sweep(runs: list[RunSpec], context: RunContext, executor: Executor, progress: "SweepProgress") -> SweepSummary:
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
            outcome = (f"test error {result['test_error']:.4f}" if result["status"] == "completed"
                       else result.get("error") or f"epoch {result.get('diverged_epoch')}")
            print(f"[{self.done}/{self.total}] {spec.run_id} {_point(spec)} {result['status']}: {outcome} "
                  f"({result['wall_seconds']:.1f}s, ETA {eta:.0f}s)", flush=True)


def _metrics(record: dict) -> str:
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    return " ".join(f"{k} {record[k]:.4f}" for k in keys if record.get(k) is not None)


def _point(spec: RunSpec) -> str:
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in spec.point.items())
