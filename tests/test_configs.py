"""The shipped CIFAR-10 configs train end to end on a tiny CIFAR-10 folder in the official format, and
the ghost-batch study (norm_ghost_batch.yaml) on a tiny Fashion-MNIST folder.

CIFAR-10 is not shipped, so the real runs of these configs cannot be part of the tests; this
smoke run catches a config that validates but cannot train (a pool that does not fit the image,
an arm that breaks the model). test_config.py checks that every shipped config loads and expands.
"""

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bnexp.cli import main
from bnexp.config.load import load_config

# Each trains every arm of a shipped CIFAR-10 network (tens of seconds on 2 cores): CI's slow lane.
pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).parent.parent / "configs"

# Trainable parameters per arm, from the architectures in EXPERIMENTS.md: E1 has 38,250 and BN adds
# gamma and beta on 32 + 32 + 64 + 128 channels; E3 has 27,912,660 and BN adds them on
# 30 + 50 + 60 + 3500 + 700 channels. Dropout adds none.
E1 = {"no_bn": 38_250, "bn": 38_762}
E3 = {"no_bn": 27_912_660, "bn": 27_921_340}
EXPECTED = {
    "cifar_cnn.yaml": E1,
    "batch_size_sweep.yaml": E1,
    "dropout_placement.yaml": {"baseline": E1["no_bn"], "dropout_before_pool": E1["no_bn"],
                               "dropout_after_pool": E1["no_bn"], "bn": E1["bn"], "bn_dropout": E1["bn"]},
    "cifar_steps.yaml": E3,
}


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    """cifar-10-batches-py with 8 random images in each of data_batch_1..5 and test_batch."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, 8).tolist(),
                 b"data": rng.integers(0, 256, (8, 3 * 32 * 32), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cifar_config_trains_every_arm_on_a_tiny_cifar_folder(name, cifar_dir, tmp_path):
    path = CONFIGS / name
    # One point per axis, batches of 8: a swept batch size is set through the sweep (a --set of it is refused).
    sweep = {key: [8] if key == "train.batch_size" else values[:1] for key, values in load_config(path).sweep.items()}
    batch = [] if "train.batch_size" in sweep else ["--set", "train.batch_size=8"]
    out = CliRunner().invoke(main, [
        "run", str(path), "--data-dir", str(cifar_dir), "--results", str(tmp_path), "--quiet",
        "--set", "seeds=[0]", "--set", "train.epochs=1", *batch, "--set", f"sweep={json.dumps(sweep)}",
    ])
    assert out.exit_code == 0, out.output
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/*/result.json"))]
    arms = [json.loads(p.read_text())["arm"] for p in sorted(tmp_path.glob("*/*/spec.json"))]
    assert [r["status"] for r in results] == ["completed"] * len(EXPECTED[name])
    assert {arm: r["trainable_params"] for arm, r in zip(arms, results)} == EXPECTED[name]


# norm_ghost_batch.yaml: E1's CNN on 28x28 grey images has 37,674 trainable parameters; every normalisation
# kind adds a scale and shift on 32 + 32 + 64 + 128 channels (the E1 preset keeps the biases before them).
E1_FASHION = 37_674 + 2 * (32 + 32 + 64 + 128)
GHOST_SIZES = [32, 16, 8, 4, 2]


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory) -> Path:
    """fashion-mnist with 80 random training images (64 + 16 validation) and 10 test images, in idx format."""
    folder = tmp_path_factory.mktemp("data") / "fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (80, 28, 28)), np.arange(80) % 10, rng.integers(0, 256, (10, 28, 28)), np.arange(10)]
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
    for name, array, magic in zip(names, arrays, (2051, 2049, 2051, 2049)):
        header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
        (folder / name).write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return folder.parent


@pytest.mark.slow
def test_ghost_batch_config_trains_every_arm_at_one_optimizer_batch(fashion_dir, tmp_path):
    """Wu & He's protocol: every arm steps on batches of 32; only the BN kinds' ghost size differs."""
    path = CONFIGS / "norm_ghost_batch.yaml"
    config = load_config(path)
    assert config.reference_arm == "group"
    out = CliRunner().invoke(main, [
        "run", str(path), "--data-dir", str(fashion_dir), "--results", str(tmp_path), "--quiet",
        "--set", "seeds=[0]", "--set", "train.epochs=1", "--set", "data.train_subset=80",
        "--set", "data.test_subset=10", "--set", "model.batch_norm.precise_stats=2", "-j", "1",
    ])
    assert out.exit_code == 0, out.output
    specs = {json.loads(p.read_text())["arm"]: json.loads(p.read_text()) for p in tmp_path.glob("*/*/spec.json")}
    results = {json.loads(p.parent.joinpath("spec.json").read_text())["arm"]: json.loads(p.read_text())
               for p in tmp_path.glob("*/*/result.json")}
    expected_arms = ([f"batch_g{g}" for g in GHOST_SIZES] + [f"renorm_g{g}" for g in GHOST_SIZES]
                     + ["group", "layer", "none"])
    assert sorted(results) == sorted(expected_arms)
    assert all(r["status"] == "completed" for r in results.values())
    for arm, spec in specs.items():
        model, train = spec["config"]["model"], spec["config"]["train"]
        assert train["batch_size"] == 32 and train["learning_rate"] == 0.001
        ghost = int(arm.rsplit("_g", 1)[1]) if "_g" in arm else None
        assert model["batch_norm"]["virtual_batch_size"] == ghost
        assert results[arm]["trainable_params"] == (37_674 if arm == "none" else E1_FASHION)
        # BN's evaluation statistics are recorded for the batch kinds, with precise statistics.
        assert ("eval_statistics" in results[arm] and results[arm]["eval_statistics"] is not None) == (ghost is not None)
