"""The baseline: what the articles in ../shared/EXPERIMENTS.md do, as one plain Keras script.

Default compile, `model.fit` on NumPy arrays with validation_split, one process looping over the
runs. Prints one JSON line per run: {"batch_size", "bn", "epoch_seconds": [...], "test_accuracy"}.

    python bench/plain_keras.py --data mnist.npz --train-subset 12000 --epochs 2 --runs 250:bn 16:no_bn
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402


def e2_model(bn: bool) -> keras.Model:
    """E2: Conv32 -> BN -> Pool -> BN -> Conv64 -> BN -> Pool -> BN -> Dense256 -> BN -> softmax."""
    def norm():
        return [layers.BatchNormalization()] if bn else []

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, 3, activation="relu"), *norm(),
        layers.MaxPooling2D(2), *norm(),
        layers.Conv2D(64, 3, activation="relu"), *norm(),
        layers.MaxPooling2D(2), *norm(),
        layers.Flatten(),
        layers.Dense(256, activation="relu"), *norm(),
        layers.Dense(10, activation="softmax"),
    ])


class EpochTimes(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.tic = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):  # after the validation pass, as bnexp's epoch_seconds
        self.seconds.append(time.perf_counter() - self.tic)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="an npz with x_train, y_train, x_test, y_test")
    parser.add_argument("--train-subset", type=int)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--runs", nargs="+", required=True, help="BATCH:bn or BATCH:no_bn, trained in order")
    args = parser.parse_args()
    with np.load(args.data) as data:
        x_train, y_train = data["x_train"][:args.train_subset], data["y_train"][:args.train_subset]
        x_test, y_test = data["x_test"], data["y_test"]
    x_train = (x_train / 255.0).reshape(-1, 28, 28, 1)
    x_test = (x_test / 255.0).reshape(-1, 28, 28, 1)
    for seed, run in enumerate(args.runs):
        batch, arm = run.split(":")
        keras.utils.set_random_seed(seed)
        model = e2_model(arm == "bn")
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        times = EpochTimes()
        model.fit(x_train, y_train, batch_size=int(batch), epochs=args.epochs, validation_split=0.2,
                  callbacks=[times], verbose=0)
        _, accuracy = model.evaluate(x_test, y_test, verbose=0)
        print(json.dumps({"batch_size": int(batch), "arm": arm, "epoch_seconds": times.seconds,
                          "test_accuracy": accuracy}), flush=True)


if __name__ == "__main__":
    main()
