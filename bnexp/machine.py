"""What this machine and process train with: its memory and the Keras backend. Read without importing Keras
where it is not imported yet, so that a worker can set the backend's threads before the backend starts."""

from __future__ import annotations

import os
import sys


def physical_memory() -> int | None:
    """This machine's memory in bytes; None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


def keras_backend() -> str:
    """The Keras backend of this process: Keras' own answer once it is imported, else the one KERAS_BACKEND
    names (Keras' default, tensorflow, when unset)."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return keras.backend.backend()
    return os.environ.get("KERAS_BACKEND", "tensorflow")
