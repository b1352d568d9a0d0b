"""The course's MNIST convolutional network."""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.nn.conv import Conv
from jaxdl.nn.pooling import max_pool

# Keras's defaults for Conv2D and Dense: Glorot-uniform kernels, zero biases.
_kernel_init = nn.initializers.glorot_uniform()

# The lowerings measured fastest on XLA:CPU in each mode (docs/performance.md). Training: the first
# layer (one input channel) as 9 broadcast multiply-adds that XLA fuses with its bias, ReLU and
# pool (Conv impl="direct"), the second as lax's convolution, the pools as four strided slices with
# a one-pass backward (max_pool impl="slices"). Inference: lax's convolutions and reduce_window
# pools, which hand each convolution a plain buffer (impl="xla", "window"). The same functions in
# both modes. A hand-jitted train step should pass
# compiler_options=jaxdl.xla_flags.train_step_compiler_options(): without it XLA:CPU's
# convolution gradients run on one core (41.8 instead of 14.9 ms per step).
_TRAIN = {"conv0": "direct", "conv1": "xla", "pool": "slices"}
_INFER = {"conv0": "xla", "conv1": "xla", "pool": "window"}


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

    Speed: on CPU the training pass uses the lowerings measured fastest under jaxdl's train-step
    compiler options (:func:`jaxdl.train.make_train_step` and ``fit`` apply them); a train step
    written by hand gets them from :func:`jaxdl.train.jit_train_step` in place of ``jax.jit``
    (a hand-jitted step without them warns once; see :mod:`jaxdl.xla_flags`).

    Attributes:
      num_classes: output width (10 for MNIST).
      dropout_rate: the dropout before the classifier (active only when ``train=True``; draws from the
        ``'dropout'`` rng stream).
      dtype: computation dtype (parameters stay in ``param_dtype``); used by mixed precision.
      param_dtype: parameter dtype.
    """

    # XLA:CPU: this model's inference pass is faster under XLA's defaults, where YNNPACK fuses
    # each convolution with its ReLU and reduce_window pool (jaxdl.xla_flags.inference_compiler_options).
    cpu_inference_kernels: ClassVar[str] = "library"

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
        impl = _TRAIN if train else _INFER
        conv = lambda f, which: Conv(  # noqa: E731
            f,
            (3, 3),
            impl=impl[which],
            kernel_init=_kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=f"Conv_{which[-1]}",
        )
        dense = lambda f: nn.Dense(  # noqa: E731
            f, kernel_init=_kernel_init, dtype=self.dtype, param_dtype=self.param_dtype
        )
        pool = lambda x: max_pool(x, 2, impl=impl["pool"])  # noqa: E731
        x = pool(nn.relu(conv(32, "conv0")(x)))  # (N, 13, 13, 32)
        x = pool(nn.relu(conv(64, "conv1")(x)))  # (N, 5, 5, 64)
        x = x.reshape(x.shape[0], -1)  # (N, 1600)
        x = nn.relu(dense(128)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return dense(self.num_classes)(x)  # (N, 10) logits
