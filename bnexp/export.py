"""Export experiments to MLflow (`bnexp export mlflow`): every finished run as an MLflow run, under
one parent run per experiment that carries the report's tables.

A run's MLflow record: its flattened configuration as params; experiment, arm, seed, sweep point and
bnexp status as tags (`bnexp.*`); its history as metrics at their global optimizer step (per epoch,
and per logged step where recorded); its result as final metrics; MLflow status FINISHED (completed
or diverged, a recorded result) or FAILED. Exporting again matches runs on the `bnexp.run_id` tag:
an unchanged run is skipped, a run trained again since is replaced, so nothing is doubled.

Reads the runs through bnexp.store (open_run, the one place) and the tables through the
report's loader; never imports TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from bnexp import store
from bnexp.errors import BnexpError, one_line
from bnexp.metrics import EPOCH_METRICS

RUN_ID_TAG, EXPERIMENT_TAG, PARENT_TAG = "bnexp.run_id", "bnexp.experiment", "bnexp.parent"
# A run trained again ends at another time: what tells an exported run from a stale one.
FINISHED_AT_TAG = "bnexp.finished_at"
MLFLOW_STATUS = {store.COMPLETED: "FINISHED", store.DIVERGED: "FINISHED", store.FAILED: "FAILED"}
# History fields beside EPOCH_METRICS logged per epoch, and the result's fields logged as final metrics.
EPOCH_FIELDS = (*EPOCH_METRICS, "learning_rate", "epoch_seconds")
FINAL_FIELDS = ("test_loss", "test_accuracy", "test_error", "epochs_run", "wall_seconds", "trainable_params",
                "non_trainable_params")
# MLflow's limits on one log_batch request.
BATCH_LIMITS = {"metrics": 1000, "params": 100, "tags": 100}
# A tracking server that is up answers a TCP connection within milliseconds; MLflow's own default
# retries an unreachable one for minutes.
CONNECT_TIMEOUT = 5.0
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
# MLflow 3 refuses a folder store unless this is true; a folder given to bnexp export is asking for one.
ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"


def finished_runs(folder: Path) -> tuple[list[store.Run], Counter]:
    """The experiment's runs that have a result (completed, diverged or failed), and how many of the
    others stand where (running, incomplete, pending, damaged), as store.open_run reads them."""
    meta = store.read_experiment(folder) or {}
    run_ids = meta.get("run_ids") or sorted(p.name for p in folder.iterdir() if (p / store.SPEC).is_file())
    finished, unfinished = [], Counter()
    for run in (store.open_run(folder / str(run_id)) for run_id in run_ids):
        if run.status in store.RESULT_STATUSES:
            finished.append(run)
        else:
            unfinished[run.status] += 1
    return finished, unfinished


@dataclass
class ExportSummary:
    experiment: str
    mlflow_experiment: str
    tracking_uri: str
    parent_run: str = ""
    counts: Counter = field(default_factory=Counter)  # new, updated, unchanged
    unfinished: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        lines = [f"{self.experiment}: {self.counts['new']} runs exported, {self.counts['updated']} updated, "
                 f"{self.counts['unchanged']} unchanged, to MLflow experiment '{self.mlflow_experiment}' at "
                 f"{self.tracking_uri} (parent run {self.parent_run})"]
        if self.unfinished:
            left = ", ".join(f"{n} {status}" for status, n in sorted(self.unfinished.items()))
            lines.append(f"{self.experiment}: {sum(self.unfinished.values())} runs not exported, not finished "
                         f"({left}); export again when they end")
        return lines


def export_mlflow(results_dir: Path, target: str | None, tracking_uri: str,
                  experiment_name: str | None = None) -> list[ExportSummary]:
    """Log every finished run of the experiments `target` means (as for `bnexp report`) to the MLflow
    tracking store at `tracking_uri` (a folder, file:, http(s): or a database URI), each experiment
    into the MLflow experiment of its name or `experiment_name`. BnexpError, as one line, when MLflow
    is not installed or the store cannot be reached."""
    folders = store.experiment_dirs(Path(results_dir), target)
    if experiment_name and len(folders) > 1:
        raise BnexpError(f"--experiment-name {experiment_name}: {len(folders)} experiments "
                         f"({', '.join(f.name for f in folders)}) would share one MLflow experiment; "
                         "export one at a time (TARGET) or drop --experiment-name")
    client, shown_uri = _connect(tracking_uri)
    return [_export_experiment(client, shown_uri, folder, experiment_name or folder.name) for folder in folders]


def _connect(tracking_uri: str):
    """An MlflowClient on the store at `tracking_uri`, checked to answer; and the URI as shown."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise BnexpError("bnexp export mlflow needs MLflow: pip install 'bnexp[mlflow]'") from None
    scheme = urlparse(tracking_uri).scheme
    if not tracking_uri.strip():
        raise BnexpError("--tracking-uri: empty; give a folder (e.g. mlruns) or a tracking server (http://HOST:PORT)")
    if scheme in ("http", "https") and not urlparse(tracking_uri).hostname:
        raise BnexpError(f"--tracking-uri {tracking_uri}: no host; give http(s)://HOST:PORT")
    if scheme in ("", "file") or len(scheme) == 1:  # a folder (or a Windows drive letter)
        folder = Path(urlparse(tracking_uri).path if scheme == "file" else tracking_uri).resolve()
        if folder.exists() and not folder.is_dir():
            raise BnexpError(f"--tracking-uri {tracking_uri}: a file, not a folder; give a folder for MLflow's folder "
                             "store, or a tracking server (http://HOST:PORT)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BnexpError(f"--tracking-uri {tracking_uri}: cannot use it as a folder store "
                             f"({error.strerror or error}); give a folder bnexp can write, or a tracking server "
                             "(http://HOST:PORT)") from None
        # MLflow 3 keeps its folder store working only when asked to; a folder given here is that request.
        allow = os.environ.get(ALLOW_FILE_STORE, "").strip()
        if allow.lower() in ("false", "0"):
            raise BnexpError(f"--tracking-uri {tracking_uri}: {ALLOW_FILE_STORE}={allow} forbids MLflow's folder "
                             f"store; unset it or set it to true, or give a tracking server (http://HOST:PORT)")
        if allow.lower() not in ("true", "1"):  # unset, empty, or a value MLflow would refuse with a traceback
            if allow:
                raise BnexpError(f"{ALLOW_FILE_STORE}={allow}: MLflow accepts true, false, 1 or 0; unset it to let "
                                 "bnexp opt into the folder store")
            os.environ[ALLOW_FILE_STORE] = "true"
        tracking_uri = folder.as_uri()
    elif scheme not in ("http", "https") and scheme.split("+")[0] not in DATABASE_SCHEMES:
        raise BnexpError(f"--tracking-uri {tracking_uri}: unknown scheme {scheme!r}; allowed: a folder (or file:), "
                         f"http(s)://HOST:PORT, or a database ({', '.join(sorted(DATABASE_SCHEMES))})")
    elif scheme.split("+")[0] in DATABASE_SCHEMES:
        try:
            import sqlalchemy  # noqa: F401
        except ImportError:
            raise BnexpError(f"--tracking-uri {tracking_uri}: a database store needs the full MLflow package "
                             "(pip install mlflow); bnexp[mlflow] installs mlflow-skinny, which logs to a folder "
                             "or a tracking server") from None
    elif scheme in ("http", "https"):
        _check_server(tracking_uri)
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
    client = _call(tracking_uri, MlflowClient, tracking_uri=tracking_uri)
    _call(tracking_uri, client.search_experiments, max_results=1)
    return client, tracking_uri


