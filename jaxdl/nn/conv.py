"""Convolution lowered to patches and one matrix multiply, with a matmul backward pass.

A channels-last convolution with stride ``s`` and no dilation is, for every output position, a dot
product between the ``k_1 x ... x k_n x C`` input window under the kernel and each of the ``F``
filters. Gathering all windows into a patch matrix ("im2col", Chellapilla et al. 2006) turns the
whole layer into one GEMM:

.. math::
    P[(b, o), (\\delta, c)] = x[b, s\\,o + \\delta, c], \\qquad
    Y = P\\,W, \\quad W \\in \\mathbb{R}^{(k_1 \\cdots k_n C) \\times F}

with ``o`` the output position, ``\\delta`` the offset inside the window and ``W`` the HWIO kernel
reshaped. Its gradients are two more GEMMs and the adjoint of the gather:

.. math::
    \\frac{\\partial L}{\\partial W} = P^\\top \\frac{\\partial L}{\\partial Y}, \\qquad
    \\frac{\\partial L}{\\partial P} = \\frac{\\partial L}{\\partial Y} W^\\top, \\qquad
    \\frac{\\partial L}{\\partial x} = \\mathrm{col2im}\\Big(\\frac{\\partial L}{\\partial P}\\Big)

where col2im adds each patch column back at the offset it was read from (the transpose of the
gather). Why bother: XLA:CPU's own gradients of ``conv_general_dilated`` (a convolution with the
batch and feature axes swapped for the kernel gradient, a padded, flipped convolution for the input
gradient) run far below the machine's matmul rate for the small images and channel counts of the
course's CNN, while a plain GEMM reaches it. See ``docs/performance.md`` for the measurements.

The function here, :func:`conv_general_dilated`, takes the arguments of
:func:`jax.lax.conv_general_dilated`, so it can be handed to ``flax.linen.Conv`` as its
``conv_general_dilated`` attribute (parameter names and shapes unchanged). Channels-last
layouts (``NHWC``/``HWIO`` and their 1-D/3-D analogues) with unit dilation and one feature group
take the patches path; any other configuration falls back to :func:`jax.lax.conv_general_dilated`.

``forward="lax"`` keeps lax's forward convolution and input gradient (both run at forward-pass
speed on XLA:CPU) and replaces only the kernel gradient by a GEMM. ``forward="patches"`` is the pure
patches-and-matmul form, forward and backward. ``forward="direct"`` is for layers with very few
input channels (a grayscale image's first layer): the output is built from
``prod(window) * C`` broadcast multiply-adds,

.. math::
    y[b, o, :] = \\sum_{\\delta, c} x[b, s\\,o + \\delta, c] \\; W[\\delta, c, :],

an elementwise loop that XLA fuses with the bias, the activation and a following pool, where a
GEMM with an inner dimension of 9 is all overhead.

The kernel gradient is the patch GEMM either way. :class:`jaxdl.models.MnistCNN` uses
``forward="direct"`` on its first layer in training (``docs/performance.md``).

:class:`Conv` is the layer: ``flax.linen.Conv``'s parameters (``kernel (*window, C, F)``,
``bias (F,)``) with the lowering named by ``impl`` and the bias added by
:func:`jaxdl.nn.bias_add` (its gradient a GEMV).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype
from jax import lax

from jaxdl import xla_flags
from jaxdl.nn.bias import bias_add, column_sum

__all__ = [
    "CONV_IMPLS",
    "Conv",
    "conv_general_dilated",
    "conv_patches",
    "depthwise_conv",
    "patches_conv",
    "pointwise_conv",
]

FORWARDS = ("patches", "lax", "direct")
# forward="direct" unrolls prod(window) * C multiply-adds into the graph: meant for a few channels.
MAX_DIRECT_TERMS = 64

Padding = str | Sequence[tuple[int, int]]


def _check_shapes(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> None:
    n = kernel.ndim - 2
    if n < 1:
        raise ValueError(
            f"patches_conv: kernel must be (*window, C, F) with rank >= 3, got {kernel.shape}"
        )
    if x.ndim != n + 2:
        raise ValueError(
            f"patches_conv: x must have rank {n + 2} (N, *spatial, C) to match a kernel of shape "
            f"{kernel.shape}, got shape {x.shape}"
        )
    if x.shape[-1] != kernel.shape[-2]:
        raise ValueError(
            f"patches_conv: x has {x.shape[-1]} channels but the kernel expects {kernel.shape[-2]} "
            f"(kernel shape {kernel.shape} is (*window, C, F))"
        )
    if len(strides) != n or any(int(s) < 1 for s in strides):
        raise ValueError(f"patches_conv: strides must be {n} positive ints, got {tuple(strides)}")
    for axis, (size, k) in enumerate(zip(x.shape[1:-1], kernel.shape[:-2], strict=True)):
        if size < k:
            raise ValueError(
                f"patches_conv: spatial axis {axis} of x has size {size}, smaller than the "
                f"kernel window {k} (after padding)"
            )


def _out_shape(spatial, window, strides) -> list[int]:
    return [(size - k) // s + 1 for size, k, s in zip(spatial, window, strides, strict=True)]


def conv_patches(x: jax.Array, window: Sequence[int], strides: Sequence[int]) -> jax.Array:
    """The im2col gather: ``(N, *spatial, C) -> (N, *out, prod(window) * C)``, no padding.

    ``out[b, o, d * C + c] = x[b, s * o + delta_d, c]`` where ``delta_d`` runs over the window
    offsets in row-major order, which is the order of a ``(*window, C, F)`` kernel reshaped to
    ``(prod(window) * C, F)``. One gather with static indices: XLA:CPU emits it as a single
    loop, about 1.5x cheaper than the same patches concatenated from ``prod(window)`` slices
    (``docs/performance.md``).
    """
    n = len(window)
    out = _out_shape(x.shape[1:-1], window, strides)
    index = []
    for d in range(n):
        shape = [1] * (2 * n)
        shape[d], shape[n + d] = out[d], window[d]
        o = np.arange(out[d]).reshape([out[d] if i == d else 1 for i in range(2 * n)])
        k = np.arange(window[d]).reshape([window[d] if i == n + d else 1 for i in range(2 * n)])
        index.append(np.broadcast_to(strides[d] * o + k, shape))  # (.., out_d, .., k_d, ..)
    p = x[(slice(None), *index, slice(None))]  # (N, *out, *window, C)
    return p.reshape(*p.shape[: n + 1], -1)  # (N, *out, K*C)


def _window_slices(x: jax.Array, window: Sequence[int], strides: Sequence[int]):
    """Yield ``(offset, x[:, s * o + offset, :])`` for every window offset, each ``(N, *out, C)``."""
    out = _out_shape(x.shape[1:-1], window, strides)
    for offset in itertools.product(*(range(k) for k in window)):
        start = (0, *offset, 0)
        limit = (
            x.shape[0],
            *(d + (o - 1) * s + 1 for d, o, s in zip(offset, out, strides, strict=True)),
            x.shape[-1],
        )
        yield offset, lax.slice(x, start, limit, (1, *strides, 1))


def _conv_patches_slices(x: jax.Array, window: Sequence[int], strides: Sequence[int]) -> jax.Array:
    """:func:`conv_patches` built from strided slices and one concatenate. The same values; used
    for its transpose (col2im), which JAX derives as pads and adds that XLA fuses, where the
    gather's transpose would be a scatter-add."""
    slices = [xs for _, xs in _window_slices(x, window, strides)]  # each (N, *out, C)
    return jnp.concatenate(slices, axis=-1)  # (N, *out, K*C)


