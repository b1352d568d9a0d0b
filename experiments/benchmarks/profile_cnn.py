"""Where the MnistCNN train step spends its time: jitted pieces timed under each lowering.

Each variant is the same function (the course's CNN, the same parameters) with one lowering
changed, so the difference between two rows is what that change buys:

- ``flax``: ``flax.linen.max_pool`` (``reduce_window``) and ``lax.conv_general_dilated``, as stock
  flax writes the model;
- ``reshape_pool``: the 2x2 pool as a reshape and a max (:func:`jaxdl.nn.max_pool`,
  ``impl="reshape"``);
- ``patches_autodiff``: plus the convolutions as patches and one matmul, differentiated by JAX;
- ``patches_vjp``: the hand-written backward instead (:func:`jaxdl.nn.patches_conv`): the kernel
  gradient as one matmul of the patches, the input gradient as a matmul and its col2im;
- ``lax_fwd_matmul_dw``: ``patches_conv(forward="lax")``: lax's forward convolution and input
  gradient, the kernel gradient as the patches matmul;
- ``pool_vjp``: lax convolutions with MnistCNN's training pool (``max_pool(impl="slices")``:
  four-slice forward, one-pass backward); ``pool_vjp+matmul_dw0``: plus the patches kernel
  gradient on the first layer only;
- ``pool_vjp+matmul_dw``: both layers (what ``MnistCNN`` ran before the lowerings below);
- ``direct0``: plus the first layer's forward pass as 9 broadcast multiply-adds
  (``patches_conv(forward="direct")``);
- ``direct0+lax1``: and the second layer back to lax's convolution with its own gradients (the
  faster choice once jaxdl's XLA:CPU settings apply);
- ``mnistcnn``: plus the conv biases added by :func:`jaxdl.nn.bias_add` (their gradient as a
  GEMV): what :class:`jaxdl.models.MnistCNN` runs in training.

Every step is compiled as :func:`jaxdl.train.make_train_step` compiles its own (with
:func:`jaxdl.xla_flags.train_step_compiler_options`), after ``import jaxdl`` has set its
process-wide XLA:CPU flag; ``JAXDL_XLA_FLAGS=0`` times them without either.

For each variant: the full train step (forward, backward, Adam), and for each conv layer alone the
forward and the forward+backward. Variants are timed interleaved, round after round, so a change
in machine load hits all of them alike; the median and the min over rounds are reported.

    python -m experiments.benchmarks.profile_cnn --workdir runs/profile_cnn
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from experiments.common import parse_config, save_json
from jaxdl import losses, models, xla_flags
from jaxdl import nn as jaxdl_nn
from jaxdl.nn.conv import _conv_patches_slices, patches_conv
from jaxdl.nn.pooling import max_pool as _max_pool

max_pool = functools.partial(_max_pool, impl="reshape")  # change 1
# MnistCNN's training pool: four strided slices, one-pass backward (change 3)
pool_train = functools.partial(_max_pool, impl="slices")


@dataclasses.dataclass(frozen=True)
class Config:
    batch_size: int = 128
    rounds: int = 7
    steps: int = 20  # calls per timed round
    seed: int = 0
    variants: tuple[str, ...] = ()  # () = all
    pieces: bool = True  # also time each conv layer alone


def get_config() -> Config:
    return Config()


def _lax_conv(x, k):
    return lax.conv_general_dilated(
        x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _patches_autodiff(x, k):
    p = _conv_patches_slices(x, k.shape[:2], (1, 1))
    return p @ k.reshape(-1, k.shape[-1])


def _flax_pool(x):
    return fnn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _lax_fwd_matmul_dw(x, k):
    return patches_conv(x, k, forward="lax")


def _direct(x, k):
    return patches_conv(x, k, forward="direct")


# name -> (first conv, second conv, pool)
VARIANTS: dict[str, tuple[Callable, Callable, Callable]] = {
    "flax": (_lax_conv, _lax_conv, _flax_pool),
    "reshape_pool": (_lax_conv, _lax_conv, max_pool),
    "patches_autodiff": (_patches_autodiff, _patches_autodiff, max_pool),
    "patches_vjp": (patches_conv, patches_conv, max_pool),
    "lax_fwd_matmul_dw": (_lax_fwd_matmul_dw, _lax_fwd_matmul_dw, max_pool),
    "pool_vjp": (_lax_conv, _lax_conv, pool_train),
    "pool_vjp+matmul_dw0": (_lax_fwd_matmul_dw, _lax_conv, pool_train),
    "pool_vjp+matmul_dw": (_lax_fwd_matmul_dw, _lax_fwd_matmul_dw, pool_train),
    "direct0": (_direct, _lax_fwd_matmul_dw, pool_train),
    "direct0+lax1": (_direct, _lax_conv, pool_train),
    "mnistcnn": (_direct, _lax_conv, pool_train),  # + bias_add (below)
}
# variants whose conv biases go through jaxdl.nn.bias_add (gradient as a GEMV)
GEMV_BIAS = ("mnistcnn",)


def _plain_bias(y, b):
    return y + b.reshape(1, 1, 1, -1)


def cnn_apply(convs, pool, params, x, dropout_key, bias=_plain_bias):
    """The MnistCNN forward pass (training mode) with the given conv, pool and bias lowerings."""
    for name, conv in zip(("Conv_0", "Conv_1"), convs, strict=True):
        q = params[name]
        x = pool(jax.nn.relu(bias(conv(x, q["kernel"]), q["bias"])))
    x = x.reshape(x.shape[0], -1)  # (N, 1600)
    x = jax.nn.relu(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"][None])
    keep = jax.random.bernoulli(dropout_key, 0.5, x.shape)
    x = jnp.where(keep, x / 0.5, 0.0)
    return x @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"][None]


def make_step(convs, pool, tx, bias=_plain_bias):
    def step(params, opt_state, x, y, key):
        loss, g = jax.value_and_grad(
            lambda p: losses.cross_entropy(cnn_apply(convs, pool, p, x, key, bias), y)
        )(params)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # compiled as jaxdl.train.make_train_step compiles the real step
    return jax.jit(
        step, donate_argnums=(0, 1), compiler_options=xla_flags.train_step_compiler_options()
    )


def _time(fn: Callable[[], object], steps: int) -> tuple[float, float]:
    """Wall seconds and process CPU seconds (all threads) per call. On a shared machine the CPU
    time is the steadier of the two: it counts the work done, not the time spent waiting for a
    core."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def train_and_evaluate(config: Config, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    b = config.batch_size
    x = jnp.asarray(rng.random((b, 28, 28, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, b), jnp.int32)
    key = jax.random.key(config.seed)
    params0 = models.MnistCNN().init(key, x)["params"]
    tx = optax.adam(1e-3)
    x1 = jnp.asarray(rng.random((b, 13, 13, 32), np.float32))
    k0, k1 = params0["Conv_0"]["kernel"], params0["Conv_1"]["kernel"]

    jobs: dict[str, Callable[[], object]] = {}
    for name, (conv0, conv1, pool) in VARIANTS.items():
        if config.variants and name not in config.variants:
            continue
        bias = jaxdl_nn.bias_add if name in GEMV_BIAS else _plain_bias
        step = make_step((conv0, conv1), pool, tx, bias)
        state = {"p": jax.tree.map(jnp.copy, params0), "o": tx.init(params0)}

        def run_step(step=step, state=state):
            state["p"], state["o"], loss = step(state["p"], state["o"], x, y, key)
            return loss

        jobs[f"{name}/train_step"] = run_step
        if not config.pieces or conv0 is not conv1 or name in ("flax", "pool_vjp"):
            continue  # the conv pieces depend only on the conv lowering: time each once
        conv = conv0
        for layer, (xin, k) in {"conv0": (x, k0), "conv1": (x1, k1)}.items():
            fwd = jax.jit(conv)
            # the gradient a train step needs: the kernel's, and the input's for every layer but
            # the first (whose input is data)
            argnums = (1,) if layer == "conv0" else (0, 1)
            bwd = jax.jit(jax.grad(lambda a, w, conv=conv: jnp.sum(conv(a, w) ** 2), argnums))
            jobs[f"{name}/{layer}_fwd"] = lambda f=fwd, a=xin, w=k: f(a, w)
            jobs[f"{name}/{layer}_fwd_bwd"] = lambda f=bwd, a=xin, w=k: f(a, w)

    compile_s = {}
    for name, fn in jobs.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        compile_s[name] = time.perf_counter() - t0
        fn()  # a second warm-up call
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in jobs}
    for _ in range(config.rounds):
        for name, fn in jobs.items():
            samples[name].append(_time(fn, config.steps))

    results = {}
    for name, ts in samples.items():
        wall, cpu = np.asarray(ts).T
        med = float(np.median(wall))
        results[name] = {
            "median_ms": 1e3 * med,
            "min_ms": 1e3 * float(np.min(wall)),
            "cpu_median_ms": 1e3 * float(np.median(cpu)),
            "examples_per_s": b / med,
            "first_call_s": compile_s[name],
        }
    print(f"{'piece':32s} {'median ms':>10s} {'min ms':>8s} {'cpu ms':>8s} {'ex/s':>8s}")
    for name, r in results.items():
        print(
            f"{name:32s} {r['median_ms']:10.3f} {r['min_ms']:8.3f} {r['cpu_median_ms']:8.3f} "
            f"{r['examples_per_s']:8.0f}"
        )
    out = {"config": config, "devices": str(jax.devices()), "results": results}
    save_json(out, os.path.join(workdir, "metrics.json"))
    return out


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), sys.argv[1:], __doc__)
    train_and_evaluate(cfg, wd)
