"""Metric names: what Keras logs each epoch, history.jsonl records and the report reads.

One owner, so a new metric is one edit; imports nothing, so the CLI can offer them in `--help`.
"""

from __future__ import annotations

LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY = "loss", "accuracy", "val_loss", "val_accuracy"
# In the order history.jsonl and the report's tables list them.
EPOCH_METRICS = (LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY)
# The metrics a steps-to-target threshold can use, the default first (as `bnexp report --help` lists
# them); without a validation split the default falls back to ACCURACY.
DEFAULT_TARGET_METRIC = VAL_ACCURACY
TARGET_METRICS = (DEFAULT_TARGET_METRIC, ACCURACY, LOSS, VAL_LOSS)

# The statistics BN can evaluate the test set with (result.json eval_statistics, bnexp.evaluation): the moving
# averages Keras uses, precise population statistics from training batches, each test batch's own.
MOVING, PRECISE, BATCH = "moving", "precise", "batch"
EVAL_STATISTICS = (MOVING, PRECISE, BATCH)


def is_accuracy(metric: str) -> bool:
    """True for an accuracy (a fraction; higher is better), False for a loss (lower is better)."""
    return metric.endswith(ACCURACY)
