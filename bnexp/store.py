"""The results layout on disk (docs/RESULTS_FORMAT.md), its one owner: the file names, the format
version, the status vocabulary, the records each file holds and their readers, where a run's
folder is, experiment discovery, atomic writes and run locks.

Imports nothing heavy, so `bnexp status` and `bnexp report` stay fast.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TypedDict

from filelock import FileLock, Timeout

from bnexp import __version__
from bnexp.errors import ResultsError
from bnexp.metrics import ACCURACY, EVAL_STATISTICS, LOSS, VAL_ACCURACY, VAL_LOSS
from bnexp.norms import DEFAULT_GROUPS, WITH_MOVING_STATISTICS

# Version of the on-disk results layout; bumped on incompatible change.
RESULTS_FORMAT = 1

SPEC, HISTORY, RESULT, CHECKPOINT = "spec.json", "history.jsonl", "result.json", "checkpoint.keras"
EXPERIMENT, LOCK = "experiment.json", "run.lock"
ACTIVATIONS = "activations.jsonl"  # train.activation_stats_every > 0 only (bnexp.activations)

# A run's status, derived in one place (Run.status). result.json says completed, diverged or failed;
# the others are read from the run's folder: running (another process holds its lock), incomplete
# (started, then interrupted), pending (planned, never started), damaged (one of its files cannot be
# read: Run.damage).
COMPLETED, DIVERGED, FAILED = "completed", "diverged", "failed"
RUNNING, INCOMPLETE, PENDING, DAMAGED = "running", "incomplete", "pending", "damaged"
STATUSES = (COMPLETED, DIVERGED, FAILED, RUNNING, INCOMPLETE, PENDING, DAMAGED)  # the order runs are listed in
FINAL_STATUSES = (COMPLETED, DIVERGED)  # a failed run is retried by the next `bnexp run`
RESULT_STATUSES = (*FINAL_STATUSES, FAILED)  # what result.json may say
UNFINISHED = (RUNNING, INCOMPLETE)  # started, no result.json yet
# What each status means, as `bnexp status` and the report say it.
STATUS_TEXTS = {
    COMPLETED: "trained to the end, or stopped early by early stopping",
    DIVERGED: "loss NaN or infinite",
    FAILED: "retried by the next bnexp run",
    RUNNING: "another bnexp process holds its lock",
    INCOMPLETE: "interrupted",
    PENDING: "not started yet (no spec.json)",
    DAMAGED: "a run file cannot be read",
}


class ExperimentRecord(TypedDict, total=False):
    """experiment.json: the experiment as last planned."""

    format: int
    bnexp_version: str
    experiment: str
    description: str | None
    config_file: str
    sweep_keys: list[str]
    arms: list[str]
    reference_arm: str
    seeds: list[int]
    run_ids: list[str]


class SpecRecord(TypedDict, total=False):
    """spec.json: the fully resolved run, written when it starts."""

    format: int
    bnexp_version: str
    experiment: str
    run_id: str
    arm: str
    reference_arm: str
    arms: list[str]
    seed: int
    point: dict[str, Any]  # swept key -> value
    config: dict[str, Any]  # the RunConfig as JSON: data, model, train, seed
    data_sha256: str | None  # content of the csv/npz file the run reads; None for a built-in dataset
    builder_sha256: str | None  # content of the model.builder's source file; None for a built-in network
    facts: RunFacts  # absent in runs from an older bnexp: Run.facts derives them from config


class RunFacts(TypedDict):
    """What the report needs to know of a run beyond its numbers, recorded in spec.json when it starts
    (bnexp.sweep.RunSpec.record), so the report reads runs without the config schema or the data."""

    norm: str  # the normalisation kind the network inserts: batch, batch_renorm, group, layer or none
    norm_groups: int | None  # the group count of group normalisation, else None
    precise_stats: int  # batches PreciseBN averages over: 0 when off or for a kind without moving statistics
    builder: str | None  # model.builder; None for bnexp's own network
    num_classes: int | None  # classes of a built-in dataset; None until the data is read (result.json has it)
    virtual_batch_size: int | None  # the ghost batch the batch kinds normalise over in training; None: the whole batch


def norm_label(facts: RunFacts, compact: bool = False) -> str:
    """The normalisation as the report names it: batch, group (32 groups), batch (ghost 8), ...; `compact`:
    one word, for the plan's whitespace-separated columns (group, batch/ghost8)."""
    norm, ghost = facts.get("norm", "batch"), facts.get("virtual_batch_size")
    if compact:
        return f"{norm}/ghost{ghost}" if ghost else norm
    if norm == "group":
        return f"group ({facts.get('norm_groups')} groups)"
    return f"{norm} (ghost {ghost})" if ghost else norm


