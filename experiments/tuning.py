"""Hyper-parameter search: grid vs random vs Bayesian (Optuna TPE), and vmapped trials.

Part 1 (MnistCNN): the three methods at 16 and 32 trials over learning rate (log-uniform
1e-4..1e-1), dropout (0..0.6) and batch size (32, 64, 128), 3 repeats. A trial trains MnistCNN on
a 1,000-digit subset of mnist_5k for ``trial_epochs`` epochs (Adam) and returns the validation
error on the 400 held-out digits; best validation accuracy against trials spent. Random and
Bayesian 16-trial results are the first 16 trials of their 32-trial runs (the same proposals:
random draws and TPE are sequential and seeded, with a fixed 4 start-up trials), grid runs its
own 12- and 27-point grids; a repeat changes the search seed and the training seed.

Part 2 (Bergstra & Bengio 2012): a synthetic objective on [0, 1]^3 where only the first
coordinate matters much, ``f = (x1 - a)^2 + 0.01 ((x2 - b)^2 + (x3 - c)^2)`` with the optimum
``(a, b, c)`` drawn afresh for each of ``synthetic_repeats`` repeats: a grid spends its budget on
few distinct values of x1, random search tries a new x1 every trial.

Part 3: K trials of MnistCNN in one jitted program, vmapped over (learning rate, weight decay,
seed), against the same K trials run one after another through the same compiled single-trial
program: trials per hour.

    python -m experiments.tuning --workdir runs/tuning
    python -m experiments.tuning --workdir runs/tuning_quick --repeats 1 --synthetic_repeats 10

Writes ``metrics.json``, ``search_mnist.png``, ``search_synthetic.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import data, losses, models, optim, tune, xla_flags

METHODS = ("grid", "random", "bayesian")


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "mnist_5k"
    train_examples: int = 1000
    trial_epochs: int = 1
    budgets: tuple[int, ...] = (16, 32)
    repeats: int = 3
    synthetic_repeats: int = 50
    vmap_k: int = 8
    # MnistCNN under vmap is a grouped convolution, very slow on XLA:CPU (a CPU run did not finish
    # in 15 minutes): the CNN is timed by experiments/benchmarks/gpu_compression.py instead
    vmap_models: tuple[str, ...] = ("mlp",)
    vmap_steps: int = 30
    vmap_batch: int = 64
    seed: int = 0


def get_config() -> Config:
    return Config()


SPACE = {
    "learning_rate": tune.loguniform(1e-4, 1e-1),
    "dropout": tune.uniform(0.0, 0.6),
    "batch_size": tune.choice([32, 64, 128]),
}


def _dropout_with_traced_rate(rate, key):
    """A flax method interceptor: MnistCNN's Dropout with a *traced* rate (Flax's Dropout needs a
    Python float), so one compiled step serves every dropout value: inverted dropout,
    ``x * keep / (1 - rate)``."""

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
            x = args[0]
            keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
            return jnp.where(keep, x / (1.0 - rate), 0.0)
        return next_fun(*args, **kwargs)

    return interceptor


class MnistObjective:
    """Validation error of MnistCNN after a short training run; one compiled step per batch size,
    learning rate and dropout passed as arrays."""

    def __init__(self, c: Config):
        x, y = data.load(c.dataset, "train", validation_split=0.1)
        pick = np.random.default_rng(c.seed).permutation(len(x))[: c.train_examples]
        self.x, self.y = x[pick], y[pick]  # a random subset: the file is ordered by class
        self.xv, self.yv = data.load(c.dataset, "validation", validation_split=0.1)
        self.model = models.MnistCNN()
        self.epochs = c.trial_epochs
        self.init = jax.jit(self.model.init)
        self.optimizer = optax.inject_hyperparams(optim.adam)(learning_rate=1e-3)
        self.eval = jax.jit(lambda p, xb: self.model.apply({"params": p}, xb))
        self.seed = 0
        self.calls = 0
        self.seconds = 0.0

    @functools.cached_property
    def step(self):
        model, opt = self.model, self.optimizer

        def loss_fn(p, xb, yb, rate, key):
            with nn.intercept_methods(_dropout_with_traced_rate(rate, key)):
                logits = model.apply({"params": p}, xb, train=True)
            return losses.cross_entropy(logits, yb)

        def step(p, s, xb, yb, lr, rate, key):
            s.hyperparams["learning_rate"] = lr
            g = jax.grad(loss_fn)(p, xb, yb, rate, key)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        return jax.jit(
            step, donate_argnums=(0, 1), compiler_options=xla_flags.train_step_compiler_options()
        )

    def __call__(self, hp: dict) -> float:
        start = time.perf_counter()
        self.calls += 1
        bs = int(hp["batch_size"])
        seed = self.seed * 100_003 + self.calls
        params = self.init(jax.random.key(seed), self.x[:1])["params"]
        state = self.optimizer.init(params)
        rng = np.random.default_rng(seed)
        key = jax.random.key(seed + 1)
        lr, rate = jnp.float32(hp["learning_rate"]), jnp.float32(hp["dropout"])
        for _ in range(self.epochs):
            idx = rng.permutation(len(self.x))
            for i in range(0, len(idx) - bs + 1, bs):
                key, sub = jax.random.split(key)
                j = idx[i : i + bs]
                params, state = self.step(params, state, self.x[j], self.y[j], lr, rate, sub)
        pred = np.argmax(np.asarray(self.eval(params, self.xv)), -1)
        self.seconds += time.perf_counter() - start
        err = float(np.mean(pred != self.yv))
        return err if np.isfinite(err) else 1.0


def run_mnist_search(c: Config) -> dict:
    objective = MnistObjective(c)
    out: dict = {m: {} for m in METHODS}
    top = max(c.budgets)
    jobs = [
        (m, n, r)
        for r in range(c.repeats)
        for m in METHODS
        for n in (c.budgets if m == "grid" else (top,))
    ]
    for method, n, r in tqdm(jobs, desc="MnistCNN searches", file=sys.stderr):
        objective.seed = 1000 * r + (n if method == "grid" else 0)
        study = tune.search(
            objective, SPACE, method, n, seed=c.seed + r, pruner=None, n_startup_trials=4
        )
        acc = 1.0 - study.best_so_far()
        budgets = (n,) if method == "grid" else c.budgets
        for b in budgets:
            best = max(study.trials[:b], key=lambda t: -t.value)
            out[method].setdefault(str(b), []).append(
                {
                    "best_accuracy": float(acc[min(b, len(acc)) - 1]),
                    "best_params": best.params,
                    "curve": acc[:b].tolist(),
                    "trials": len(study.trials[:b]),
                }
            )
        print(
            f"{method:8s} budget {n:2d} repeat {r}: best val accuracy {acc[-1]:.4f} "
            f"with {study.best_params}",
            flush=True,
        )
    out["seconds_per_trial"] = objective.seconds / max(objective.calls, 1)
    out["trials_run"] = objective.calls
    return out


def run_synthetic(c: Config) -> dict:
    space = {f"x{i}": tune.uniform(0.0, 1.0) for i in (1, 2, 3)}
    rng = np.random.default_rng(c.seed)
    optima = rng.uniform(size=(c.synthetic_repeats, 3))
    out: dict = {m: {str(b): [] for b in c.budgets} for m in METHODS}
    for r, (a, b_, c_) in enumerate(tqdm(optima, desc="synthetic", file=sys.stderr)):

        def f(p, a=a, b_=b_, c_=c_):
            return (p["x1"] - a) ** 2 + 0.01 * ((p["x2"] - b_) ** 2 + (p["x3"] - c_) ** 2)

        for m in METHODS:
            for b in c.budgets:
                study = tune.search(f, space, m, b, seed=r, pruner=None, n_startup_trials=4)
                out[m][str(b)].append(
                    {
                        "best": study.best_value,
                        "distinct_x1": len({round(t.params["x1"], 12) for t in study.trials}),
                    }
                )
    summary = {
        m: {
            b: {
                "mean_best": float(np.mean([v["best"] for v in out[m][b]])),
                "median_best": float(np.median([v["best"] for v in out[m][b]])),
                "distinct_x1": float(np.mean([v["distinct_x1"] for v in out[m][b]])),
            }
            for b in out[m]
        }
        for m in METHODS
    }
    for m in METHODS:
        for b, s in summary[m].items():
            print(
                f"synthetic {m:8s} {b:>2s} trials: mean best f {s['mean_best']:.2e}, median "
                f"{s['median_best']:.2e}, distinct x1 values {s['distinct_x1']:.1f}",
                flush=True,
            )
    return {"runs": out, "summary": summary}


class MLP(nn.Module):
    """784 -> 256 -> 10 with ReLU: a model whose step is a few small matmuls."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


