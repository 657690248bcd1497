"""bnexp against a plain Keras script, side by side in one invocation; prints figures and ratios.

    python bench/run.py --data-dir ../shared/data
    python bench/run.py --data-dir ../shared/data --batches 250 --skip sweep startup report flops  # one run only

Same model (E2), data and epochs on both sides. Real MNIST from --data-dir, else synthetic data
of MNIST's shape. The two sides run back to back, --repeats times in alternating order, and each
side keeps its best figure: other work on a shared machine only ever slows a side down, so the
best of a few is the steadiest estimate and the ratio compares like with like (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # also for the model this process builds
BENCH = Path(__file__).resolve().parent
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
SWEEP_BATCHES = (16, 32, 64, 128)  # x 2 arms = the 8-run sweep
ONE_RUN_TARGETS = {250: 0.9, 16: 0.75}  # batch size: target wall ratio of one run against plain Keras


def bnexp_command() -> list[str]:
    script = Path(sys.executable).with_name("bnexp")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bnexp"]


def timed(command: list[str]) -> tuple[float, str]:
    """Wall seconds of a command, start-up included, and its output; stops the benchmark if it fails."""
    tic = time.perf_counter()
    done = subprocess.run(command, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - tic
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}")
    return seconds, done.stdout


def find_mnist(data_dir: Path | None, folder: Path) -> tuple[Path, dict, str]:
    """(npz file for the plain script, bnexp's data section, a description)."""
    for candidate in ([data_dir / "mnist.npz", data_dir / "mnist" / "mnist.npz"] if data_dir else []):
        if candidate.is_file():
            return candidate, {"dataset": "mnist"}, f"real MNIST ({candidate})"
    rng = np.random.default_rng(0)
    path = folder / "synthetic_mnist.npz"
    np.savez(path, x_train=rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, 60000, dtype=np.uint8),
             x_test=rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8),
             y_test=rng.integers(0, 10, 10000, dtype=np.uint8))
    return path, {"dataset": "npz", "path": str(path)}, "synthetic data of MNIST's shape (no MNIST found)"


def write_config(folder: Path, name: str, data: dict, subset: int | None, epochs: int, batches: list[int],
                 arms: dict | None = None) -> Path:
    config = {
        "name": name, "seeds": [0],
        "data": {**data, "validation_split": 0.2, "train_subset": subset},
        "model": {"preset": "e2_mnist_cnn"},
        "train": {"epochs": epochs, "batch_size": batches[0]},
    }
    if len(batches) > 1:
        config["sweep"] = {"train.batch_size": batches}
    if arms:
        config["arms"] = arms
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def later_epochs(seconds: list[float]) -> float:
    """Mean epoch time after the first (which traces the training functions); the first if alone."""
    return statistics.mean(seconds[1:] or seconds)


def alternate(repeats: int, plain, bnexp) -> tuple[list, list]:
    """Each side's results over `repeats` rounds, plain first in even rounds, bnexp first in odd ones."""
    plains, bnexps = [], []
    for round_ in range(repeats):
        for side in ((plain, plains), (bnexp, bnexps))[:: 1 if round_ % 2 == 0 else -1]:
            side[1].append(side[0]())
    return plains, bnexps


def one_run(args, folder: Path, npz: Path, data: dict, batch: int) -> dict:
    plains, bnexps = alternate(args.repeats, lambda: plain_run(args, npz, batch),
                               lambda: bnexp_run(args, folder, data, batch))
    return {"batch": batch, "plain_wall": min(w for w, _ in plains), "bnexp_wall": min(w for w, _ in bnexps),
            "plain_epoch": min(later_epochs(e) for _, e in plains),
            "bnexp_epoch": min(later_epochs(e) for _, e in bnexps),
            "plain_epochs": [e for _, e in plains], "bnexp_epochs": [e for _, e in bnexps]}


def plain_run(args, npz: Path, batch: int) -> tuple[float, list[float]]:
    plain_wall, out = timed([sys.executable, str(BENCH / "plain_keras.py"), "--data", str(npz), "--epochs",
                             str(args.epochs), "--runs", f"{batch}:bn"]
                            + (["--train-subset", str(args.train_subset)] if args.train_subset else []))
    return plain_wall, json.loads(out.splitlines()[-1])["epoch_seconds"]


def bnexp_run(args, folder: Path, data: dict, batch: int) -> tuple[float, list[float]]:
    config = write_config(folder, f"one{batch}", data, args.train_subset, args.epochs, [batch],
                          arms={"bn": {"model.batch_norm.enabled": True}})
    results = Path(tempfile.mkdtemp(dir=folder))
    bnexp_wall, _ = timed(bnexp_command() + ["run", str(config), "--results", str(results), "--quiet"]
                          + (["--data-dir", str(args.data_dir)] if args.data_dir else []))
    [history] = (results / f"one{batch}").glob("*/history.jsonl")
    return bnexp_wall, [json.loads(line)["epoch_seconds"] for line in history.read_text().splitlines()]


