"""Compare two results folders run by run, to the last digit: every history field but epoch_seconds, and
the result's status, epochs and test metrics. For a deterministic run before and after a change:

    bnexp run configs/smoke.yaml --data-dir ../shared/data --results /tmp/before --deterministic --workers 1 -q
    (change the code, then the same into /tmp/after)
    python bench/same_results.py /tmp/before /tmp/after
"""

import argparse
import json
from pathlib import Path

from bnexp.store import HISTORY, RESULT, read_history, read_json

RESULT_FIELDS = ("status", "epochs_run", "diverged_epoch", "test_loss", "test_accuracy", "test_error",
                 "trainable_params", "non_trainable_params", "num_classes", "resumed_from_epoch")


def without_timing(history: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key != "epoch_seconds"} for record in history]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    runs = sorted(path.parent.relative_to(args.before) for path in args.before.glob(f"*/*/{RESULT}"))
    differ = 0
    for run in runs:
        old, new = args.before / run, args.after / run
        problems = []
        if without_timing(read_history(old / HISTORY)) != without_timing(read_history(new / HISTORY)):
            problems.append("history differs")
        old_result, new_result = read_json(old / RESULT), read_json(new / RESULT) or {}
        changed = [key for key in RESULT_FIELDS if old_result.get(key) != new_result.get(key)]
        if changed:
            problems.append("result differs: " + ", ".join(
                f"{key} {json.dumps(old_result.get(key))} -> {json.dumps(new_result.get(key))}" for key in changed))
        differ += bool(problems)
        print(f"{run}: " + ("; ".join(problems) or "identical"))
    print(f"{len(runs)} runs compared, {len(runs) - differ} identical, {differ} differ")


if __name__ == "__main__":
    main()
