"""Keras 3 on TensorFlow: the course's own code path. ``model.compile`` with Keras's default
``jit_compile="auto"`` (XLA where the model allows it), steps through ``train_on_batch`` on tensors
already in memory, inference through a ``tf.function`` of the model. Threads: the harness's
``threads`` for both TensorFlow's intra-op and inter-op pools.

Recurrent workloads: ``LSTM(64)``, ``GRU(64)`` (``reset_after=True``, Keras's default and jaxdl's
GRU form) or ``Bidirectional(LSTM(64))`` (merge ``concat``), then ``Dense(1)``.

Run by :mod:`experiments.benchmarks.run`.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from experiments.benchmarks._harness import main  # noqa: E402


def versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
    }


def build(workload: str, cfg: dict[str, Any], data: dict[str, Any]):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cfg["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(cfg["threads"])
    import keras
    from keras import layers

    keras.utils.set_random_seed(cfg["seed"])

    def cnn() -> keras.Model:
        # the course's model verbatim (Glorot-uniform kernels and zero biases are Keras's defaults);
        # the final softmax is folded into the loss (from_logits), as jaxdl and the peers do
        return keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                layers.Conv2D(32, (3, 3), activation="relu"),
                layers.MaxPooling2D((2, 2)),
                layers.Conv2D(64, (3, 3), activation="relu"),
                layers.MaxPooling2D((2, 2)),
                layers.Flatten(),
                layers.Dense(128, activation="relu"),
                layers.Dropout(0.5),
                layers.Dense(10),
            ]
        )

    def compiled_cnn() -> keras.Model:
        model = cnn()
        model.compile(
            optimizer=keras.optimizers.Adam(cfg["learning_rate"]),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model

    if workload == "cnn_infer":
        model = cnn()
        x = tf.constant(data["x"])
        forward = tf.function(lambda x: model(x, training=False), jit_compile=True)
        return (lambda: forward(x)), lambda out: out.numpy()

    if workload == "cnn_train":
        model = compiled_cnn()
        x, y = tf.constant(data["x"]), tf.constant(data["y"])
    elif workload in ("lstm_train", "gru_train", "bilstm_train"):
        rnn = {
            "lstm_train": lambda: layers.LSTM(cfg["hidden"]),
            "gru_train": lambda: layers.GRU(cfg["hidden"], reset_after=True),
            "bilstm_train": lambda: layers.Bidirectional(layers.LSTM(cfg["hidden"])),
        }[workload]()
        model = keras.Sequential(
            [keras.Input((cfg["timesteps"], cfg["features"])), rnn, layers.Dense(1)]
        )
        model.compile(optimizer=keras.optimizers.Adam(cfg["learning_rate"]), loss="mse")
        x, y = tf.constant(data["x"]), tf.constant(data["y"])
    elif workload == "cnn_tta":
        model = compiled_cnn()
        xtr, ytr = data["x_train"], data["y_train"]
        xte, yte = data["x_test"], data["y_test"]
        from experiments.benchmarks._harness import tta_loop

        def train_epoch(epoch: int) -> None:
            model.fit(xtr, ytr, batch_size=cfg["batch_size"], epochs=1, shuffle=True, verbose=0)

        def test_accuracy() -> float:
            return float(model.evaluate(xte, yte, batch_size=1000, verbose=0)[1])

        return tta_loop(
            train_epoch, test_accuracy, target=cfg["tta_target"], max_epochs=cfg["tta_max_epochs"]
        )
    else:
        raise NotImplementedError(workload)

    def step():
        return model.train_on_batch(x, y, return_dict=False)

    return step, lambda out: out


if __name__ == "__main__":
    main("keras", build, versions)
