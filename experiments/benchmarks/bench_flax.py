"""The stock reference: the same models written the way the flax and optax examples write them
(``nn.Conv`` + ``nn.max_pool``, ``nn.RNN(nn.OptimizedLSTMCell)``), one jitted Adam step with the
parameters and optimizer state donated. No jaxdl code runs here.

Recurrent workloads: ``nn.RNN(nn.OptimizedLSTMCell)``, ``nn.RNN(nn.GRUCell)`` (reset-after; flax's
GRU has no bias on the recurrent r and z products, so 128 parameters fewer than the others at
H = 64, the same function class) and ``nn.Bidirectional`` of two ``OptimizedLSTMCell`` layers with
their final hidden states concatenated, each then ``nn.Dense(1)``.

Run by :mod:`experiments.benchmarks.run`.
"""

from __future__ import annotations

from typing import Any

from experiments.benchmarks._harness import main


def versions() -> dict[str, str]:
    import flax
    import jax
    import optax

    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}


def build(workload: str, cfg: dict[str, Any], data: dict[str, Any]):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    glorot = nn.initializers.glorot_uniform()  # Keras's default, as the course's model

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            for f in (32, 64):
                x = nn.Conv(f, (3, 3), padding="VALID", kernel_init=glorot)(x)
                x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
            x = x.reshape(x.shape[0], -1)
            x = nn.relu(nn.Dense(128, kernel_init=glorot)(x))
            x = nn.Dropout(0.5, deterministic=not train)(x)
            return nn.Dense(10, kernel_init=glorot)(x)

    class LSTM(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            h = nn.RNN(nn.OptimizedLSTMCell(cfg["hidden"]))(x)[:, -1]  # (B, H)
            return nn.Dense(1)(h)

    class GRU(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            h, _ = nn.RNN(nn.GRUCell(cfg["hidden"]), return_carry=True)(x)  # (B, H)
            return nn.Dense(1)(h)

    class BiLSTM(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            def rnn():
                return nn.RNN(nn.OptimizedLSTMCell(cfg["hidden"]))

            (cf, cb), _ = nn.Bidirectional(rnn(), rnn(), return_carry=True)(x)
            return nn.Dense(1)(jnp.concatenate([cf[1], cb[1]], axis=-1))

    key = jax.random.key(cfg["seed"])
    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    if workload == "cnn_infer":
        model = CNN()
        params = model.init(key, x[:1], train=False)
        forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
        return (lambda: forward(params, x)), jax.block_until_ready
    models = {"cnn_train": CNN, "lstm_train": LSTM, "gru_train": GRU, "bilstm_train": BiLSTM}
    if workload not in models:
        raise NotImplementedError(f"{workload} is measured for jaxdl and Keras only")

    model = models[workload]()
    if workload == "cnn_train":
        loss = lambda out, y: optax.softmax_cross_entropy_with_integer_labels(out, y).mean()  # noqa: E731
    else:
        loss = lambda out, y: jnp.mean((out - y) ** 2)  # noqa: E731
    params = model.init(key, x[:1], train=False)["params"]
    tx = optax.adam(cfg["learning_rate"])

    def train_step(params, opt_state, step, x, y):
        k = jax.random.fold_in(key, step)
        value, grads = jax.value_and_grad(
            lambda p: loss(model.apply({"params": p}, x, train=True, rngs={"dropout": k}), y)
        )(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, step + 1, value

    train_step = jax.jit(train_step, donate_argnums=(0, 1))
    holder = {"s": (params, tx.init(params), jnp.zeros((), jnp.int32))}

    def step():
        *s, value = train_step(*holder["s"], x, y)
        holder["s"] = tuple(s)
        return value

    return step, jax.block_until_ready


if __name__ == "__main__":
    main("flax", build, versions)
