r"""Reduce the step size when a monitored value stops improving, as an optax transform.

Usage (optax.contrib's convention)::

    opt = optim.chain(optim.adam(1e-3), optim.reduce_on_plateau(factor=0.5, patience=3))
    updates, opt_state = opt.update(grads, opt_state, params, value=val_loss)

The current multiplier is ``ReduceOnPlateauState.scale``; :func:`jaxdl.optim.get_learning_rate`
folds it into the effective learning rate.

Improvement test (``mode="min"``): a value :math:`v` improves on the best :math:`b` when

.. math:: v < b - \mathrm{rtol}\,|b| - \mathrm{atol}.

The :math:`|b|` matters: the common form :math:`v < (1-\mathrm{rtol})\, b` (PyTorch's ``rel``
mode, ``optax.contrib.reduce_on_plateau``) moves the bar *up* when :math:`b < 0`, so a value
slightly worse than a negative best counts as an improvement and the rate is never reduced on,
e.g., a negative log-likelihood or an ELBO. ``mode="max"`` applies the same test to :math:`-v`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from jaxdl.optim import _checks
from jaxdl.optim.transforms import _increment


class ReduceOnPlateauState(NamedTuple):
    """State of :func:`reduce_on_plateau` (all scalars).

    ``scale`` (float32): the multiplier applied to updates, starts at 1. ``best_value``
    (float32): best (averaged) value seen, in the monitored quantity's own units.
    ``plateau_count`` / ``cooldown_count`` (int32): decisions without improvement since the last
    improvement or reduction / decisions left in the cool-down. ``count`` (int32) and
    ``avg_value`` (float32): values accumulated towards the next decision.
    """

    scale: jax.Array
    best_value: jax.Array
    plateau_count: jax.Array
    cooldown_count: jax.Array
    count: jax.Array
    avg_value: jax.Array


def is_improvement(
    value: ArrayLike,
    best: ArrayLike | None,
    mode: str = "min",
    atol: float = 0.0,
    rtol: float = 0.0,
) -> ArrayLike:
    r"""The one "did it improve" rule of jaxdl (plateau schedules, early stopping, checkpoints).

    With :math:`s = 1` for ``mode="min"`` (a loss) and :math:`s = -1` for ``"max"`` (an
    accuracy), ``value`` improves on ``best`` when

    .. math:: s\,v < s\,b - \text{rtol}\,|b| - \text{atol},

    and always when ``best`` is ``None`` or infinite (nothing seen yet). Keras's ``min_delta`` is
    ``atol`` (with ``rtol = 0``); PyTorch's ``threshold`` in ``rel`` mode is ``rtol``. The rule is
    symmetric in sign, so negative losses behave like any others. Works on Python floats (returns
    a ``bool``) and, inside ``jit``, on arrays.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    sign = 1.0 if mode == "min" else -1.0
    if best is None:
        return True
    if isinstance(value, jax.Array) or isinstance(best, jax.Array):
        v, b = sign * jnp.asarray(value), sign * jnp.asarray(best)
        # Guard the infinite initial best: inf - rtol * inf is NaN, and NaN compares False.
        bar = jnp.where(jnp.isfinite(b), b - rtol * jnp.abs(b) - atol, b)
        return v < bar
    v, b = sign * float(value), sign * float(best)
    if math.isinf(b) and b > 0:
        return not math.isnan(v)
    return v < b - rtol * abs(b) - atol