def sweep(args, folder: Path, npz: Path, data: dict) -> dict:
    runs = [f"{batch}:{arm}" for batch in SWEEP_BATCHES for arm in ("no_bn", "bn")]
    config = write_config(folder, "sweep", data, args.sweep_subset, args.sweep_epochs, list(SWEEP_BATCHES))
    plains, bnexps = alternate(
        args.repeats,
        lambda: timed([sys.executable, str(BENCH / "plain_keras.py"), "--data", str(npz), "--epochs",
                       str(args.sweep_epochs), "--train-subset", str(args.sweep_subset), "--runs", *runs])[0],
        lambda: timed(bnexp_command() + ["run", str(config), "--results", tempfile.mkdtemp(dir=folder), "--quiet"]
                      + (["--data-dir", str(args.data_dir)] if args.data_dir else []))[0],
    )
    return {"plain_wall": min(plains), "bnexp_wall": min(bnexps), "plain_walls": plains, "bnexp_walls": bnexps}


def startup(folder: Path, data: dict) -> dict:
    config = write_config(folder, "plan", data, None, 1, list(SWEEP_BATCHES))
    help_s = statistics.median(timed(bnexp_command() + ["--help"])[0] for _ in range(5))
    plan_s = statistics.median(timed(bnexp_command() + ["plan", str(config), "--results", str(folder / "results")])[0]
                               for _ in range(3))
    return {"help": help_s, "plan": plan_s}


