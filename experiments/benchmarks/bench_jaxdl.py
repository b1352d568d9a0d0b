"""jaxdl's benchmark process: :class:`jaxdl.models.MnistCNN` and :class:`jaxdl.models.Forecaster`
trained with :func:`jaxdl.train.make_train_step` (one jit, state donated) and :func:`jaxdl.optim.adam`.

Run by :mod:`experiments.benchmarks.run`; alone:
``python -m experiments.benchmarks.bench_jaxdl --workload cnn_train --out r.json --config '{...}'``.
"""

from __future__ import annotations

from typing import Any

from experiments.benchmarks._harness import main


def versions() -> dict[str, str]:
    # jaxdl before the first computation: it adds its XLA:CPU flags (jaxdl.xla_flags), which only
    # count if they are in XLA_FLAGS before jax.default_backend() below starts the backend.
    import flax
    import jax

    import jaxdl  # noqa: F401

    return {"jax": jax.__version__, "flax": flax.__version__, "backend": jax.default_backend()}


def build(workload: str, cfg: dict[str, Any], data: dict[str, Any]):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from experiments.benchmarks._harness import tta_loop
    from jaxdl import data as jdata
    from jaxdl import losses, models, optim, train
    from jaxdl.train.step import make_eval_step, make_train_step

    lr = cfg["learning_rate"]
    if workload == "cnn_infer":
        model = models.MnistCNN()
        x = jnp.asarray(data["x"])
        params = model.init(jax.random.key(cfg["seed"]), x[:1])
        forward = jax.jit(lambda v, x: model.apply(v, x))
        return (lambda: forward(params, x)), jax.block_until_ready

    if workload in ("cnn_train", "lstm_train"):
        if workload == "cnn_train":
            model, loss_fn = models.MnistCNN(), None
        else:
            model = models.Forecaster(hidden=cfg["hidden"], **cfg.get("jaxdl_lstm", {}))
            loss_fn = losses.mse
        x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
        opt = optim.adam(lr)
        holder = {"state": train.create_train_state(model, opt, x, cfg["seed"])}
        step_fn = make_train_step(model, opt, loss_fn=loss_fn)

        def step():
            holder["state"], metrics = step_fn(holder["state"], x, y)
            return metrics["loss_sum"]

        return step, jax.block_until_ready

    if workload == "cnn_tta":
        model, opt = models.MnistCNN(), optim.adam(lr)
        xtr, ytr = data["x_train"], data["y_train"]
        xte, yte = jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"])
        holder = {"state": train.create_train_state(model, opt, xtr[:1], cfg["seed"])}
        step_fn = make_train_step(model, opt)
        eval_fn = make_eval_step(model)
        mask = jnp.ones(xte.shape[0], jnp.float32)

        def train_epoch(epoch: int) -> None:
            for xb, yb in jdata.iterate_batches(
                (xtr, ytr), cfg["batch_size"], shuffle=True, seed=cfg["seed"], epoch=epoch
            ):
                holder["state"], metrics = step_fn(holder["state"], xb, yb)
            jax.block_until_ready(metrics)

        def test_accuracy() -> float:
            m = eval_fn(holder["state"], xte, yte, mask)
            return float(m["correct"]) / float(np.asarray(m["count"]))

        return tta_loop(
            train_epoch, test_accuracy, target=cfg["tta_target"], max_epochs=cfg["tta_max_epochs"]
        )
    raise NotImplementedError(workload)


if __name__ == "__main__":
    main("jaxdl", build, versions)
