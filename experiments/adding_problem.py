"""Hochreiter & Schmidhuber's adding problem: a long-range memory task Elman fails and LSTM/GRU solve.

Each input is ``T`` steps of two features: a value ``u_t ~ U[0, 1]`` and a marker that is 1 at
exactly two steps (one in the first half, one in the second) and 0 elsewhere. The target is the
sum of the two marked values. Always predicting the mean (1.0) scores MSE ``1/6 ~ 0.167``; a model
has solved the task when its MSE is far below that (we use ``< 0.01``, as in Le et al. 2015 and
Arjovsky et al. 2016 who plot the same curves). The marked step in the first half lies on average
``3T/4`` steps before the output, so the gradient that could teach the model to remember it must
cross that many Jacobians (see the ``rnn_gradients`` experiment).

Model: :class:`jaxdl.models.Forecaster` (``cell -> Dense(1)`` on the last state), Adam with
clipping by global norm, fresh random batches every step, a fixed test set of 1,000 sequences.

Default (a few minutes on 2 CPU cores): ``T = 50``. The longer settings of the issue:
``python -m experiments.adding_problem --workdir runs/adding --lengths 50,100,200 --steps 6000``.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import models, optim


@dataclasses.dataclass
class Config:
    lengths: tuple[int, ...] = (50,)
    cells: tuple[str, ...] = ("elman", "lstm", "gru")
    hidden: int = 32
    batch: int = 64
    steps: int = 2000
    learning_rate: float = 3e-3
    clip_norm: float = 1.0
    eval_every: int = 100
    test_size: int = 1000
    solved_mse: float = 0.01
    seed: int = 0


def get_config() -> Config:
    return Config()


def adding_batch(key: jax.Array, batch: int, T: int) -> tuple[jax.Array, jax.Array]:
    """``x (batch, T, 2)``: values and markers; ``y (batch, 1)``: the sum of the marked values."""
    kv, ki, kj = jax.random.split(key, 3)
    values = jax.random.uniform(kv, (batch, T))
    i = jax.random.randint(ki, (batch,), 0, T // 2)
    j = jax.random.randint(kj, (batch,), T // 2, T)
    markers = jax.nn.one_hot(i, T) + jax.nn.one_hot(j, T)  # (B, T)
    x = jnp.stack([values, markers], axis=-1)
    return x, jnp.sum(values * markers, axis=1, keepdims=True)


def train_one(cell: str, T: int, c: Config) -> dict:
    model = models.Forecaster(hidden=c.hidden, cell=cell)
    key = jax.random.key(c.seed)
    x_test, y_test = adding_batch(jax.random.key(10_000 + T), c.test_size, T)
    params = model.init(key, x_test[:1])["params"]
    tx = optim.chain(optim.clip_by_global_norm(c.clip_norm), optim.adam(c.learning_rate))
    opt_state = tx.init(params)

    def loss_fn(p, x, y):
        return jnp.mean((model.apply({"params": p}, x) - y) ** 2)

    @jax.jit
    def step(p, s, k):
        x, y = adding_batch(k, c.batch, T)
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    test_mse = jax.jit(loss_fn)
    curve = {"step": [], "test_mse": [], "train_mse": []}
    running = []
    t0 = time.perf_counter()
    for k in tqdm(range(1, c.steps + 1), desc=f"{cell} T={T}", leave=False):
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, k))
        running.append(loss)
        if k % c.eval_every == 0:
            curve["step"].append(k)
            curve["train_mse"].append(float(np.mean(jax.device_get(running))))
            curve["test_mse"].append(float(test_mse(params, x_test, y_test)))
            running = []
    solved_at = next((s for s, m in zip(curve["step"], curve["test_mse"], strict=True)
                      if m < c.solved_mse), None)  # fmt: skip
    return {
        **curve,
        "final_test_mse": curve["test_mse"][-1],
        "best_test_mse": min(curve["test_mse"]),
        "solved_at_step": solved_at,
        "seconds": time.perf_counter() - t0,
    }


def train_and_evaluate(config: Config, workdir: str) -> dict:
    c = config
    os.makedirs(workdir, exist_ok=True)
    results = {T: {cell: train_one(cell, T, c) for cell in c.cells} for T in c.lengths}
    summary = {
        f"T={T}/{cell}": {k: r[k] for k in ("final_test_mse", "best_test_mse", "solved_at_step")}
        for T, per in results.items()
        for cell, r in per.items()
    }
    save_json(
        {"config": c, "baseline_mse": 1 / 6, "summary": summary, "curves": results},
        os.path.join(workdir, "metrics.json"),
    )
    fig, axes = new_figure(1, len(c.lengths), figsize=(5 * len(c.lengths), 3.8), squeeze=False)
    for ax, (T, per) in zip(axes[0], results.items(), strict=True):
        for cell, r in per.items():
            ax.semilogy(r["step"], r["test_mse"], label=cell)
        ax.axhline(1 / 6, color="gray", ls="--", label="predict 1.0")
        ax.axhline(c.solved_mse, color="gray", ls=":", label="solved")
        ax.set(xlabel="training step", ylabel="test MSE", title=f"adding problem, T = {T}")
        ax.legend()
    save_figure(fig, os.path.join(workdir, "adding_problem.png"))
    for name, s in summary.items():
        print(
            f"{name:14s} final MSE {s['final_test_mse']:.4f}  best {s['best_test_mse']:.4f}  "
            f"solved at {s['solved_at_step']}"
        )
    return summary


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