def _conv_direct(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
    """``y = sum_{delta, c} x[:, s * o + delta, c:c+1] * kernel[delta, c]``: ``(N, *out, F)``."""
    y = None
    for offset, xs in _window_slices(x, kernel.shape[:-2], strides):
        for c in range(x.shape[-1]):
            w = kernel[(*offset, c)].reshape((1,) * (x.ndim - 1) + (-1,))  # (1, .., 1, F)
            term = xs[..., c : c + 1] * w  # (N, *out, 1) * (1, .., 1, F)
            y = term if y is None else y + term
    return y


def _channels_last_dn(n: int) -> lax.ConvDimensionNumbers:
    lhs = (0, n + 1, *range(1, n + 1))
    return lax.ConvDimensionNumbers(lhs, (n + 1, n, *range(n)), lhs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _patches_conv(
    x: jax.Array, kernel: jax.Array, strides: tuple[int, ...], precision, forward: str
) -> jax.Array:
    return _patches_conv_fwd(x, kernel, strides, precision, forward)[0]


def _patches_conv_fwd(x, kernel, strides, precision, forward):
    if forward == "direct":
        y = _conv_direct(x, kernel, strides)
    elif forward == "lax":
        # XLA:CPU's forward convolution is already fast; only its gradients are slow.
        n = kernel.ndim - 2
        y = lax.conv_general_dilated(
            x, kernel, strides, "VALID", dimension_numbers=_channels_last_dn(n), precision=precision
        )
    else:
        window = kernel.shape[:-2]
        p = conv_patches(x, window, strides)  # (N, *out, K*C)
        w = kernel.reshape(-1, kernel.shape[-1])  # (K*C, F)
        y = jnp.matmul(p, w, precision=precision)  # (N, *out, F)
    return y, (x, kernel)


def _patches_conv_bwd(strides, precision, forward, residuals, g):
    x, kernel = residuals
    window, f = kernel.shape[:-2], kernel.shape[-1]
    w = kernel.reshape(-1, f)  # (K*C, F)
    # The patches are recomputed rather than stored: the gather is a cheap fused copy, and keeping
    # the K-times-larger patch matrix alive from forward to backward costs more memory traffic.
    p = conv_patches(x, window, strides)
    p2 = p.reshape(-1, p.shape[-1])  # (M, K*C), M = N * prod(out)
    g2 = g.reshape(-1, f)  # (M, F)
    dw = jnp.matmul(p2.T, g2, precision=precision).reshape(kernel.shape)  # (K*C, F) -> kernel
    if forward in ("lax", "direct"):
        # dL/dx is the "full" correlation of g with the flipped kernel, a forward-type convolution
        # that XLA:CPU runs at the speed of the forward pass (unlike its kernel gradient), and
        # cheaper than the matmul's col2im, which is K strided pad-and-adds over the input.
        _, conv_t = jax.vjp(
            lambda x_: lax.conv_general_dilated(
                x_,
                kernel,
                strides,
                "VALID",
                dimension_numbers=_channels_last_dn(kernel.ndim - 2),
                precision=precision,
            ),
            x,
        )
        (dx,) = conv_t(g)
    else:
        dp = jnp.matmul(g, w.T, precision=precision)  # (N, *out, K*C)
        _, col2im = jax.vjp(lambda x_: _conv_patches_slices(x_, window, strides), x)
        (dx,) = col2im(dp)  # the transpose of the gather: pads and adds
    return dx, dw


_patches_conv.defvjp(_patches_conv_fwd, _patches_conv_bwd)


def _depthwise_direct(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
    """``y[b, o, c] = sum_delta x[b, s * o + delta, c] * kernel[delta, 0, c]`` on an already padded
    ``x (N, *spatial, C)`` with ``kernel (*window, 1, C)``: ``prod(window)`` broadcast multiply-adds
    that XLA fuses into one loop."""
    y = None
    for offset, xs in _window_slices(x, kernel.shape[:-2], strides):
        w = kernel[(*offset, 0)].reshape((1,) * (x.ndim - 1) + (-1,))  # (1, .., 1, C)
        y = xs * w if y is None else y + xs * w
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise(x: jax.Array, kernel: jax.Array, strides: tuple[int, ...]) -> jax.Array:
    return _depthwise_direct(x, kernel, strides)


def _depthwise_fwd(x, kernel, strides):
    return _depthwise_direct(x, kernel, strides), (x, kernel)


def _depthwise_bwd(strides, residuals, g):
    x, kernel = residuals
    window, c = kernel.shape[:-2], kernel.shape[-1]
    # dL/dkernel[delta, c] = sum_{b, o} x[b, s * o + delta, c] g[b, o, c]: one product per offset,
    # its column sum a GEMV (jaxdl.nn.column_sum) rather than XLA:CPU's slow column reduction.
    dk = jnp.stack([column_sum(xs * g) for _, xs in _window_slices(x, window, strides)])
    dk = dk.reshape(*window, 1, c)
    # dL/dx is the full correlation of g, dilated by the stride, with the flipped kernel:
    # dx[b, i, c] = sum_delta g_dil[b, i - delta, c] kernel[delta, c], again multiply-adds.
    n = len(window)
    out = g.shape[1:-1]
    pads = [(0, 0, 0)]
    for d in range(n):
        k, s_, size = window[d], strides[d], x.shape[1 + d]
        extra = size - (s_ * (out[d] - 1) + k)  # rows of x that no window reached (floor division)
        pads.append((k - 1, k - 1 + extra, s_ - 1))
    pads.append((0, 0, 0))
    g_dil = lax.pad(g, jnp.zeros((), g.dtype), pads)  # (N, *padded, C)
    flipped = jnp.flip(kernel, axis=tuple(range(n)))
    return _depthwise_direct(g_dil, flipped, (1,) * n), dk


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int] | None = None,
    padding: Padding = "VALID",
) -> jax.Array:
    """Channels-last depthwise convolution as broadcast multiply-adds, forward and backward.

    The same function as ``lax.conv_general_dilated(x, kernel, strides, padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=C)`` with one filter per
    channel:

    .. math::
        y[b, o, c] = \\sum_{\\delta} x_{pad}[b, s\\,o + \\delta, c]\\; W[\\delta, 0, c],

    ``prod(window)`` shifted, strided slices of the input, each multiplied by one row of the
    kernel and summed: an elementwise loop that XLA fuses, where XLA:CPU runs a grouped
    convolution with one channel per group far below memory speed (about 0.5 GFLOP/s for a
    3x3 layer of EfficientNet-B0 at batch 128, ``docs/performance.md``). Backward (custom VJP):
    the input gradient is the full correlation of the stride-dilated output gradient with the
    flipped kernel, the same multiply-adds; the kernel gradient is ``prod(window)`` products whose
    sums over ``(N, *out)`` are GEMVs.

    Args:
      x: ``(N, *spatial, C)``.
      kernel: ``(*window, 1, C)`` (flax's layout for ``feature_group_count=C``).
      strides: one positive int per spatial axis (default all ones).
      padding: ``"VALID"``, ``"SAME"`` or one ``(low, high)`` pair per spatial axis.

    Returns:
      ``(N, *out, C)``.
    """
    n = kernel.ndim - 2
    if n < 1 or kernel.shape[-2] != 1:
        raise ValueError(
            f"depthwise_conv: kernel must be (*window, 1, C), got shape {kernel.shape}"
        )
    strides = _checked_input_and_strides("depthwise_conv", x, kernel, kernel.shape[-1], strides)
    pads = _explicit_padding(padding, x.shape[1:-1], kernel.shape[:-2], strides)
    if any(p != (0, 0) for p in pads):
        x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    for axis, (size, k) in enumerate(zip(x.shape[1:-1], kernel.shape[:-2], strict=True)):
        if size < k:
            raise ValueError(
                f"depthwise_conv: spatial axis {axis} of x has size {size} after padding, "
                f"smaller than the kernel window {k}"
            )
    return _depthwise(x, kernel, strides)


def _checked_input_and_strides(
    fn: str, x: jax.Array, kernel: jax.Array, channels: int, strides: Sequence[int] | None
) -> tuple[int, ...]:
    """``x`` must be ``(N, *spatial, channels)`` with one spatial axis per kernel window axis;
    returns ``strides`` as one positive int per spatial axis (default all ones)."""
    n = kernel.ndim - 2
    if x.ndim != n + 2 or x.shape[-1] != channels:
        raise ValueError(
            f"{fn}: x must be (N, *spatial, C) with rank {n + 2} and C = {channels} to match "
            f"kernel {kernel.shape}, got shape {x.shape}"
        )
    strides = (1,) * n if strides is None else tuple(int(s) for s in strides)
    if len(strides) != n or any(s < 1 for s in strides):
        raise ValueError(f"{fn}: strides must be {n} positive ints, got {strides}")
    return strides


@jax.custom_vjp
def _pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
    n = x.ndim - 2
    return lax.conv_general_dilated(
        x, kernel, (1,) * n, "VALID", dimension_numbers=_channels_last_dn(n)
    )


def _pointwise_fwd(x, kernel):
    return _pointwise(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, g):
    x, kernel = residuals
    c, f = kernel.shape[-2:]
    x2, g2, w2 = x.reshape(-1, c), g.reshape(-1, f), kernel.reshape(c, f)
    dx = jnp.matmul(g2, w2.T).reshape(x.shape)  # dL/dX = G W^T
    dk = jnp.matmul(x2.T, g2).reshape(kernel.shape)  # dL/dW = X^T G
    return dx, dk


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def pointwise_conv(
    x: jax.Array, kernel: jax.Array, strides: Sequence[int] | None = None
) -> jax.Array:
    """Channels-last 1x1 convolution: lax's convolution forward, two GEMMs backward.

    With ``x`` flattened to ``X (M, C)``, ``M = N * prod(out)`` (the strided rows, if any), and
    ``kernel`` to ``W (C, F)``, a window of ones is one matrix product,

    .. math::
        Y = X W, \\qquad
        \\frac{\\partial L}{\\partial X} = \\frac{\\partial L}{\\partial Y} W^\\top, \\qquad
        \\frac{\\partial L}{\\partial W} = X^\\top \\frac{\\partial L}{\\partial Y}.

    The forward pass stays ``lax.conv_general_dilated`` (on XLA:CPU as fast as the GEMM or
    faster, and what inference runs); the custom backward computes the two gradients as those
    GEMMs, where XLA:CPU's own convolution gradients took 1.5-2.3x as long for DenseNet-BC's
    bottleneck layers (``docs/performance.md``, change 23). The pointwise (bottleneck, expand and
    project) layers of DenseNet, EfficientNet and the ImageNet ResNets are of this kind.

    Args:
      x: ``(N, *spatial, C)``.
      kernel: ``(1, ..., 1, C, F)``.
      strides: one positive int per spatial axis (default all ones): the kept rows
        ``x[:, ::s_1, ..., ::s_n]`` (what a 1x1 window with stride ``s`` and no padding reads).

    Returns:
      ``(N, *out, F)`` with ``out = ceil(spatial / strides)``.
    """
    n = kernel.ndim - 2
    if n < 1 or any(k != 1 for k in kernel.shape[:-2]):
        raise ValueError(
            f"pointwise_conv: kernel must be (1, ..., 1, C, F), got shape {kernel.shape}"
        )
    strides = _checked_input_and_strides("pointwise_conv", x, kernel, kernel.shape[-2], strides)
    if any(s != 1 for s in strides):
        x = x[(slice(None), *(slice(None, None, s) for s in strides), slice(None))]
    return _pointwise(x, kernel)


def _explicit_padding(padding: Padding, spatial, window, strides) -> list[tuple[int, int]]:
    if isinstance(padding, str):
        return list(lax.padtype_to_pads(spatial, window, strides, padding.upper()))
    pads = [tuple(int(v) for v in p) for p in padding]
    if len(pads) != len(spatial) or any(len(p) != 2 for p in pads):
        raise ValueError(
            f"patches_conv: padding must be 'SAME', 'VALID' or {len(spatial)} (low, high) pairs, "
            f"got {padding!r}"
        )
    return pads


def patches_conv(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int] | None = None,
    padding: Padding = "VALID",
    precision: Any = None,
    forward: str = "patches",
) -> jax.Array:
    """Channels-last convolution as patches and one matmul, with a matmul backward pass.

    Computes the same function as ``lax.conv_general_dilated(x, kernel, strides, padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC"))`` (a cross-correlation, as every framework's
    "convolution"), for any number of spatial axes:
    ``y[b, o, f] = sum_{delta, c} x_pad[b, s * o + delta, c] * kernel[delta, c, f]``.

    Args:
      x: ``(N, *spatial, C)``.
      kernel: ``(*window, C, F)``.
      strides: one positive int per spatial axis (default all ones).
      padding: ``"VALID"``, ``"SAME"`` or one ``(low, high)`` pair per spatial axis (zeros).
      precision: passed to the matmuls (``lax.Precision``); ``None`` is the backend default.
      forward: ``"patches"`` computes the forward pass as the patch matmul; ``"lax"`` computes it
        with ``lax.conv_general_dilated`` (the same function) and keeps the matmul kernel
        gradient; ``"direct"`` sums ``prod(window) * C`` broadcast multiply-adds (at most
        64 terms: for layers with one or a few input channels). ``"lax"`` and ``"direct"`` take
        the input gradient from lax's transposed convolution.

    Returns:
      ``(N, *out, F)`` with ``out = (spatial + low + high - window) // strides + 1``.
    """
    n = kernel.ndim - 2
    strides = (1,) * n if strides is None else tuple(int(s) for s in strides)
    if x.ndim != n + 2:
        _check_shapes(x, kernel, strides)
    pads = _explicit_padding(padding, x.shape[1:-1], kernel.shape[:-2], strides)
    if any(p != (0, 0) for p in pads):
        x = jnp.pad(x, [(0, 0), *pads, (0, 0)])  # autodiff's transpose of a pad is a slice
    _check_shapes(x, kernel, strides)
    if forward not in FORWARDS:
        raise ValueError(f"patches_conv: forward must be one of {FORWARDS}, got {forward!r}")
    terms = int(np.prod(kernel.shape[:-1]))
    if forward == "direct" and terms > MAX_DIRECT_TERMS:
        raise ValueError(
            f"patches_conv: forward='direct' unrolls prod(window) * C multiply-adds and is meant "
            f"for at most {MAX_DIRECT_TERMS}; kernel {kernel.shape} needs {terms}: use 'lax'"
        )
    return _patches_conv(x, kernel, strides, precision, forward)