def reduce_on_plateau(
    factor: float = 0.5,
    patience: int = 3,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: float = 0.0,
    mode: str = "min",
) -> optax.GradientTransformationExtraArgs:
    r"""Multiply updates by a scale that drops by ``factor`` after ``patience`` bad decisions.

    Every ``accumulation_size`` calls (1: every call; use e.g. the number of batches per epoch
    when passing per-batch losses) the mean of the ``value`` arguments is compared with the best
    so far (see the module docstring for the test). Improvement resets the plateau counter;
    otherwise, outside a cool-down, the counter grows and when it reaches ``patience`` the scale
    becomes :math:`\max(s \cdot \text{factor}, \text{min\_scale})`, the counter resets and a
    cool-down of ``cooldown`` decisions starts, during which the counter stays at 0 (the best
    value is still tracked). This is the logic of PyTorch's ``ReduceLROnPlateau`` and of
    ``optax.contrib.reduce_on_plateau`` (identical to the latter for positive values), with the
    relative bar taken on :math:`|b|`; Keras's ``min_delta`` is ``atol`` with ``rtol=0``, and Keras
    already counts the last cool-down epoch towards ``patience``.

    Args:
        factor: multiplier in (0, 1).
        patience: decisions without improvement before a reduction (>= 1).
        rtol, atol: relative and absolute improvement thresholds (>= 0).
        cooldown: decisions to wait after a reduction before counting again (>= 0).
        accumulation_size: ``update`` calls averaged into one decision (>= 1).
        min_scale: lower bound of the scale (>= 0).
        mode: ``"min"`` (a loss) or ``"max"`` (an accuracy).
    """
    v = _checks._concrete(factor)
    if v is None or not 0.0 < v < 1.0:
        raise ValueError(f"factor must lie in (0, 1), got {factor!r}")
    if int(patience) != patience or patience < 1:
        raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
    _checks.check_non_negative("rtol", rtol)
    _checks.check_non_negative("atol", atol)
    if int(cooldown) != cooldown or cooldown < 0:
        raise ValueError(f"cooldown must be an integer >= 0, got {cooldown!r}")
    if int(accumulation_size) != accumulation_size or accumulation_size < 1:
        raise ValueError(f"accumulation_size must be an integer >= 1, got {accumulation_size!r}")
    _checks.check_non_negative("min_scale", min_scale)
    _checks.check_choice("mode", mode, ("min", "max"))
    sign = 1.0 if mode == "min" else -1.0

    def init_fn(params):
        del params
        return ReduceOnPlateauState(
            scale=jnp.ones([], jnp.float32),
            best_value=jnp.asarray(sign * jnp.inf, jnp.float32),
            plateau_count=jnp.zeros([], jnp.int32),
            cooldown_count=jnp.zeros([], jnp.int32),
            count=jnp.zeros([], jnp.int32),
            avg_value=jnp.zeros([], jnp.float32),
        )

    def decide(state: ReduceOnPlateauState) -> ReduceOnPlateauState:
        improved = is_improvement(state.avg_value, state.best_value, mode, atol=atol, rtol=rtol)
        in_cooldown = state.cooldown_count > 0
        bad = jnp.where(improved | in_cooldown, 0, state.plateau_count + 1)
        reduce = bad >= patience
        scale = jnp.where(reduce, jnp.maximum(state.scale * factor, min_scale), state.scale)
        cooldown_count = jnp.where(
            reduce, cooldown, jnp.where(in_cooldown, state.cooldown_count - 1, 0)
        )
        return ReduceOnPlateauState(
            scale=scale.astype(jnp.float32),
            best_value=jnp.where(improved, state.avg_value, state.best_value),
            plateau_count=jnp.where(reduce, 0, bad).astype(jnp.int32),
            cooldown_count=cooldown_count.astype(jnp.int32),
            count=jnp.zeros([], jnp.int32),
            avg_value=jnp.zeros([], jnp.float32),
        )

    def update_fn(updates, state, params=None, *, value: ArrayLike, **extra_args):
        del params, extra_args
        count = _increment(state.count)
        value = jnp.asarray(value, jnp.float32)
        if value.shape != ():
            raise ValueError(f"value must be a scalar, got shape {value.shape}")
        # Running mean of the values since the last decision.
        avg = state.avg_value + (value - state.avg_value) / count.astype(jnp.float32)
        state = state._replace(count=count, avg_value=avg)
        state = jax.lax.cond(count >= accumulation_size, decide, lambda s: s, state)
        out = jax.tree.map(lambda g: state.scale.astype(g.dtype) * g, updates)
        return out, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
