"""Train-step speed of the course's LSTM forecaster: jaxdl vs flax.linen's OptimizedLSTMCell.

The model is ``LSTM(64) -> Dense(1)`` on ``(batch 128, T 100, 8 features)`` windows, MSE loss, one
Adam step per call, everything under one ``jax.jit`` with the parameters and optimizer state
donated. ``jaxdl_unroll{u}`` use the defaults (:func:`jaxdl.nn.lstm_layer`, the input projection
hoisted, the batch in 4 independent scans on CPU); ``jaxdl_in_loop`` projects the inputs step by
step inside the loop (``hoist_inputs=False``); ``jaxdl_one_scan`` runs the batch as one scan
(``batch_splits=1``). Each implementation is compiled once (compile time reported separately), warmed up, then
timed over ``repeats`` blocks of ``steps`` steps; we report the median step time, examples/s,
achieved GFLOP/s against the analytic count and the ratio to flax.

Analytic FLOPs per train step (matmuls only; the forward pass does ``T`` steps of
``2 B (in + H) 4H`` multiply-adds, the backward pass twice that):
``3 * 2 * B * T * (in + H) * 4H`` = 1.42 GFLOP at the default sizes.

Run: ``python -m experiments.benchmarks.lstm_step --workdir runs/lstm_step``.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import models


@dataclasses.dataclass
class Config:
    batch: int = 128
    timesteps: int = 100
    features: int = 8
    hidden: int = 64
    learning_rate: float = 1e-3
    repeats: int = 7
    steps: int = 20
    warmup: int = 3
    unrolls: tuple[int, ...] = (1, 4)  # jaxdl scan unroll factors to time (default projection)
    time_variants: bool = True  # also time hoist_inputs=False and batch_splits=1
    seed: int = 0


def get_config() -> Config:
    return Config()


class FlaxForecaster(fnn.Module):
    """The same model from flax.linen's parts: RNN(OptimizedLSTMCell(H)) then Dense(1)."""

    hidden: int = 64

    @fnn.compact
    def __call__(self, x, train: bool = False):
        carry, _ = fnn.RNN(fnn.OptimizedLSTMCell(self.hidden), return_carry=True)(x)
        return fnn.Dense(1)(carry[1])


def analytic_flops(c: Config) -> float:
    return 3 * 2 * c.batch * c.timesteps * (c.features + c.hidden) * 4 * c.hidden


def time_model(model: fnn.Module, c: Config) -> dict[str, float]:
    rng = np.random.default_rng(c.seed)
    x = jnp.asarray(rng.normal(size=(c.batch, c.timesteps, c.features)).astype(np.float32))
    y = jnp.asarray(rng.normal(size=(c.batch, 1)).astype(np.float32))
    params = model.init(jax.random.key(c.seed), x[:1])["params"]
    opt = optax.adam(c.learning_rate)
    opt_state = opt.init(params)

    def loss_fn(p, x, y):
        return jnp.mean((model.apply({"params": p}, x) - y) ** 2)

    def step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, x, y).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(c.warmup):
        params, opt_state, loss = compiled(params, opt_state, x, y)
    jax.block_until_ready(loss)
    times = []
    for _ in range(c.repeats):
        t0 = time.perf_counter()
        for _ in range(c.steps):
            params, opt_state, loss = compiled(params, opt_state, x, y)
        jax.block_until_ready((params, loss))
        times.append((time.perf_counter() - t0) / c.steps)
    med = float(np.median(times))
    return {
        "compile_s": compile_s,
        "step_ms_median": 1e3 * med,
        "step_ms_all": [1e3 * t for t in times],
        "examples_per_s": c.batch / med,
        "gflops_per_s": analytic_flops(c) / med / 1e9,
        "final_loss": float(loss),
    }


def train_and_evaluate(config: Config, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    c = config
    results = {"flax_optimized_lstm": time_model(FlaxForecaster(c.hidden), c)}
    for u in c.unrolls:
        results[f"jaxdl_unroll{u}"] = time_model(models.Forecaster(hidden=c.hidden, unroll=u), c)
    if c.time_variants:
        model = models.Forecaster(hidden=c.hidden, hoist_inputs=False)
        results["jaxdl_in_loop"] = time_model(model, c)
        model = models.Forecaster(hidden=c.hidden, batch_splits=1)
        results["jaxdl_one_scan"] = time_model(model, c)
    base = results["flax_optimized_lstm"]["step_ms_median"]
    for name, r in results.items():
        r["speedup_vs_flax"] = base / r["step_ms_median"]
        print(
            f"{name:22s} step {r['step_ms_median']:7.2f} ms  {r['examples_per_s']:9.0f} ex/s  "
            f"{r['gflops_per_s']:6.2f} GFLOP/s  compile {r['compile_s']:5.2f} s  "
            f"x{r['speedup_vs_flax']:.2f} vs flax"
        )
    out = {
        "config": c,
        "analytic_gflop_per_step": analytic_flops(c) / 1e9,
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "results": results,
    }
    save_json(out, os.path.join(workdir, "metrics.json"))
    fig, ax = new_figure(figsize=(6, 3.5))
    names = list(results)
    vals = [results[n]["examples_per_s"] for n in names]
    ax.bar(names, vals, color=["tab:gray"] + ["tab:blue"] * (len(names) - 1))
    ax.tick_params(axis="x", labelrotation=20)
    for k, n in enumerate(names):
        ax.text(k, vals[k], f"x{results[n]['speedup_vs_flax']:.2f}", ha="center", va="bottom")
    ax.set_ylabel("examples / s (train step)")
    ax.set_title(
        f"LSTM({c.hidden})->Dense(1), B={c.batch}, T={c.timesteps}, {jax.default_backend()}"
    )
    save_figure(fig, os.path.join(workdir, "lstm_step.png"))
    return out


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
