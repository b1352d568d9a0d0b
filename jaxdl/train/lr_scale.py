"""A learning-rate multiplier kept in the optimizer state, for callbacks to change between epochs.

Every optimizer in optax's family ends its update with ``u = -lr * d`` (``d`` the direction the
optimizer computed, decoupled weight decay included), so multiplying the final update by ``s`` is
exactly training with learning rate ``s * lr``. ``fit`` appends this transform to the optimizer it is
given; :class:`jaxdl.train.ReduceLROnPlateau` multiplies ``s`` by its factor. Keeping ``s`` in the
state (not in a Python closure) means changing it never recompiles the step and it is checkpointed
with everything else.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class LRScaleState(NamedTuple):
    scale: jax.Array  # float32 scalar


def scale_learning_rate() -> optax.GradientTransformation:
    """``u <- s * u`` with ``s`` in the state (initially 1)."""

    def init_fn(params):
        del params
        return LRScaleState(scale=jnp.ones((), jnp.float32))

    def update_fn(updates, state, params=None):
        del params
        updates = jax.tree.map(lambda u: (state.scale * u).astype(u.dtype), updates)
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def with_lr_scale(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """``optimizer`` followed by the learning-rate multiplier; its state is ``(inner, LRScaleState)``."""
    return optax.chain(optimizer, scale_learning_rate())


def get_lr_scale(opt_state: Any) -> float:
    return float(opt_state[-1].scale)


def set_lr_scale(opt_state: Any, scale: float) -> Any:
    *inner, last = opt_state
    return (*inner, LRScaleState(scale=jnp.asarray(scale, jnp.float32)))


def find_learning_rate(opt_state: Any) -> float | None:
    """The base learning rate if the optimizer keeps one in its state (``hyperparams`` of
    ``optax.inject_hyperparams`` or a ``learning_rate`` field); ``None`` otherwise."""
    for node in jax.tree.leaves(opt_state, is_leaf=lambda n: hasattr(n, "hyperparams")):
        if hasattr(node, "hyperparams") and "learning_rate" in node.hyperparams:
            return float(node.hyperparams["learning_rate"])
    for node in jax.tree.leaves(opt_state, is_leaf=lambda n: hasattr(n, "learning_rate")):
        if hasattr(node, "learning_rate") and not callable(node.learning_rate):
            return float(node.learning_rate)
    return None
