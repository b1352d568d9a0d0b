"""Pooling layers.

XLA:CPU lowers ``reduce_window`` max pooling (and, above all, its gradient, a ``select_and_scatter``)
slowly. When the window equals the stride and tiles the input exactly, the pool is a reshape
followed by a max over two small axes, which XLA fuses into plain elementwise code in both
directions. It is the same function with the same gradient wherever the maximum of each window is
unique; on exact ties the two forms may route the gradient to different (equal) elements.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Non-overlapping ``window x window`` max pooling with ``padding="VALID"`` on NHWC input.

    ``y[n, i, j, c] = max_{0<=a,b<window} x[n, window*i + a, window*j + b, c]``; rows and columns
    that do not fill a whole window are dropped (Keras's ``MaxPooling2D`` default, floor mode).

    Args:
      x: ``(N, H, W, C)``.
      window: the pool size, equal to the stride.

    Returns:
      ``(N, H // window, W // window, C)``.
    """
    if x.ndim != 4:
        raise ValueError(f"max_pool: x must be NHWC with rank 4, got shape {x.shape}")
    if window < 1:
        raise ValueError(f"max_pool: window must be >= 1, got {window}")
    n, h, w, c = x.shape
    ho, wo = h // window, w // window
    if ho == 0 or wo == 0:
        raise ValueError(f"max_pool: input {h}x{w} is smaller than the {window}x{window} window")
    x = x[:, : ho * window, : wo * window, :]
    x = x.reshape(n, ho, window, wo, window, c)  # (N, Ho, k, Wo, k, C)
    return jnp.max(x, axis=(2, 4))


def max_pool_reference(x: jax.Array, window: int = 2) -> jax.Array:
    """The same pool through flax's ``reduce_window`` path; the reference the tests compare to."""
    return nn.max_pool(x, (window, window), strides=(window, window), padding="VALID")
