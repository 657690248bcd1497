"""A run's hyperparameters and final metrics in the form TensorBoard's HParams dashboard reads
(`--tensorboard`), so the dashboard lists, filters and compares the runs of a sweep.

Written with the tensorboard package's own protos and event writer, not tf.summary, so it works on
any Keras backend. The file sits in `<run dir>/tensorboard/`, above Keras' `train/` and
`validation/` logs, which the dashboard then counts as the same session's metrics (as
`hp.KerasCallback` lays them out).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bnexp.store import COMPLETED, ResultRecord, SpecRecord

# Final metrics of result.json logged next to the hyperparameters (Keras logs the per-epoch ones).
FINAL_METRICS = ("test_loss", "test_accuracy", "test_error")
# Ends the name of the event file holding a run's hparams; a retrained run replaces it.
SUFFIX = ".hparams"


def run_hparams(spec: SpecRecord) -> dict[str, bool | int | float | str]:
    """The hyperparameters the dashboard shows for a run: its swept keys, arm and seed. A list or
    mapping value becomes JSON text (the dashboard holds only numbers, booleans and text)."""
    values = {key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)
              for key, value in (spec.get("point") or {}).items()}
    return {**values, "arm": spec["arm"], "seed": spec["seed"]}


def write_hparams(log_dir: Path, spec: SpecRecord, result: ResultRecord, step: int) -> None:
    """Write the run's hparams (session start), its final metrics at global step `step`, and its end
    status into one event file under `log_dir`, replacing the one an earlier try wrote."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp
    from tensorboard.plugins.scalar import summary_v2 as scalar
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob(f"events.out.tfevents.*{SUFFIX}"):
        old.unlink()
    now = time.time()
    status = api_pb2.STATUS_SUCCESS if result["status"] == COMPLETED else api_pb2.STATUS_FAILURE
    end = summary_pb2.Summary()  # what tensorboard's v1 session_end_pb makes, without importing TensorFlow
    end.value.add(tag=metadata.SESSION_END_INFO_TAG, tensor=metadata.NULL_TENSOR,
                  metadata=metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(
                      session_end_info=plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=now))))
    summaries = [hp.hparams_pb(run_hparams(spec), trial_id=spec["run_id"]),
                 *(scalar.scalar_pb(name, result[name]) for name in FINAL_METRICS if result.get(name) is not None),
                 end]
    writer = EventFileWriter(str(log_dir), filename_suffix=SUFFIX)
    for summary in summaries:
        writer.add_event(event_pb2.Event(wall_time=now, step=step, summary=summary))
    writer.close()
