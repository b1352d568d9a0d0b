"""Speed of one jitted optimizer update, jaxdl vs optax, on a ResNet-50-sized parameter tree.

The tree is ResNet-50's own parameters (jaxdl.models.ResNet50, 25,557,032 parameters in 161
leaves), built with ``jax.eval_shape`` and filled with random numbers; gradients are a second
random tree. The timed function is ``params, state = step(params, state, grads)``: ``update`` then
``optax.apply_updates``, under one ``jax.jit`` with params and state donated (as in a train step).
For each optimizer (adam, adamw, radam) both libraries are compiled (compile time reported
separately), warmed up, then timed alternately -- jaxdl block, optax block, ``repeats`` times -- so
both see the same machine load; we report the median per-update time of each and
``ratio = optax / jaxdl`` (> 1: jaxdl faster). Memory traffic is also reported: Adam reads params,
grads, mu, nu and writes params, mu, nu (7 x 4 bytes per parameter in float32).

Run: ``python -m experiments.benchmarks.optim_update --workdir runs/optim_update``.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import models, optim


@dataclasses.dataclass(frozen=True)
class Config:
    optimizers: tuple[str, ...] = ("adam", "adamw", "radam")
    learning_rate: float = 1e-3
    repeats: int = 7  # blocks per library, alternating
    steps: int = 5  # updates per block
    seed: int = 0


def get_config() -> Config:
    return Config()


def resnet50_tree(seed: int):
    model = models.ResNet50()
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
    )["params"]
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(seed), 2 * len(leaves))
    params = [
        0.05 * jax.random.normal(k, s.shape, s.dtype)
        for k, s in zip(keys[: len(leaves)], leaves, strict=True)
    ]
    grads = [
        1e-3 * jax.random.normal(k, s.shape, s.dtype)
        for k, s in zip(keys[len(leaves) :], leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, params), jax.tree.unflatten(treedef, grads)


def build(lib: str, name: str, lr: float):
    if lib == "jaxdl":
        return {"adam": optim.adam, "adamw": optim.adamw, "radam": optim.radam}[name](lr)
    return {"adam": optax.adam, "adamw": optax.adamw, "radam": optax.radam}[name](lr)


def make_step(opt):
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def bench_one(name: str, params, grads, config: Config) -> dict:
    runs = {}
    for lib in ("jaxdl", "optax"):
        opt = build(lib, name, config.learning_rate)
        p = jax.tree.map(jnp.copy, params)
        s = opt.init(p)
        step = make_step(opt)
        t0 = time.perf_counter()
        compiled = step.lower(p, s, grads).compile()
        compile_s = time.perf_counter() - t0
        for _ in range(2):  # warm-up
            p, s = compiled(p, s, grads)
        jax.block_until_ready(p)
        runs[lib] = {"compiled": compiled, "p": p, "s": s, "compile_s": compile_s, "times": []}
    for _ in range(config.repeats):
        for lib in ("jaxdl", "optax"):
            r = runs[lib]
            t0 = time.perf_counter()
            for _ in range(config.steps):
                r["p"], r["s"] = r["compiled"](r["p"], r["s"], grads)
            jax.block_until_ready(r["p"])
            r["times"].append((time.perf_counter() - t0) / config.steps)
    out = {}
    for lib, r in runs.items():
        out[lib] = {
            "median_s": float(np.median(r["times"])),
            "times_s": r["times"],
            "compile_s": r["compile_s"],
        }
    out["ratio_optax_over_jaxdl"] = out["optax"]["median_s"] / out["jaxdl"]["median_s"]
    return out


def train_and_evaluate(config: Config, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    params, grads = resnet50_tree(config.seed)
    n = sum(x.size for x in jax.tree.leaves(params))
    leaves = len(jax.tree.leaves(params))
    print(f"tree: {n:,} parameters in {leaves} leaves; device {jax.devices()[0].device_kind}")
    results = {
        "parameters": n,
        "leaves": leaves,
        "device": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "config": config,
        "optimizers": {},
    }
    for name in config.optimizers:
        r = bench_one(name, params, grads, config)
        results["optimizers"][name] = r
        gbs = 7 * 4 * n / r["jaxdl"]["median_s"] / 1e9
        print(
            f"{name:6s} jaxdl {1e3 * r['jaxdl']['median_s']:7.2f} ms (compile "
            f"{r['jaxdl']['compile_s']:.2f} s)  optax {1e3 * r['optax']['median_s']:7.2f} ms "
            f"(compile {r['optax']['compile_s']:.2f} s)  ratio optax/jaxdl "
            f"{r['ratio_optax_over_jaxdl']:.3f}  (~{gbs:.1f} GB/s for jaxdl)"
        )
    save_json(results, os.path.join(workdir, "metrics.json"))
    fig, ax = new_figure(figsize=(6, 4))
    names = list(results["optimizers"])
    x = np.arange(len(names))
    for i, lib in enumerate(("jaxdl", "optax")):
        ms = [1e3 * results["optimizers"][k][lib]["median_s"] for k in names]
        ax.bar(x + 0.4 * i - 0.2, ms, 0.4, label=lib)
    ax.set_xticks(x, names)
    ax.set(ylabel="ms per update (median)", title=f"{n / 1e6:.1f}M parameters, {leaves} leaves")
    ax.legend()
    save_figure(fig, os.path.join(workdir, "optim_update.png"))
    return results


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), sys.argv[1:], description=__doc__)
    train_and_evaluate(cfg, wd)
