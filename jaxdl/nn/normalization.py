"""Batch and layer normalisation with their parameter-gradient sums computed as matrix-vector
products.

Batch normalisation (Ioffe & Szegedy 2015) over the rows of ``X (M, C)`` (every axis but the
channel axis flattened: ``M = N H W`` for images):

.. math::
    \\mu = \\tfrac1M \\mathbf{1}^\\top X, \\qquad
    \\sigma^2 = \\tfrac1M \\mathbf{1}^\\top (X \\odot X) - \\mu^2, \\qquad
    \\hat X = (X - \\mu)\\, r, \\quad r = (\\sigma^2 + \\epsilon)^{-1/2}, \\qquad
    Y = \\gamma \\hat X + \\beta .

Its backward pass, for ``G = dL/dY`` (the derivation is in ``docs/derivations``' batch-norm page):

.. math::
    \\frac{\\partial L}{\\partial \\beta} = \\mathbf{1}^\\top G, \\qquad
    \\frac{\\partial L}{\\partial \\gamma} = \\mathbf{1}^\\top (G \\odot \\hat X), \\qquad
    \\frac{\\partial L}{\\partial X} = \\gamma r \\Big(G - \\tfrac1M \\mathbf{1}\\,
        \\frac{\\partial L}{\\partial \\beta} - \\tfrac1M \\hat X \\odot
        \\frac{\\partial L}{\\partial \\gamma}\\Big) .

All four column sums are written as ``ones(M) @ A`` (:func:`jaxdl.nn.column_sum`): XLA:CPU turns a
long column ``reduce_sum`` over ``(N, H, W)`` into a blocked ``reduce-window`` that runs far below
memory speed (the same finding as :func:`jaxdl.nn.bias_add`), while a GEMV streams at memory
speed. ``flax.linen.BatchNorm`` computes the same function with JAX's reductions and autodiff.

:class:`BatchNorm` has ``flax.linen.BatchNorm``'s attributes, parameters (``scale``, ``bias``)
and statistics (``batch_stats``: ``mean``, ``var``; ``momentum`` weighs the old running value),
so variables move between the two unchanged; the variance is the biased batch variance in the
``E[x^2] - mu^2`` form (flax's ``use_fast_variance=True`` default), clipped at zero.

Layer normalisation (Ba et al. 2016) normalises each row of ``X (M, D)`` over its own ``D``
features instead, with per-row statistics :math:`\\mu_m, r_m`:

.. math::
    \\hat x_m = (x_m - \\mu_m) r_m, \\qquad y_m = \\gamma \\odot \\hat x_m + \\beta, \\qquad
    \\frac{\\partial L}{\\partial x_m} = r_m \\big(\\tilde g_m - \\overline{\\tilde g_m}
        - \\hat x_m\\, \\overline{\\tilde g_m \\odot \\hat x_m}\\big), \\quad
    \\tilde g_m = \\gamma \\odot g_m ,

where the bar is the mean over the ``D`` features of a row. The per-row means are cheap; the
parameter gradients :math:`\\mathbf{1}^\\top G` and :math:`\\mathbf{1}^\\top (G \\odot \\hat X)`
are long column sums over every token of the batch, written as GEMVs for the same reason as
above. In a GPT train step (``experiments/benchmarks/gpt_step.py``, 4,096 tokens) XLA's column
``reduce_sum`` took 17 ms per LayerNorm or dense-bias gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as fnn
import jax
import jax.numpy as jnp
from jax import lax

from jaxdl.nn.bias import column_sum
from jaxdl.nn.materialize import _stored

__all__ = ["BatchNorm", "LayerNorm", "batch_norm", "layer_norm"]


def _stats(x2: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array, float]:
    """``mu``, ``sigma^2`` (clipped at 0) and the row count ``M`` (global under ``axis_name``)."""
    m = x2.shape[0]
    mean = column_sum(x2) / m
    meansq = column_sum(x2 * x2) / m
    if axis_name is not None:
        mean, meansq = lax.pmean((mean, meansq), axis_name)
        m = m * lax.psum(1, axis_name)
    return mean, jnp.maximum(meansq - mean * mean, 0.0), m


def _scale_and_bias(module: fnn.Module, n: int) -> tuple[jax.Array, jax.Array]:
    """A normalisation layer's ``scale`` and ``bias`` ``(n,)`` parameters, or ones and zeros
    where ``use_scale`` / ``use_bias`` is off (flax's names, initialisers and dtypes)."""
    scale = (
        module.param("scale", module.scale_init, (n,), module.param_dtype)
        if module.use_scale
        else jnp.ones((n,), module.param_dtype)
    )
    bias = (
        module.param("bias", module.bias_init, (n,), module.param_dtype)
        if module.use_bias
        else jnp.zeros((n,), module.param_dtype)
    )
    return scale, bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm(x2, scale, bias, epsilon, axis_name):
    return _batch_norm_fwd(x2, scale, bias, epsilon, axis_name)[0]


def _batch_norm_fwd(x2, scale, bias, epsilon, axis_name):
    mean, var, m = _stats(x2, axis_name)
    r = lax.rsqrt(var + epsilon)
    y = (x2 - mean[None]) * (scale * r)[None] + bias[None]  # (M, C)
    return (y, mean, var), (x2, scale, mean, r, jnp.asarray(m, x2.dtype))


def _batch_norm_bwd(epsilon, axis_name, residuals, cotangents):
    x2, scale, mean, r, m = residuals  # m: the global row count
    g, g_mean, g_var = cotangents
    xhat = (x2 - mean[None]) * r[None]  # (M, C), recomputed rather than stored
    d_bias = column_sum(g)
    d_scale = column_sum(g * xhat)
    if axis_name is not None:
        d_bias, d_scale = lax.psum((d_bias, d_scale), axis_name)
    dx = (scale * r)[None] * (g - (d_bias[None] + xhat * d_scale[None]) / m)
    # The batch statistics are outputs too (for the running averages): their cotangents, usually
    # 0. Under axis_name only this device's own cotangent of them is counted.
    dx = dx + (g_mean[None] + 2.0 * g_var[None] * (x2 - mean[None])) / m
    return dx, d_scale, d_bias


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def batch_norm(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    epsilon: float = 1e-5,
    axis_name: str | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode batch normalisation over every axis of ``x (..., C)`` but the last.

    Returns ``(y, mean, var)``: ``y`` with the shape of ``x``; ``mean`` and ``var`` ``(C,)``, the
    batch statistics (``var`` biased). Under ``axis_name`` (``shard_map``/``pmap``) the statistics
    and the gradient sums are averaged over that axis, so every device normalises with the global
    batch's statistics. The gradient is the custom rule of the module docstring.
    """
    if x.ndim < 2:
        raise ValueError(f"batch_norm: x must be (..., C) with rank >= 2, got shape {x.shape}")
    c = x.shape[-1]
    for name, v in (("scale", scale), ("bias", bias)):
        if v.shape != (c,):
            raise ValueError(f"batch_norm: {name} must have shape ({c},), got {v.shape}")
    y, mean, var = _batch_norm(x.reshape(-1, c), scale, bias, float(epsilon), axis_name)
    return y.reshape(x.shape), mean, var


class BatchNorm(fnn.Module):
    """``flax.linen.BatchNorm`` over the last axis, its sums computed as GEMVs (module docstring).

    Training (``use_running_average=False``): ``y = scale * (x - mu) / sqrt(var + eps) + bias``
    with the batch's ``mu``, ``var`` (over every axis but the last), and the running averages
    ``ra <- momentum * ra + (1 - momentum) * batch`` in the ``batch_stats`` collection. Inference:
    the running averages instead. Shapes: ``(..., C) -> (..., C)``; ``scale``, ``bias``, ``mean``,
    ``var`` are ``(C,)``.

    Attributes are flax's: ``use_running_average``, ``axis`` (only ``-1``, channels last),
    ``momentum``, ``epsilon``, ``dtype`` (output), ``param_dtype``, ``use_bias``, ``use_scale``,
    ``bias_init``, ``scale_init``, ``axis_name`` (cross-device statistics).
    """

    use_running_average: bool | None = None
    axis: int = -1
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Callable[..., jax.Array] = fnn.initializers.zeros_init()
    scale_init: Callable[..., jax.Array] = fnn.initializers.ones_init()
    axis_name: str | None = None

    @fnn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_ra = fnn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        if self.axis not in (-1, x.ndim - 1):
            raise ValueError(
                f"BatchNorm: only the last axis (channels last) is supported, got axis={self.axis}"
            )
        if x.ndim < 2:
            raise ValueError(f"BatchNorm: x must be (..., C) with rank >= 2, got shape {x.shape}")
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale, bias = _scale_and_bias(self, c)
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        xf = jnp.asarray(x, jnp.float32)
        scale, bias = jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32)
        if use_ra:
            r = lax.rsqrt(ra_var.value + self.epsilon)
            lead = (1,) * (x.ndim - 1)
            y = (xf - ra_mean.value.reshape(*lead, c)) * (scale * r).reshape(*lead, c)
            y = y + bias.reshape(*lead, c)
            return jnp.asarray(y, dtype)
        y, mean, var = batch_norm(xf, scale, bias, self.epsilon, self.axis_name)
        if not self.is_initializing():  # the init batch's statistics are not recorded (as flax)
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return jnp.asarray(y, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x2, scale, bias, epsilon):
    return _layer_norm_fwd(x2, scale, bias, epsilon)[0]


def _layer_norm_fwd(x2, scale, bias, epsilon):
    mean = jnp.mean(x2, axis=-1, keepdims=True)  # (M, 1): row statistics, a minor-axis reduce
    var = jnp.maximum(jnp.mean(x2 * x2, axis=-1, keepdims=True) - mean * mean, 0.0)
    r = lax.rsqrt(var + epsilon)  # (M, 1)
    xhat = (x2 - mean) * r  # (M, D)
    # Stored: a LayerNorm's output feeds matrix products (a Transformer's query, key and value
    # projections, its MLP), and XLA:CPU otherwise fuses the normalisation into each of them as
    # a prologue, recomputed per tile (a GPT step's q/k/v projections ran at half speed).
    return _stored(xhat * scale[None] + bias[None]), (xhat, scale, r)


def _layer_norm_bwd(epsilon, residuals, g):
    xhat, scale, r = residuals
    gs = g * scale[None]  # (M, D)
    mean_gs = jnp.mean(gs, axis=-1, keepdims=True)
    mean_gsx = jnp.mean(gs * xhat, axis=-1, keepdims=True)
    dx = r * (gs - mean_gs - xhat * mean_gsx)
    return dx, column_sum(g * xhat), column_sum(g)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float = 1e-6) -> jax.Array:
    """Layer normalisation of ``x (..., D)`` over its last axis: ``(x - mu) / sqrt(var + eps) *
    scale + bias`` with ``scale``, ``bias`` of shape ``(D,)``; the variance is the biased one in
    the ``E[x^2] - mu^2`` form, clipped at zero (flax's ``use_fast_variance``). The gradient is
    the custom rule of the module docstring (its parameter sums are GEMVs)."""
    if x.ndim < 1:
        raise ValueError(f"layer_norm: x must be (..., D) with rank >= 1, got shape {x.shape}")
    d = x.shape[-1]
    for name, v in (("scale", scale), ("bias", bias)):
        if v.shape != (d,):
            raise ValueError(f"layer_norm: {name} must have shape ({d},), got {v.shape}")
    return _layer_norm(x.reshape(-1, d), scale, bias, float(epsilon)).reshape(x.shape)


class LayerNorm(fnn.Module):
    """``flax.linen.LayerNorm`` over the last axis, its parameter gradients computed as GEMVs.

    ``y = (x - mu) / sqrt(var + eps) * scale + bias`` with ``mu``, ``var`` of each row over its
    last axis (Ba et al. 2016); ``(..., D) -> (..., D)``, ``scale`` and ``bias`` ``(D,)``.
    Attributes are flax's (``epsilon``, ``dtype`` of the output, ``param_dtype``, ``use_bias``,
    ``use_scale``, ``bias_init``, ``scale_init``), and so are the parameter names, so weights
    move between the two; the statistics are computed in float32 at least, as flax does.
    """

    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Callable[..., jax.Array] = fnn.initializers.zeros_init()
    scale_init: Callable[..., jax.Array] = fnn.initializers.ones_init()

    @fnn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim < 1:
            raise ValueError(f"LayerNorm: x must have rank >= 1, got shape {x.shape}")
        d = x.shape[-1]
        scale, bias = _scale_and_bias(self, d)
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        ct = jnp.promote_types(dtype, jnp.float32)
        y = layer_norm(jnp.asarray(x, ct), jnp.asarray(scale, ct), jnp.asarray(bias, ct),
                       self.epsilon)  # fmt: skip
        return jnp.asarray(y, dtype)
