"""Scaling laws at toy scale: test loss against parameter count N and training-set size D.

Two families on mnist_5k, each trained on nested random subsets of D = 250 .. 4,000 training
images (every subset a prefix of one fixed permutation, so classes stay balanced):

* **MLP**: ``784 -> width -> 10`` (ReLU), width 2 .. 256: N = 1.6k .. 204k parameters;
* **CNN**: ``avgpool 2x2 -> conv3x3/2(c) -> ReLU -> conv3x3/2(2c) -> ReLU -> dense 10``, c = 1 .. 32:
  N = 1.0k .. 50k.

Each (model, D) is trained with Adam for a fixed number of steps on batches drawn from its subset
(so small D means many epochs) and early-stopped: the 1,000 test images are split into 500 for
validation, which picks the step, and 500 on which the loss is reported. The five D of one model
size train together under ``jax.vmap`` (one compiled step). The test losses are fitted to

    L(N, D) = E + A / N^alpha + B / D^beta       (Hoffmann et al. 2022, eq. 2)

by ``scipy.optimize.least_squares`` on log L (several starts, best kept), with bootstrap
confidence intervals (resampling the grid points), and the fit is checked by holding out the
largest model (all D) and predicting it.

Default run (about 5-8 minutes on 2 loaded CPU cores)::

    python -m experiments.scaling_laws --workdir runs/scaling_laws
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import data, losses, optim


@dataclasses.dataclass
class Config:
    data_sizes: tuple[int, ...] = (250, 500, 1000, 2000, 4000)
    mlp_widths: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128, 256)
    cnn_channels: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    steps: int = 400
    batch: int = 32
    learning_rate: float = 3e-3
    eval_every: int = 50
    bootstrap: int = 300
    seed: int = 0


def get_config() -> Config:
    return Config()


class MLP(fnn.Module):
    width: int

    @fnn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)  # (B, 784)
        return fnn.Dense(10)(fnn.relu(fnn.Dense(self.width)(x)))


class CNN(fnn.Module):
    """Images are first averaged down to 14x14 (CPU budget; the MLP sees all 28x28 pixels)."""

    channels: int

    @fnn.compact
    def __call__(self, x):  # (B, 28, 28, 1)
        x = fnn.avg_pool(x, (2, 2), strides=(2, 2))  # (B, 14, 14, 1)
        x = fnn.relu(fnn.Conv(self.channels, (3, 3), strides=2)(x))  # (B, 7, 7, c)
        x = fnn.relu(fnn.Conv(2 * self.channels, (3, 3), strides=2)(x))  # (B, 4, 4, 2c)
        return fnn.Dense(10)(x.reshape(x.shape[0], -1))


def count_params(tree) -> int:
    return int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(tree)))


def train_family_member(model, c: Config, x_tr, y_tr, x_val, y_val, x_te, y_te) -> dict:
    """Train ``model`` on every D of ``c.data_sizes`` at once (vmap over D); early-stopped
    test loss and accuracy per D."""
    sizes = jnp.asarray(c.data_sizes)
    k = len(c.data_sizes)
    key = jax.random.key(c.seed)
    params = jax.vmap(lambda kk: model.init(kk, x_tr[:1])["params"])(jax.random.split(key, k))
    n_params = count_params(jax.tree.map(lambda p: p[0], params))
    tx = optim.adam(c.learning_rate)
    opt_state = jax.vmap(tx.init)(params)

    def loss_fn(p, x, y):
        return losses.cross_entropy(model.apply({"params": p}, x), y)

    def one_step(p, s, size, key, x_all, y_all):
        idx = jax.random.randint(key, (c.batch,), 0, size)  # a batch from the first `size` images
        g = jax.grad(loss_fn)(p, x_all[idx], y_all[idx])
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    # The data are arguments, not closed-over constants: XLA would otherwise fold 12 MB of
    # images into the program and compile for minutes.
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def run_chunk(p, s, step0, x_all, y_all):
        def body(carry, t):
            p, s = carry
            keys = jax.random.split(jax.random.fold_in(key, t), k)
            step = jax.vmap(one_step, in_axes=(0, 0, 0, 0, None, None))
            return step(p, s, sizes, keys, x_all, y_all), None

        (p, s), _ = jax.lax.scan(body, (p, s), step0 + jnp.arange(c.eval_every))
        return p, s

    @jax.jit
    def evaluate(p, xv, yv, xt, yt):
        def one(p):
            lv = loss_fn(p, xv, yv)
            logits = model.apply({"params": p}, xt)
            return lv, losses.cross_entropy(logits, yt), jnp.mean(jnp.argmax(logits, -1) == yt)

        return jax.vmap(one)(p)

    best_val = np.full(k, np.inf)
    best_test = np.zeros(k)
    best_acc = np.zeros(k)
    best_step = np.zeros(k, int)
    for step0 in range(0, c.steps, c.eval_every):
        params, opt_state = run_chunk(params, opt_state, step0, x_tr, y_tr)
        lv, lt, acc = map(np.asarray, jax.device_get(evaluate(params, x_val, y_val, x_te, y_te)))
        better = lv < best_val
        best_val = np.where(better, lv, best_val)
        best_test = np.where(better, lt, best_test)
        best_acc = np.where(better, acc, best_acc)
        best_step = np.where(better, step0 + c.eval_every, best_step)
    return {
        "n_params": n_params,
        "test_loss": best_test.tolist(),
        "test_acc": best_acc.tolist(),
        "val_loss": best_val.tolist(),
        "best_step": best_step.tolist(),
    }


# ----------------------------------------------------------------------------------------------
# the fit


def law(theta: np.ndarray, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """L = E + A/N^alpha + B/D^beta with theta = (log E, log A, log B, alpha, beta)."""
    log_e, log_a, log_b, alpha, beta = theta
    return np.exp(log_e) + np.exp(log_a - alpha * np.log(n)) + np.exp(log_b - beta * np.log(d))


def fit_law(n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Least squares on log L from a small grid of starts (as Hoffmann et al. do with L-BFGS)."""
    from scipy.optimize import least_squares

    def resid(theta):
        return np.log(law(theta, n, d)) - np.log(loss)

    best = None
    for log_e in (np.log(0.5 * loss.min()), np.log(0.05)):
        for alpha in (0.3, 1.0):
            for beta in (0.3, 1.0):
                x0 = np.array([log_e, 2.0, 2.0, alpha, beta])
                r = least_squares(
                    resid, x0, bounds=([-10, -10, -10, 0.0, 0.0], [3, 30, 30, 3.0, 3.0])
                )
                if best is None or r.cost < best.cost:
                    best = r
    return best.x


