"""The results layout on disk (docs/RESULTS_FORMAT.md): atomic writes and run states.

Imports nothing heavy, so `bnexp status` and `bnexp report` stay fast.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

SPEC, HISTORY, RESULT, CHECKPOINT = "spec.json", "history.jsonl", "result.json", "checkpoint.keras"
EXPERIMENT = "experiment.json"
FINAL_STATUSES = ("completed", "diverged")  # a failed run is retried by the next `bnexp run`


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `path` so readers see the old file or the new one, never a mix: temp file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def run_status(run_dir: Path) -> str:
    """completed, diverged or failed (from result.json), running/interrupted (spec only) or pending."""
    result = read_json(run_dir / RESULT)
    if isinstance(result, dict) and "status" in result:
        return result["status"]
    return "incomplete" if (run_dir / SPEC).exists() else "pending"


def is_complete(run_dir: Path) -> bool:
    return run_status(run_dir) in FINAL_STATUSES


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null (a diverged loss is recorded, not a parse error)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
