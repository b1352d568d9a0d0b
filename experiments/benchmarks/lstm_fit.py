"""The course's LSTM trained through each library's own ``fit``: ``jaxdl.train.fit`` against Keras's
``model.fit``, each framework in its own process, one after the other.

Workload: LSTM(64) -> Dense(1), T = 100, 8 features, MSE, Adam 1e-3, batch 128, 4,000 random
sequences (31.25 batches: the short last batch is part of the test), ``epochs`` epochs; the figure
is the median of the steady epochs (the first, which compiles, is reported apart) in sequences per
second. jaxdl runs with one CPU device per core, where ``fit(parallel_step="auto")`` takes the
per-device step for a recurrent model (``docs/performance.md``); Keras with its defaults.

    python -m experiments.benchmarks.lstm_fit --out runs/lstm_fit.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

N, T, F, H, BATCH = 4000, 100, 8, 64, 128


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, T, F)).astype(np.float32)
    y = x[:, -10:, 0].mean(axis=1, keepdims=True).astype(np.float32)  # (N, 1)
    return x, y


def run_jaxdl(epochs: int) -> list[float]:
    import jax

    jax.config.update("jax_num_cpu_devices", os.cpu_count())
    from jaxdl import losses, models, optim, train

    x, y = _data()
    times = []

    class Timer(train.Callback):
        def on_train_begin(self, ctx):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs, ctx):
            jax.block_until_ready(ctx.state.params)
            now = time.perf_counter()
            times.append(now - self.t)
            self.t = now

    train.fit(
        models.Forecaster(hidden=H), optim.adam(1e-3), (x, y), epochs=epochs, batch_size=BATCH,
        loss_fn=losses.mse, callbacks=[Timer()], verbose=0,
    )  # fmt: skip
    return times


def run_keras(epochs: int) -> list[float]:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    from keras import layers

    x, y = _data()
    model = keras.Sequential([keras.Input((T, F)), layers.LSTM(H), layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[Timer()])
    return times


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", choices=("jaxdl", "keras"), default=None)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--out", default="runs/lstm_fit.json")
    args = p.parse_args(argv)
    if args.framework:  # child process: print one JSON line
        times = (run_jaxdl if args.framework == "jaxdl" else run_keras)(args.epochs)
        print(json.dumps({"epoch_seconds": times}))
        return {}
    results = {}
    for fw in ("jaxdl", "keras"):
        cmd = [sys.executable, "-m", "experiments.benchmarks.lstm_fit", "--framework", fw,
               "--epochs", str(args.epochs)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        times = json.loads(out.strip().splitlines()[-1])["epoch_seconds"]
        steady = float(np.median(times[1:]))
        results[fw] = {
            "epoch_seconds": times,
            "first_epoch_seconds": times[0],
            "sequences_per_second": N / steady,
        }
        print(f"{fw}: first epoch {times[0]:.2f} s, steady {N / steady:,.0f} sequences/s")
    results["jaxdl_over_keras"] = (
        results["jaxdl"]["sequences_per_second"] / results["keras"]["sequences_per_second"]
    )
    results["cpu_count"] = os.cpu_count()
    print(f"jaxdl fit / Keras fit: {results['jaxdl_over_keras']:.2f}x")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
