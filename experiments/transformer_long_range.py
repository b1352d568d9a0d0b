"""Long-range dependencies: the adding problem at T = 50/100/200, a Transformer encoder against the
LSTM and GRU of the recurrent experiments.

Task and protocol are those of ``experiments/adding_problem.py`` (its batch generator, its test
sets ``jax.random.key(10_000 + T)``, batch 64 of fresh sequences per step, Adam 3e-3 after clipping
by global norm 1.0, evaluation every 100 steps, "solved" = test MSE < 0.01, predicting the mean
scores 1/6). The recurrent models are ``models.Forecaster(hidden=32, cell=...)``, as there.

The Transformer: each step's two features -> Dense(D), a class token, learned positions, ``layers``
pre-LN encoder blocks (:class:`jaxdl.models.transformer.EncoderBlock`: attention + GELU MLP), final
LayerNorm, Dense(1) on the class token. Every position is one attention step away from the class
token, whatever ``T`` is; an RNN's gradient to the first marker crosses ~3T/4 Jacobians.

Default (a few minutes on 2 CPU cores): the Transformer at T = 50, 100, 200 and the LSTM and GRU
at T = 50; the recurrent rows at T = 100 and 200 are in ``docs/experiments/adding_problem.md``
(same protocol), or run them here with ``--rnn_lengths 50,100,200 --steps 6000``.
"""

from __future__ import annotations

import dataclasses
import os
import time

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments.adding_problem import adding_batch
from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import models, optim
from jaxdl.models.transformer import EncoderBlock


@dataclasses.dataclass
class Config:
    lengths: tuple[int, ...] = (50, 100, 200)
    rnn_lengths: tuple[int, ...] = (50,)
    rnn_cells: tuple[str, ...] = ("lstm", "gru")
    hidden: int = 32  # RNN width, as in adding_problem
    embed_dim: int = 32
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 64
    batch: int = 64
    steps: int = 1500
    rnn_steps: int = 2000
    learning_rate: float = 3e-3
    clip_norm: float = 1.0
    eval_every: int = 100
    test_size: int = 1000
    solved_mse: float = 0.01
    stop_when_solved: bool = False
    seed: int = 0


def get_config() -> Config:
    return Config()


class AddingTransformer(fnn.Module):
    """``(B, T, 2) -> (B, 1)``: embed, class token, learned positions, pre-LN encoder, read-out."""

    max_len: int
    embed_dim: int = 32
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 64

    @fnn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b = x.shape[0]
        h = fnn.Dense(self.embed_dim, name="embed")(x)  # (B, T, D)
        cls = self.param("class_token", fnn.initializers.normal(0.02), (1, 1, self.embed_dim))
        h = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.embed_dim)), h], axis=1)
        pos = self.param("pos_embedding", fnn.initializers.normal(0.02),
                         (1, self.max_len + 1, self.embed_dim))  # fmt: skip
        h = h + pos[:, : h.shape[1]]
        for i in range(self.num_layers):
            h = EncoderBlock(self.num_heads, self.mlp_dim, name=f"block_{i}")(h, train)
        h = fnn.LayerNorm(epsilon=1e-6, name="ln")(h)
        return fnn.Dense(1, name="head")(h[:, 0])  # (B, 1)


def train_one(kind: str, T: int, steps: int, c: Config) -> dict:
    if kind == "transformer":
        model = AddingTransformer(T, c.embed_dim, c.num_layers, c.num_heads, c.mlp_dim)
    else:
        model = models.Forecaster(hidden=c.hidden, cell=kind)
    key = jax.random.key(c.seed)
    x_test, y_test = adding_batch(jax.random.key(10_000 + T), c.test_size, T)
    params = model.init(key, x_test[:1])["params"]
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
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
    curve = {"step": [0], "test_mse": [float(test_mse(params, x_test, y_test))]}
    t0 = time.perf_counter()
    for k in tqdm(range(1, steps + 1), desc=f"{kind} T={T}", leave=False):
        params, opt_state, _ = step(params, opt_state, jax.random.fold_in(key, k))
        if k % c.eval_every == 0:
            curve["step"].append(k)
            curve["test_mse"].append(float(test_mse(params, x_test, y_test)))
            if c.stop_when_solved and curve["test_mse"][-1] < c.solved_mse:
                break
    solved_at = next((s for s, m in zip(curve["step"], curve["test_mse"], strict=True)
                      if m < c.solved_mse), None)  # fmt: skip
    return {
        **curve,
        "params": n_params,
        "final_test_mse": curve["test_mse"][-1],
        "best_test_mse": min(curve["test_mse"]),
        "solved_at_step": solved_at,
        "seconds": time.perf_counter() - t0,
    }


def train_and_evaluate(config: Config, workdir: str) -> dict:
    c = config
    os.makedirs(workdir, exist_ok=True)
    results: dict[int, dict[str, dict]] = {}
    for T in sorted(set(c.lengths) | set(c.rnn_lengths)):
        results[T] = {}
        if T in c.lengths:
            results[T]["transformer"] = train_one("transformer", T, c.steps, c)
        if T in c.rnn_lengths:
            for cell in c.rnn_cells:
                results[T][cell] = train_one(cell, T, c.rnn_steps, c)
    summary = {
        f"T={T}/{kind}": {
            k: r[k]
            for k in ("params", "final_test_mse", "best_test_mse", "solved_at_step", "seconds")
        }  # fmt: skip
        for T, per in results.items()
        for kind, r in per.items()
    }
    save_json(
        {"config": c, "baseline_mse": 1 / 6, "summary": summary, "curves": results},
        os.path.join(workdir, "metrics.json"),
    )
    n = len(results)
    fig, axes = new_figure(1, n, figsize=(5 * n, 3.8), squeeze=False)
    for ax, (T, per) in zip(axes[0], results.items(), strict=True):
        for kind, r in per.items():
            ax.semilogy(r["step"], r["test_mse"], marker=".", label=kind)
        ax.axhline(1 / 6, color="gray", ls="--", label="predict 1.0")
        ax.axhline(c.solved_mse, color="gray", ls=":", label="solved")
        ax.set(xlabel="training step", ylabel="test MSE", title=f"adding problem, T = {T}")
        ax.legend()
    save_figure(fig, os.path.join(workdir, "transformer_long_range.png"))
    for name, s in summary.items():
        print(f"{name:18s} params {s['params']:>6,}  final MSE {s['final_test_mse']:.4f}  "
              f"best {s['best_test_mse']:.4f}  solved at {s['solved_at_step']}  "
              f"({s['seconds']:.0f} s)")  # fmt: skip
    return summary


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