def _check_server(uri: str) -> None:
    parsed = urlparse(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as error:
        raise BnexpError(f"--tracking-uri {uri}: no MLflow tracking server answers at {parsed.hostname}:{port} "
                         f"({error.strerror or error}); start one with `mlflow server`, or give a folder "
                         "to log to (--tracking-uri mlruns)") from None


def _call(uri: str, function, *args, **kwargs):
    """function(*args, **kwargs), an MLflow error turned into one line naming the tracking URI."""
    from mlflow.exceptions import MlflowException

    try:
        return function(*args, **kwargs)
    except MlflowException as error:
        raise BnexpError(f"--tracking-uri {uri}: {_reason(one_line(error))}") from None


def _reason(text: str) -> str:
    reason = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)  # a connection error inside MLflow's retry message
    return f"the tracking server did not answer ({reason.group(1).strip()})" if reason else text


def _export_experiment(client, uri: str, folder: Path, name: str) -> ExportSummary:
    runs, unfinished = finished_runs(folder)
    summary = ExportSummary(folder.name, name, uri, unfinished=unfinished)
    experiment = _call(uri, client.get_experiment_by_name, name)
    experiment_id = experiment.experiment_id if experiment else _call(uri, client.create_experiment, name)
    existing = {run.data.tags.get(RUN_ID_TAG): run for run in _all_runs(client, uri, experiment_id)}
    parents = [run for run in existing.values() if run.data.tags.get(PARENT_TAG) == folder.name]
    parent_id = parents[0].info.run_id if parents else _call(
        uri, client.create_run, experiment_id, run_name=folder.name,
        tags={PARENT_TAG: folder.name, EXPERIMENT_TAG: folder.name}).info.run_id
    summary.parent_run = parent_id
    for run in runs:
        old = existing.get(run.id)
        if old is not None and old.data.tags.get(FINISHED_AT_TAG) == str(run.result.get("finished_at")):
            summary.counts["unchanged"] += 1
            continue
        if old is not None:
            _call(uri, client.delete_run, old.info.run_id)
        _log_run(client, uri, experiment_id, parent_id, folder.name, run)
        summary.counts["updated" if old is not None else "new"] += 1
    _log_tables(client, uri, parent_id, folder)
    _call(uri, client.set_terminated, parent_id, "FINISHED")
    return summary


