"""The GPT step's attention, one batched matrix product at a time: XLA:CPU against ``torch.bmm``.

Scaled dot-product attention on ``B`` sequences of ``T`` positions with ``H`` heads of width ``d``
is ``B H`` independent small matrix products per step, not one large GEMM. With
``P = softmax(Q K^T / sqrt(d))`` per head, the forward and backward passes use three product
shapes, each twice (``dS`` is the gradient at the logits):

* ``qk_t``, ``(T, d) x (T, d)^T -> (T, T)``: the logits ``Q K^T`` and the weights' gradient
  ``dP = dO V^T``;
* ``p_v``, ``(T, T) x (T, d) -> (T, d)``: the output ``P V`` and ``dQ = dS K``;
* ``p_t_v``, ``(T, T)^T x (T, d) -> (T, d)``: ``dV = P^T dO`` and ``dK = dS^T Q``.

Each has ``2 B H T^2 d`` FLOPs. The script times each shape on ``(B H, T, .)`` arrays as its own
``jax.jit`` with jaxdl's train-step compiler options (the kernels XLA uses inside the GPT step)
and with XLA's defaults, and ``torch.bmm`` on the same arrays (transposes as strided views, which
PyTorch hands to BLAS as transpose flags). It also times the whole attention, forward and
backward: :func:`jaxdl.nn.causal_dot_product_attention` (4 causal blocks at ``T = 128``), the
same with one block, and ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``.
The defaults are the GPT benchmark's (``experiments/benchmarks/gpt_step.py``): ``B = 32``,
``T = 128``, 8 heads of 32. ``docs/performance.md`` uses the table to show where the GPT step's
time beyond its dense layers goes.

Run (PyTorch from the ``bench`` extra; without it only the JAX rows are timed)::

    python -m experiments.benchmarks.attention_ops --out runs/attention_ops.json
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable

import numpy as np

import jaxdl  # noqa: F401  (before JAX's backend starts)

PRODUCTS = ("qk_t", "p_v", "p_t_v")
ATTENTION = ("jaxdl_blocked", "jaxdl_one_block", "torch_sdpa")


def _median_ms(run: Callable[[], object], sync: Callable[[object], object], repeats: int,
               calls: int) -> float:  # fmt: skip
    sync(run())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = run()
        sync(out)
        times.append((time.perf_counter() - t0) / calls * 1e3)
    return float(np.median(times))


def _torch():
    try:
        import torch
    except ImportError:
        return None
    import os

    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def measure(
    batch: int = 32, length: int = 128, heads: int = 8, head_dim: int = 32, repeats: int = 7,
    calls: int = 20,
) -> dict:  # fmt: skip
    """``{"products": rows, "attention": {name: ms}}``: each product shape's ms and GFLOP/s
    under each implementation, and the whole attention's forward-plus-backward ms."""
    import jax
    import jax.numpy as jnp

    from jaxdl import xla_flags
    from jaxdl.nn import causal_dot_product_attention

    bh, t, d = batch * heads, length, head_dim
    keys = jax.random.split(jax.random.key(0), 3)
    a = jax.random.normal(keys[0], (bh, t, d))  # a (T, d) operand per head: Q, K, V or dO
    b = jax.random.normal(keys[1], (bh, t, d))
    p = jax.nn.softmax(jax.random.normal(keys[2], (bh, t, t)), axis=-1)  # a (T, T) operand
    torch = _torch()
    # name: (the JAX product, the same with torch.bmm, its two operands)
    products = {
        "qk_t": (lambda x, y: jnp.einsum("bqd,bkd->bqk", x, y),
                 lambda x, y: torch.bmm(x, y.transpose(1, 2)), (a, b)),
        "p_v": (lambda w, y: jnp.einsum("bqk,bkd->bqd", w, y), lambda w, y: torch.bmm(w, y), (p, a)),
        "p_t_v": (lambda w, y: jnp.einsum("bqk,bqd->bkd", w, y),
                  lambda w, y: torch.bmm(w.transpose(1, 2), y), (p, a)),
    }  # fmt: skip
    shapes = {"qk_t": f"({t},{d})x({t},{d})^T", "p_v": f"({t},{t})x({t},{d})",
              "p_t_v": f"({t},{t})^Tx({t},{d})"}  # fmt: skip
    flops = 2 * bh * t * t * d
    options = {"jaxdl_train_step": xla_flags.train_step_compiler_options(), "xla_defaults": None}
    rows = []
    for name, (fn, torch_fn, args) in products.items():
        ms = {}
        for label, opts in options.items():
            compiled = jax.jit(fn).lower(*args).compile(opts)
            ms[label] = _median_ms(functools.partial(compiled, *args), jax.block_until_ready,
                                   repeats, calls)  # fmt: skip
        if torch is not None:
            torch_args = [torch.from_numpy(np.array(x)) for x in args]
            ms["torch_bmm"] = _median_ms(functools.partial(torch_fn, *torch_args), lambda o: o,
                                         repeats, calls)  # fmt: skip
        rows.append({
            "product": name,
            "shape": shapes[name],
            "batch": bh,
            "ms": ms,
            "gflops_per_s": {k: flops / (v * 1e6) for k, v in ms.items()},
        })  # fmt: skip

    # The whole attention, forward and backward, in the GPT step's (B, T, H, d) layout.
    q, k, v, g = (
        jax.random.normal(kk, (batch, t, heads, d)) for kk in jax.random.split(keys[0], 4)
    )

    def grads(fn):
        def forward_backward(q, k, v, g):
            _, vjp = jax.vjp(fn, q, k, v)
            return vjp(g)

        c = jax.jit(forward_backward).lower(q, k, v, g).compile(options["jaxdl_train_step"])
        return _median_ms(lambda: c(q, k, v, g), jax.block_until_ready, repeats, calls)

    attention = {
        "jaxdl_blocked": grads(causal_dot_product_attention),
        "jaxdl_one_block": grads(lambda q, k, v: causal_dot_product_attention(q, k, v, 1)),
    }
    if torch is not None:
        import torch.nn.functional as F

        tq, tk, tv, tg = (
            torch.from_numpy(np.array(x)).transpose(1, 2).contiguous().requires_grad_()
            for x in (q, k, v, g)
        )  # (B, H, T, d), SDPA's layout

        def sdpa():
            out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
            return torch.autograd.grad(out, (tq, tk, tv), tg)

        attention["torch_sdpa"] = _median_ms(sdpa, lambda out: out, repeats, calls)
    return {
        "config": {"batch": batch, "length": length, "heads": heads, "head_dim": head_dim},
        "products": rows,
        "attention_ms": attention,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head_dim", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    res = measure(args.batch, args.length, args.heads, args.head_dim, args.repeats, args.calls)
    labels = list(res["products"][0]["ms"])
    print("| product | " + " | ".join(f"{k} ms (GFLOP/s)" for k in labels) + " |")
    print("|---|" + "---|" * len(labels))
    for r in res["products"]:
        cells = " | ".join(f"{r['ms'][k]:.2f} ({r['gflops_per_s'][k]:.0f})" for k in labels)
        print(f"| `{r['product']}` {r['shape']} x {r['batch']} | {cells} |")
    print("attention forward + backward, ms: "
          + ", ".join(f"{k} {v:.1f}" for k, v in res["attention_ms"].items()))  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
