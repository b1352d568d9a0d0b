"""The course's MNIST convolutional network."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

from jaxdl.nn.bias import bias_add
from jaxdl.nn.conv import conv_general_dilated

# Keras's defaults for Conv2D and Dense: Glorot-uniform kernels, zero biases.
_kernel_init = nn.initializers.glorot_uniform()

# Training: the first layer (one input channel) as 9 broadcast multiply-adds that XLA fuses with
# its bias, ReLU and pool, with the kernel gradient as one patch GEMM (jaxdl.nn.conv). Everything
# else, and inference, is lax's convolution: compiled with jaxdl's train-step options
# (jaxdl.xla_flags) its forward pass and both gradients were the fastest lowering measured for the
# second layer (docs/performance.md). A hand-jitted train step should pass
# compiler_options=jaxdl.xla_flags.train_step_compiler_options() too: without it XLA:CPU's
# convolution gradients run on one core (41.8 instead of 14.9 ms per step).
_conv_first_train = functools.partial(conv_general_dilated, forward="direct")
_conv = lax.conv_general_dilated


def _pool_window(x: jax.Array) -> jax.Array:
    """The forward pool as ``reduce_window``: XLA:CPU runs it fast and hands the next convolution a
    plain buffer; in the inference pass the four-slice form below made the following convolution
    4.5x slower (docs/performance.md). Only ``reduce_window``'s *gradient* is slow: replaced below."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _pool_slices(x: jax.Array) -> jax.Array:
    """The same pool as the maximum of four strided slices, one fused loop: 7% faster than
    ``_pool_window`` on the whole train step (docs/performance.md), so training uses it."""
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    top = jnp.maximum(x[:, 0:h:2, 0:w:2], x[:, 0:h:2, 1:w:2])
    bottom = jnp.maximum(x[:, 1:h:2, 0:w:2], x[:, 1:h:2, 1:w:2])
    return jnp.maximum(top, bottom)  # (N, H // 2, W // 2, C)


def _pool_bwd(residuals, g):
    """Route each output's gradient to the window entries equal to the maximum,
    ``dx[n, 2i+a, 2j+b, c] = g[n, i, j, c] * [x[n, 2i+a, 2j+b, c] == y[n, i, j, c]]``."""
    x, y = residuals
    n, h, w, c = x.shape
    ho, wo = y.shape[1], y.shape[2]
    xw = x[:, : 2 * ho, : 2 * wo].reshape(n, ho, 2, wo, 2, c)  # (N, Ho, 2, Wo, 2, C)
    hit = xw == y[:, :, None, :, None]
    dx = jnp.where(hit, g[:, :, None, :, None], 0.0).reshape(n, 2 * ho, 2 * wo, c)
    return (jnp.pad(dx, ((0, 0), (0, h - 2 * ho), (0, w - 2 * wo), (0, 0))),)


def _pool_with_fast_backward(forward):
    """2x2 max pooling, :func:`jaxdl.nn.max_pool`'s function, with a one-pass backward.

    The backward (``_pool_bwd``) is one fused elementwise loop, where differentiating ``jnp.max``
    also counts the ties to split the gradient between them (a compare, a convert and a reduction
    over the largest tensor of the step) and ``reduce_window``'s gradient is XLA:CPU's slow
    ``select_and_scatter``. All agree wherever each window's maximum is unique; here the input is a
    ReLU output, whose only common ties are windows of zeros, and there the ReLU's zero derivative
    removes the gradient either way.
    """

    @jax.custom_vjp
    def pool(x: jax.Array) -> jax.Array:
        return forward(x)

    def pool_fwd(x):
        y = forward(x)
        return y, (x, y)

    pool.defvjp(pool_fwd, _pool_bwd)
    return pool


_pool = _pool_with_fast_backward(_pool_window)  # inference
_pool_train = _pool_with_fast_backward(_pool_slices)  # training: same function, faster there


class _Conv3x3(nn.Module):
    """``flax.linen.Conv(features, (3, 3), padding="VALID")`` with the same parameters (``kernel
    (3, 3, C, F)`` Glorot-uniform, ``bias (F,)`` zeros), run by ``lowering`` (a
    ``conv_general_dilated``), and the bias added by :func:`jaxdl.nn.bias_add` so that its
    gradient is a GEMV rather than XLA:CPU's slow column sum."""

    features: int
    lowering: Callable[..., jax.Array]
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (3, 3, x.shape[-1], self.features)
        kernel = self.param("kernel", _kernel_init, shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = self.lowering(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return bias_add(y, bias)


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
    jitted by hand should pass ``compiler_options=jaxdl.xla_flags.train_step_compiler_options()``
    to ``jax.jit`` (see :mod:`jaxdl.xla_flags`).

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
        conv = lambda f, lowering, name: _Conv3x3(  # noqa: E731
            f, lowering, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        dense = lambda f: nn.Dense(  # noqa: E731
            f, kernel_init=_kernel_init, dtype=self.dtype, param_dtype=self.param_dtype
        )
        # the same functions in both modes; each lowering is the faster one in its mode
        pool = _pool_train if train else _pool
        conv0 = conv(32, _conv_first_train if train else _conv, "Conv_0")
        x = pool(nn.relu(conv0(x)))  # (N, 13, 13, 32)
        x = pool(nn.relu(conv(64, _conv, "Conv_1")(x)))  # (N, 5, 5, 64)
        x = x.reshape(x.shape[0], -1)  # (N, 1600)
        x = nn.relu(dense(128)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return dense(self.num_classes)(x)  # (N, 10) logits
