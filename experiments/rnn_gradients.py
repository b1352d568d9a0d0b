"""Vanishing and exploding gradients through time: Elman vs LSTM vs GRU.

Claim (Bengio et al. 1994; Hochreiter 1991; Pascanu et al. 2013): in an Elman network the
gradient that reaches step ``t`` from a loss at step ``T`` is a product of ``T - t`` Jacobians
``diag(tanh') W_h^T`` and shrinks (or grows) geometrically with the distance; the LSTM's additive
cell path and the GRU's interpolating update keep it alive much longer.

Three measurements, with Keras's initialisers (orthogonal recurrent kernels, LSTM forget bias 1)
and, to isolate the gate mechanism, an LSTM with forget bias 3 and a GRU with update-gate bias 3
(the carry path then multiplies by ~0.95 per step instead of ~0.73 or ~0.5):

1. ``||dL/dx_t||`` against the distance ``T - t`` for ``L = sum(h_T)`` (one sequence of length
   ``T_max``, averaged over a batch and seeds).
2. ``||dL/dh_0||`` against the sequence length ``T`` for each cell.
3. Exploding: an Elman cell with its recurrent kernel scaled by ``gain`` (inputs small, so the
   tanh stays near its linear regime) has ``||dL/dh_0||`` growing like ``gain^T``; then a short
   training run at ``gain`` > 1 with plain SGD, with and without clipping by global norm.

Run: ``python -m experiments.rnn_gradients --workdir runs/rnn_gradients``.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import nn, optim


@dataclasses.dataclass
class Config:
    hidden: int = 32
    in_features: int = 4
    batch: int = 32
    t_max: int = 200
    lengths: tuple[int, ...] = (5, 10, 25, 50, 100, 150, 200)
    seeds: int = 2
    gains: tuple[float, ...] = (0.8, 1.0, 1.2, 1.5)
    explode_input_scale: float = 0.01
    # training run with the exploding initialisation
    train_gain: float = 1.5
    train_length: int = 50
    train_steps: int = 150
    learning_rate: float = 0.05
    clip_norm: float = 1.0


def get_config() -> Config:
    return Config()


CELLS = {
    "elman": nn.ElmanCell,
    "lstm": nn.LSTMCell,
    "gru": nn.GRUCell,
    # the gates' resting values set the decay rate along the carry path: f ~ sigmoid(3) = 0.95
    "lstm_fbias3": lambda h: nn.LSTMCell(h, forget_bias=3.0),
    "gru_zbias3": nn.GRUCell,  # b_i's z block set to 3 below: z ~ 0.95 keeps h_{t-1}
}


def init_params(kind: str, rnn, x, key) -> dict:
    params = rnn.init(key, x)
    if kind == "gru_zbias3":
        h = rnn.cell.features
        b_i = params["params"]["cell"]["b_i"]
        params["params"]["cell"]["b_i"] = b_i.at[h : 2 * h].set(3.0)
    return params


def _final_h(carry):
    return carry[1] if isinstance(carry, tuple) else carry


def grad_wrt_inputs(kind: str, c: Config, seed: int) -> np.ndarray:
    """Mean over the batch of ``||dL/dx_t||`` for ``t = 0..T-1``, ``L = sum(h_T)``."""
    rnn = nn.RNN(CELLS[kind](c.hidden), return_carry=True)
    x = jax.random.normal(jax.random.key(seed), (c.batch, c.t_max, c.in_features))
    params = init_params(kind, rnn, x, jax.random.key(1000 + seed))

    def loss(x):
        carry, _ = rnn.apply(params, x)
        return jnp.sum(_final_h(carry))

    g = jax.jit(jax.grad(loss))(x)  # (B, T, in)
    return np.asarray(jnp.linalg.norm(g, axis=-1).mean(0))


def grad_wrt_h0(rnn, params, x, kind: str) -> float:
    """``||dL/dh_0||`` (mean over the batch) for ``L = sum(h_T)``; for LSTM ``h_0`` and ``c_0``."""
    carry0 = rnn.cell.initialize_carry(None, (x.shape[0], x.shape[-1]))

    def loss(carry0):
        carry, _ = rnn.apply(params, x, initial_carry=carry0)
        return jnp.sum(_final_h(carry))

    g = jax.jit(jax.grad(loss))(carry0)
    leaves = jax.tree_util.tree_leaves(g)
    norms = jnp.sqrt(sum(jnp.sum(leaf**2, axis=-1) for leaf in leaves))  # (B,)
    return float(norms.mean())


def scaled_elman(c: Config, gain: float):
    rnn = nn.RNN(nn.ElmanCell(c.hidden), return_carry=True)
    x0 = jnp.zeros((1, 1, c.in_features))
    params = rnn.init(jax.random.key(0), x0)
    params = jax.tree_util.tree_map(lambda a: a, params)
    params["params"]["cell"]["w_h"] = gain * params["params"]["cell"]["w_h"]
    return rnn, params


def train_exploding(c: Config, clip: bool) -> dict[str, list[float]]:
    """SGD on 'predict the (scaled) sum of the first input feature' with the gain-scaled Elman."""
    rnn, variables = scaled_elman(c, c.train_gain)
    head = jax.random.normal(jax.random.key(5), (c.hidden,)) / np.sqrt(c.hidden)
    params = {"rnn": variables["params"], "head": head}
    tx = optim.sgd(c.learning_rate)
    if clip:
        tx = optim.chain(optim.clip_by_global_norm(c.clip_norm), tx)
    opt_state = tx.init(params)

    def loss_fn(p, x, y):
        carry, _ = rnn.apply({"params": p["rnn"]}, x)
        return jnp.mean((carry @ p["head"] - y) ** 2)

    @jax.jit
    def step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        gnorm = optax.global_norm(g)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss, gnorm

    hist = {"loss": [], "grad_norm": []}
    rng = np.random.default_rng(0)
    for _ in range(c.train_steps):
        # small inputs keep the tanh near its linear regime, where W_h's gain compounds
        z = rng.normal(size=(c.batch, c.train_length, c.in_features)).astype(np.float32)
        x = c.explode_input_scale * z
        y = z[:, :, 0].sum(1) / np.sqrt(c.train_length)  # unit variance target
        params, opt_state, loss, gnorm = step(params, opt_state, x, y)
        hist["loss"].append(float(loss))
        hist["grad_norm"].append(float(gnorm))
    return hist


def train_and_evaluate(config: Config, workdir: str) -> dict:
    c = config
    os.makedirs(workdir, exist_ok=True)
    out: dict = {"config": c}

    # 1. ||dL/dx_t|| against the distance T - t
    per_t = {}
    for kind in tqdm(CELLS, desc="dL/dx_t"):
        per_t[kind] = np.mean([grad_wrt_inputs(kind, c, s) for s in range(c.seeds)], axis=0)
    distance = np.arange(c.t_max)[::-1]  # T - 1 - t
    out["grad_x_by_distance"] = {
        k: {
            int(d): float(v[c.t_max - 1 - d])
            for d in sorted({0, 10, 25, 50, 100, 150, c.t_max - 1})
            if d < c.t_max
        }
        for k, v in per_t.items()
    }

    # 2. ||dL/dh_0|| against T, default init
    per_len = {k: [] for k in CELLS}
    for kind in tqdm(CELLS, desc="dL/dh_0"):
        rnn = nn.RNN(CELLS[kind](c.hidden), return_carry=True)
        for T in c.lengths:
            vals = []
            for s in range(c.seeds):
                x = jax.random.normal(jax.random.key(s), (c.batch, T, c.in_features))
                params = init_params(kind, rnn, x, jax.random.key(1000 + s))
                vals.append(grad_wrt_h0(rnn, params, x, kind))
            per_len[kind].append(float(np.mean(vals)))
    out["grad_h0_by_length"] = {"lengths": list(c.lengths), **per_len}

    # 3a. exploding: Elman with the recurrent kernel scaled by gain
    per_gain = {}
    for gain in tqdm(c.gains, desc="gain"):
        rnn, params = scaled_elman(c, gain)
        vals = []
        for T in c.lengths:
            x = c.explode_input_scale * jax.random.normal(
                jax.random.key(0), (c.batch, T, c.in_features)
            )
            vals.append(grad_wrt_h0(rnn, params, x, "elman"))
        per_gain[str(gain)] = vals
    out["elman_grad_h0_by_gain"] = {"lengths": list(c.lengths), **per_gain}

    # 3b. training with the exploding init, with and without clipping
    runs = {name: train_exploding(c, clip) for name, clip in [("sgd", False), ("sgd+clip", True)]}
    out["training"] = {
        name: {
            "max_grad_norm": float(np.nanmax(h["grad_norm"])),
            "final_loss": h["loss"][-1],
            "first_loss": h["loss"][0],
            "any_nonfinite": bool(not np.all(np.isfinite(h["loss"]))),
        }
        for name, h in runs.items()
    }

    save_json({**out, "curves": {"grad_x": per_t, "training": runs}}, f"{workdir}/metrics.json")

    fig, axes = new_figure(1, 3, figsize=(14, 4))
    for kind, v in per_t.items():
        axes[0].semilogy(distance, v, label=kind)
    axes[0].set(xlabel="distance T - t", ylabel="||dL/dx_t||", title=f"T = {c.t_max}")
    for kind, v in per_len.items():
        axes[1].semilogy(c.lengths, v, "o-", label=kind)
    axes[1].set(xlabel="sequence length T", ylabel="||dL/dh_0||", title="default (Keras) init")
    for gain, v in per_gain.items():
        axes[2].semilogy(c.lengths, v, "o-", label=f"gain {gain}")
    axes[2].set(xlabel="sequence length T", ylabel="||dL/dh_0||", title="Elman, W_h x gain")
    for ax in axes:
        ax.legend()
    save_figure(fig, f"{workdir}/gradient_norms.png")

    fig, axes = new_figure(1, 2, figsize=(10, 3.5))
    for name, h in runs.items():
        axes[0].semilogy(h["grad_norm"], label=name)
        axes[1].semilogy(np.where(np.isfinite(h["loss"]), h["loss"], np.nan), label=name)
    axes[0].set(xlabel="step", ylabel="global grad norm", title=f"Elman, gain {c.train_gain}")
    axes[1].set(xlabel="step", ylabel="MSE loss")
    for ax in axes:
        ax.legend()
    save_figure(fig, f"{workdir}/clipping.png")

    for k, v in out["grad_x_by_distance"].items():
        print(f"||dL/dx_t|| {k:6s}", {d: f"{g:.2e}" for d, g in v.items()})
    for k in CELLS:
        print(f"||dL/dh0||  {k:6s}", [f"{g:.1e}" for g in per_len[k]])
    for g, v in per_gain.items():
        print(f"elman gain {g}:", [f"{x:.1e}" for x in v])
    print(out["training"])
    print(f"figures: {workdir}/gradient_norms.png, {workdir}/clipping.png")
    return out


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
