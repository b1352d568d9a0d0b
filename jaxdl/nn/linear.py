"""The fully connected layer: one GEMM over the flattened leading axes, its bias gradient a
matrix-vector product.

``y = x W + b`` for ``x (..., D_in)``, ``W (D_in, D_out)``, ``b (D_out,)``. Its gradients are
``dx = G W^T``, ``dW = X^T G`` (both GEMMs over the rows ``X (M, D_in)``, ``G (M, D_out)`` of
every leading axis flattened, as :func:`flat_matmul` computes them) and ``db = 1^T G``, the
column sum that :func:`jaxdl.nn.bias_add` computes as a GEMV instead of XLA:CPU's slow column
``reduce_sum``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as fnn
import jax
import jax.numpy as jnp

from jaxdl.nn.bias import bias_add

__all__ = ["Dense", "flat_matmul"]


def flat_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` for ``x (..., D_in)`` and ``w (D_in, D_out)``, computed as one 2-D GEMM over the
    rows of ``x`` with its leading axes flattened: ``X (M, D_in) W``, ``M = prod(x.shape[:-1])``,
    reshaped back to ``(..., D_out)``.

    The value is that of ``x @ w``; what changes is the gradient XLA is given. Differentiating
    ``x @ w`` for a rank-3 ``x (B, T, D_in)`` gives the kernel gradient as a contraction over the
    two axes ``B`` and ``T``, which XLA:CPU runs with extra transposed copies; here it is the
    plain ``X^T G`` of two ``(M, .)`` matrices. In the GPT train step of
    ``experiments/benchmarks/gpt_step.py`` (6 layers, 24 projections and 12 MLP matmuls, all on
    ``(32, 128, .)`` activations) that took the step from 1,121 to 948 ms, and from 1,039 to 896 ms
    in a second run (in-process A/B, ``docs/performance.md``, change 24). Being plain
    ``jax.numpy``, it keeps every transformation (``jvp``, ``vmap``, higher derivatives).

    Raises ``ValueError`` naming the shapes when ``x`` has rank 0, ``w`` is not a matrix, or the
    inner dimensions differ.
    """
    if x.ndim < 1 or w.ndim != 2 or x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"flat_matmul: x must be (..., D_in) and w (D_in, D_out), got x {x.shape} and "
            f"w {w.shape}"
        )
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(x.shape[:-1] + (w.shape[1],))


class Dense(fnn.Module):
    """``flax.linen.Dense`` with :func:`jaxdl.nn.bias_add`: ``(..., D_in) -> (..., features)``.

    Parameters ``kernel (D_in, features)`` and ``bias (features,)`` are named, shaped and
    initialised as flax's (LeCun-normal kernel, zero bias by default), so weights move between
    the two. ``dtype`` is the computation dtype (default: the inputs' and parameters' result
    type); ``param_dtype`` the parameters' storage dtype. ``store_cotangent`` is
    :func:`jaxdl.nn.bias_add`'s: set it on a layer whose output goes through an elementwise
    activation (a Transformer MLP's first layer).
    """

    features: int
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable[..., jax.Array] = fnn.linear.default_kernel_init
    bias_init: Callable[..., jax.Array] = fnn.initializers.zeros_init()
    store_cotangent: bool = False  # see jaxdl.nn.bias_add

    @fnn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if not isinstance(self.features, int) or self.features <= 0:
            raise ValueError(f"Dense: features must be a positive int, got {self.features!r}")
        if x.ndim < 1:
            raise ValueError(f"Dense: x must be (..., D_in) with rank >= 1, got shape {x.shape}")
        kernel = self.param(
            "kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        dtype = self.dtype or jnp.result_type(x, kernel, *(() if bias is None else (bias,)))
        y = flat_matmul(jnp.asarray(x, dtype), jnp.asarray(kernel, dtype))
        if bias is None:
            return y
        return bias_add(y, jnp.asarray(bias, dtype), store_cotangent=self.store_cotangent)
