"""How much of a trained model's test error is BN's statistics rather than its weights: the test set
evaluated with the three statistics a BN layer can normalise with (result.json `eval_statistics`).

- moving: the moving averages Keras keeps and uses at inference;
- precise: population statistics recomputed from training batches (callbacks.recompute_bn_statistics);
- batch: each test batch's own statistics, as in training (BN layers in training mode, every other layer,
  dropout included, in inference mode), in batches of train.batch_size (ghost batches within them).

None of them changes the model: statistics are put back after each.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from bnexp.callbacks import bn_layers, called_in_training_mode, recompute_bn_statistics
from bnexp.metrics import ACCURACY, BATCH, LOSS, MOVING, PRECISE
# Training batches the precise statistics average over when model.batch_norm.precise_stats is 0 (at most an
# epoch's): enough for the mean of batch statistics to settle, few enough to cost about a tenth of an epoch
# of MNIST at batch 64.
PRECISE_BATCHES = 100


def evaluate_statistics(model: keras.Model, x: np.ndarray, y: np.ndarray, batches: keras.utils.PyDataset,
                        precise_stats: int, batch_size: int, eval_batch: int, seed: int,
                        evaluated: dict | None = None) -> dict | None:
    """The test loss and error under each of bnexp.metrics.EVAL_STATISTICS, with how they were got; None for a
    model without BN-type layers (nothing but the weights to evaluate). `evaluated`: the run's own test
    evaluation (Keras' evaluate dict), which used the precise statistics when `precise_stats` > 0 and the
    moving ones otherwise, so that it is not paid for twice."""
    layers = bn_layers(model)
    if not layers:
        return None
    started = time.perf_counter()
    precise_batches = min(precise_stats or PRECISE_BATCHES, len(batches))
    scores = {PRECISE if precise_stats else MOVING: _scores(evaluated)} if evaluated else {}
    if MOVING not in scores:
        scores[MOVING] = _scores(model.evaluate(x, y, batch_size=eval_batch, verbose=0, return_dict=True))
    if PRECISE not in scores:
        saved = recompute_bn_statistics(model, (batches[i] for i in range(precise_batches)))
        try:
            scores[PRECISE] = _scores(model.evaluate(x, y, batch_size=eval_batch, verbose=0, return_dict=True))
        finally:
            _put_back(saved)
    scores[BATCH] = _batch_statistics_scores(model, layers, x, y, batch_size, seed)
    return {**{name: scores[name] for name in (MOVING, PRECISE, BATCH)}, "precise_batches": precise_batches,
            "batch_size": batch_size, "seconds": round(time.perf_counter() - started, 3)}


def _scores(evaluated: dict) -> dict:
    return {"test_loss": float(evaluated[LOSS]), "test_error": 1.0 - float(evaluated[ACCURACY])}


def _put_back(saved: list[tuple]) -> None:
    for variable, value in saved:
        variable.assign(value)


def _batch_statistics_scores(model: keras.Model, layers: list, x: np.ndarray, y: np.ndarray, batch_size: int,
                             seed: int) -> dict:
    """Test loss and error with every BN layer normalising each batch by its own statistics. The test rows
    are shuffled first (a fixed order per seed), since training batches are, and a test file sorted by class
    would otherwise give batches of one class."""
    order = np.random.default_rng([seed, 1]).permutation(len(x))
    saved = [(v, keras.ops.convert_to_numpy(v.value)) for v in model.variables if not v.trainable]
    try:
        with called_in_training_mode(model, layers):
            # Batch by batch: predict() over the whole set was ten times slower with steps_per_execution 32.
            probabilities = np.concatenate([model.predict_on_batch(x[order[start:start + batch_size]])
                                            for start in range(0, len(x), batch_size)])
    finally:
        _put_back(saved)  # the training-mode passes moved the moving statistics
    losses = keras.losses.sparse_categorical_crossentropy(y[order], probabilities)
    return {"test_loss": float(np.mean(keras.ops.convert_to_numpy(losses))),
            "test_error": float(np.mean(np.argmax(probabilities, axis=-1) != y[order]))}