class HistoryRow(TypedDict, total=False):
    """A line of history.jsonl: one finished epoch. The metrics are metrics.EPOCH_METRICS, spelled out
    because type checkers read only literal keys; a metric Keras did not log (no validation split) is
    absent, a NaN or infinite one null."""

    epoch: int
    step: int  # the global optimizer step at the end of the epoch
    loss: float | None
    accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    learning_rate: float
    epoch_seconds: float
    step_losses: list[list[float]]  # [global step, mean training loss since the previous pair]
    step_evals: list[list[float]]  # [global step, val_loss, val_accuracy] every train.eval_every_steps steps


class ActivationStats(TypedDict):
    """The distribution of one position's values on the probe (all rows, units and spatial places pooled)."""

    p15: float | None
    p50: float | None
    p85: float | None
    mean: float | None
    std: float | None


class ActivationRow(TypedDict):
    """A line of activations.jsonl: the probe's statistics at one optimizer step, by position name, in network order."""

    step: int
    positions: dict[str, ActivationStats]


ACTIVATION_STATISTICS = tuple(ActivationStats.__annotations__)  # p15, p50, p85, mean, std


class ResultRecord(TypedDict, total=False):
    """result.json: written once, when the run ends. Readers take its fields from here (RESULT_FIELDS)."""

    status: str  # one of RESULT_STATUSES
    epochs_run: int
    diverged_epoch: int | None
    diverged_steps: list[int] | None  # [last step seen with a finite loss, first seen with a NaN/inf one]
    error: str | None
    resumed_from_epoch: int | None
    test_loss: float | None
    test_accuracy: float | None
    test_error: float | None
    trainable_params: int | None
    non_trainable_params: int | None
    num_classes: int | None
    # The share of the most common class in the validation labels (the test labels without a validation
    # split): what always answering that class scores, the chance level of unbalanced data.
    majority_share: float | None
    # The test loss and error with BN's moving, precise and batch statistics (bnexp.evaluation); only in
    # completed runs with BN-type layers.
    eval_statistics: dict[str, Any]
    wall_seconds: float
    started_at: str
    finished_at: str
    environment: dict[str, Any]


RESULT_FIELDS = tuple(ResultRecord.__annotations__)


def run_dir(results_dir: Path, experiment: str, run_id: str) -> Path:
    """The folder holding one run's files."""
    return Path(results_dir) / experiment / run_id


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
            _write_synced(f, data)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # e.g. a full disk: the old file is still whole
            raise ResultsError(f"{path}: cannot write ({exc.strerror or exc}); the previous version is kept") from None
        raise