def describe(theta: np.ndarray) -> dict:
    log_e, log_a, log_b, alpha, beta = theta
    return {"E": math.exp(log_e), "A": math.exp(log_a), "B": math.exp(log_b),
            "alpha": alpha, "beta": beta}  # fmt: skip


def analyse(rows: list[dict], c: Config) -> dict:
    n = np.array([r["n_params"] for r in rows for _ in c.data_sizes], float)
    d = np.array([dd for _ in rows for dd in c.data_sizes], float)
    loss = np.array([lv for r in rows for lv in r["test_loss"]])
    theta = fit_law(n, d, loss)
    pred = law(theta, n, d)
    rng = np.random.default_rng(c.seed)
    boots = []
    for _ in range(c.bootstrap):
        i = rng.integers(0, len(loss), len(loss))
        boots.append(fit_law(n[i], d[i], loss[i]))
    boots = np.asarray(boots)
    ci = {
        name: [float(np.percentile(boots[:, j], 2.5)), float(np.percentile(boots[:, j], 97.5))]
        for j, name in ((3, "alpha"), (4, "beta"))
    }
    ci["E"] = np.exp(np.percentile(boots[:, 0], [2.5, 97.5])).tolist()
    # Held out: the largest model at every D, predicted by a fit to the rest.
    held = n == n.max()
    theta_h = fit_law(n[~held], d[~held], loss[~held])
    pred_h = law(theta_h, n[held], d[held])
    return {
        "fit": describe(theta),
        "ci95": ci,
        "rmse_log": float(np.sqrt(np.mean((np.log(pred) - np.log(loss)) ** 2))),
        "heldout": {
            "n_params": float(n.max()),
            "fit_without": describe(theta_h),
            "D": d[held].tolist(),
            "measured": loss[held].tolist(),
            "predicted": pred_h.tolist(),
            "rel_error": (pred_h / loss[held] - 1).tolist(),
        },
        "points": {"N": n.tolist(), "D": d.tolist(), "loss": loss.tolist()},
    }


# ----------------------------------------------------------------------------------------------


