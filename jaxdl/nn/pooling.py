"""Max pooling with an explicit choice of lowering.

One function, :func:`max_pool`, computes

.. math::
    y[n, i, j, c] = \\max_{0 \\le a < k_h,\\; 0 \\le b < k_w} x_{\\text{pad}}[n, s_h i + a, s_w j + b, c]

on NHWC input, and four implementations of it exist because XLA:CPU runs them at very different
speeds (``docs/performance.md``, change 3). All give the same forward values. Their gradients agree
wherever each window's maximum is unique; on exact ties they route the gradient differently:

* ``"reduce_window"``: forward ``lax.reduce_window``; backward XLA's ``select_and_scatter``
  (one tied entry gets the whole gradient); any window, stride and padding.
* ``"reshape"``: forward a reshape to ``(N, Ho, kh, Wo, kw, C)`` and a max over the window axes;
  backward autodiff of ``jnp.max`` (the gradient split evenly between ties); stride = window,
  ``VALID``.
* ``"window"``: forward ``lax.reduce_window``; backward one fused pass in which every entry equal
  to its window's maximum gets the gradient; stride = window, ``VALID``.
* ``"slices"``: forward the maximum of ``kh * kw`` strided slices, one fused loop; backward the same
  one-pass rule; stride = window, ``VALID``.

When each is fastest (XLA:CPU, the course's CNN at batch 128 / 1000, ``docs/performance.md``):

* **training**: ``"slices"``. Its forward pass fuses with the preceding bias and ReLU, and the
  one-pass backward avoids both ``select_and_scatter`` (slow on XLA:CPU) and the tie counting of
  ``jnp.max``'s gradient (a compare, a convert and a reduction over the largest activation of the
  step). 65.9 CPU-ms per MnistCNN train step against 71.0 with ``"window"`` and 79.7 with
  ``"reshape"``.
* **inference**: ``"window"`` (or ``"reduce_window"``: same forward). ``reduce_window`` hands the
  next convolution a plain buffer, where XLA fuses the slices or the reshape into the
  convolution's input and that convolution runs several times slower: 38 CPU-ms for MnistCNN's
  batch-1000 forward pass against 120 (``"reshape"``) and 172 (``"slices"``).
* **overlapping or padded windows** (ResNet's 3x3 stride-2 stem pool): only ``"reduce_window"``.
* On GPU/TPU the differences are small; ``"reduce_window"`` is the portable reference.

``"auto"`` picks ``"window"`` for non-overlapping ``VALID`` pools (fast in both modes) and
``"reduce_window"`` otherwise. Choose ``"slices"`` explicitly in a training pass, as
:class:`jaxdl.models.MnistCNN` does.

The one-pass backward of ``"window"`` and ``"slices"`` gives the full cotangent to *every* entry
equal to its window's maximum. Where a maximum is unique that is the gradient; on an exact tie the
gradient is counted once per tied entry. After a ReLU the common ties are windows of zeros, and the
ReLU's zero derivative removes their gradient either way; if exact ties of values that carry
gradient matter to you, use ``"reduce_window"`` or ``"reshape"``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as fnn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["IMPLS", "max_pool", "max_pool_reference"]

IMPLS = ("auto", "reduce_window", "reshape", "window", "slices")

Padding = str | Sequence[tuple[int, int]]


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) for v in value) or min(value) < 1:
        raise ValueError(f"max_pool: {name} must be a positive int or a pair of them, got {value}")
    return value  # type: ignore[return-value]


def _window_max(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    """``reduce_window`` max over non-overlapping ``VALID`` windows: ``(N, H // kh, W // kw, C)``."""
    dims = (1, *window, 1)
    return lax.reduce_window(x, -jnp.inf, lax.max, dims, dims, "VALID")


def _slices_max(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    """The same pool as the maximum of ``kh * kw`` strided slices (row by row), one fused loop."""
    kh, kw = window
    h, w = x.shape[1] // kh * kh, x.shape[2] // kw * kw
    rows = []
    for a in range(kh):
        row = x[:, a:h:kh, 0:w:kw]
        for b in range(1, kw):
            row = jnp.maximum(row, x[:, a:h:kh, b:w:kw])
        rows.append(row)
    y = rows[0]
    for row in rows[1:]:
        y = jnp.maximum(y, row)
    return y  # (N, H // kh, W // kw, C)


def _reshape_max(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    """The same pool as a reshape to ``(N, Ho, kh, Wo, kw, C)`` and a max over the window axes."""
    (kh, kw), (n, h, w, c) = window, x.shape
    ho, wo = h // kh, w // kw
    x = x[:, : ho * kh, : wo * kw, :].reshape(n, ho, kh, wo, kw, c)
    return jnp.max(x, axis=(2, 4))


def _one_pass_bwd(window, residuals, g):
    """Route each output's cotangent to the window entries equal to its maximum,
    ``dx[n, kh i + a, kw j + b, c] = g[n, i, j, c] * [x[n, kh i + a, kw j + b, c] == y[n, i, j, c]]``:
    one fused elementwise loop. Rows and columns outside every window get zero."""
    (kh, kw), (x, y) = window, residuals
    n, h, w, c = x.shape
    ho, wo = y.shape[1], y.shape[2]
    xw = x[:, : kh * ho, : kw * wo].reshape(n, ho, kh, wo, kw, c)  # (N, Ho, kh, Wo, kw, C)
    hit = xw == y[:, :, None, :, None]
    dx = jnp.where(hit, g[:, :, None, :, None], 0.0).reshape(n, kh * ho, kw * wo, c)
    return (jnp.pad(dx, ((0, 0), (0, h - kh * ho), (0, w - kw * wo), (0, 0))),)


def _with_one_pass_backward(forward):
    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def pool(window, x):
        return forward(x, window)

    def pool_fwd(window, x):
        y = forward(x, window)
        return y, (x, y)

    pool.defvjp(pool_fwd, _one_pass_bwd)
    return pool


_window_pool = _with_one_pass_backward(_window_max)
_slices_pool = _with_one_pass_backward(_slices_max)


def max_pool(
    x: jax.Array,
    window: int | Sequence[int] = 2,
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    impl: str = "auto",
) -> jax.Array:
    """Max pooling on NHWC input, ``y[n, i, j, c] = max_{a, b} x_pad[n, s_h i + a, s_w j + b, c]``.

    Padding pads with ``-inf`` (a padded entry never wins); ``"VALID"`` drops the rows and columns
    that do not fill a whole window (Keras's ``MaxPooling2D`` default, floor mode). The
    implementations and when each is fastest are described in :mod:`jaxdl.nn.pooling`.

    Args:
      x: ``(N, H, W, C)``.
      window: the window ``(kh, kw)``, or one int for a square window.
      strides: the step between windows; ``None`` means equal to ``window`` (non-overlapping).
      padding: ``"VALID"``, ``"SAME"`` or two ``(low, high)`` pairs (``"reduce_window"`` only).
      impl: ``"auto"``, ``"reduce_window"``, ``"reshape"``, ``"window"`` or ``"slices"``; all but
        ``"reduce_window"`` need ``strides == window`` and ``padding="VALID"``.

    Returns:
      ``(N, Ho, Wo, C)``; for non-overlapping ``VALID`` windows ``Ho = H // kh``, ``Wo = W // kw``.
    """
    if x.ndim != 4:
        raise ValueError(f"max_pool: x must be NHWC with rank 4, got shape {x.shape}")
    if impl not in IMPLS:
        raise ValueError(f"max_pool: impl must be one of {IMPLS}, got {impl!r}")
    window = _pair(window, "window")
    strides = window if strides is None else _pair(strides, "strides")
    tiled = strides == window and isinstance(padding, str) and padding.upper() == "VALID"
    if impl == "auto":
        impl = "window" if tiled else "reduce_window"
    if impl != "reduce_window" and not tiled:
        raise ValueError(
            f"max_pool: impl={impl!r} needs non-overlapping windows (strides == window) and "
            f"padding='VALID', got window {window}, strides {strides}, padding {padding!r}; "
            f"use impl='reduce_window'"
        )
    if isinstance(padding, str):
        if padding.upper() not in ("VALID", "SAME"):
            raise ValueError(f"max_pool: padding must be 'VALID', 'SAME' or pairs, got {padding!r}")
        pads = lax.padtype_to_pads(x.shape[1:3], window, strides, padding.upper())
    else:
        pads = [tuple(int(v) for v in p) for p in padding]
        if len(pads) != 2 or any(len(p) != 2 for p in pads):
            raise ValueError(f"max_pool: padding must be two (low, high) pairs, got {padding!r}")
    for size, (lo, hi), k, axis in zip(x.shape[1:3], pads, window, ("H", "W"), strict=True):
        if size + lo + hi < k:
            raise ValueError(
                f"max_pool: input {x.shape[1]}x{x.shape[2]} (axis {axis} padded to "
                f"{size + lo + hi}) is smaller than the {window[0]}x{window[1]} window"
            )
    if impl == "reshape":
        return _reshape_max(x, window)
    if impl == "window":
        return _window_pool(window, x)
    if impl == "slices":
        return _slices_pool(window, x)
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), [(0, 0), *pads, (0, 0)]
    )


def max_pool_reference(x: jax.Array, window: int = 2) -> jax.Array:
    """The same pool through flax's ``reduce_window`` path; the reference the tests compare to."""
    return fnn.max_pool(x, (window, window), strides=(window, window), padding="VALID")
