"""How many concurrent E2 runs one accelerator sustains: `bnexp run --workers N` for growing N.

Each step trains 2N runs (N seeds x 2 arms) of the E2 model at batch 250 on synthetic data of
MNIST's shape, N worker processes sharing the device, and reports the sweep's wall time, its
training throughput and the steady per-epoch throughput (epochs after the first, which compiles).

    KERAS_BACKEND=jax python bench/gpu_concurrency.py --workers 1 2 4 8 16 --epochs 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml


def synthetic_mnist(path: Path) -> None:
    """Random 28x28 uint8 images, 60k train + 10k test: MNIST's shapes, none of its content."""
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, 60000, dtype=np.uint8),
             x_test=rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8),
             y_test=rng.integers(0, 10, 10000, dtype=np.uint8))


def gpu_utilisation() -> subprocess.Popen | None:
    try:
        return subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                 "-lms", "500"], stdout=subprocess.PIPE, text=True)
    except OSError:
        return None


def sweep(workers: int, epochs: int, subset: int | None, data: Path, folder: Path) -> dict:
    config = {
        "name": f"gpu{workers}", "seeds": list(range(workers)),
        "data": {"dataset": "npz", "path": str(data), "validation_split": 0.2, "train_subset": subset},
        "model": {"preset": "e2_mnist_cnn"},
        "train": {"batch_size": 250, "epochs": epochs},
    }
    path = folder / f"gpu{workers}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION=f"{min(0.75, 0.9 / workers):.3f}")
    monitor = gpu_utilisation()
    tic = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bnexp", "run", str(path), "--workers", str(workers),
                           "--results", str(folder / "results"), "--quiet"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - tic
    util = []
    if monitor:
        monitor.terminate()
        util = [line.split(",") for line in monitor.communicate()[0].splitlines() if "," in line]
    if done.returncode:
        raise SystemExit(f"bnexp run failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    runs = list((folder / "results" / f"gpu{workers}").glob("*/history.jsonl"))
    histories = [[json.loads(line) for line in run.read_text().splitlines()] for run in runs]
    per_epoch = int((subset or 60000) * 0.8)
    train_samples = per_epoch * epochs * len(runs)
    steady = [e["epoch_seconds"] for h in histories for e in h[1:]]
    return {
        "workers": workers, "runs": len(runs), "wall_s": round(wall, 1),
        "sweep_samples_per_s": round(train_samples / wall),
        "runs_per_hour": round(len(runs) / wall * 3600),
        "steady_epoch_s": round(statistics.median(steady), 3) if steady else None,
        "steady_samples_per_s": round(workers * per_epoch / statistics.median(steady)) if steady else None,
        "gpu_util_mean": round(statistics.mean(float(u[0]) for u in util)) if util else None,
        "gpu_mem_max_mib": max(int(float(u[1])) for u in util) if util else None,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, help="fewer images, for a quick check on a CPU")
    parser.add_argument("--budget", type=float, default=480, help="seconds; no new step starts after it")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    started, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        synthetic_mnist(folder / "mnist_shape.npz")
        for workers in args.workers:
            if time.perf_counter() - started > args.budget:
                print(f"budget spent: skipped --workers {workers} and above", flush=True)
                break
            rows.append(sweep(workers, args.epochs, args.train_subset, folder / "mnist_shape.npz", folder))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    header = list(rows[0])
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in header) + " |")


if __name__ == "__main__":
    main()
