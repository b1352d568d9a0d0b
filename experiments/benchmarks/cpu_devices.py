"""One CPU device per core: the course's LSTM train step on one device and data-parallel over
``cpu_devices`` CPU devices, timed in one process.

The process asks JAX for ``cpu_devices`` CPU devices (``jax_num_cpu_devices``; 0 = one per core)
and builds the same train step (:class:`jaxdl.models.Forecaster`, ``LSTM(64) -> Dense(1)``,
batch 128, T = 100, 8 features, MSE, :func:`jaxdl.optim.adam`, state donated) four ways:

* ``one_device``: :func:`jaxdl.train.make_train_step` on device 0;
* ``shard_map``: :func:`jaxdl.train.parallel.make_shard_map_train_step` over all devices, each
  running the one-device program on ``B/D`` rows;
* ``partitioned``: :func:`jaxdl.train.parallel.make_sharded_train_step`, XLA's partition of the
  global program;
* ``pmap``: :func:`jaxdl.train.parallel.make_pmap_train_step`.

Each is compiled and warmed up, then the four are timed in turn, ``repeats`` rounds of ``steps``
steps, so all see the same machine load; we report the median step time and the ratio to
``one_device``, and the collectives in each compiled program (the partitioned step's all-gathers
are where its time goes).

Run: ``python -m experiments.benchmarks.cpu_devices --workdir runs/cpu_devices``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time

import jax
import numpy as np

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import losses, models, optim, train
from jaxdl.train import parallel


@dataclasses.dataclass(frozen=True)
class Config:
    cpu_devices: int = 0  # 0: os.cpu_count()
    batch: int = 128
    timesteps: int = 100
    features: int = 8
    hidden: int = 64
    learning_rate: float = 1e-3
    repeats: int = 7
    steps: int = 10
    warmup: int = 3
    seed: int = 0


def get_config() -> Config:
    return Config()


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def collectives(hlo: str) -> dict[str, int]:
    """How many of each collective a compiled program's text holds."""
    return {c: len(re.findall(rf"\b{c}(?:-start)?\(", hlo)) for c in COLLECTIVES}


def build_steps(c: Config) -> dict[str, tuple]:
    rng = np.random.default_rng(c.seed)
    x = rng.normal(size=(c.batch, c.timesteps, c.features)).astype(np.float32)
    y = rng.normal(size=(c.batch, 1)).astype(np.float32)
    model, opt = models.Forecaster(hidden=c.hidden), optim.adam(c.learning_rate)

    def fresh():
        return train.create_train_state(model, opt, x, c.seed)

    mesh = parallel.make_mesh()
    d = mesh.shape[parallel.DATA_AXIS]
    shardings = parallel.state_shardings(fresh(), mesh)
    return {
        "one_device": (
            train.make_train_step(model, opt, loss_fn=losses.mse),
            fresh(),
            (jax.device_put(x), jax.device_put(y)),
        ),
        "shard_map": (
            parallel.make_shard_map_train_step(model, opt, mesh, loss_fn=losses.mse),
            parallel.shard_state(fresh(), mesh),
            parallel.shard_batch((x, y), mesh),
        ),
        "partitioned": (
            parallel.make_sharded_train_step(model, opt, mesh, shardings, loss_fn=losses.mse),
            parallel.shard_state(fresh(), mesh),
            parallel.shard_batch((x, y), mesh),
        ),
        "pmap": (
            parallel.make_pmap_train_step(model, opt, loss_fn=losses.mse),
            parallel.replicate(fresh()),
            parallel.split_batch((x, y), d),
        ),
    }


def train_and_evaluate(config: Config, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    c = config
    steps = build_steps(c)
    states, hlo, compile_s = {}, {}, {}
    for name, (step, state, batch) in steps.items():
        t0 = time.perf_counter()
        for _ in range(c.warmup):
            state, metrics = step(state, *batch)
        jax.block_until_ready(metrics)
        compile_s[name] = time.perf_counter() - t0
        states[name] = state
        if name in ("shard_map", "partitioned"):
            hlo[name] = collectives(step.lower(state, *batch).compile().as_text())
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(c.repeats):
        for name, (step, _, batch) in steps.items():
            state = states[name]
            t0 = time.perf_counter()
            for _ in range(c.steps):
                state, metrics = step(state, *batch)
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - t0) / c.steps)
            states[name] = state
    base = float(np.median(times["one_device"]))
    results = {}
    for name, ts in times.items():
        med = float(np.median(ts))
        results[name] = {
            "step_ms_median": 1e3 * med,
            "step_ms_all": [1e3 * t for t in ts],
            "examples_per_s": c.batch / med,
            "speedup_vs_one_device": base / med,
            "warmup_s": compile_s[name],
            "collectives": hlo.get(name),
        }
        print(
            f"{name:12s} step {1e3 * med:7.2f} ms  {c.batch / med:8.0f} ex/s  "
            f"x{base / med:.2f} vs one device"
            + (f"  collectives {hlo[name]}" if name in hlo else ""),
            flush=True,
        )
    out = {
        "config": c,
        "devices": [str(dv) for dv in jax.devices()],
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "command": " ".join(sys.argv),
        "results": results,
    }
    save_json(out, os.path.join(workdir, "metrics.json"))
    fig, ax = new_figure(figsize=(6, 3.5))
    names = list(results)
    vals = [results[n]["examples_per_s"] for n in names]
    ax.bar(names, vals, color=["tab:gray"] + ["tab:blue"] * (len(names) - 1))
    for k, n in enumerate(names):
        ax.text(k, vals[k], f"x{results[n]['speedup_vs_one_device']:.2f}", ha="center", va="bottom")
    ax.set_ylabel("examples / s (LSTM train step)")
    ax.set_title(f"one CPU device vs {len(jax.devices())} ({os.cpu_count()} cores)")
    save_figure(fig, os.path.join(workdir, "cpu_devices.png"))
    return out


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    # before anything starts JAX's backend (jaxdl's XLA:CPU settings are in by import already)
    jax.config.update("jax_num_cpu_devices", cfg.cpu_devices or os.cpu_count())
    train_and_evaluate(cfg, wd)