def _is_channels_last(dimension_numbers, lhs_shape, rhs_shape) -> bool:
    dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    n = len(lhs_shape) - 2
    lhs_nhwc = (0, n + 1, *range(1, n + 1))
    rhs_hwio = (n + 1, n, *range(n))
    return (
        tuple(dn.lhs_spec) == lhs_nhwc
        and tuple(dn.rhs_spec) == rhs_hwio
        and tuple(dn.out_spec) == lhs_nhwc
    )


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    *,
    forward: str = "patches",
) -> jax.Array:
    """Drop-in for :func:`jax.lax.conv_general_dilated` that takes :func:`patches_conv` when it can.

    The patches path is used for channels-last layouts (``lhs``/``out`` ``(N, *spatial, C)``,
    ``rhs`` ``(*window, C, F)``), no input or kernel dilation, one feature and batch group and the
    default result type; everything else is forwarded unchanged to ``lax.conv_general_dilated``.
    Use it as ``flax.linen.Conv(..., conv_general_dilated=jaxdl.nn.conv_general_dilated)``;
    ``forward`` is passed to :func:`patches_conv` (bind it with ``functools.partial``).
    """
    n = lhs.ndim - 2
    unit = lambda d: d is None or all(int(v) == 1 for v in d)  # noqa: E731
    if (
        n >= 1
        and rhs.ndim == n + 2
        and unit(lhs_dilation)
        and unit(rhs_dilation)
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and _is_channels_last(dimension_numbers, lhs.shape, rhs.shape)
    ):
        return patches_conv(lhs, rhs, window_strides, padding, precision, forward)
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


