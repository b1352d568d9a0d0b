r"""Learning-rate schedules: functions ``step -> value`` of an integer step (0 on the first
update) that trace under ``jit`` (no Python branching on the step), for ``learning_rate=``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdl.optim import _checks

Schedule = Callable[[ArrayLike], jax.Array]


def _positive_int(name: str, value: int) -> None:
    if int(value) != value or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def constant(value: float) -> Schedule:
    r""":math:`η(t) = η_0`."""
    _checks.check_non_negative("value", value)
    return lambda step: jnp.full([], value, jnp.float32)


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    r"""Exponential decay:

    .. math:: η(t) = η_0\, r^{\,p}, \qquad p = \frac{\max(t - t_0, 0)}{T}
              \quad(\text{staircase: } p = \lfloor p \rfloor)

    held at :math:`η_0` before ``transition_begin`` :math:`t_0` and bounded by ``end_value``
    (a floor when :math:`r < 1`, a ceiling when :math:`r > 1`). Same arguments as
    ``optax.exponential_decay``; Keras's ``ExponentialDecay(initial_learning_rate, decay_steps,
    decay_rate, staircase)`` is the case :math:`t_0 = 0`.
    """
    _checks.check_non_negative("init_value", init_value)
    _positive_int("transition_steps", transition_steps)
    _checks.check_non_negative("decay_rate", decay_rate)
    if int(transition_begin) != transition_begin or transition_begin < 0:
        raise ValueError(f"transition_begin must be an integer >= 0, got {transition_begin!r}")

    def schedule(step):
        t = jnp.maximum(jnp.asarray(step, jnp.float32) - transition_begin, 0.0)
        p = t / transition_steps
        if staircase:
            p = jnp.floor(p)
        value = init_value * jnp.asarray(decay_rate, jnp.float32) ** p
        if end_value is not None:
            value = (
                jnp.maximum(value, end_value) if decay_rate < 1 else jnp.minimum(value, end_value)
            )
        return value.astype(jnp.float32)

    return schedule


def cosine_decay(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> Schedule:
    r"""Cosine decay to a floor (Loshchilov & Hutter 2017, SGDR without restarts):

    .. math:: η(t) = η_0 \left[(1-α)\, c(t)^{k} + α\right], \qquad
              c(t) = \tfrac12\left(1 + \cos\frac{π \min(t, T)}{T}\right)

    so :math:`η(0) = η_0` and :math:`η(t) = αη_0` for :math:`t \ge T`. ``exponent`` :math:`k`
    is 1 in the usual schedule. Same arguments as ``optax.cosine_decay_schedule``.
    """
    _checks.check_non_negative("init_value", init_value)
    _positive_int("decay_steps", decay_steps)
    v = _checks._concrete(alpha)
    if v is not None and not 0.0 <= v <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")

    def schedule(step):
        t = jnp.minimum(jnp.asarray(step, jnp.float32), decay_steps)
        c = 0.5 * (1.0 + jnp.cos(math.pi * t / decay_steps))
        return (init_value * ((1.0 - alpha) * c**exponent + alpha)).astype(jnp.float32)

    return schedule


def warmup_cosine_decay(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> Schedule:
    r"""Linear warm-up then cosine decay (Goyal et al. 2017; Loshchilov & Hutter 2017):

    .. math::
        η(t) = \begin{cases}
            η_0 + (η_p - η_0)\, t / W & t < W \\
            η_e + (η_p - η_e)\, c^{k}, \quad c = \tfrac12\left(1 + \cos\frac{π \min(t-W,\ T-W)}{T-W}\right)
              & t \ge W
        \end{cases}

    ``decay_steps`` :math:`T` counts the warm-up, as in ``optax.warmup_cosine_decay_schedule``:
    the schedule reaches ``end_value`` :math:`η_e` at step :math:`T`.
    """
    _checks.check_non_negative("init_value", init_value)
    _checks.check_non_negative("peak_value", peak_value)
    _checks.check_non_negative("end_value", end_value)
    if int(warmup_steps) != warmup_steps or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if int(decay_steps) != decay_steps or decay_steps <= warmup_steps:
        raise ValueError(
            f"decay_steps must be an integer > warmup_steps={warmup_steps}, got {decay_steps!r}"
        )
    cos_steps = decay_steps - warmup_steps

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        warm = init_value + (peak_value - init_value) * t / max(warmup_steps, 1)
        s = jnp.clip(t - warmup_steps, 0.0, cos_steps)
        c = 0.5 * (1.0 + jnp.cos(math.pi * s / cos_steps))
        decayed = end_value + (peak_value - end_value) * c**exponent
        return jnp.where(t < warmup_steps, warm, decayed).astype(jnp.float32)

    return schedule


def piecewise_constant(
    init_value: float, boundaries_and_scales: Mapping[int, float] | None = None
) -> Schedule:
    r"""Step decay: :math:`η(t) = η_0 \prod_{b_i \le t} s_i`.

    ``boundaries_and_scales`` maps a step :math:`b_i` to the factor :math:`s_i` applied from that
    step on (``{30_000: 0.1, 60_000: 0.1}`` divides by 10 twice), as
    ``optax.piecewise_constant_schedule``. Keras's ``PiecewiseConstantDecay(boundaries, values)``
    takes absolute values instead; its boundaries are exclusive (the new value starts at
    :math:`b_i + 1`).
    """
    _checks.check_non_negative("init_value", init_value)
    items = sorted((boundaries_and_scales or {}).items())
    for b, s in items:
        if int(b) != b or b < 0:
            raise ValueError(f"boundaries_and_scales keys must be integers >= 0, got {b!r}")
        _checks.check_non_negative("boundaries_and_scales value", s)

    def schedule(step):
        t = jnp.asarray(step)
        value = jnp.full([], init_value, jnp.float32)
        for b, s in items:
            value = value * jnp.where(t >= b, jnp.float32(s), jnp.float32(1.0))
        return value

    return schedule
