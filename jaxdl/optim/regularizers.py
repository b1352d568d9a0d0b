r"""Regularizers written as gradient transformations: weight decay (L2 / decoupled) and L1.

Where they sit in a chain decides what they mean. Before an adaptive scaling (``chain(add_decayed_
weights(λ), scale_by_adam(), ...)``) the decay term is a gradient of :math:`\tfrac{λ}{2}\|θ\|^2`
and gets divided by :math:`\sqrt{\hat v}` with the rest: that is Adam + L2. After the scaling and
before the learning rate (:func:`jaxdl.optim.adamw`) it is decoupled weight decay
(Loshchilov & Hutter 2019), shrinking every weight by the same fraction :math:`ηλ` per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdl.optim import _checks
from jaxdl.optim.transforms import ScalarOrSchedule, _increment

Mask = Any | Callable[[Any], Any]


class RegularizerState(NamedTuple):
    """State of :func:`add_decayed_weights` and :func:`add_l1`: updates made (int32, shape ())."""

    count: jax.Array


def _path_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def weight_decay_mask(params: Any, exclude: Sequence[str] = ("bias", "scale")) -> Any:
    """The usual decay mask: ``True`` for weight matrices and kernels, ``False`` for the rest.

    A leaf is decayed when it has at least two dimensions and its name (the last key of its path)
    is not in ``exclude``. This leaves out biases and the scales and offsets of BatchNorm and
    LayerNorm -- decaying those pulls a normalised layer's output towards zero without any
    regularising effect on the function class (the practice of Goyal et al. 2017 and of most
    transformer recipes). Returns a pytree of Python bools shaped like ``params``.
    """
    exclude = tuple(exclude)

    def decide(path, leaf):
        name = _path_name(path[-1]) if path else ""
        return bool(jnp.ndim(leaf) >= 2 and name not in exclude)

    return jax.tree_util.tree_map_with_path(decide, params)


def _masked_map(fn, updates, params, mask):
    if mask is None:
        return jax.tree.map(fn, updates, params)
    m = mask(params) if callable(mask) else mask

    def apply(flag, u, p):
        if not isinstance(flag, bool | jnp.bool_):
            raise ValueError(f"mask leaves must be Python bools, got {type(flag).__name__}")
        return jax.tree.map(fn, u, p) if flag else u

    # The mask may be a prefix of the parameter tree: one flag then covers a whole subtree.
    return jax.tree.map(apply, m, updates, params)


def _coefficient(name: str, value: ScalarOrSchedule):
    if callable(value):
        return value
    _checks.check_non_negative(name, value)
    return lambda count: value


def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0, mask: Mask | None = None
) -> optax.GradientTransformation:
    r"""Add the decay term: :math:`u_t = g_t + λ_t θ_{t-1}` on the leaves selected by ``mask``.

    Args:
        weight_decay: :math:`λ \ge 0`, or a schedule ``step -> λ`` (called with the number of
            updates made before this one).
        mask: ``None`` (decay everything), a pytree of Python bools shaped like the parameters
            (or a prefix of them), or a callable ``params -> such a pytree`` such as
            :func:`weight_decay_mask`. ``True`` means "decay this leaf".
    """
    coef = _coefficient("weight_decay", weight_decay)

    def init_fn(params):
        del params
        return RegularizerState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "add_decayed_weights needs params: call update(updates, state, params)"
            )
        lam = coef(state.count)
        out = _masked_map(lambda g, p: g + jnp.asarray(lam, g.dtype) * p, updates, params, mask)
        return out, RegularizerState(count=_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def add_l1(l1: ScalarOrSchedule = 0.0, mask: Mask | None = None) -> optax.GradientTransformation:
    r"""Add the L1 subgradient: :math:`u_t = g_t + λ\, \mathrm{sign}(θ_{t-1})` (sign(0) = 0).

    This is the gradient of :math:`λ\|θ\|_1` (Tibshirani 1996) taken with the subgradient 0 at
    zero, as TensorFlow and PyTorch autodiff of ``abs`` do; plain (sub)gradient steps do not make
    weights exactly zero -- use a proximal method for that. Arguments as :func:`add_decayed_weights`.
    """
    coef = _coefficient("l1", l1)

    def init_fn(params):
        del params
        return RegularizerState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("add_l1 needs params: call update(updates, state, params)")
        lam = coef(state.count)
        out = _masked_map(
            lambda g, p: g + jnp.asarray(lam, g.dtype) * jnp.sign(p).astype(g.dtype),
            updates,
            params,
            mask,
        )
        return out, RegularizerState(count=_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)