CONV_IMPLS = ("xla", *FORWARDS)


def conv_lowering(impl: str) -> Callable[..., jax.Array]:
    """The ``conv_general_dilated`` that :class:`Conv` runs for ``impl``: ``"xla"`` is
    :func:`jax.lax.conv_general_dilated` with XLA's own gradients; ``"patches"``, ``"lax"`` and
    ``"direct"`` are :func:`conv_general_dilated` with that ``forward`` (the kernel gradient as
    the patch GEMM)."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"Conv: impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl == "xla":
        return lax.conv_general_dilated
    return functools.partial(conv_general_dilated, forward=impl)


class Conv(fnn.Module):
    """A channels-last convolution layer with an explicit lowering.

    ``y[b, o, f] = sum_{delta, c} x_pad[b, s * o + delta, c] * kernel[delta, c, f] + bias[f]``,
    the same function and parameters as ``flax.linen.Conv(features, kernel_size, strides,
    padding)`` (``kernel (*kernel_size, C, F)``, ``bias (F,)``; Glorot-uniform kernels and zero
    biases by default, Keras's ``Conv2D`` defaults), so variables move between the two unchanged.

    ``impl`` chooses how it runs (measurements in ``docs/performance.md``, XLA:CPU, compiled with
    :func:`jaxdl.xla_flags.train_step_compiler_options`):

    * ``"xla"`` (default): :func:`jax.lax.conv_general_dilated` and XLA's own gradients. The
      fastest measured for layers with many input channels, and always at inference.
    * ``"direct"``: ``prod(kernel_size) * C`` broadcast multiply-adds that XLA fuses with the bias,
      activation and pool, kernel gradient as one patch GEMM: for a first layer on one or a few
      channels (at most 64 terms), in training.
    * ``"lax"``: lax's forward and input gradient, kernel gradient as the patch GEMM.
    * ``"patches"``: im2col and one GEMM, forward and backward.

    The bias is added by :func:`jaxdl.nn.bias_add` (the same sum; its gradient a GEMV instead of
    XLA:CPU's slow column reduction).

    A 1x1 window with one group and no padding always runs :func:`pointwise_conv` (lax's forward
    pass, the gradients as two GEMMs), whatever the ``impl``.

    ``feature_group_count=g`` splits the channels into ``g`` groups convolved separately (kernel
    ``(*kernel_size, C / g, F)``, flax's layout). The depthwise case ``g = C = F`` always runs
    :func:`depthwise_conv` (multiply-adds, forward and backward); other groupings run
    :func:`jax.lax.conv_general_dilated`.

    Attributes:
      features: output channels ``F``.
      kernel_size: the window, one int per spatial axis.
      strides: one int per spatial axis (default all ones).
      padding: ``"VALID"``, ``"SAME"`` or ``(low, high)`` pairs.
      use_bias: add ``bias (F,)``.
      feature_group_count: ``g``, dividing ``C`` and ``F``.
      impl: ``"xla"``, ``"direct"``, ``"lax"`` or ``"patches"``.
      dtype: computation dtype; ``param_dtype``: parameter dtype.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] | None = None
    padding: Padding = "VALID"
    use_bias: bool = True
    feature_group_count: int = 1
    impl: str = "xla"
    kernel_init: Callable[..., jax.Array] = fnn.initializers.glorot_uniform()
    bias_init: Callable[..., jax.Array] = fnn.initializers.zeros_init()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @fnn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n = len(self.kernel_size)
        if x.ndim != n + 2:
            raise ValueError(
                f"Conv: x must be (N, *spatial, C) with rank {n + 2} for kernel_size "
                f"{tuple(self.kernel_size)}, got shape {x.shape}"
            )
        lowering = conv_lowering(self.impl)
        groups, c = self.feature_group_count, x.shape[-1]
        if groups < 1 or c % groups or self.features % groups:
            raise ValueError(
                f"Conv: feature_group_count={groups} must divide both the input channels ({c}) "
                f"and features ({self.features})"
            )
        shape = (*self.kernel_size, c // groups, self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        xla_flags.check_differentiated(kernel, "jaxdl.nn.Conv")
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        strides = (1,) * n if self.strides is None else tuple(self.strides)
        lhs = "N" + "HWD"[:n] + "C" if n <= 3 else None
        dn = (lhs, "HWD"[:n] + "IO", lhs) if lhs else _channels_last_dn(n)
        pointwise = (
            groups == 1
            and all(k == 1 for k in self.kernel_size)
            and not any(
                map(any, _explicit_padding(self.padding, x.shape[1:-1], shape[:-2], strides))
            )
        )
        if pointwise:  # 1x1, no padding: GEMM gradients, whatever the impl
            y = pointwise_conv(x, kernel, strides)
        elif groups == 1:
            y = lowering(x, kernel, strides, self.padding, dimension_numbers=dn)
        elif groups == c == self.features:  # depthwise: multiply-adds, whatever the impl
            y = depthwise_conv(x, kernel, strides, self.padding)
        else:
            y = lax.conv_general_dilated(
                x, kernel, strides, self.padding, dimension_numbers=dn, feature_group_count=groups
            )
        return y if bias is None else bias_add(y, bias)