def run_vmap(c: Config, model_name: str = "cnn") -> dict:
    x, y = data.load(c.dataset, "train", validation_split=0.1)
    xv, yv = data.load(c.dataset, "validation", validation_split=0.1)
    model = models.MnistCNN(dropout_rate=0.5) if model_name == "cnn" else MLP()
    train_fn = tune.make_train_fn(
        model,
        lambda h: optim.adamw(h["learning_rate"], weight_decay=h["weight_decay"]),
        (x, y),
        c.vmap_steps,
        c.vmap_batch,
        eval_data=(xv, yv),
    )
    k = c.vmap_k
    rng = np.random.default_rng(c.seed)
    hp = {
        "learning_rate": 10 ** rng.uniform(-4, -2, k),
        "weight_decay": 10 ** rng.uniform(-5, -2, k),
    }
    seeds = np.arange(k)

    t = time.perf_counter()
    together = jax.block_until_ready(tune.vmap_trials(train_fn, hp, seeds))
    first_vmap = time.perf_counter() - t
    t = time.perf_counter()
    together = jax.block_until_ready(tune.vmap_trials(train_fn, hp, seeds))
    run_vmap_s = time.perf_counter() - t

    single = jax.jit(train_fn)
    t = time.perf_counter()
    jax.block_until_ready(single({n: np.float32(v[0]) for n, v in hp.items()}, seeds[0]))
    first_single = time.perf_counter() - t
    t = time.perf_counter()
    alone = [
        jax.block_until_ready(single({n: np.float32(v[i]) for n, v in hp.items()}, seeds[i]))
        for i in range(k)
    ]
    run_seq_s = time.perf_counter() - t
    diff = max(
        float(np.max(np.abs(np.asarray(together["eval_loss"][i]) - np.asarray(a["eval_loss"]))))
        for i, a in enumerate(alone)
    )
    res = {
        "model": model_name,
        "k": k,
        "steps": c.vmap_steps,
        "batch": c.vmap_batch,
        "vmap_seconds": run_vmap_s,
        "sequential_seconds": run_seq_s,
        "vmap_compile_plus_first_run_seconds": first_vmap,
        "single_compile_plus_first_run_seconds": first_single,
        "trials_per_hour_vmap": 3600 * k / run_vmap_s,
        "trials_per_hour_sequential": 3600 * k / run_seq_s,
        "speedup": run_seq_s / run_vmap_s,
        "max_eval_loss_difference": diff,
        "eval_accuracy": np.asarray(together["eval_accuracy"]).tolist(),
        "hparams": hp,
    }
    print(
        f"vmap ({model_name}): {k} trials x {c.vmap_steps} steps in {run_vmap_s:.2f} s "
        f"({res['trials_per_hour_vmap']:.0f} trials/h) vs sequential {run_seq_s:.2f} s "
        f"({res['trials_per_hour_sequential']:.0f} trials/h): {res['speedup']:.2f}x; "
        f"max |eval loss difference| {diff:.2e}",
        flush=True,
    )
    return res


