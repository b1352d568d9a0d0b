"""Interleaved A/B of the GPT train step of :mod:`experiments.benchmarks.gpt_step` with parts of
jaxdl's layers swapped for the plain ones, all in one process (so the machine's drift hits every
variant alike).

Variants:

* ``jaxdl``: the library as it is.
* ``flax_layers``: flax's ``Dense`` and ``LayerNorm`` in ``GPT`` and a plain bias add in
  ``MultiHeadAttention``'s projections (no GEMV parameter-gradient sums, no stored GELU
  derivative): change 20 of ``docs/performance.md`` undone.
* ``no_causal_blocks``: causal attention as one block (change 21 undone).
* ``rank3_matmul``: the dense layers, projections and tied output multiply ``(B, T, D)``
  activations as ``x @ w`` instead of :func:`jaxdl.nn.flat_matmul` (change 24 undone).

Every variant is compiled and run for ``warmup`` steps first (the heap under XLA:CPU's scratch
buffer settles between steps 12 and 20 of a process, and a step that grows it faults the buffer
in again; the variants share one process, so the first variant's warm-up mostly covers it), then
timed in turns: ``rounds`` rounds of ``steps`` steps each; the median milliseconds per step. The
process-wide ``jaxdl.cpu_malloc`` setting applies to all (compare it across processes with
``JAXDL_CPU_MALLOC=0``).

Run: ``python -m experiments.benchmarks.gpt_ab --out runs/gpt_ab.json`` (all variants).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import numpy as np

import jaxdl  # noqa: F401  (before JAX's backend starts: jaxdl.xla_flags, jaxdl.cpu_malloc)
from experiments.benchmarks import gpt_step

VARIANTS = ("jaxdl", "flax_layers", "no_causal_blocks", "rank3_matmul")


def _rank_n_matmul(x, w):
    return x @ w  # differentiated as a contraction over all leading axes of x


@contextlib.contextmanager
def variant(name: str):
    """Swap the layers the variant undoes while its step is traced, then restore them."""
    import flax.linen as fnn

    from jaxdl.models import transformer
    from jaxdl.nn import attention, linear

    class FlaxDense(fnn.Dense):
        store_cotangent: bool = False  # accepted and ignored: flax's layer has no such option

    saved = (transformer.Dense, transformer.LayerNorm, attention.bias_add, attention.causal_blocks)
    saved_matmul = (linear.flat_matmul, attention.flat_matmul, transformer.flat_matmul)
    try:
        if name == "flax_layers":
            transformer.Dense, transformer.LayerNorm = FlaxDense, fnn.LayerNorm
            attention.bias_add = lambda y, b, **_: y + b.reshape((1,) * (y.ndim - 1) + b.shape)
        elif name == "no_causal_blocks":
            attention.causal_blocks = lambda length: 1
        elif name == "rank3_matmul":
            linear.flat_matmul = attention.flat_matmul = transformer.flat_matmul = _rank_n_matmul
        elif name != "jaxdl":
            raise ValueError(f"variant must be one of {VARIANTS}, got {name!r}")
        yield
    finally:
        (transformer.Dense, transformer.LayerNorm, attention.bias_add,
         attention.causal_blocks) = saved  # fmt: skip
        linear.flat_matmul, attention.flat_matmul, transformer.flat_matmul = saved_matmul


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=12, help="untimed steps per variant")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=None, help="optional JSON file for the results")
    args = parser.parse_args(argv)
    cfg = dict(vocab=256, block=128, layers=6, heads=8, width=256, batch=32, seed=0,
               learning_rate=3e-4)  # fmt: skip
    data = gpt_step.make_data(cfg)
    steps = {}
    for name in args.variants.split(","):
        with variant(name):
            step, sync, _ = gpt_step.build_jaxdl(cfg, data)
            sync(step())  # compile while the variant's layers are in place
        for _ in range(args.warmup):
            sync(step())
        steps[name] = (step, sync)
    ms = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, (step, sync) in steps.items():
            sync(step())
            t0 = time.perf_counter()
            for _ in range(args.steps):
                out = step()
            sync(out)
            ms[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    result = {name: {"median_ms": float(np.median(v)), "ms": v} for name, v in ms.items()}
    for name, r in result.items():
        print(f"{name:18s} {r['median_ms']:8.1f} ms per step  {[round(x) for x in r['ms']]}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": cfg, "results": result}, f, indent=2)


if __name__ == "__main__":
    main()