def write_tree(folder: Path, files: dict[str, bytes | str]) -> None:
    """Write `folder` holding `files` ({path inside it: content}) so readers see the old folder or
    the new one, never a mix: each file written and fsynced into a fresh staging folder beside it,
    then the staging folder renamed into place (_swap_in)."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as exc:
        raise ResultsError(f"{folder}: cannot write ({exc.strerror or exc})") from None
    try:
        for name, data in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            with open(staging / name, "wb") as f:
                _write_synced(f, data)
        _swap_in(staging, folder)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):  # the previous folder is still whole
            raise ResultsError(f"{folder}: cannot write ({exc.strerror or exc}); "
                               "the previous version is kept") from None
        raise


def _swap_in(staging: Path, folder: Path) -> None:
    """Rename `staging` to `folder`. A rename cannot replace a folder that holds files, so the old
    one is moved aside first (for an instant there is no `folder`, which a reader sees as none yet,
    not as a mix), put back if the rename fails, and deleted once the new one is in place."""
    if not folder.exists():
        staging.rename(folder)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}-old-", dir=folder.parent))
    try:
        folder.rename(aside / folder.name)
        try:
            staging.rename(folder)
        except BaseException:
            (aside / folder.name).rename(folder)
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _write_synced(f, data: bytes | str) -> None:
    f.write(data.encode() if isinstance(data, str) else data)
    f.flush()
    os.fsync(f.fileno())


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(_finite(obj), indent=2, sort_keys=False) + "\n")


def write_history(path: Path, epochs: list[HistoryRow]) -> None:
    write_atomic(path, "".join(json.dumps(_finite(e)) + "\n" for e in epochs))


def write_experiment(folder: Path, record: ExperimentRecord) -> None:
    """Write the experiment's experiment.json into its `folder`, stamped with the results format."""
    write_json(folder / EXPERIMENT, _stamped(record))


def write_spec(run_dir: Path, record: SpecRecord) -> None:
    """Write the run's spec.json, stamped with the results format."""
    write_json(run_dir / SPEC, _stamped(record))


def write_result(run_dir: Path, record: ResultRecord) -> None:
    """Write the run's result.json, which ends the run (Run.status)."""
    write_json(run_dir / RESULT, record)


def _stamped(record: dict) -> dict:
    """`record` after the results format and the bnexp version that wrote it, which readers check first."""
    return {"format": RESULTS_FORMAT, "bnexp_version": __version__, **record}


def pack_run(run_dir: Path) -> dict[str, str]:
    """A run's records by file name (no checkpoint or lock): a run trained in a scratch folder, as a
    Ray task does, travels to its results folder as these (unpack_run)."""
    return {name: (run_dir / name).read_text() for name in (SPEC, HISTORY, ACTIVATIONS, RESULT)
            if (run_dir / name).exists()}


