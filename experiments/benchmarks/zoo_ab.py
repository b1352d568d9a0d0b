"""Interleaved A/B of the zoo's train steps (:mod:`experiments.benchmarks.zoo_step`) with one of
jaxdl's convolution lowerings undone, all variants in one process (so the machine's drift hits
them alike).

Variants:

* ``jaxdl``: the library as it is.
* ``xla_pointwise_grads``: 1x1 convolutions differentiated by XLA (``lax.conv_general_dilated``'s
  own gradients) instead of :func:`jaxdl.nn.pointwise_conv`'s two GEMMs (change 23 of
  ``docs/performance.md`` undone).

Each variant's step (:func:`jaxdl.train.make_train_step`, SGD with momentum, batch 128 of 32x32x3)
is compiled first, then all are timed in turns: ``rounds`` rounds of ``steps`` steps; the median
milliseconds per step.

Run: ``python -m experiments.benchmarks.zoo_ab --models densenet100,efficientnet_b0``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import numpy as np

import jaxdl  # noqa: F401  (before JAX's backend starts: jaxdl.xla_flags, jaxdl.cpu_malloc)
from experiments.benchmarks._harness import comma_list

VARIANTS = ("jaxdl", "xla_pointwise_grads")


@contextlib.contextmanager
def variant(name: str):
    """Swap the lowering the variant undoes while its step is traced, then restore it."""
    from jax import lax

    from jaxdl.nn import conv

    saved = conv.pointwise_conv

    def lax_pointwise(x, kernel, strides=None):
        n = x.ndim - 2
        strides = (1,) * n if strides is None else tuple(strides)
        return lax.conv_general_dilated(
            x, kernel, strides, "VALID", dimension_numbers=conv._channels_last_dn(n)
        )

    try:
        if name == "xla_pointwise_grads":
            conv.pointwise_conv = lax_pointwise
        elif name != "jaxdl":
            raise ValueError(f"variant must be one of {VARIANTS}, got {name!r}")
        yield
    finally:
        conv.pointwise_conv = saved


def compare(model_name: str, variants, batch_size: int, rounds: int, steps: int) -> dict:
    import jax

    from experiments.benchmarks import zoo_step
    from jaxdl import optim, train

    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.normal(size=(batch_size, 32, 32, 3)).astype(np.float32))
    y = jax.numpy.asarray(rng.integers(0, 10, size=batch_size))
    model = zoo_step.jaxdl_model(model_name)
    opt = optim.sgd(0.1, momentum=0.9)
    states, fns = {}, {}
    for name in variants:
        with variant(name):
            fn = train.make_train_step(model, opt)
            state = train.create_train_state(model, opt, x, 0)
            state, metrics = fn(state, x, y)  # traced and compiled under the variant
            jax.block_until_ready(metrics)
        states[name], fns[name] = state, fn
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name in variants:
            t0 = time.perf_counter()
            for _ in range(steps):
                states[name], metrics = fns[name](states[name], x, y)
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    return {
        "model": model_name,
        "batch_size": batch_size,
        "ms": {k: float(np.median(v)) for k, v in times.items()},
        "ms_all": times,
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="densenet100,efficientnet_b0")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    variants = comma_list(p, "--variants", args.variants, VARIANTS)
    rows = []
    for model_name in [m for m in args.models.split(",") if m]:
        r = compare(model_name, variants, args.batch_size, args.rounds, args.steps)
        rows.append(r)
        print(model_name, " ".join(f"{k} {v:.1f} ms" for k, v in r["ms"].items()), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
