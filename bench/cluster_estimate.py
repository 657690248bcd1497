"""On paper: what the five articles' sweeps cost at full scale on this CPU, and how they spread over
N Ray workers (one CPU each). Prints a table (docs/PERFORMANCE.md, "Cluster scale").

    python bench/cluster_estimate.py --overhead 0.5

Inputs, all measured elsewhere and stated here so the arithmetic can be checked:
- CPU-seconds per epoch at full scale, from the reduced-scale CPU runs of docs/REPRODUCTION.md
  (wall time x 2 cores / (runs x epochs), two worker processes on the shared 2-core box, load 5-6),
  scaled linearly to the full number of images or steps per epoch. CIFAR-10 is not on this machine,
  so its configs use their Fashion-MNIST twins scaled by images (40,000 against 48,000) and pixels
  (32x32 against 28x28); E3, whose cost is its dense layers, by steps and parameters (31.4 M
  against 19.5 M).
- The executor's own cost per run (--overhead, seconds of one worker's time), from
  bench/executors.py.
Each run is one Ray task on one CPU; runs are placed longest first on the least loaded worker
(the order `bnexp run` submits them in makes no better use of the workers).
"""

from __future__ import annotations

import argparse
import heapq

CIFAR = (40_000 / 48_000) * (32 * 32) / (28 * 28)  # CIFAR-10 against Fashion-MNIST: images x pixels

# config, article, runs, epochs, CPU-seconds per full-scale epoch, how that figure was derived
SWEEPS = [
    ("cifar_cnn", "E1a+c", 12, 25, 2 * 300 / (12 * 10) * 5 * CIFAR,
     "fashion_cnn at 12,000 images: 12 runs x 10 epochs in 5 min; x5 for 48,000 images; x CIFAR"),
    ("batch_size_sweep", "E1b", 36, 25, 2 * 480 / (18 * 10) * 5 * CIFAR,
     "fashion_batch_size (batch 16, 64, 256) at 12,000 images: 18 runs x 10 epochs in 8 min; x5; x CIFAR"),
    ("dropout_placement", "E1d", 15, 25, 2 * 480 / (15 * 10) * 5 * CIFAR,
     "fashion_dropout at 12,000 images: 15 runs x 10 epochs in 8 min; x5; x CIFAR (no early stop assumed)"),
    ("mnist_cnn", "E2", 6, 25, 2 * 23 * 60 / (6 * 10),
     "mnist_cnn at full scale: 6 runs x 10 epochs in 23 min"),
    ("cifar_steps", "E3", 6, 10, 2 * 21 * 60 / (6 * 4) * 400 / 160 * 31.4 / 19.5,
     "fashion_steps: 6 runs x 4 epochs of 160 steps in 21 min, its step evaluations included (an upper "
     "bound); x 400/160 steps of the same batch; x parameters (the dense layers, which grow with the pixels)"),
    ("activation_lr", "E4", 24, 3, 2 * 5 * 60 / (24 * 3) * 1500 / 300,
     "activation_lr at 12,000 images: 24 runs x 3 epochs of 300 steps in 5 min; x5 for 1,500 steps"),
    ("leaf_mlp", "E5", 42, 100, 2 * 3.5 * 60 / (24 * 30),
     "leaf_mlp at full data: 24 runs x 30 epochs in 3.5 min"),
]


def makespan(runs: list[float], workers: int) -> float:
    """Seconds until the last run ends: each run, longest first, on the worker free soonest."""
    free = [0.0] * workers
    for seconds in sorted(runs, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + seconds)
    return max(free)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overhead", type=float, default=0.0, help="executor seconds per run (bench/executors.py)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 8, 32, 64, 141])
    args = parser.parse_args()

    print("| config | article | runs | epochs | CPU-s per epoch | CPU-hours | derived from |")
    print("|---|---|---:|---:|---:|---:|---|")
    runs = []
    for config, article, count, epochs, per_epoch, source in SWEEPS:
        runs += [epochs * per_epoch + args.overhead] * count
        print(f"| `{config}` | {article} | {count} | {epochs} | {per_epoch:.1f} | "
              f"{count * epochs * per_epoch / 3600:.2f} | {source} |")
    total = sum(runs)
    print(f"| all | E1-E5 | {len(runs)} | | | {total / 3600:.2f} | longest run {max(runs) / 3600:.2f} h |")
    print(f"\n| Ray workers (1 CPU each) | wall time | of which executor overhead ({args.overhead:g} s per run) |")
    print("|---:|---:|---:|")
    for workers in args.workers:
        wall = makespan(runs, workers)
        print(f"| {workers} | {wall / 3600:.2f} h | {len(runs) * args.overhead / workers / 60:.1f} min |")


if __name__ == "__main__":
    main()