def unpack_run(run_dir: Path, files: dict[str, str]) -> None:
    """Write the records pack_run took into `run_dir`, each atomically, and drop the checkpoint an
    earlier, interrupted try left there: it belongs to no record now."""
    for name, text in files.items():
        write_atomic(run_dir / name, text)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it is missing or unreadable (a run never finished writing it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_object(path: Path) -> dict:
    """The JSON object in `path`; OSError when it cannot be read (FileNotFoundError when missing),
    ValueError naming the problem when it holds no JSON object."""
    record = json.loads(path.read_text())
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


def read_experiment(folder: Path) -> ExperimentRecord | None:
    """The experiment's experiment.json; None when there is none. ValueError or OSError when it
    cannot be read, ResultsError when it is in another results format (check_format)."""
    path = folder / EXPERIMENT
    if not path.is_file():
        return None
    record = read_object(path)
    _check_record_format(path, record)
    for name in ("sweep_keys", "arms", "run_ids"):  # what status and the report plan by: text lists or damage
        value = record.get(name)
        if value is not None and not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            raise ValueError(f"{name}: expected a list of names, got {value!r}")
    arms, reference = record.get("arms"), record.get("reference_arm")
    if arms is not None and reference is not None and reference not in arms:
        raise ValueError(f"reference_arm: {reference!r} is not one of the arms ({', '.join(arms)})")
    return record


def read_spec(run_dir: Path) -> SpecRecord:
    """A run's spec.json, checked for what readers need (arm, seed, point); ValueError naming what
    is wrong, OSError when it cannot be read, ResultsError when it is in another results format."""
    path = run_dir / SPEC
    spec = read_object(path)
    _check_record_format(path, spec)
    for name in ("arm", "seed"):
        if name not in spec:
            raise ValueError(f"no {name!r}")
    if not isinstance(spec["seed"], int) or isinstance(spec["seed"], bool):
        raise ValueError(f"seed: expected an integer, got {spec['seed']!r}")
    if not isinstance(spec["arm"], str) or not spec["arm"]:
        raise ValueError(f"arm: expected a name, got {spec['arm']!r}")
    if not isinstance(spec.get("point") or {}, dict):
        raise ValueError("point: expected a mapping")
    return spec


def read_result(run_dir: Path) -> ResultRecord | None:
    """A run's result.json; None while the run has none. ValueError naming what is wrong (an
    unknown status included), OSError when it cannot be read."""
    path = run_dir / RESULT
    if not path.is_file():
        return None
    result = read_object(path)
    if result.get("status") not in RESULT_STATUSES:
        raise ValueError(f"unknown status {result.get('status')!r}")
    for name, kind in _RESULT_VALUES.items():
        _check_value(name, result.get(name), kind)
    steps = result.get("diverged_steps")
    if steps is not None and not (isinstance(steps, list) and len(steps) == 2
                                  and all(isinstance(s, int) and not isinstance(s, bool) for s in steps)):
        raise ValueError(f"diverged_steps: expected [last finite step, first NaN step], got {steps!r}")
    # A completed run is its test error; one without it (or test_accuracy, which older results kept) has no result.
    if result["status"] == COMPLETED and not any(_is_finite(result.get(key)) for key in ("test_error", "test_accuracy")):
        raise ValueError(f"test_error: expected a number for a completed run, got {result.get('test_error')!r}")
    if result["status"] != COMPLETED and result.get("test_error") is not None:
        raise ValueError(f"test_error: a {result['status']} run has no test metrics, got {result['test_error']!r}")
    error, accuracy = result.get("test_error"), result.get("test_accuracy")
    if error is not None and accuracy is not None and abs(error + accuracy - 1) > 1e-6:
        raise ValueError(f"test_error {error!r} and test_accuracy {accuracy!r} contradict each other (they sum to 1)")
    statistics = result.get("eval_statistics")
    if statistics is not None:
        if not isinstance(statistics, dict):
            raise ValueError(f"eval_statistics: expected a mapping, got {statistics!r}")
        for name in EVAL_STATISTICS:
            scores = statistics.get(name)
            if not isinstance(scores, dict):
                raise ValueError(f"eval_statistics.{name}: expected a mapping, got {scores!r}")
            _check_value(f"eval_statistics.{name}.test_error", scores.get("test_error"), FRACTION, required=True)
            _check_value(f"eval_statistics.{name}.test_loss", scores.get("test_loss"), NUMBER)
    return result


# What each value of result.json and history.jsonl may be, so that a hand-edited or foreign file ("0.05" as
# text, an error of 5.0) is damaged in status and report alike instead of read as some other number. null is
# always allowed (NaN and inf are written as null; older files lack newer fields).
NUMBER, FRACTION, COUNT, TEXT = "a number", "a fraction in [0, 1]", "a whole number >= 0", "text"
_RESULT_VALUES = {
    "test_error": FRACTION, "test_accuracy": FRACTION, "test_loss": NUMBER, "epochs_run": COUNT,
    "diverged_epoch": COUNT, "resumed_from_epoch": COUNT, "error": TEXT, "trainable_params": COUNT,
    "non_trainable_params": COUNT, "num_classes": COUNT, "majority_share": FRACTION, "wall_seconds": NUMBER,
}
_HISTORY_VALUES = {
    "step": COUNT, LOSS: NUMBER, ACCURACY: FRACTION, VAL_LOSS: NUMBER, VAL_ACCURACY: FRACTION,
    "learning_rate": NUMBER, "epoch_seconds": NUMBER,
}


def _check_value(name: str, value, kind: str, required: bool = False) -> None:
    """ValueError naming `name` when `value` is not `kind` (None passes unless `required`)."""
    if value is None and not required:
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    fits = {NUMBER: number and not (isinstance(value, float) and math.isnan(value)),
            FRACTION: number and 0 <= value <= 1,
            COUNT: isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            TEXT: isinstance(value, str)}[kind]
    if not fits:
        raise ValueError(f"{name}: expected {kind}, got {value!r}")


def _is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_jsonl(path: Path, check) -> list[dict]:
    """The records of a .jsonl file in file order ([] when there is none yet); `check(row)` raises ValueError
    for a record that is not one, and the error names the line."""
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
            check(row)
        except ValueError as error:
            raise ValueError(f"line {number}: {error}") from None
        rows.append(row)
    return rows


def read_history(path: Path) -> list[HistoryRow]:
    """The epoch records of a history.jsonl in file order ([] when there is none yet); ValueError
    naming the line when one is not an epoch record."""
    return _read_jsonl(path, _check_epoch)


def _check_epoch(row) -> None:
    if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
        raise ValueError("not an epoch record")
    for name, kind in _HISTORY_VALUES.items():
        _check_value(name, row.get(name), kind)
    _check_pairs("step_losses", row.get("step_losses"), 2)
    _check_pairs("step_evals", row.get("step_evals"), 3)


def _check_pairs(name: str, value, width: int) -> None:
    """step_losses / step_evals: a list of [step, value...] rows of `width` numbers (null for a NaN value)."""
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(row, list) and len(row) == width for row in value):
        raise ValueError(f"{name}: expected a list of [step, ...] rows of {width} numbers")
    for row in value:
        _check_value(f"{name} step", row[0], NUMBER, required=True)
        for item in row[1:]:
            _check_value(name, item, NUMBER)


