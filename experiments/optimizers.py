"""The seven jaxdl optimizers on a ravine, on Rosenbrock's valley and on the course's MNIST CNN.

Claims tested (course; Kingma & Ba 2015; Loshchilov & Hutter 2019; Liu et al. 2019):

1. On an ill-conditioned quadratic ravine, plain gradient descent near its stability limit zig-zags
   across the ravine; momentum (the course's EMA form, same learning rate) damps the oscillation
   and reaches the minimum sooner. Both 2-D problems also show every optimizer's path at its best
   learning rate from a grid.
2. On MNIST (the course's CNN, the packaged 5,000-digit subset), the adaptive methods train
   faster than SGD at their usual learning rates (mean and std over seeds).
3. At a large learning rate without warm-up, Adam's first steps are erratic; RAdam (and Adam with a
   linear warm-up) are not. With the same decay coefficient, AdamW (decoupled) and Adam + L2 act
   differently on the weights.

    python -m experiments.optimizers --workdir runs/optimizers
    python -m experiments.optimizers --workdir runs/optimizers_full --train_size 0 --epochs 10

Writes ``metrics.json`` and ``ravine.png``, ``rosenbrock.png``, ``mnist.png``, ``warmup.png``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import data, models, optim, train

NAMES = ("sgd", "momentum", "rmsprop", "adam", "adamw", "adamax", "radam")


@dataclasses.dataclass(frozen=True)
class Config:
    # 1. two-dimensional problems
    ravine_condition: float = 50.0  # f = (x^2 + kappa y^2) / 2
    ravine_start: tuple[float, ...] = (-8.0, 1.5)
    ravine_steps: int = 150
    # SGD and the course's momentum at the same rates: lr * lambda_max = 1.75 and 1.95, close to
    # plain gradient descent's stability limit lr * lambda_max < 2.
    ravine_lrs: tuple[float, ...] = (0.035, 0.039)
    rosenbrock_start: tuple[float, ...] = (-1.5, 2.0)
    rosenbrock_steps: int = 2000
    lr_grid_decades: tuple[float, ...] = (-4.0, 0.5)  # log10 range of the learning-rate grid
    lr_grid_points: int = 19
    momentum_beta: float = 0.9
    # 2. MNIST: the CNN, sensible default learning rates, several seeds
    dataset: str = "mnist_5k"
    train_size: int = 1500  # a fixed random subset of N training images (0: all 3,600)
    epochs: int = 3
    batch_size: int = 128
    seeds: tuple[int, ...] = (0, 1, 2)
    lr_sgd: float = 0.05
    lr_momentum: float = 0.1  # EMA form: equals heavy ball at 0.01 with beta 0.9
    lr_rmsprop: float = 1e-3
    lr_adam: float = 1e-3
    lr_adamw: float = 1e-3
    lr_adamax: float = 2e-3
    lr_radam: float = 1e-3
    # 3. warm-up and decoupled decay
    large_lr: float = 1e-2
    warmup_batch_size: int = 32
    warmup_steps: int = 50  # linear warm-up length for the Adam + warm-up baseline
    weight_decay: float = 1e-2
    skip_mnist: bool = False


def get_config() -> Config:
    return Config()


# ----------------------------------------------------------------------------------------------
# 1. two-dimensional problems


def ravine(p, kappa):
    return 0.5 * (p[0] ** 2 + kappa * p[1] ** 2)


def rosenbrock(p):
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


def make_2d_optimizer(name: str, beta: float):
    """Learning rate 1: the actual rate is put in the state's scale, so one compile serves a grid."""
    if name == "momentum":
        return optim.momentum(1.0, beta, ema=True)
    if name == "adamw":
        return optim.adamw(1.0, weight_decay=1e-2)
    return optim.get(name, 1.0)


def _with_lr(state, lr):
    is_lr = lambda x: isinstance(x, optim.ScaleByLearningRateState)  # noqa: E731
    return jax.tree.map(
        lambda s: s._replace(scale=jnp.asarray(lr, jnp.float32)) if is_lr(s) else s,
        state,
        is_leaf=is_lr,
    )