def plot(metrics: dict, workdir: str) -> None:
    colors = {"grid": "tab:blue", "random": "tab:orange", "bayesian": "tab:green"}
    ms = metrics.get("mnist")
    if ms:
        fig, ax = new_figure(figsize=(7, 4.5))
        for m in METHODS:
            for b, runs in ms[m].items():
                if m != "grid" and b != str(max(int(k) for k in ms[m])):
                    continue
                curves = np.array([r["curve"] for r in runs])
                mean = curves.mean(0)
                xs = np.arange(1, len(mean) + 1)
                ax.plot(
                    xs,
                    mean,
                    color=colors[m],
                    ls="-" if m != "grid" or b != "16" else "--",
                    label=f"{m} ({b} trials)" if m == "grid" else m,
                )
                ax.fill_between(xs, curves.min(0), curves.max(0), color=colors[m], alpha=0.12)
        ax.set_xlabel("trials spent")
        ax.set_ylabel("best validation accuracy so far")
        ax.set_title("MnistCNN: lr, dropout, batch size (mean, min-max over repeats)")
        ax.set_ylim(bottom=max(0.0, ax.get_ylim()[0]))
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(fig, os.path.join(workdir, "search_mnist.png"))
    syn = metrics.get("synthetic")
    if syn:
        fig, ax = new_figure(figsize=(6, 4))
        budgets = list(syn["summary"]["grid"])
        width = 0.25
        for i, m in enumerate(METHODS):
            vals = [syn["summary"][m][b]["median_best"] for b in budgets]
            ax.bar(np.arange(len(budgets)) + (i - 1) * width, vals, width, color=colors[m], label=m)
        ax.set_xticks(np.arange(len(budgets)), [f"{b} trials" for b in budgets])
        ax.set_yscale("log")
        ax.set_ylabel("median best f (lower is better)")
        ax.set_title("One important dimension of three (Bergstra & Bengio 2012)")
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
        save_figure(fig, os.path.join(workdir, "search_synthetic.png"))


def train_and_evaluate(c: Config, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    metrics: dict = {"config": c, "backend": jax.default_backend()}
    metrics["synthetic"] = run_synthetic(c)
    if c.vmap_k > 0:
        metrics["vmap"] = {name: run_vmap(c, name) for name in c.vmap_models}
    if c.repeats > 0:
        metrics["mnist"] = run_mnist_search(c)
        for m in METHODS:
            for b, runs in metrics["mnist"][m].items():
                accs = [r["best_accuracy"] for r in runs]
                print(
                    f"MnistCNN {m:8s} {b:>2s} trials: best val accuracy mean {np.mean(accs):.4f} "
                    f"(min {np.min(accs):.4f}, max {np.max(accs):.4f})"
                )
    metrics["wall_seconds"] = time.perf_counter() - start
    save_json(metrics, os.path.join(workdir, "metrics.json"))
    plot(metrics, workdir)
    print(f"wall time {metrics['wall_seconds']:.0f} s; wrote {workdir}/metrics.json")
    return metrics


def main(argv=None):
    config, workdir = parse_config(get_config(), argv, description=__doc__)
    train_and_evaluate(config, workdir)


if __name__ == "__main__":
    main()
