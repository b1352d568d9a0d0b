"""Learning rules a brain could run: feedback alignment against backpropagation, and Oja's
Hebbian rule finding the principal components.

1. **Feedback alignment** (Lillicrap, Cownden, Tweed & Akerman 2016). A tanh MLP
   ``784-256-128-10`` on mnist_5k (4,000 train / 1,000 test images) trained three ways with the
   same optimizer, data order and initial weights: backpropagation; feedback alignment (every
   layer sends its error down through a fixed random matrix ``B`` instead of ``W^T``,
   :func:`jaxdl.nn.feedback_alignment_dense`); and only the output layer trained (the hidden
   layers stay random: the baseline FA must beat to show that its hidden layers learn).
   During FA training we measure, on a fixed batch, the angle between the FA and the backprop
   signals: the hidden-layer error vectors ``delta_h`` (per example) and the weight updates of
   each hidden layer, and the angle between the output weights ``W^T`` and ``B``.

2. **Oja's rule** (Oja 1982): a single linear neuron ``y = w.x`` with the Hebbian update
   ``w += eta y (x - y w)`` on the centred mnist_5k images converges to the first principal
   component, compared with NumPy's SVD; Sanger's generalised Hebbian algorithm (1989) finds the
   first ``k``; the plain Hebbian rule ``w += eta y x`` grows without bound.

Default run (a few minutes on 2 loaded CPU cores)::

    python -m experiments.bio_learning --workdir runs/bio_learning
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import data, losses, nn, optim


@dataclasses.dataclass
class Config:
    hidden: tuple[int, ...] = (256, 128)
    epochs: int = 20
    batch: int = 32
    learning_rate: float = 0.05
    momentum: float = 0.9
    seeds: int = 3
    angle_every: int = 50  # steps between alignment measurements
    angle_batch: int = 500
    # Oja / Sanger
    oja_epochs: int = 5
    oja_lr: float = 0.005
    oja_tau: float = 1000.0  # eta_t = oja_lr / (1 + t / tau)
    sanger_k: int = 4
    seed: int = 0


def get_config() -> Config:
    return Config()


# ----------------------------------------------------------------------------------------------
# 1. feedback alignment


def init_mlp(key: jax.Array, sizes: list[int]) -> tuple[list, list]:
    """LeCun-normal weights, zero biases; feedback matrices drawn the same way, independently."""
    params, feedback = [], []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        kw, kb = jax.random.split(jax.random.fold_in(key, i))
        scale = 1.0 / math.sqrt(n_in)
        params.append({"w": scale * jax.random.normal(kw, (n_in, n_out)), "b": jnp.zeros(n_out)})
        feedback.append(scale * jax.random.normal(kb, (n_in, n_out)))
    return params, feedback


def mlp_loss(params, feedback, perturb, x, y, fa: bool):
    """Cross-entropy of the tanh MLP. ``perturb`` (zeros, one per hidden layer) is added to the
    pre-activations so that d loss / d perturb is the error vector delta_h of each hidden layer."""
    h = x
    for i, layer in enumerate(params):
        fb = feedback[i] if fa else layer["w"]  # feedback = W gives exact backprop
        pre = nn.feedback_alignment_dense(h, layer["w"], layer["b"], fb)
        if i < len(params) - 1:
            h = jnp.tanh(pre + perturb[i])
        else:
            h = pre
    return losses.cross_entropy(h, y), h


def angle_deg(a: jax.Array, b: jax.Array) -> jax.Array:
    cos = jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-30)
    return jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))


def feedback_alignment(c: Config) -> dict:
    x_tr, y_tr = data.load("mnist_5k", "train")
    x_te, y_te = data.load("mnist_5k", "test")
    x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)  # (N, 784)
    sizes = [x_tr.shape[1], *c.hidden, 10]
    opt = optim.momentum(c.learning_rate, c.momentum)
    keys = jax.random.split(jax.random.key(c.seed), c.seeds)
    params0, feedback = jax.vmap(lambda k: init_mlp(k, sizes))(keys)  # leading seed axis
    zero_perturb = [jnp.zeros((1, n)) for n in c.hidden]
    rng = np.random.default_rng(c.seed)
    angle_idx = rng.choice(len(x_tr), c.angle_batch, replace=False)
    xa, ya = jnp.asarray(x_tr[angle_idx]), jnp.asarray(y_tr[angle_idx])
    steps_per_epoch = len(x_tr) // c.batch

    def grads(params, fb, x, y, fa):
        perturb = [jnp.zeros((x.shape[0], n)) for n in c.hidden]
        (loss, _), (g, d_h) = jax.value_and_grad(mlp_loss, argnums=(0, 2), has_aux=True)(
            params, fb, perturb, x, y, fa
        )
        return loss, g, d_h

    def make_step(method):
        def step(params, opt_state, fb, x, y):
            loss, g, _ = grads(params, fb, x, y, method == "feedback alignment")
            if method == "last layer only":  # hidden layers stay at their random init
                g = [jax.tree.map(jnp.zeros_like, gl) for gl in g[:-1]] + [g[-1]]
            u, opt_state = opt.update(g, opt_state, params)
            return optax.apply_updates(params, u), opt_state, loss

        return jax.jit(jax.vmap(step, in_axes=(0, 0, 0, None, None)), donate_argnums=(0, 1))

    @jax.jit
    @jax.vmap
    def alignment(params, fb):
        """Angles between FA's and backprop's signals at the current (FA-trained) weights."""
        _, g_fa, d_fa = grads(params, fb, xa, ya, True)
        _, g_bp, d_bp = grads(params, fb, xa, ya, False)
        out = {}
        for i in range(len(c.hidden)):
            # per-example angle between the hidden error vectors, averaged over the batch
            per_ex = jax.vmap(angle_deg)(d_fa[i], d_bp[i])
            out[f"delta_h{i + 1}"] = jnp.mean(per_ex)
            out[f"dW{i + 1}"] = angle_deg(g_fa[i]["w"], g_bp[i]["w"])
        for i in range(1, len(params)):
            out[f"W{i + 1} vs B{i + 1}"] = angle_deg(params[i]["w"], fb[i])
        return out

    @jax.jit
    @jax.vmap
    def evaluate(params):
        loss, logits = mlp_loss(params, None, zero_perturb, x_te, y_te, False)
        return loss, jnp.mean(jnp.argmax(logits, -1) == y_te)

    results = {}
    for method in ("backprop", "feedback alignment", "last layer only"):
        params = jax.tree.map(jnp.copy, params0)
        opt_state = jax.vmap(opt.init)(params)
        step = make_step(method)
        curve = {"epoch": [], "test_acc": [], "test_loss": [], "train_loss": []}
        angles = {"step": []}
        order_rng = np.random.default_rng(c.seed + 1)  # same data order for every method
        t = 0
        t0 = time.perf_counter()
        for epoch in tqdm(range(1, c.epochs + 1), desc=method, leave=False):
            perm = order_rng.permutation(len(x_tr))
            running = []
            for s in range(steps_per_epoch):
                idx = perm[s * c.batch : (s + 1) * c.batch]
                if method == "feedback alignment" and t % c.angle_every == 0:
                    a = jax.device_get(alignment(params, feedback))
                    angles["step"].append(t)
                    for k, v in a.items():
                        angles.setdefault(k, []).append(np.asarray(v).tolist())
                params, opt_state, loss = step(
                    params, opt_state, feedback, jnp.asarray(x_tr[idx]), jnp.asarray(y_tr[idx])
                )
                running.append(loss)
                t += 1
            te_loss, te_acc = jax.device_get(evaluate(params))
            curve["epoch"].append(epoch)
            curve["test_acc"].append(np.asarray(te_acc).tolist())
            curve["test_loss"].append(np.asarray(te_loss).tolist())
            curve["train_loss"].append(np.asarray(jnp.mean(jnp.stack(running), 0)).tolist())
        acc = np.asarray(curve["test_acc"][-1])
        results[method] = {
            **curve,
            "final_test_acc_mean": float(acc.mean()),
            "final_test_acc_std": float(acc.std()),
            "final_test_loss_mean": float(np.mean(curve["test_loss"][-1])),
            "seconds": time.perf_counter() - t0,
        }
        if method == "feedback alignment":
            results[method]["angles"] = angles
            results[method]["final_angles_mean"] = {
                k: float(np.mean(v[-1])) for k, v in angles.items() if k != "step"
            }
            results[method]["initial_angles_mean"] = {
                k: float(np.mean(v[0])) for k, v in angles.items() if k != "step"
            }
    return results


# ----------------------------------------------------------------------------------------------
# 2. Oja's rule and Sanger's rule


def hebbian_pca(c: Config) -> dict:
    x, _ = data.load("mnist_5k", "train")
    x = x.reshape(len(x), -1).astype(np.float64)
    x = x - x.mean(axis=0)  # PCA is about the covariance: centre the data
    n, d = x.shape
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    eigvals = s**2 / n  # eigenvalues of the covariance X^T X / N
    rng = np.random.default_rng(c.seed)
    order = np.concatenate([rng.permutation(n) for _ in range(c.oja_epochs)])
    xs = jnp.asarray(x[order], jnp.float32)  # (steps, d): the stream of samples
    steps = len(order)
    record = 50
    v = jnp.asarray(vt[: c.sanger_k], jnp.float32)  # (k, d) principal directions

    def eta(t):
        return c.oja_lr / (1.0 + t / c.oja_tau)

    @jax.jit
    def run_oja(w0):
        def body(w, inp):
            t, xt = inp
            y = w @ xt
            w = w + eta(t) * y * (xt - y * w)  # Oja: Hebbian term y x, decay y^2 w
            return w, w

        _, ws = jax.lax.scan(body, w0, (jnp.arange(steps, dtype=jnp.float32), xs))
        return ws[::record]

    @jax.jit
    def run_hebb(w0):
        # Plain Hebb, w += eta y x, is linear in w, so we carry w/|w| and log|w| separately
        # (|w| itself overflows float32 within an epoch).
        def body(carry, inp):
            w, log_norm = carry
            t, xt = inp
            w = w + eta(t) * (w @ xt) * xt  # no decay term
            norm = jnp.linalg.norm(w)
            return (w / norm, log_norm + jnp.log(norm)), log_norm + jnp.log(norm)

        n0 = jnp.linalg.norm(w0)
        init = (w0 / n0, jnp.log(n0))
        _, log_norms = jax.lax.scan(body, init, (jnp.arange(steps, dtype=jnp.float32), xs))
        return log_norms[::record]

    @jax.jit
    def run_sanger(w0):
        def body(w, inp):
            t, xt = inp
            y = w @ xt  # (k,)
            # Sanger: dW = eta (y x^T - LT(y y^T) W), LT = lower triangle incl. diagonal
            w = w + eta(t) * (jnp.outer(y, xt) - jnp.tril(jnp.outer(y, y)) @ w)
            return w, w

        _, ws = jax.lax.scan(body, w0, (jnp.arange(steps, dtype=jnp.float32), xs))
        return ws[::record]

    key = jax.random.key(c.seed)
    w0 = jax.random.normal(key, (d,)) / math.sqrt(d)
    ws = np.asarray(run_oja(w0))  # (steps/record, d)
    norms = np.linalg.norm(ws, axis=1)
    cos1 = np.abs(ws @ vt[0]) / norms
    rayleigh = np.einsum("td,nd->tn", ws, x)
    rayleigh = np.mean(rayleigh**2, axis=1) / norms**2  # w^T C w / w^T w
    hebb_log10_norm = np.asarray(run_hebb(w0)) / math.log(10)
    w_s0 = jax.random.normal(jax.random.fold_in(key, 1), (c.sanger_k, d)) / math.sqrt(d)
    wss = np.asarray(run_sanger(w_s0))  # (T, k, d)
    cos_k = np.abs(np.einsum("tkd,kd->tk", wss, np.asarray(v))) / np.linalg.norm(wss, axis=2)
    t_axis = np.arange(0, steps, record) + 1
    first_within = (
        int(t_axis[np.argmax(cos1 > math.cos(math.radians(5)))])
        if np.any(cos1 > math.cos(math.radians(5)))
        else None
    )
    return {
        "eigenvalues_top8": eigvals[:8].tolist(),
        "steps": t_axis.tolist(),
        "oja_abs_cos_pc1": cos1.tolist(),
        "oja_norm": norms.tolist(),
        "oja_rayleigh": rayleigh.tolist(),
        "oja_final_angle_deg": float(np.degrees(np.arccos(min(1.0, cos1[-1])))),
        "oja_final_norm": float(norms[-1]),
        "oja_final_rayleigh_over_lambda1": float(rayleigh[-1] / eigvals[0]),
        "oja_first_step_within_5deg": first_within,
        "hebb_log10_norm": hebb_log10_norm.tolist(),
        "sanger_abs_cos": cos_k.tolist(),
        "sanger_final_angles_deg": np.degrees(np.arccos(np.minimum(1.0, cos_k[-1]))).tolist(),
        "sanger_final_norms": np.linalg.norm(wss[-1], axis=1).tolist(),
        "oja_w_final": ws[-1].tolist(),
        "pc1": vt[0].tolist(),
    }


# ----------------------------------------------------------------------------------------------


def _plots(c: Config, res: dict, workdir: str) -> None:
    fa = res["feedback_alignment"]
    fig, axes = new_figure(1, 3, figsize=(15, 4))
    colors = {"backprop": "C0", "feedback alignment": "C3", "last layer only": "C7"}
    for method, r in fa.items():
        acc = np.asarray(r["test_acc"])  # (epochs, seeds)
        ep = np.asarray(r["epoch"])
        axes[0].plot(ep, 100 * (1 - acc.mean(1)), color=colors[method], label=method)
        axes[0].fill_between(
            ep, 100 * (1 - acc.min(1)), 100 * (1 - acc.max(1)), color=colors[method], alpha=0.2
        )
    axes[0].set(xlabel="epoch", ylabel="test error (%)", yscale="log",
                title=f"mnist_5k, MLP {c.hidden}, {c.seeds} seeds")  # fmt: skip
    axes[0].legend()
    ang = fa["feedback alignment"]["angles"]
    step = np.asarray(ang["step"])
    for i, key in enumerate(k for k in ang if k.startswith("delta_h")):
        a = np.asarray(ang[key])
        axes[1].plot(step, a.mean(1), color=f"C{i}", label=f"delta h{key[-1]} (per example)")
    for i, key in enumerate(k for k in ang if k.startswith("dW")):
        a = np.asarray(ang[key])
        axes[1].plot(step, a.mean(1), color=f"C{i}", ls="--", label=f"update of W{key[-1]}")
    axes[1].axhline(90, color="gray", ls=":")
    axes[1].set(xlabel="training step", ylabel="angle FA vs backprop (degrees)", ylim=(0, 100),
                title="FA signal vs the true gradient")  # fmt: skip
    axes[1].legend(fontsize=8)
    for i, key in enumerate(k for k in ang if " vs B" in k):
        axes[2].plot(step, np.asarray(ang[key]).mean(1), color=f"C{i}", label=f"angle({key})")
    axes[2].axhline(90, color="gray", ls=":")
    axes[2].set(xlabel="training step", ylabel="degrees", ylim=(0, 100),
                title="forward weights align with the feedback B")  # fmt: skip
    axes[2].legend(fontsize=8)
    save_figure(fig, os.path.join(workdir, "feedback_alignment.png"))

    h = res["hebbian_pca"]
    fig, axes = new_figure(1, 4, figsize=(17, 3.8))
    t = np.asarray(h["steps"])
    axes[0].semilogx(t, np.degrees(np.arccos(np.minimum(1, h["oja_abs_cos_pc1"]))), label="Oja")
    cos_k = np.asarray(h["sanger_abs_cos"])
    for k in range(cos_k.shape[1]):
        axes[0].semilogx(t, np.degrees(np.arccos(np.minimum(1, cos_k[:, k]))), ls="--",
                         label=f"Sanger, unit {k + 1} vs PC{k + 1}")  # fmt: skip
    axes[0].set(xlabel="samples seen", ylabel="angle to the SVD direction (deg)",
                title="Hebbian PCA on centred mnist_5k")  # fmt: skip
    axes[0].legend(fontsize=7)
    axes[1].semilogx(t, np.log10(h["oja_norm"]), label="Oja")
    axes[1].semilogx(t, h["hebb_log10_norm"], label="plain Hebb")
    axes[1].axhline(0, color="gray", ls=":")
    axes[1].set(xlabel="samples seen", ylabel="log10 |w|", title="the decay term keeps |w| = 1")
    axes[1].legend(fontsize=8)
    axes[2].imshow(np.asarray(h["oja_w_final"]).reshape(28, 28), cmap="RdBu")
    axes[2].set(title="Oja's w (final)", xticks=[], yticks=[])
    pc1 = np.asarray(h["pc1"]) * np.sign(np.dot(h["pc1"], h["oja_w_final"]))
    axes[3].imshow(pc1.reshape(28, 28), cmap="RdBu")
    axes[3].set(title="PC1 from SVD (sign matched)", xticks=[], yticks=[])
    save_figure(fig, os.path.join(workdir, "oja_pca.png"))


def train_and_evaluate(config: Config, workdir: str) -> dict:
    c = config
    os.makedirs(workdir, exist_ok=True)
    t0 = time.perf_counter()
    res = {"feedback_alignment": feedback_alignment(c), "hebbian_pca": hebbian_pca(c)}
    res["seconds"] = time.perf_counter() - t0
    save_json({"config": c, **res}, os.path.join(workdir, "metrics.json"))
    _plots(c, res, workdir)
    for method, r in res["feedback_alignment"].items():
        print(f"{method:20s} test accuracy {100 * r['final_test_acc_mean']:.2f}% "
              f"(std {100 * r['final_test_acc_std']:.2f} over {c.seeds} seeds), "
              f"test loss {r['final_test_loss_mean']:.4f}, {r['seconds']:.0f} s")  # fmt: skip
    r = res["feedback_alignment"]["feedback alignment"]
    for k in r["final_angles_mean"]:
        print(f"angle {k:16s} start {r['initial_angles_mean'][k]:6.1f} deg  "
              f"end {r['final_angles_mean'][k]:6.1f} deg")  # fmt: skip
    h = res["hebbian_pca"]
    print(f"Oja: angle to PC1 {h['oja_final_angle_deg']:.2f} deg, |w| {h['oja_final_norm']:.4f}, "
          f"Rayleigh/lambda1 {h['oja_final_rayleigh_over_lambda1']:.4f}, within 5 deg after "
          f"{h['oja_first_step_within_5deg']} samples")  # fmt: skip
    print("Sanger angles (deg):", np.round(h["sanger_final_angles_deg"], 2).tolist(),
          "norms:", np.round(h["sanger_final_norms"], 4).tolist())  # fmt: skip
    print("top eigenvalues:", np.round(h["eigenvalues_top8"], 3).tolist())
    print(f"plain Hebb log10|w| at the end: {h['hebb_log10_norm'][-1]:.1f}")
    print(f"total {res['seconds']:.0f} s")
    return res


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