def trajectories(f, opt, x0, steps, lrs):
    """Paths (L, steps+1, 2) and losses (L, steps+1) for each learning rate, one scan each."""

    def one(lr):
        p0 = jnp.asarray(x0, jnp.float32)
        state = _with_lr(opt.init(p0), lr)

        def body(carry, _):
            p, s = carry
            g = jax.grad(f)(p)
            u, s = opt.update(g, s, p)
            p = optax.apply_updates(p, u)
            return (p, s), p

        _, path = jax.lax.scan(body, (p0, state), None, length=steps)
        path = jnp.concatenate([p0[None], path])
        return path, jax.vmap(f)(path)

    return jax.jit(jax.vmap(one))(jnp.asarray(lrs, jnp.float32))


def _final_loss(losses):
    last = np.asarray(losses)[:, -1]
    return np.where(np.isfinite(last), last, np.inf)


def oscillation(path, axis=1):
    """Zig-zag measures of the steep coordinate c_t of a path.

    ``reversals``: steps whose move in c reverses the previous move (sign change of c_t - c_{t-1},
    moves below 1e-6 |c_0| ignored); ``travel``: total distance travelled in c over |c_0| (1 for a
    monotone approach).
    """
    c = np.asarray(path, np.float64)[:, axis]
    d = np.diff(c)
    d = d[np.abs(d) > 1e-6 * abs(c[0])]
    reversals = int(np.sum(np.sign(d[1:]) != np.sign(d[:-1])))
    return reversals, float(np.sum(np.abs(np.diff(c))) / abs(c[0]))


def first_below(losses, level):
    idx = np.flatnonzero(np.asarray(losses) < level)
    return int(idx[0]) if idx.size else None


def two_d_problems(config: Config, workdir: str) -> dict:
    lrs = np.logspace(*config.lr_grid_decades, config.lr_grid_points)
    problems = {
        "ravine": (
            lambda p: ravine(p, config.ravine_condition),
            config.ravine_start,
            config.ravine_steps,
        ),
        "rosenbrock": (rosenbrock, config.rosenbrock_start, config.rosenbrock_steps),
    }
    results: dict = {}
    for prob, (f, x0, steps) in problems.items():
        best = {}
        for name in tqdm(NAMES, desc=f"{prob} lr grid", leave=False):
            paths, losses = trajectories(
                f, make_2d_optimizer(name, config.momentum_beta), x0, steps, lrs
            )
            final = _final_loss(losses)
            i = int(np.argmin(final))
            best[name] = {
                "lr": float(lrs[i]),
                "final_loss": float(final[i]),
                "path": np.asarray(paths[i]),
                "losses": np.asarray(losses[i]),
                "steps_to_1e-3": first_below(losses[i], 1e-3),
                "diverged_lrs": [
                    float(lr) for lr, v in zip(lrs, final, strict=True) if v == np.inf
                ],
            }
        results[prob] = best
        plot_2d(prob, f, best, os.path.join(workdir, f"{prob}.png"), config)

    # The course's claim: SGD and momentum at the same learning rates near SGD's limit.
    f = problems["ravine"][0]
    same_lr = {}
    for lr in config.ravine_lrs:
        for name in ("sgd", "momentum"):
            paths, losses = trajectories(
                f,
                make_2d_optimizer(name, config.momentum_beta),
                config.ravine_start,
                config.ravine_steps,
                [lr],
            )
            reversals, travel = oscillation(paths[0])
            p = np.asarray(paths[0])
            same_lr[f"{name}@{lr:g}"] = {
                "optimizer": name,
                "lr": lr,
                "steep_reversals": reversals,
                "steep_travel_over_start": travel,
                "max_abs_y_after_10_steps": float(np.max(np.abs(p[10:, 1]))),
                "x_after_50_steps": float(p[50, 0]),
                "final_loss": float(losses[0, -1]),
                "steps_to_1e-3": first_below(losses[0], 1e-3),
                "path": p,
            }
    results["ravine_same_lr"] = same_lr
    plot_same_lr(same_lr, f, os.path.join(workdir, "ravine_momentum.png"))
    return results


