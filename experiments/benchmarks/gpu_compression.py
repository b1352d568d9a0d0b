"""GPU check for compression and tuning: MnistCNN inference latency in float32, bfloat16 and int8
(jaxdl.compress.int8_apply: int8 x int8 -> int32 dot/conv), and K vmapped training trials vs the
same K run one after another. Prints one JSON line; runs in well under 60 s on one H200.

    python -m experiments.benchmarks.gpu_compression

Random-initialised weights (latency does not depend on their values); medians of 20 timed calls
after 3 warm-ups. The matmul precision is JAX's default (TF32 on Ampere and later for float32).
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import compress, models, optim, tune


def _median_ms(fn, *args, reps=20):
    for _ in range(3):
        jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ts))


def main(batch: int = 4096, k: int = 16, steps: int = 50) -> dict:
    model = models.MnistCNN()
    x = jax.random.uniform(jax.random.key(0), (batch, 28, 28, 1))
    params = jax.jit(model.init)(jax.random.key(1), x[:1])["params"]
    out = {"device": str(jax.devices()[0]), "batch": batch}
    out["float32_ms"] = _median_ms(jax.jit(lambda p, x: model.apply({"params": p}, x)), params, x)
    m16 = models.MnistCNN(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    p16 = jax.tree.map(lambda w: w.astype(jnp.bfloat16), params)
    out["bfloat16_ms"] = _median_ms(jax.jit(lambda p, x: m16.apply({"params": p}, x)), p16, x)
    q = {"params": compress.quantize(params)}
    scales = compress.calibrate(model, {"params": params}, [x[:256]])
    out["int8_ms"] = _median_ms(
        jax.jit(lambda q, x: compress.int8_apply(model, q, scales, x)), q, x
    )

    xs = np.asarray(jax.random.uniform(jax.random.key(2), (2048, 28, 28, 1)))
    ys = np.asarray(jax.random.randint(jax.random.key(3), (2048,), 0, 10))
    train = tune.make_train_fn(
        model,
        lambda h: optim.adamw(h["learning_rate"], weight_decay=h["weight_decay"]),
        (xs, ys),
        steps,
        128,
    )
    hp = {"learning_rate": np.geomspace(1e-4, 1e-2, k), "weight_decay": np.geomspace(1e-5, 1e-2, k)}
    seeds = np.arange(k)
    jax.block_until_ready(tune.vmap_trials(train, hp, seeds))
    t = time.perf_counter()
    jax.block_until_ready(tune.vmap_trials(train, hp, seeds))
    vm = time.perf_counter() - t
    single = jax.jit(train)
    one = lambda i: single({n: np.float32(v[i]) for n, v in hp.items()}, seeds[i])  # noqa: E731
    jax.block_until_ready(one(0))
    t = time.perf_counter()
    for i in range(k):
        jax.block_until_ready(one(i))
    seq = time.perf_counter() - t
    out.update(
        vmap_k=k,
        vmap_steps=steps,
        vmap_seconds=vm,
        sequential_seconds=seq,
        trials_per_hour_vmap=3600 * k / vm,
        trials_per_hour_sequential=3600 * k / seq,
    )
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
