"""jaxdl's models in a train step written by hand, as a researcher writes one:
``jax.value_and_grad`` of the loss, :func:`jaxdl.optim.adam`, ``optax.apply_updates``, one
``jax.jit`` with the parameters and optimizer state donated, on one CPU device.

Two processes share this module: ``jaxdl_hand`` compiles the step with plain ``jax.jit`` (no
compiler options; jaxdl warns once that the convolutional step runs without its train-step
option), ``jaxdl_hand_jts`` compiles the same function with :func:`jaxdl.train.jit_train_step`,
the one-line recipe. Run by :mod:`experiments.benchmarks.run` (the train-step workloads).
"""

from __future__ import annotations

import functools
from typing import Any

from experiments.benchmarks._harness import main
from experiments.benchmarks.bench_jaxdl import configure, versions


def build(workload: str, cfg: dict[str, Any], data: dict[str, Any], tuned: bool = False):
    if workload not in ("cnn_train", "lstm_train"):
        raise NotImplementedError(f"{workload}: the hand-written step is timed for training only")
    import jax
    import jax.numpy as jnp
    import optax

    from jaxdl import losses, models, optim, train

    if workload == "cnn_train":
        model, loss_fn = models.MnistCNN(), losses.cross_entropy
    else:
        model, loss_fn = models.Forecaster(hidden=cfg["hidden"]), losses.mse
    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    opt = optim.adam(cfg["learning_rate"])
    params = model.init(jax.random.key(cfg["seed"]), x[:1])["params"]
    opt_state = opt.init(params)

    def step(carry, x, y, key):
        params, opt_state = carry

        def loss(p):
            out = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return loss_fn(out, y)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    compiled = train.jit_train_step(step) if tuned else jax.jit(step, donate_argnums=(0,))
    holder = {"carry": (params, opt_state), "key": jax.random.key(cfg["seed"])}

    def run():
        holder["key"], key = jax.random.split(holder["key"])
        holder["carry"], value = compiled(holder["carry"], x, y, key)
        return value

    return run, jax.block_until_ready


if __name__ == "__main__":
    main("jaxdl_hand", build, versions, functools.partial(configure, cpu_devices=1))