def plot_same_lr(same_lr, f, path_png):
    fig, axes = new_figure(1, 3, figsize=(17, 4.5))
    xs, ys = np.linspace(-9, 1, 300), np.linspace(-2, 2, 300)
    X, Y = np.meshgrid(xs, ys)
    Z = np.asarray(jax.vmap(jax.vmap(lambda a, b: f(jnp.stack([a, b]))))(X, Y))
    lrs = sorted({r["lr"] for r in same_lr.values()})
    for ax, lr in zip(axes[:2], lrs, strict=False):
        ax.contour(X, Y, Z, levels=np.logspace(-3, 3, 25), colors="0.8", linewidths=0.6)
        for r in same_lr.values():
            if r["lr"] == lr:
                label = "SGD" if r["optimizer"] == "sgd" else "momentum (EMA, beta 0.9)"
                ax.plot(r["path"][:, 0], r["path"][:, 1], ".-", ms=3, lw=0.8, label=label)
        ax.set(title=f"ravine, same lr {lr:g}", xlabel="x", ylabel="y (steep)")
        ax.legend()
    for key, r in same_lr.items():
        axes[2].semilogy(np.maximum(jax.vmap(f)(jnp.asarray(r["path"])), 1e-16), label=key)
    axes[2].set(title="loss vs step", xlabel="step")
    axes[2].legend()
    save_figure(fig, path_png)


def plot_2d(prob, f, best, path_png, config):
    fig, (ax0, ax1) = new_figure(1, 2, figsize=(13, 5.5))
    if prob == "ravine":
        xs, ys = np.linspace(-9, 3, 300), np.linspace(-2.5, 2.5, 300)
        levels = np.logspace(-3, 3, 25)
    else:
        xs, ys = np.linspace(-2, 2, 300), np.linspace(-1, 3, 300)
        levels = np.logspace(-2, 3.5, 25)
    X, Y = np.meshgrid(xs, ys)
    Z = np.asarray(jax.vmap(jax.vmap(lambda a, b: f(jnp.stack([a, b]))))(X, Y))
    ax0.contour(X, Y, Z, levels=levels, colors="0.8", linewidths=0.6)
    for name, r in best.items():
        p = np.clip(r["path"], [xs[0], ys[0]], [xs[-1], ys[-1]])
        ax0.plot(p[:, 0], p[:, 1], "-", lw=1.0, label=f"{name} (lr {r['lr']:.2g})")
        ax1.semilogy(np.maximum(r["losses"], 1e-16), label=name)
    ax0.plot(*([0, 0] if prob == "ravine" else [1, 1]), "k*", ms=12)
    ax0.set(title=f"{prob}: paths at each optimizer's best grid lr", xlabel="x", ylabel="y")
    ax0.legend(fontsize=7)
    ax1.set(title=f"{prob}: loss vs step", xlabel="step", ylabel="f (log)")
    ax1.legend(fontsize=7)
    save_figure(fig, path_png)


# ----------------------------------------------------------------------------------------------
# 2-3. MNIST


def mnist_optimizer(name: str, config: Config):
    lr = getattr(config, f"lr_{name}")
    if name == "momentum":
        return optim.momentum(lr, config.momentum_beta, ema=True)
    return optim.get(name, lr)


def load_mnist(config: Config):
    x, y = data.load(config.dataset, "train", validation_split=0.1)
    xv, yv = data.load(config.dataset, "validation", validation_split=0.1)
    if config.train_size:
        # A fixed random subset: the packaged split is ordered by class, so x[:N] would not do.
        keep = np.sort(np.random.default_rng(0).permutation(len(x))[: config.train_size])
        x, y = x[keep], y[keep]
    return (x, y), (xv, yv)


def mean_std(runs, key):
    a = np.array([r[key] for r in runs], np.float64)
    return a.mean(axis=0), a.std(axis=0)


def mnist_comparison(config: Config, train_data, val_data) -> dict:
    out = {}
    model = models.MnistCNN()
    for name in NAMES:
        runs = []
        for seed in tqdm(config.seeds, desc=f"MNIST {name}", leave=False):
            start = time.perf_counter()
            h = train.fit(
                model,
                mnist_optimizer(name, config),
                train_data,
                val_data,
                epochs=config.epochs,
                batch_size=config.batch_size,
                seed=seed,
                verbose=False,
            )
            runs.append({**h.history, "seconds": time.perf_counter() - start})
        out[name] = {"lr": getattr(config, f"lr_{name}"), "runs": runs}
        for key in ("loss", "val_loss", "val_accuracy"):
            m, s = mean_std(runs, key)
            out[name][f"{key}_mean"], out[name][f"{key}_std"] = m.tolist(), s.tolist()
    return out


