"""The course's MNIST convolutional network."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.nn.pooling import max_pool

# Keras's defaults for Conv2D and Dense: Glorot-uniform kernels, zero biases.
_kernel_init = nn.initializers.glorot_uniform()


class MnistCNN(nn.Module):
    """The course's Keras MNIST CNN, layer for layer.

    The Keras original::

        Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1))
        MaxPooling2D((2, 2))
        Conv2D(64, (3, 3), activation="relu")
        MaxPooling2D((2, 2))
        Flatten()
        Dense(128, activation="relu")
        Dropout(0.5)
        Dense(10, activation="softmax")

    Shapes: (N, 28, 28, 1) -> conv (N, 26, 26, 32) -> pool (N, 13, 13, 32) -> conv (N, 11, 11, 64)
    -> pool (N, 5, 5, 64) -> flatten (N, 1600) -> dense (N, 128) -> dense (N, 10).
    Parameters: 320 + 18,496 + 204,928 + 1,290 = 225,034.

    One deliberate difference: the last layer returns **logits**, not probabilities. The softmax is
    folded into the loss as ``log_softmax`` (:func:`jaxdl.losses.cross_entropy`), which computes
    ``log p_k = z_k - logsumexp(z)`` without ever forming ``exp(z_k)`` alone, so large logits neither
    overflow nor round a probability to 0 and its log to ``-inf``. Apply ``jax.nn.softmax`` to the
    output for probabilities.

    Attributes:
      num_classes: output width (10 for MNIST).
      dropout_rate: the dropout before the classifier (active only when ``train=True``; draws from the
        ``'dropout'`` rng stream).
      dtype: computation dtype (parameters stay in ``param_dtype``); used by mixed precision.
      param_dtype: parameter dtype.
    """

    num_classes: int = 10
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or x.shape[1:] != (28, 28, 1):
            raise ValueError(
                f"MnistCNN: x must have shape (N, 28, 28, 1) (NHWC grayscale), got {tuple(x.shape)}"
            )
        conv = lambda f: nn.Conv(  # noqa: E731
            f,
            (3, 3),
            padding="VALID",
            kernel_init=_kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        dense = lambda f: nn.Dense(  # noqa: E731
            f, kernel_init=_kernel_init, dtype=self.dtype, param_dtype=self.param_dtype
        )
        x = max_pool(nn.relu(conv(32)(x)))  # (N, 13, 13, 32)
        x = max_pool(nn.relu(conv(64)(x)))  # (N, 5, 5, 64)
        x = x.reshape(x.shape[0], -1)  # (N, 1600)
        x = nn.relu(dense(128)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return dense(self.num_classes)(x)  # (N, 10) logits
