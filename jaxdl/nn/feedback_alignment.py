r"""Feedback alignment (Lillicrap, Cownden, Tweed & Akerman 2016): a dense layer whose backward
pass sends the error through a fixed random matrix instead of the transpose of its weights.

Backpropagation needs each layer to send its error backwards through :math:`W^\top`, the exact
transpose of the forward weights: the "weight transport" problem that makes it implausible for a
brain. Feedback alignment replaces :math:`W^\top` by a fixed random :math:`B`; the forward pass
and the weight updates are unchanged:

.. math::
    y = x W + b, \qquad
    \frac{\partial L}{\partial W} = x^\top \delta, \qquad
    \frac{\partial L}{\partial b} = \textstyle\sum_{\text{batch}} \delta, \qquad
    \widetilde{\frac{\partial L}{\partial x}} = \delta\, B^\top \quad(\text{backprop: } \delta W^\top)

with :math:`\delta = \partial L/\partial y`. ``feedback`` is stored with the kernel's layout,
``(in, out)``, so the backward pass is ``delta @ feedback.T`` where backpropagation computes
``delta @ kernel.T``. The layer still learns: the forward weights of the layers above come to
align with :math:`B` (the angle between the two updates falls below 90 degrees), so the signal
sent down becomes a useful descent direction. The derivation is in
``docs/derivations/bio_learning.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _check(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, feedback: jax.Array) -> None:
    if jnp.ndim(kernel) != 2:
        raise ValueError(f"kernel must have rank 2 (in, out), got shape {jnp.shape(kernel)}")
    if jnp.shape(feedback) != jnp.shape(kernel):
        raise ValueError(
            f"feedback must have the kernel's shape {jnp.shape(kernel)}, got {jnp.shape(feedback)}"
        )
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != jnp.shape(kernel)[0]:
        raise ValueError(
            f"x must have shape (..., {jnp.shape(kernel)[0]}) to match the kernel "
            f"{jnp.shape(kernel)}, got {jnp.shape(x)}"
        )
    if bias is not None and jnp.shape(bias) != (jnp.shape(kernel)[1],):
        raise ValueError(f"bias must have shape ({jnp.shape(kernel)[1]},), got {jnp.shape(bias)}")


def _affine(x, kernel, bias):
    y = x @ kernel  # (..., out)
    return y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)


@jax.custom_vjp
def _fa_dense(x, kernel, bias, feedback):
    return _affine(x, kernel, bias)


def _fa_dense_fwd(x, kernel, bias, feedback):
    return _affine(x, kernel, bias), (x, feedback)


def _fa_dense_bwd(residuals, delta):
    x, feedback = residuals
    x2 = x.reshape(-1, x.shape[-1])  # (N, in), all leading axes are batch
    d2 = delta.reshape(-1, delta.shape[-1])  # (N, out)
    d_kernel = x2.T @ d2  # the true weight gradient
    d_bias = d2.sum(axis=0)
    d_x = delta @ feedback.T  # (..., in): B^T instead of W^T
    # feedback is a constant of the layer: no gradient flows into it.
    return d_x, d_kernel, d_bias, jnp.zeros_like(feedback)


_fa_dense.defvjp(_fa_dense_fwd, _fa_dense_bwd)


def feedback_alignment_dense(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None, feedback: jax.Array
) -> jax.Array:
    """``x @ kernel + bias`` whose vector-Jacobian product sends ``delta @ feedback.T`` to ``x``.

    Args:
        x: inputs ``(..., in)``.
        kernel: ``(in, out)``.
        bias: ``(out,)`` or ``None``.
        feedback: the fixed feedback matrix, ``(in, out)`` like ``kernel`` (:math:`B^\\top`
            in Lillicrap et al.'s notation, where the error is sent down as :math:`B e`).

    Returns:
        ``(..., out)``. Gradients with respect to ``kernel`` and ``bias`` are the true ones;
        with respect to ``x`` the feedback-alignment signal; with respect to ``feedback`` zero.
    """
    _check(x, kernel, bias, feedback)
    if bias is None:
        bias = jnp.zeros((jnp.shape(kernel)[1],), jnp.result_type(x, kernel))
    return _fa_dense(x, kernel, bias, feedback)


class FeedbackAlignmentDense(nn.Module):
    """A :class:`flax.linen.Dense` trained by feedback alignment.

    Parameters ``kernel (in, features)`` and ``bias (features,)`` live in ``'params'`` with
    Dense's names and initialisers, so a Dense's parameters load unchanged. The fixed random
    feedback matrix ``(in, features)`` lives in the separate ``'feedback'`` collection: it is
    drawn at ``init`` (from the ``'params'`` rng) and must be passed to ``apply`` with the
    parameters (``model.apply({'params': p, 'feedback': f}, x)``), but an optimizer over
    ``'params'`` never changes it.

    Attributes:
        features: output size.
        use_bias: add a bias.
        kernel_init, bias_init: as :class:`flax.linen.Dense`.
        feedback_init: initialiser of the feedback matrix (default: like the kernel).
    """

    features: int
    use_bias: bool = True
    kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
    bias_init: Callable[..., Any] = nn.initializers.zeros_init()
    feedback_init: Callable[..., Any] | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.features <= 0:
            raise ValueError(f"features must be a positive integer, got {self.features}")
        shape = (jnp.shape(x)[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        bias = (
            self.param("bias", self.bias_init, (self.features,), jnp.float32)
            if self.use_bias
            else None
        )
        init = self.feedback_init or self.kernel_init
        feedback = self.variable(
            "feedback", "feedback", lambda: init(self.make_rng("params"), shape, jnp.float32)
        ).value
        return feedback_alignment_dense(x, kernel, bias, feedback)