def per_step_losses(opt, config: Config, train_data, val_data, seed: int) -> dict:
    """A hand loop over jaxdl.train's step, to record every step's training loss."""
    model = models.MnistCNN()
    x, y = train_data
    state = train.create_train_state(model, opt, x[:1], seed)
    step = train.make_train_step(model, opt)
    losses = []
    for epoch in range(config.epochs):
        for xb, yb in data.iterate_batches(
            (x, y), config.warmup_batch_size, seed=seed, epoch=epoch, drop_remainder=True
        ):
            state, m = step(state, jnp.asarray(xb), jnp.asarray(yb))
            losses.append(float(m["loss_sum"]) / float(m["count"]))
    ev = train.evaluate(model, state, val_data)
    return {"step_loss": losses, "val_loss": ev["loss"], "val_accuracy": ev["accuracy"]}


def warmup_and_decay(config: Config, train_data, val_data) -> dict:
    lr = config.large_lr
    steps_per_epoch = len(train_data[0]) // config.warmup_batch_size
    total = steps_per_epoch * config.epochs
    warm = min(config.warmup_steps, total - 1)
    variants = {
        "adam": optim.adam(lr),
        "radam": optim.radam(lr),
        "adam_warmup": optim.adam(optim.warmup_cosine_decay(0.0, lr, warm, total, end_value=lr)),
    }
    out: dict = {"warmup": {}, "decay": {}}
    for name, opt in variants.items():
        runs = [
            per_step_losses(opt, config, train_data, val_data, seed)
            for seed in tqdm(config.seeds, desc=f"warm-up {name}", leave=False)
        ]
        m, s = mean_std(runs, "step_loss")
        out["warmup"][name] = {
            "step_loss_mean": m.tolist(),
            "step_loss_std": s.tolist(),
            "max_loss_first_20_steps": [float(np.max(r["step_loss"][:20])) for r in runs],
            "val_accuracy": [r["val_accuracy"] for r in runs],
            "val_loss": [r["val_loss"] for r in runs],
        }

    # Same coefficient lambda: Adam + L2 adds lambda*theta to the gradient before the adaptive
    # scaling; AdamW subtracts lr*lambda*theta after it. Kernels only, biases untouched.
    lam, model = config.weight_decay, models.MnistCNN()
    decays = {
        "adam": optim.adam(config.lr_adam),
        "adam_l2": optim.chain(
            optim.add_decayed_weights(lam, optim.weight_decay_mask), optim.adam(config.lr_adam)
        ),
        "adamw": optim.adamw(config.lr_adam, weight_decay=lam, mask=optim.weight_decay_mask),
    }
    for name, opt in decays.items():
        runs = []
        for seed in tqdm(config.seeds, desc=f"decay {name}", leave=False):
            h = train.fit(
                model,
                opt,
                train_data,
                val_data,
                epochs=config.epochs,
                batch_size=config.batch_size,
                seed=seed,
                verbose=False,
            )
            init = train.create_train_state(model, opt, train_data[0][:1], seed).params
            kernels = lambda p: [  # noqa: E731
                leaf
                for path, leaf in jax.tree_util.tree_leaves_with_path(p)
                if path[-1].key == "kernel"
            ]
            norm = lambda ls: float(np.sqrt(sum(np.sum(np.square(l)) for l in ls)))  # noqa: E731
            runs.append(
                {
                    "val_accuracy": h.history["val_accuracy"][-1],
                    "val_loss": h.history["val_loss"][-1],
                    "kernel_norm_ratio": norm(kernels(h.state.params)) / norm(kernels(init)),
                }
            )
        out["decay"][name] = {
            k: [r[k] for r in runs] for k in ("val_accuracy", "val_loss", "kernel_norm_ratio")
        }
    return out


def plot_mnist(results, path_png):
    fig, axes = new_figure(1, 2, figsize=(12, 4.5))
    for name, r in results.items():
        ep = np.arange(1, len(r["loss_mean"]) + 1)
        for ax, key in zip(axes, ("loss", "val_accuracy"), strict=True):
            m, s = np.array(r[f"{key}_mean"]), np.array(r[f"{key}_std"])
            ax.plot(ep, m, "-o", ms=3, label=f"{name} (lr {r['lr']:g})")
            ax.fill_between(ep, m - s, m + s, alpha=0.2)
    axes[0].set(title="MNIST CNN: training loss (mean ± std)", xlabel="epoch", yscale="log")
    axes[1].set(title="validation accuracy (mean ± std)", xlabel="epoch")
    axes[1].legend(fontsize=7)
    save_figure(fig, path_png)


