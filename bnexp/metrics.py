"""Metric names: what Keras logs each epoch, history.jsonl records and the report reads.

One owner, so a new metric is one edit; imports nothing, so the CLI can offer them in `--help`.
"""

from __future__ import annotations

LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY = "loss", "accuracy", "val_loss", "val_accuracy"
# In the order history.jsonl and the report's tables list them.
EPOCH_METRICS = (LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY)
# The metrics a steps-to-target threshold can use, the default first (as `bnexp report --help` lists them).
TARGET_METRICS = (VAL_ACCURACY, ACCURACY, LOSS, VAL_LOSS)


def higher_is_better(metric: str) -> bool:
    """Accuracies improve upwards, losses downwards."""
    return metric.endswith(ACCURACY)
