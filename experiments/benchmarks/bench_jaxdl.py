"""jaxdl's benchmark process: :class:`jaxdl.models.MnistCNN` and :class:`jaxdl.models.Forecaster`
trained with :func:`jaxdl.optim.adam`, state donated.

On CPU the process gives JAX one CPU device per thread of the harness (``cfg["threads"]``, all
cores by default) and the recurrent train steps (``lstm_train``, ``gru_train``, ``bilstm_train``;
:func:`recurrent_model`) run data-parallel over them with
:func:`jaxdl.train.parallel.make_shard_map_train_step`: each device takes ``B/D`` rows on its own
core, where one device leaves the second core mostly idle in the sequential loop. The CNN
workloads run on one device with :func:`jaxdl.train.make_train_step`: their operations are big
enough for XLA's threads (per-core devices measured no faster, 7,977 vs 8,302 ex/s). The
``jaxdl_1dev`` process (:mod:`.bench_jaxdl_1dev`) runs the LSTM step on one device.

Run by :mod:`experiments.benchmarks.run`; alone:
``python -m experiments.benchmarks.bench_jaxdl --workload cnn_train --out r.json --config '{...}'``.
"""

from __future__ import annotations

from typing import Any

from experiments.benchmarks._harness import main

# the workloads trained over all devices when there are several
DATA_PARALLEL = ("lstm_train", "gru_train", "bilstm_train")


def recurrent_model(workload: str, cfg: dict[str, Any]):
    """The jaxdl model of a recurrent workload: :class:`jaxdl.models.Forecaster` with an LSTM or
    GRU cell (the GRU is ``GRUCell``'s reset-after default, PyTorch's and Keras's form), or a
    :class:`jaxdl.nn.Bidirectional` pair of LSTM layers whose final hidden states, concatenated,
    feed ``Dense(1)`` (Keras's ``Bidirectional(LSTM(H))`` -> ``Dense(1)``)."""
    import flax.linen as fnn
    import jax.numpy as jnp

    from jaxdl import models, nn

    extra = cfg.get("jaxdl_lstm", {})
    if workload == "lstm_train":
        return models.Forecaster(hidden=cfg["hidden"], **extra)
    if workload == "gru_train":
        return models.Forecaster(hidden=cfg["hidden"], cell="gru", **cfg.get("jaxdl_gru", {}))
    if workload != "bilstm_train":
        raise NotImplementedError(workload)
    hidden = cfg["hidden"]

    class BiForecaster(fnn.Module):
        @fnn.compact
        def __call__(self, x, train: bool = False):
            def rnn():
                return nn.RNN(nn.LSTMCell(hidden, parent=None), parent=None, **extra)

            (cf, cb), _ = nn.Bidirectional(rnn(), rnn(), return_carry=True)(x)
            h = jnp.concatenate([cf[1], cb[1]], axis=-1)  # (B, 2H): forward h_T, backward h_1
            return fnn.Dense(1)(h)

    return BiForecaster()


def configure(cfg: dict[str, Any], cpu_devices: int | None = None) -> None:
    """One CPU device per harness thread (or ``cpu_devices``); must precede the backend's start."""
    import jax

    jax.config.update("jax_num_cpu_devices", cpu_devices or cfg["threads"])


def versions() -> dict[str, str]:
    # jaxdl before the first computation: it adds its XLA:CPU flags (jaxdl.xla_flags), which only
    # count if they are in XLA_FLAGS before jax.default_backend() below starts the backend.
    import flax
    import jax

    import jaxdl  # noqa: F401

    return {
        "jax": jax.__version__,
        "flax": flax.__version__,
        "backend": jax.default_backend(),
        "devices": str(len(jax.devices())),
    }


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

    if workload in ("cnn_train", *DATA_PARALLEL):
        if workload == "cnn_train":
            model, loss_fn = models.MnistCNN(), None
        else:
            model, loss_fn = recurrent_model(workload, cfg), losses.mse
        x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
        opt = optim.adam(lr)
        state = train.create_train_state(model, opt, x, cfg["seed"])
        if workload in DATA_PARALLEL and len(jax.devices()) > 1:  # one CPU device per core
            mesh = train.parallel.make_mesh()
            step_fn = train.parallel.make_shard_map_train_step(model, opt, mesh, loss_fn=loss_fn)
            state = train.parallel.shard_state(state, mesh)
            x, y = train.parallel.shard_batch((x, y), mesh)
        else:
            step_fn = make_train_step(model, opt, loss_fn=loss_fn)
        holder = {"state": state}

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
    main("jaxdl", build, versions, configure)