def plot_warmup(results, lr, path_png):
    fig, ax = new_figure(figsize=(7, 4.5))
    for name, r in results["warmup"].items():
        m, s = np.array(r["step_loss_mean"]), np.array(r["step_loss_std"])
        steps = np.arange(1, len(m) + 1)
        ax.plot(steps, m, label=name)
        ax.fill_between(steps, m - s, m + s, alpha=0.2)
    ax.set(title=f"lr = {lr:g}, no warm-up unless stated", xlabel="step", ylabel="training loss")
    ax.set_yscale("log")
    ax.legend()
    save_figure(fig, path_png)


# ----------------------------------------------------------------------------------------------


def _strip_paths(two_d):
    """JSON keeps the best paths subsampled to at most 200 points (the PNGs have them all)."""
    out = {}
    for prob, res in two_d.items():
        out[prob] = {}
        for name, r in res.items():
            r = dict(r)
            stride = max(1, math.ceil(len(r["path"]) / 200))
            r["path"] = r["path"][::stride]
            r.pop("losses", None)
            out[prob][name] = r
    return out


def train_and_evaluate(config: Config, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    metrics: dict = {"config": config}
    start = time.perf_counter()
    two_d = two_d_problems(config, workdir)
    metrics["two_d"] = _strip_paths(two_d)
    for prob in ("ravine", "rosenbrock"):
        print(f"\n{prob}: best grid lr, final loss, steps to f < 1e-3")
        for name, r in two_d[prob].items():
            print(f"  {name:9s} {r['lr']:9.3g} {r['final_loss']:11.3e} {r['steps_to_1e-3']}")
    print("\nravine, SGD vs the course's EMA momentum at the same lr:")
    for key, r in two_d["ravine_same_lr"].items():
        print(
            f"  {key:16s} reversals {r['steep_reversals']:3d}, travel {r['steep_travel_over_start']:6.2f}"
            f", x@50 {r['x_after_50_steps']:7.3f}, final {r['final_loss']:.2e}, "
            f"steps to 1e-3 {r['steps_to_1e-3']}"
        )
    if not config.skip_mnist:
        train_data, val_data = load_mnist(config)
        metrics["mnist"] = mnist_comparison(config, train_data, val_data)
        plot_mnist(metrics["mnist"], os.path.join(workdir, "mnist.png"))
        print(
            f"\nMNIST ({len(train_data[0])} train images, {config.epochs} epochs, seeds {config.seeds})"
        )
        for name, r in metrics["mnist"].items():
            print(
                f"  {name:9s} lr {r['lr']:<6g} train loss {r['loss_mean'][-1]:.3f}±{r['loss_std'][-1]:.3f}"
                f"  val acc {r['val_accuracy_mean'][-1]:.3f}±{r['val_accuracy_std'][-1]:.3f}"
            )
        metrics["part3"] = warmup_and_decay(config, train_data, val_data)
        plot_warmup(metrics["part3"], config.large_lr, os.path.join(workdir, "warmup.png"))
        print(f"\nlr {config.large_lr}: max loss in first 20 steps, final val accuracy (per seed)")
        for name, r in metrics["part3"]["warmup"].items():
            print(
                f"  {name:12s} {np.round(r['max_loss_first_20_steps'], 3)} {np.round(r['val_accuracy'], 3)}"
            )
        print(
            f"\nweight decay {config.weight_decay}: val accuracy, kernel norm / initial (per seed)"
        )
        for name, r in metrics["part3"]["decay"].items():
            print(
                f"  {name:8s} {np.round(r['val_accuracy'], 3)} {np.round(r['kernel_norm_ratio'], 3)}"
            )
    metrics["seconds"] = time.perf_counter() - start
    save_json(metrics, os.path.join(workdir, "metrics.json"))
    print(f"\n{metrics['seconds']:.0f} s; wrote {workdir}/metrics.json and PNGs")
    return metrics


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), sys.argv[1:], description=__doc__)
    train_and_evaluate(cfg, wd)
