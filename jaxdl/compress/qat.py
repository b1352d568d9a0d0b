r"""Quantisation-aware training (QAT) with the straight-through estimator.

Training sees the quantised weights in the forward pass, so it can move each weight to where its
*rounded* value serves the loss. Rounding has derivative zero almost everywhere, so the backward pass
uses the straight-through estimator (Bengio, Leonard & Courville 2013; the QAT form of Jacob et
al. 2018): the fake-quantiser

.. math::

    \tilde x = s\, \mathrm{clip}\big(\mathrm{round}(x / s), -q_{\max}, q_{\max}\big)

is treated as the identity inside the representable range and as a constant outside it,

.. math::

    \frac{\partial \tilde x}{\partial x} \approx \mathbb 1\big[\, |x| \le s\, q_{\max} \big].

The scale ``s`` is the per-channel ``max|w| / q_max`` of :func:`jaxdl.compress.quantize_array`,
recomputed every step and held constant in the gradient (``stop_gradient``), so the clip never binds
for weights and their gradient passes straight through.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdl.compress._tree import is_kernel

__all__ = ["fake_quant", "fake_quant_params", "weight_scale"]


def _qmax(bits: int) -> int:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")
    return 2 ** (bits - 1) - 1


@jax.custom_vjp
def _fake_quant(x: jax.Array, scale: jax.Array, qmax: jax.Array) -> jax.Array:
    return scale * jnp.clip(jnp.round(x / scale), -qmax, qmax)


def _fake_quant_fwd(x, scale, qmax):
    return _fake_quant(x, scale, qmax), (x, scale, qmax)


def _fake_quant_bwd(res, g):
    x, scale, qmax = res
    inside = jnp.abs(x) <= scale * qmax  # the clip range [-s q_max, s q_max]
    # straight through inside the range, zero outside; no gradient to the scale or q_max
    return jnp.where(inside, g, jnp.zeros_like(g)), jnp.zeros_like(scale), jnp.zeros_like(qmax)


_fake_quant.defvjp(_fake_quant_fwd, _fake_quant_bwd)


def fake_quant(x: jax.Array, scale: Any, bits: int = 8) -> jax.Array:
    """Quantise-dequantise ``x`` on the symmetric grid of step ``scale`` (broadcastable against
    ``x`` without rank promotion: a scalar or the same rank), with the straight-through gradient
    ``1[|x| <= scale q_max]``."""
    qmax = _qmax(bits)
    x = jnp.asarray(x)
    scale = jnp.asarray(scale, x.dtype)
    if scale.ndim not in (0, x.ndim):
        raise ValueError(f"scale must be a scalar or have x's rank {x.ndim}, got {scale.shape}")
    return _fake_quant(x, scale, jnp.asarray(qmax, x.dtype))


def weight_scale(w: jax.Array, bits: int = 8, per_channel: bool = True) -> jax.Array:
    """``max|w| / q_max`` per output channel (last axis) or per tensor, keepdims, no gradient."""
    qmax = _qmax(bits)
    axes = tuple(range(w.ndim - 1)) if per_channel else tuple(range(w.ndim))
    amax = jnp.max(jnp.abs(jax.lax.stop_gradient(w)), axis=axes, keepdims=True)
    return jnp.where(amax > 0, amax / qmax, jnp.ones_like(amax))


def fake_quant_params(params: Any, bits: int = 8, per_channel: bool = True) -> Any:
    """Every kernel of ``params`` fake-quantised as :func:`jaxdl.compress.quantize` would store it
    (so the forward pass equals ``dequantize(quantize(params))`` up to float32 rounding); other
    leaves unchanged. Use inside the loss: ``model.apply({"params": fake_quant_params(p)}, x)``."""
    _qmax(bits)
    return jax.tree_util.tree_map_with_path(
        lambda p, w: (
            fake_quant(w, weight_scale(w, bits, per_channel), bits) if is_kernel(p, w) else w
        ),
        params,
    )
