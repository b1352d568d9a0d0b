"""Adding a bias, with its gradient computed as a matrix-vector product.

For ``y = x + b`` with ``b`` broadcast over every axis but the last, the bias gradient is the
column sum of the cotangent,

.. math::
    \\frac{\\partial L}{\\partial b_f} = \\sum_{m} G_{m f} = (\\mathbf{1}^\\top G)_f,
    \\qquad G = \\frac{\\partial L}{\\partial y} \\text{ reshaped to } (M, F).

XLA:CPU rewrites a long column sum into a blocked ``reduce-window`` that ran at about 3 GB/s: 3.5
ms of the course's CNN train step went to the first convolution's bias gradient over its
``(128, 26, 26, 32)`` activations. Written as the product :math:`\\mathbf{1}^\\top G` it is a GEMV,
and the whole step ran 14% faster (``docs/performance.md``). The values are the same sums in a
different order.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxdl.nn.materialize import _stored

__all__ = ["bias_add", "column_sum"]


def column_sum(g: jax.Array) -> jax.Array:
    """``g.reshape(-1, F).sum(0)`` computed as ``ones(M) @ g``: shape ``(F,)``."""
    f = g.shape[-1]
    g2 = g.reshape(-1, f)
    return jnp.ones((g2.shape[0],), g.dtype) @ g2


def bias_add(y: jax.Array, b: jax.Array, *, store_cotangent: bool = False) -> jax.Array:
    """``y + b`` with ``b (F,)`` broadcast over the leading axes of ``y (..., F)``; the gradient
    with respect to ``b`` is :func:`column_sum` of the cotangent.

    ``store_cotangent=True`` computes the incoming gradient into memory once before its readers
    (see :func:`jaxdl.nn.materialize`). Use it where that gradient is an activation's derivative
    feeding a matrix product: otherwise XLA:CPU fuses the derivative into each reader, among them
    the transposed copy made for the kernel gradient, which then recomputes it in a
    cache-unfriendly order (a GPT step's MLP: 630 ms of such copies against 65 ms). Where the
    gradient is already stored (a convolution's), the extra store costs a copy (the MNIST CNN's
    step: 23.0 against 28.8 ms), so it is off by default.
    """
    return _bias_add(y, b, bool(store_cotangent))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _bias_add(y, b, store_cotangent):
    return y + b.reshape((1,) * (y.ndim - 1) + b.shape)


def _bias_add_fwd(y, b, store_cotangent):
    return _bias_add(y, b, store_cotangent), None


def _bias_add_bwd(store_cotangent, _, g):
    if store_cotangent:
        g = _stored(g)
    return g, column_sum(g)


_bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)
