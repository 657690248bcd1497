"""The results layout on disk (docs/RESULTS_FORMAT.md): atomic writes and run states.

Imports nothing heavy, so `bnexp status` and `bnexp report` stay fast.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

from bnexp import RESULTS_FORMAT, __version__
from bnexp.config import did_you_mean
from bnexp.errors import ResultsError

SPEC, HISTORY, RESULT, CHECKPOINT = "spec.json", "history.jsonl", "result.json", "checkpoint.keras"
EXPERIMENT, LOCK = "experiment.json", "run.lock"
FINAL_STATUSES = ("completed", "diverged")  # a failed run is retried by the next `bnexp run`


class RunLocked(Exception):
    """Another process holds the run's lock: it is training that run now."""


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `path` so readers see the old file or the new one, never a mix: temp file, fsync, rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ResultsError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # e.g. a full disk: the old file is still whole
            raise ResultsError(f"{path}: cannot write ({exc.strerror or exc}); the previous version is kept") from None
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(_finite(obj), indent=2, sort_keys=False) + "\n")


def write_history(path: Path, epochs: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(_finite(e)) + "\n" for e in epochs))


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it is missing or unreadable (a run never finished writing it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_history(path: Path) -> list[dict]:
    """The epoch records of a history.jsonl in file order ([] when there is none yet); ValueError
    naming the line when one is not an epoch record."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise ValueError(f"line {number}: {error}") from None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise ValueError(f"line {number}: not an epoch record")
        rows.append(row)
    return rows


def run_damage(run_dir: Path) -> str | None:
    """What makes a run's files unreadable, as `FILE: reason` (a truncated or garbled file, a
    half-written line), or None when every one of them that exists reads."""
    for name in (SPEC, RESULT):
        try:
            record = json.loads((run_dir / name).read_text())
        except FileNotFoundError:
            continue
        except OSError as error:
            return f"{name}: {error.strerror or error}"
        except ValueError as error:
            return f"{name}: {error}"
        if not isinstance(record, dict):
            return f"{name}: not a JSON object"
    try:
        read_history(run_dir / HISTORY)
    except OSError as error:
        return f"{HISTORY}: {error.strerror or error}"
    except ValueError as error:
        return f"{HISTORY}: {error}"
    return None


def run_status(run_dir: Path) -> str:
    """completed or diverged (from result.json); running (another process holds its lock); failed
    (from result.json); incomplete (started, then interrupted); or pending (never started)."""
    result = read_json(run_dir / RESULT)
    status = result.get("status") if isinstance(result, dict) else None
    if status in FINAL_STATUSES:
        return status
    if is_locked(run_dir):
        return "running"
    return status or ("incomplete" if (run_dir / SPEC).exists() else "pending")


def is_complete(run_dir: Path) -> bool:
    result = read_json(run_dir / RESULT)
    return isinstance(result, dict) and result.get("status") in FINAL_STATUSES


@contextlib.contextmanager
def run_lock(run_dir: Path, wait: float = 0) -> Iterator[None]:
    """Hold the run's lock while training it; raises RunLocked when another process still holds it
    after `wait` seconds.

    The lock is an OS file lock (flock), which the OS drops when its process dies: a killed run
    leaves the lock file behind but never a lock that blocks the next `bnexp run`.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK, timeout=wait)
    try:
        lock.acquire()
    except Timeout:
        raise RunLocked(str(run_dir)) from None
    try:
        yield
    finally:
        lock.release()


def is_locked(run_dir: Path) -> bool:
    """True while some process trains the run (holds its lock)."""
    if not (run_dir / LOCK).exists():
        return False
    try:
        with run_lock(run_dir):
            return False
    except RunLocked:
        return True
    except OSError:  # a read-only results folder: nobody can be training there
        return False


def is_experiment_dir(path: Path) -> bool:
    """An experiment folder: one with experiment.json, or with run folders holding spec.json (an
    experiment.json lost, or never written by an older bnexp)."""
    if (path / EXPERIMENT).is_file():
        return True
    try:
        return any((child / SPEC).is_file() for child in path.iterdir() if child.is_dir())
    except OSError:
        return False


def _experiments_in(folder: Path) -> list[Path]:
    try:
        return sorted(child for child in folder.iterdir() if child.is_dir() and is_experiment_dir(child))
    except OSError:
        return []


def experiment_dirs(results_dir: Path, target: str | None = None) -> list[Path]:
    """The experiment folders a `bnexp status` or `bnexp report` target means: an experiment name
    under `results_dir`, an experiment folder, or a results folder (every experiment in it); None:
    every experiment under `results_dir`. ResultsError with a did-you-mean when there is none."""
    results_dir = Path(results_dir)
    if target is not None:
        for candidate in (results_dir / target, Path(target)):
            if not candidate.is_dir():
                continue
            if is_experiment_dir(candidate):
                return [candidate]
            inner = _experiments_in(candidate)
            if inner:
                return inner
            raise ResultsError(f"{candidate}: neither an experiment folder (experiment.json, or run folders with "
                               "spec.json) nor a results folder holding one")
        names = [folder.name for folder in _experiments_in(results_dir)]
        raise ResultsError(f"{results_dir}: no experiment {target!r}; found: {', '.join(names) or 'none'}"
                           + did_you_mean(target, names))
    if not results_dir.is_dir():
        raise ResultsError(f"{results_dir}: results folder not found; run `bnexp run CONFIG` first "
                           "or pass the folder that holds the results with --results")
    found = _experiments_in(results_dir)
    if not found:
        raise ResultsError(f"{results_dir}: no experiments here yet; start one with `bnexp run CONFIG` "
                           "or pass another folder with --results")
    return found


def check_results_dir(results_dir: Path, experiment: str, run_ids: list[str]) -> None:
    """Raise ResultsError unless the experiment's folder is writable and holds only this results format."""
    folder = results_dir / experiment
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise ResultsError(f"{folder}: results folder is not writable ({exc.strerror or exc}); "
                           "pass another one with --results") from None
    check_format(folder / EXPERIMENT)
    for run_id in run_ids:
        check_format(folder / run_id / SPEC)


def check_format(path: Path) -> None:
    """Raise ResultsError when `path` exists but was written in another results format."""
    if not path.exists():
        return
    record = read_json(path)
    if not isinstance(record, dict):
        raise ResultsError(f"{path}: not a bnexp results file (unreadable JSON); use another --results folder "
                           "(nothing was changed)")
    found = record.get("format")
    if found != RESULTS_FORMAT:
        version = record.get("bnexp_version", "unknown")
        raise ResultsError(
            f"{path}: written in results format {found} (bnexp {version}); this bnexp {__version__} reads "
            f"format {RESULTS_FORMAT}; use another --results folder or that bnexp version (nothing was changed)"
        )


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null (a diverged loss is recorded, not a parse error)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