def write_activations(path: Path, rows: list[ActivationRow]) -> None:
    write_atomic(path, "".join(json.dumps(_finite(row)) + "\n" for row in rows))


def read_activations(path: Path) -> list[ActivationRow]:
    """The rows of an activations.jsonl in file order ([] when there is none); ValueError naming the line
    when one is not a row (a step and a mapping of positions)."""
    return _read_jsonl(path, _check_activation_row)


def _check_activation_row(row) -> None:
    if not (isinstance(row, dict) and isinstance(row.get("step"), int) and isinstance(row.get("positions"), dict)):
        raise ValueError("not an activation record (step and positions)")


# Facts of runs whose spec.json predates `facts`, derived from their config as that bnexp did: the
# built-in datasets' classes then, and the normalisation the older batch_norm switches chose.
_OLDER_BUILTIN_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10}


def _older_facts(config: dict) -> RunFacts:
    """RunFacts from the config of a spec.json written before bnexp recorded them."""
    def section(*keys: str) -> dict:
        found = config
        for key in keys:
            found = found.get(key) if isinstance(found, dict) else None
        return found if isinstance(found, dict) else {}

    batch_norm, norm = section("model", "batch_norm"), section("model", "norm")
    kind = norm.get("kind", "batch")
    if not batch_norm.get("enabled", True):
        kind = "none"
    elif kind == "batch" and batch_norm.get("renorm", False):
        kind = "batch_renorm"
    precise = batch_norm.get("precise_stats", 0)
    if kind not in WITH_MOVING_STATISTICS or not isinstance(precise, int) or isinstance(precise, bool):
        precise = 0
    return RunFacts(norm=kind, norm_groups=norm.get("groups", DEFAULT_GROUPS) if kind == "group" else None,
                    precise_stats=precise, builder=section("model").get("builder"),
                    num_classes=_OLDER_BUILTIN_CLASSES.get(str(section("data").get("dataset", ""))),
                    virtual_batch_size=_positive(batch_norm.get("virtual_batch_size")) if kind in WITH_MOVING_STATISTICS
                    else None)


