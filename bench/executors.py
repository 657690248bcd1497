"""The Ray executor against the process executor on the same small sweep, side by side in one
invocation: fixed start-up and wall time per extra run; prints a table (docs/PERFORMANCE.md).

    python bench/executors.py                       # 4- and 24-run sweeps, 3 rounds each
    python bench/executors.py --runs 4 8 --repeats 1

Each sweep is tiny on purpose (the E4 CNN on 512 synthetic 28x28 images, one epoch), so what is
measured is what an executor adds around training, not training. Both executors get the same
slots, one per CPU: `--executor processes -j CPUS` and `--executor ray --cpus-per-run 1` on the
local Ray instance bnexp starts without --address (which offers every CPU). The two run back to
back, in alternating order, and each keeps its best figure (other work on a shared machine only
slows a side down). Wall time of a sweep of n runs = start + n x per-run cost; the per-run cost is
the slope between the smaller and the larger sweep, the start what is left at the smaller; the
training seconds are what the runs record in their result.json (data, model, training, test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def bnexp_command() -> list[str]:
    script = Path(sys.executable).with_name("bnexp")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bnexp"]


def write_sweep(folder: Path, runs: int) -> Path:
    """A config of `runs` runs (runs/2 learning rates x 2 arms, one seed) on synthetic data."""
    data = folder / "synthetic.npz"
    if not data.exists():
        rng = np.random.default_rng(0)
        np.savez(data, x_train=rng.integers(0, 256, (512, 28, 28), dtype=np.uint8),
                 y_train=rng.integers(0, 10, 512, dtype=np.uint8),
                 x_test=rng.integers(0, 256, (256, 28, 28), dtype=np.uint8),
                 y_test=rng.integers(0, 10, 256, dtype=np.uint8))
    config = {"name": f"sweep{runs}", "seeds": [0],
              "data": {"dataset": "npz", "path": str(data), "validation_split": 0.2},
              "model": {"preset": "e4_mnist_cnn"},
              "sweep": {"train.learning_rate": [round(0.001 * (i + 1), 4) for i in range(runs // 2)]},
              "train": {"epochs": 1, "batch_size": 64}}
    path = folder / f"sweep{runs}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def timed_sweep(config: Path, folder: Path, options: list[str]) -> dict:
    """Wall seconds of `bnexp run` (start-up included) and the runs' own training seconds."""
    results = Path(tempfile.mkdtemp(dir=folder))
    tic = time.perf_counter()
    done = subprocess.run(bnexp_command() + ["run", str(config), "--results", str(results), "--quiet", *options],
                          env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - tic
    if done.returncode:
        raise SystemExit(f"bnexp run {' '.join(options)} failed ({done.returncode}):\n{done.stdout}\n"
                         f"{done.stderr[-4000:]}")
    trained = [json.loads(p.read_text())["wall_seconds"] for p in results.glob("*/*/result.json")]
    return {"wall": wall, "train": sum(trained), "runs": len(trained)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, nargs=2, default=[4, 24], metavar=("FEW", "MANY"),
                        help="the two sweep sizes (even numbers)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    slots = os.cpu_count() or 1
    executors = {"processes": ["--executor", "processes", "-j", str(slots)],
                 "ray": ["--executor", "ray", "--cpus-per-run", "1"]}
    best: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="bnexp-bench-") as scratch:
        folder = Path(scratch)
        for runs in args.runs:
            config = write_sweep(folder, runs)
            for round_ in range(args.repeats):
                order = list(executors) if round_ % 2 == 0 else list(reversed(executors))
                for name in order:
                    figure = timed_sweep(config, folder, executors[name])
                    print(f"  {name:9s} {runs:3d} runs: {figure['wall']:6.1f} s wall, "
                          f"{figure['train']:6.1f} s in training", file=sys.stderr, flush=True)
                    key = (name, runs)
                    if key not in best or figure["wall"] < best[key]["wall"]:
                        best[key] = figure
    few, many = args.runs
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; {slots} slots each; best of {args.repeats}\n")
    print(f"| executor | sweep of {few}: wall | sweep of {many}: wall | wall per extra run | start-up "
          f"| training seconds per run |")
    print("|---|---:|---:|---:|---:|---:|")
    slope = {}
    for name in executors:
        a, b = best[(name, few)], best[(name, many)]
        slope[name] = (b["wall"] - a["wall"]) / (many - few)
        start = a["wall"] - few * slope[name]
        per_run = (a["train"] + b["train"]) / (a["runs"] + b["runs"])
        print(f"| {name} | {a['wall']:.1f} s | {b['wall']:.1f} s | {slope[name]:.2f} s | {start:.1f} s "
              f"| {per_run:.2f} s |")
    print(f"\nray / processes, wall per extra run: {slope['ray'] / slope['processes']:.2f}; "
          f"Ray's extra cost per run: {slope['ray'] - slope['processes']:+.2f} s of wall "
          f"({slots * (slope['ray'] - slope['processes']):+.2f} slot-seconds)")


if __name__ == "__main__":
    main()
