r"""Gradient clipping transforms (Pascanu, Mikolov & Bengio 2013 for the global norm)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxdl.optim import _checks


def global_norm(tree) -> jax.Array:
    r""":math:`\|g\|_2 = \sqrt{\sum_{\text{leaves}} \sum_i g_i^2}`, accumulated in float32."""
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    r"""Rescale the whole update when its global norm exceeds ``max_norm``:

    .. math:: u = g \cdot \min\!\left(1, \frac{c}{\|g\|_2}\right)

    All leaves share one factor, so the update keeps its direction (unlike per-leaf or
    per-element clipping). Stateless: the state is ``optax.EmptyState()``.
    """
    _checks.check_positive("max_norm", max_norm)

    def update_fn(updates, state, params=None):
        del params
        norm = global_norm(updates)
        # where() rather than min(1, c/norm): a zero gradient gives 0/0 in the ratio.
        factor = jnp.where(norm > max_norm, max_norm / jnp.maximum(norm, 1e-38), 1.0)
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def clip_by_value(limit: float) -> optax.GradientTransformation:
    r"""Clip every element to :math:`[-c, c]`: :math:`u_i = \min(\max(g_i, -c), c)`.

    Changes the update's direction when some elements are clipped; stateless.
    """
    _checks.check_positive("limit", limit)

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: jnp.clip(g, -limit, limit), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
