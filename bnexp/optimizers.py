"""The optimizers train.optimizer may name, in one table: the Keras optimizer each makes and the slots it keeps
per trainable weight (for the memory check). Keras is imported only when an optimizer is made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


def _keras_optimizers():
    import keras

    return keras.optimizers


@dataclass(frozen=True)
class Optimizer:
    """One optimizer: `make(learning_rate, train)` (train: the train section, for momentum and nesterov)."""

    name: str
    make: Callable[[Any, Any], Any]
    slots: int  # float32 values kept per trainable weight (Adam: the two moments)
    momentum_slot: bool = False  # one more slot, the velocity, when train.momentum > 0

    def slot_count(self, momentum: float) -> int:
        """The slots per trainable weight with this train.momentum."""
        return self.slots + (self.momentum_slot and momentum > 0)


# The order is the one error messages list the names in.
OPTIMIZERS: dict[str, Optimizer] = {optimizer.name: optimizer for optimizer in (
    Optimizer("adam", lambda lr, train: _keras_optimizers().Adam(lr), 2),
    Optimizer("sgd", lambda lr, train: _keras_optimizers().SGD(lr, momentum=train.momentum, nesterov=train.nesterov),
              0, momentum_slot=True),
    Optimizer("rmsprop", lambda lr, train: _keras_optimizers().RMSprop(lr, momentum=train.momentum), 1,
              momentum_slot=True),
    Optimizer("adamw", lambda lr, train: _keras_optimizers().AdamW(lr), 2),
    Optimizer("nadam", lambda lr, train: _keras_optimizers().Nadam(lr), 2),
    Optimizer("adagrad", lambda lr, train: _keras_optimizers().Adagrad(lr), 1),
)}
OPTIMIZER_NAMES = tuple(OPTIMIZERS)