def _all_runs(client, uri: str, experiment_id: str) -> Iterator:
    token = None
    while True:
        page = _call(uri, client.search_runs, [experiment_id], max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _log_run(client, uri: str, experiment_id: str, parent_id: str, experiment: str, run: store.Run) -> None:
    from mlflow.entities import Metric, Param, RunTag

    spec, result = run.spec, run.result
    start = _millis(result.get("started_at")) or _millis(result.get("finished_at")) or 0
    tags = {"mlflow.runName": run.id, "mlflow.parentRunId": parent_id, RUN_ID_TAG: run.id,
            EXPERIMENT_TAG: experiment, "bnexp.arm": spec["arm"], "bnexp.seed": spec["seed"],
            "bnexp.status": result["status"], FINISHED_AT_TAG: result.get("finished_at"),
            **({"bnexp.error": result["error"]} if result.get("error") else {}),
            **{f"bnexp.point.{key}": _text(value) for key, value in (spec.get("point") or {}).items()}}
    created = _call(uri, client.create_run, experiment_id, start_time=start, run_name=run.id)
    mlflow_id = created.info.run_id
    metrics = [Metric(key, value, timestamp, step) for key, value, step, timestamp in run_metrics(run, start)]
    params = [Param(key, value) for key, value in flatten(spec.get("config") or {}).items()]
    batches = {"tags": [RunTag(k, _text(v)) for k, v in tags.items()], "params": params, "metrics": metrics}
    for kind, items in batches.items():
        limit = BATCH_LIMITS[kind]
        for first in range(0, len(items), limit):
            _call(uri, client.log_batch, mlflow_id, **{kind: items[first:first + limit]})
    _call(uri, client.set_terminated, mlflow_id, MLFLOW_STATUS[result["status"]], _millis(result.get("finished_at")))


def run_metrics(run: store.Run, start: int) -> Iterator[tuple[str, float, int, int]]:
    """(name, value, global step, timestamp in ms) of every metric of the run: per epoch (and `epoch`
    itself), per logged step (`step_loss`, `step_val_loss`, `step_val_accuracy`), and the result's
    final metrics at the last step. A NaN or infinite value (recorded as null) is NaN."""
    step, elapsed = 0, 0.0
    for row in run.history:
        elapsed += _float(row.get("epoch_seconds"), 0.0)
        step = int(row.get("step") or row["epoch"])
        timestamp = start + int(elapsed * 1000)
        yield "epoch", float(row["epoch"]), step, timestamp
        for name in EPOCH_FIELDS:
            if name in row:
                yield name, _float(row[name]), step, timestamp
        for pair in row.get("step_losses") or []:
            yield "step_loss", _float(pair[1]), int(pair[0]), timestamp
        for triple in row.get("step_evals") or []:
            yield "step_val_loss", _float(triple[1]), int(triple[0]), timestamp
            yield "step_val_accuracy", _float(triple[2]), int(triple[0]), timestamp
    end = _millis(run.result.get("finished_at")) or start
    for name in FINAL_FIELDS:
        if run.result.get(name) is not None:
            yield name, _float(run.result[name]), step, end


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """The run configuration as dotted keys and text values: `train.learning_rate` -> `0.01`; lists as JSON."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = _text(value)
    return flat


def _log_tables(client, uri: str, parent_id: str, folder: Path) -> None:
    """The report's tables (paired differences and the rest) as CSV artifacts of the parent run."""
    from bnexp.report.load import load_experiment

    experiment = load_experiment(folder)
    if experiment.runs.empty:
        return
    with tempfile.TemporaryDirectory(prefix="bnexp-tables-") as scratch:
        for name, table in experiment.tables.items():
            table.to_csv(Path(scratch) / f"{name}.csv", index=False)
        _call(uri, client.log_artifacts, parent_id, scratch, "tables")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _float(value: Any, missing: float = math.nan) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else missing


def _millis(timestamp: str | None) -> int | None:
    try:
        return int(datetime.fromisoformat(timestamp).timestamp() * 1000)
    except (TypeError, ValueError):
        return None