def report_time(folder: Path, runs: int = 200, epochs: int = 25) -> float:
    """`bnexp report` on `runs` hand-made finished runs: 10 learning rates x 2 arms x 10 seeds."""
    from bnexp.config.load import load_config
    from bnexp.runner import write_experiment
    from bnexp.store import HISTORY, write_history, write_result, write_spec
    from bnexp.sweep import expand_runs

    config = folder / "report200.yaml"
    config.write_text(yaml.safe_dump({
        "name": "report200", "seeds": list(range(runs // 20)),
        "sweep": {"train.learning_rate": [round(0.0005 * 2 ** i, 6) for i in range(10)]},
        "data": {"dataset": "mnist", "validation_split": 0.2}, "model": {"preset": "e2_mnist_cnn"},
        "train": {"batch_size": 250, "epochs": epochs},
    }))
    experiment = load_config(config)
    specs = expand_runs(experiment, str(config))
    results = folder / "report_results"
    write_experiment(experiment, specs, results, str(config))
    rng = np.random.default_rng(0)
    for spec in specs:
        run_dir = results / spec.experiment / spec.run_id
        write_spec(run_dir, spec.record())
        bonus = 0.01 if spec.arm == "bn" else 0.0
        history = []
        for epoch in range(1, epochs + 1):
            accuracy = min(0.999, 0.9 + bonus + 0.003 * epoch + rng.normal(0, 0.002))
            history.append({"epoch": epoch, "step": 192 * epoch, "loss": 1 - accuracy, "accuracy": accuracy,
                            "val_loss": 1.05 - accuracy, "val_accuracy": accuracy - 0.005,
                            "learning_rate": spec.point["train.learning_rate"], "epoch_seconds": 15.0,
                            "step_losses": [[step, 1.0 / step] for step in range(50 * epoch, 192 * epoch, 50)]})
        write_history(run_dir / HISTORY, history)
        final = history[-1]["accuracy"]
        write_result(run_dir, {
            "status": "completed", "epochs_run": epochs, "diverged_epoch": None, "error": None,
            "test_loss": 1 - final, "test_accuracy": final, "test_error": 1 - final,
            "trainable_params": 431242, "non_trainable_params": 1280, "wall_seconds": 400.0,
            "started_at": "2026-11-23T04:00:00+00:00", "finished_at": "2026-11-23T04:06:40+00:00",
            "environment": {"backend": "tensorflow", "device": "cpu"}})
    seconds, _ = timed(bnexp_command() + ["report", "report200", "--results", str(results)])
    return seconds


def training_flops() -> tuple[float, float]:
    """(forward FLOPs per sample, training FLOPs per sample) of the E2 model with BN, from its layer
    shapes: 2 x multiply-adds of each Conv2D and Dense; training = forward + twice the forward for
    the gradients with respect to inputs and weights, less the first layer's input gradient."""
    import keras

    from bnexp.config.schema import ModelConfig
    from bnexp.models import build_model
    from bnexp.config.presets import PRESETS

    model = build_model(ModelConfig.model_validate(PRESETS["e2_mnist_cnn"]), (28, 28, 1), 10, 0)
    costs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels = layer.output.shape
            costs.append(2 * height * width * channels * math.prod(layer.kernel.shape[:3]))
        elif isinstance(layer, keras.layers.Dense):
            costs.append(2 * math.prod(layer.kernel.shape))
    forward = sum(costs)
    return forward, 3 * forward - costs[0]


def matmul_flops(n: int = 2048, repeats: int = 7) -> float:
    """The machine's float32 matrix-multiply rate (NumPy's BLAS, all its threads), best of `repeats`."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    a @ b
    best = math.inf
    for _ in range(repeats):
        tic = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - tic)
    return 2 * n ** 3 / best


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    from bnexp.executors import available_cpus

    cpus = available_cpus()
    versions = subprocess.run([sys.executable, "-c", "import keras, tensorflow as tf; print(keras.__version__, tf.__version__)"],
                              env=ENV, capture_output=True, text=True).stdout.split()
    return (f"{model}, {cpus} CPUs usable, Python {platform.python_version()}, "
            f"Keras {versions[0] if versions else '?'}, TensorFlow {versions[1] if len(versions) > 1 else '?'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="folder with mnist.npz or mnist/mnist.npz")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the one-run comparisons")
    parser.add_argument("--train-subset", type=int, default=12000,
                        help="one run: first N training images (0: all 60k)")
    parser.add_argument("--sweep-epochs", type=int, default=1)
    parser.add_argument("--sweep-subset", type=int, default=12000, help="sweep: first N training images")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of each side-by-side comparison")
    parser.add_argument("--batches", type=int, nargs="+", default=list(ONE_RUN_TARGETS), choices=list(ONE_RUN_TARGETS),
                        help="batch sizes of the one-run comparisons")
    parser.add_argument("--skip", nargs="*", default=[], choices=["one", "sweep", "startup", "report", "flops"])
    args = parser.parse_args()
    args.train_subset = args.train_subset or None
    rows = []

    def row(what, plain, bnexp, target, unit="s"):
        ratio = bnexp / plain if plain else None
        rows.append((what, plain, bnexp, ratio, target, unit))
        print(f"{what}: plain {plain if plain is None else round(plain, 3)} bnexp {bnexp:.3f}"
              + (f" ratio {ratio:.2f}" if ratio else ""), flush=True)

    with tempfile.TemporaryDirectory(prefix="bnexp-bench-") as tmp:
        folder = Path(tmp)
        npz, data, described = find_mnist(args.data_dir, folder)
        print(f"machine: {machine()}\ndata: {described}\nload average at start: {os.getloadavg()}", flush=True)
        one = {}
        if "one" not in args.skip:
            for batch in args.batches:
                one[batch] = one_run(args, folder, npz, data, batch)
                row(f"one run, batch {batch}: wall incl. start-up", one[batch]["plain_wall"],
                    one[batch]["bnexp_wall"], ONE_RUN_TARGETS[batch])
                row(f"one run, batch {batch}: epoch after the first", one[batch]["plain_epoch"],
                    one[batch]["bnexp_epoch"], None)
                print(f"  epoch seconds: plain {one[batch]['plain_epochs']}, bnexp {one[batch]['bnexp_epochs']}")
        if "sweep" not in args.skip:
            result = sweep(args, folder, npz, data)
            row("8-run sweep (batch 16-128 x 2 arms): wall", result["plain_wall"], result["bnexp_wall"], 0.7)
            print(f"  walls: plain {result['plain_walls']}, bnexp {result['bnexp_walls']}")
        if "startup" not in args.skip:
            result = startup(folder, data)
            row("`bnexp --help`", None, result["help"], "< 0.5 s")
            row("`bnexp plan` (8 runs)", None, result["plan"], None)
        if "report" not in args.skip:
            row("`bnexp report` on 200 runs", None, report_time(folder), "< 5 s")
        if "flops" not in args.skip and 250 in one:
            forward, train = training_flops()
            samples = int((args.train_subset or 60000) * 0.8)
            epoch_flops = samples * train + (args.train_subset or 60000) * 0.2 * forward
            peak = matmul_flops()
            achieved = epoch_flops / one[250]["bnexp_epoch"]
            print(f"E2 FLOPs per sample: forward {forward / 1e6:.2f} M, training {train / 1e6:.2f} M; "
                  f"achieved {achieved / 1e9:.2f} GFLOP/s at batch 250, float32 matmul {peak / 1e9:.1f} GFLOP/s")
            rows.append((f"hardware efficiency: E2 training {achieved / 1e9:.2f} GFLOP/s (batch 250) over "
                         f"float32 matmul {peak / 1e9:.1f} GFLOP/s", None, achieved / peak, None, None, ""))
    print(f"load average at end: {os.getloadavg()}\n")
    print("| measurement | plain Keras | bnexp | bnexp / plain | target |\n|---|---:|---:|---:|---|")
    for what, plain, bnexp, ratio, target, unit in rows:
        plain_text = "" if plain is None else f"{plain:.2f} {unit}"
        ratio_text = "" if ratio is None else f"{ratio:.2f}"
        target_text = "" if target is None else (f"<= {target}" if isinstance(target, float) else target)
        print(f"| {what} | {plain_text} | {f'{bnexp:.3g} {unit}'.strip()} | {ratio_text} | {target_text} |")


if __name__ == "__main__":
    main()