def _positive(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True)
class Run:
    """One run folder (open_run) and the run's one `status`, derived here and nowhere else. Its files
    are read on first use, each once: spec and result when it is opened, history.jsonl when `history`,
    `damage` or `status` first needs it (deciding whether to train a run needs only its result)."""

    path: Path
    # Why its readable spec.json cannot be trusted next to the experiment's other runs (open_runs); damage.
    conflict: str | None = None

    @functools.cached_property
    def _records(self) -> tuple[SpecRecord | None, ResultRecord | None, str | None]:
        """spec.json and result.json as far as they read, and `FILE: reason` for the first that does not."""
        spec = result = None
        damage = self.conflict
        try:
            spec = read_spec(self.path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as error:
            damage = f"{SPEC}: {_reason(error)}"
        try:
            result = read_result(self.path)
        except (OSError, ValueError) as error:
            damage = damage or f"{RESULT}: {_reason(error)}"
        return spec, result, damage

    @functools.cached_property
    def _history(self) -> tuple[tuple[HistoryRow, ...], str | None]:
        try:
            return tuple(read_history(self.path / HISTORY)), None
        except (OSError, ValueError) as error:
            return (), f"{HISTORY}: {_reason(error)}"

    @property
    def spec(self) -> SpecRecord | None:
        """spec.json; None when there is none (never started) or it is damaged."""
        return self._records[0]

    @property
    def result(self) -> ResultRecord | None:
        """result.json; None while there is none (not finished) or it is damaged."""
        return self._records[1]

    @property
    def history(self) -> tuple[HistoryRow, ...]:
        """history.jsonl's epochs; () when there is none yet or it is damaged."""
        return self._history[0]

    @property
    def damage(self) -> str | None:
        """`FILE: reason` for the first of spec.json, result.json and history.jsonl that cannot be read."""
        return self._records[2] or self._history[1]

    @property
    def history_damaged(self) -> bool:
        """The damage is history.jsonl's alone: spec and result read."""
        return self._records[2] is None and self._history[1] is not None

    @property
    def id(self) -> str:
        return self.path.name

    @functools.cached_property
    def status(self) -> str:
        """damaged (see damage); completed or diverged (from result.json); running (another process
        holds its lock); failed (from result.json); incomplete (started, then interrupted); or pending."""
        return DAMAGED if self.damage else self.recorded_status

    @functools.cached_property
    def recorded_status(self) -> str:
        """The status the readable files give, a damaged history.jsonl set aside: the report still
        tables such a run, without its curves. Equals `status` for every run without damage."""
        if self._records[2]:
            return DAMAGED
        recorded = self.result["status"] if self.result else None
        if recorded in FINAL_STATUSES:
            return recorded
        if is_locked(self.path):
            return RUNNING
        return recorded or (INCOMPLETE if self.spec is not None else PENDING)

    @property
    def is_complete(self) -> bool:
        """Its result.json reads and says completed or diverged: `bnexp run` does not train it again."""
        return self.result is not None and self.result["status"] in FINAL_STATUSES

    @property
    def facts(self) -> RunFacts | None:
        """What spec.json recorded for the report (derived from its config for an older spec); None without a spec."""
        if self.spec is None:
            return None
        recorded = self.spec.get("facts")
        if isinstance(recorded, dict):
            return recorded
        return _older_facts(self.spec.get("config") if isinstance(self.spec.get("config"), dict) else {})

    @property
    def epochs_planned(self) -> int | str:
        """train.epochs of its config; '?' where the spec does not say."""
        config = (self.spec or {}).get("config")
        train = config.get("train") if isinstance(config, dict) else None
        return train.get("epochs", "?") if isinstance(train, dict) else "?"

    @property
    def detail(self) -> str:
        """The run's outcome, or what happens to it next, in one line (`bnexp status`)."""
        result = self.result or {}
        if self.status == DAMAGED:
            return self.damage or ""
        if self.status == COMPLETED:
            error = result.get("test_error")
            return f"test error {error if isinstance(error, (int, float)) else float('nan'):.4f}"
        if self.status == DIVERGED:
            steps = result.get("diverged_steps")
            between = f" (steps {steps[0]}-{steps[1]})" if isinstance(steps, list) and len(steps) == 2 else ""
            return f"{STATUS_TEXTS[DIVERGED]} in epoch {result.get('diverged_epoch')}{between}"
        if self.status == FAILED:
            return f"{result.get('error')} ({STATUS_TEXTS[FAILED]})"
        if self.status == RUNNING:
            return STATUS_TEXTS[RUNNING]
        if self.status == INCOMPLETE:
            resumes = ("resumes from its last checkpoint" if (self.path / CHECKPOINT).exists()
                       else "restarts from epoch 1")
            return f"{STATUS_TEXTS[INCOMPLETE]}; {resumes}"
        return ""


def open_run(run_dir: Path) -> Run:
    """The run in `run_dir`, its spec.json and result.json read. A file that cannot be read makes it
    damaged (Run.damage names the file and why); ResultsError when its spec.json is in another results format."""
    run = Run(Path(run_dir))
    run.spec  # read now: a folder in another format is refused here, not whenever a status is asked
    return run


def open_runs(folder: Path, run_ids: list[str], arms: list[str] | None) -> list[Run]:
    """The runs `run_ids` of the experiment in `folder` (open_run each), a run whose readable spec.json
    contradicts the others or the plan made damaged: an arm not in `arms` (the plan's; None: unknown), or the
    arm, seed and sweep point of another run (an edited or copied spec.json), which would pair or average two
    runs as one; neither copy is trusted. `bnexp status` and the report both read runs through here."""
    runs = [open_run(folder / run_id) for run_id in run_ids]
    sharing: dict[str, list[str]] = {}  # a readable run's arm, seed and sweep point -> the runs with them
    for run in runs:
        if run.spec is not None and run._records[2] is None:  # spec and result read (a damaged history aside)
            sharing.setdefault(_identity(run.spec), []).append(run.id)
    return [Run(run.path, conflict) if (conflict := _conflict(run, arms, sharing)) else run for run in runs]


def _identity(spec: SpecRecord) -> str:
    return json.dumps([spec["arm"], spec["seed"], spec.get("point") or {}], sort_keys=True, default=str)


def _conflict(run: Run, arms: list[str] | None, sharing: dict[str, list[str]]) -> str | None:
    if run.spec is None or run._records[2] is not None:
        return None
    if arms is not None and run.spec["arm"] not in arms:
        return f"{SPEC}: arm {run.spec['arm']!r} is not one of the experiment's arms ({', '.join(arms)})"
    others = [other for other in sharing.get(_identity(run.spec), []) if other != run.id]
    if others:
        return f"{SPEC}: the same arm, seed and sweep point as run {', '.join(others)}"
    return None


def _reason(error: Exception) -> str:
    return str(error.strerror or error) if isinstance(error, OSError) else str(error)


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
        # Imported here: bnexp.config.messages brings pydantic, which `bnexp status` and the report never need.
        from bnexp.config.messages import did_you_mean

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
    # Tried in the nearest folder that exists, so a refused run creates no empty folder; the
    # experiment's folder is made by its first write (write_atomic).
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise ResultsError(f"{folder}: results folder is not writable ({exc.strerror or exc}); "
                           "pass another one with --results") from None
    check_format(folder / EXPERIMENT)
    for run_id in run_ids:
        check_format(folder / run_id / SPEC)


# One format policy for every reader and writer: only RESULTS_FORMAT is read or added to. The
# format is bumped only on an incompatible change, so a folder in an older format means something
# else just as much as one in a newer format: reading it would report wrong numbers, adding runs to
# it would mix two layouts in one folder. The message names the bnexp that wrote it instead.
def check_format(path: Path) -> None:
    """Raise ResultsError when `path` exists but was written in another results format."""
    if not path.exists():
        return
    record = read_json(path)
    if not isinstance(record, dict):
        raise ResultsError(f"{path}: not a bnexp results file (unreadable JSON); use another --results folder "
                           "(nothing was changed)")
    _check_record_format(path, record)


def _check_record_format(path: Path, record: dict) -> None:
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
