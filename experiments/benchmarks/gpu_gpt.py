"""Model FLOPs utilisation of the jaxdl GPT train step on one GPU; prints one JSON line (< 60 s).

Model: GPT-2 small, ``models.GPT(50257, 1024, 12, 12, 768)`` (124,439,808 parameters), batch
``--batch`` x 1024 tokens, computation in bfloat16 (``dtype=jnp.bfloat16``; parameters, Adam state
and the loss's softmax in float32), AdamW, dropout off. Attention runs through
``jax.nn.dot_product_attention`` (cuDNN flash attention where it applies).

MFU = achieved model FLOP/s / the chip's dense bf16 peak, with the training FLOPs per token counted
as ``6 N + 12 L T D`` (Kaplan et al. 2020; PaLM appendix B), ``N`` = parameters in matmuls (the
tied output matrix included, the position table excluded). The matmul precision is stated in the
output: bf16 inputs use the tensor cores at bf16 regardless of ``jax_default_matmul_precision``.

    python -m experiments.benchmarks.gpu_gpt [--batch 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdl import models, optim

# Dense bf16 peak FLOP/s by device kind (vendor data sheets, SXM parts).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "V100": 125e12}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    V, T, L, H, D = 50257, 1024, args.layers, 12, 768
    model = models.GPT(V, T, L, H, D, dtype=jnp.bfloat16)
    key = jax.random.key(0)
    tokens = jax.random.randint(key, (args.batch, T + 1), 0, V)
    x, y = tokens[:, :-1], tokens[:, 1:]
    params = jax.jit(model.init)(key, x[:1])["params"]
    n_total = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    n_matmul = sum(  # kernels and the (tied) embedding; not positions, LayerNorms, biases
        int(np.prod(a.shape)) for p, a in jax.tree_util.tree_leaves_with_path(params)
        if any(k in jax.tree_util.keystr(p) for k in ("kernel", "embedding"))
    )  # fmt: skip
    tx = optim.adamw(3e-4, weight_decay=0.1)
    opt_state = tx.init(params)

    def loss_fn(p):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    params, opt_state, loss = step(params, opt_state)
    loss.block_until_ready()
    compile_s = time.perf_counter() - t0
    for _ in range(2):
        params, opt_state, loss = step(params, opt_state)
    loss.block_until_ready()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        params, opt_state, loss = step(params, opt_state)
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    dt = float(np.median(times))
    flops_per_token = 6 * n_matmul + 12 * L * T * D
    achieved = flops_per_token * args.batch * T / dt
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in PEAK_BF16.items() if k in kind), None)
    print(json.dumps({
        "benchmark": "gpt2_small_train_step", "device": kind, "backend": jax.default_backend(),
        "batch": args.batch, "seq_len": T, "layers": L, "params": n_total,
        "matmul_params": n_matmul, "compute_dtype": "bfloat16", "matmul_precision":
        "bf16 inputs, f32 accumulation (jax_default_matmul_precision="
        f"{jax.config.jax_default_matmul_precision})",
        "compile_and_first_step_s": round(compile_s, 2), "step_s_median": dt,
        "tokens_per_s": args.batch * T / dt, "model_tflops_per_s": achieved / 1e12,
        "peak_bf16_tflops": None if peak is None else peak / 1e12,
        "mfu": None if peak is None else achieved / peak, "loss": float(loss),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