def _plots(c: Config, res: dict, workdir: str) -> None:
    fams = [f for f in ("mlp", "cnn") if f in res["families"]]
    fig, axes = new_figure(len(fams), 2, figsize=(11, 4 * len(fams)), squeeze=False)
    cmap = __import__("matplotlib").colormaps["viridis"]
    for row, fam in zip(axes, fams, strict=True):
        a = res["families"][fam]["analysis"]
        n, d, loss = (np.asarray(a["points"][k]) for k in ("N", "D", "loss"))
        theta = np.array([math.log(a["fit"]["E"]), math.log(a["fit"]["A"]),
                          math.log(a["fit"]["B"]), a["fit"]["alpha"], a["fit"]["beta"]])  # fmt: skip
        ns, ds = np.unique(n), np.unique(d)
        nn_ = np.logspace(np.log10(ns.min()), np.log10(ns.max()), 100)
        dd_ = np.logspace(np.log10(ds.min()), np.log10(ds.max()), 100)
        for i, dv in enumerate(ds):
            col = cmap(i / max(1, len(ds) - 1))
            m = d == dv
            row[0].loglog(n[m], loss[m], "o", color=col, label=f"D = {int(dv)}")
            row[0].loglog(nn_, law(theta, nn_, np.full_like(nn_, dv)), color=col, lw=0.8)
        if a["fit"]["E"] > 0.2 * loss.min():  # a floor worth drawing (the MLP fit puts E ~ 0)
            row[0].axhline(a["fit"]["E"], color="gray", ls=":", label="fitted E")
        row[0].set(xlabel="parameters N", ylabel="test loss (early-stopped)",
                   title=f"{fam.upper()}: L vs N (lines: fitted law)")  # fmt: skip
        row[0].legend(fontsize=7)
        for i, nv in enumerate(ns):
            col = cmap(i / max(1, len(ns) - 1))
            m = n == nv
            row[1].loglog(d[m], loss[m], "o", color=col, label=f"N = {int(nv):,}")
            row[1].loglog(dd_, law(theta, np.full_like(dd_, nv), dd_), color=col, lw=0.8)
        h = a["heldout"]
        row[1].loglog(h["D"], h["predicted"], "x", color="red", ms=9,
                      label="held-out largest N: predicted")  # fmt: skip
        row[1].set(xlabel="training images D", ylabel="test loss",
                   title=f"alpha = {a['fit']['alpha']:.2f}, beta = {a['fit']['beta']:.2f}")  # fmt: skip
        row[1].legend(fontsize=6, ncol=2)
        for ax in row:
            ax.xaxis.set_minor_formatter(__import__("matplotlib").ticker.NullFormatter())
    save_figure(fig, os.path.join(workdir, "scaling_laws.png"))


def train_and_evaluate(config: Config, workdir: str) -> dict:
    c = config
    os.makedirs(workdir, exist_ok=True)
    x_tr, y_tr = data.load("mnist_5k", "train")
    x_te, y_te = data.load("mnist_5k", "test")
    perm = np.random.default_rng(c.seed).permutation(len(x_tr))  # nested subsets: prefixes
    x_tr, y_tr = jnp.asarray(x_tr[perm]), jnp.asarray(y_tr[perm])
    split = np.random.default_rng(c.seed + 1).permutation(len(x_te))
    val, te = split[: len(split) // 2], split[len(split) // 2 :]
    x_val, y_val = jnp.asarray(x_te[val]), jnp.asarray(y_te[val])
    x_te, y_te = jnp.asarray(x_te[te]), jnp.asarray(y_te[te])
    t0 = time.perf_counter()
    res = {"families": {}}
    families = {
        "mlp": [(w, MLP(w)) for w in c.mlp_widths],
        "cnn": [(ch, CNN(ch)) for ch in c.cnn_channels],
    }
    for fam, members in families.items():
        if not members:
            continue
        rows = []
        for size, model in tqdm(members, desc=fam, leave=False):
            t1 = time.perf_counter()
            r = train_family_member(model, c, x_tr, y_tr, x_val, y_val, x_te, y_te)
            r.update(size=size, seconds=time.perf_counter() - t1)
            rows.append(r)
            print(f"{fam} {size:4d}: N = {r['n_params']:7,d}  test loss "
                  + " ".join(f"{v:.3f}" for v in r["test_loss"])
                  + f"  ({r['seconds']:.0f} s)")  # fmt: skip
        res["families"][fam] = {"runs": rows, "analysis": analyse(rows, c)}
        save_json({"config": c, **res}, os.path.join(workdir, "metrics.json"))  # per family
    res["seconds"] = time.perf_counter() - t0
    save_json({"config": c, **res}, os.path.join(workdir, "metrics.json"))
    _plots(c, res, workdir)
    for fam, r in res["families"].items():
        a = r["analysis"]
        f, ci = a["fit"], a["ci95"]
        print(f"{fam}: L = {f['E']:.3f} + {f['A']:.3g}/N^{f['alpha']:.3f} + {f['B']:.3g}/D^{f['beta']:.3f}"
              f"  alpha 95% CI [{ci['alpha'][0]:.2f}, {ci['alpha'][1]:.2f}]"
              f"  beta [{ci['beta'][0]:.2f}, {ci['beta'][1]:.2f}]  rmse(log L) {a['rmse_log']:.3f}")  # fmt: skip
        h = a["heldout"]
        print(f"  held-out N = {int(h['n_params']):,}: measured "
              + " ".join(f"{v:.3f}" for v in h["measured"]) + "  predicted "
              + " ".join(f"{v:.3f}" for v in h["predicted"]))  # fmt: skip
    print(f"total {res['seconds']:.0f} s")
    return res


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
