"""Schedules against optax's; reduce_on_plateau against optax.contrib and a plain-Python loop."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest

from jaxdl import optim

STEPS = jnp.arange(0, 130)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (optim.constant(0.3), optax.constant_schedule(0.3)),
        (optim.exponential_decay(0.1, 10, 0.5), optax.exponential_decay(0.1, 10, 0.5)),
        (
            optim.exponential_decay(0.1, 7, 0.8, transition_begin=20, staircase=True),
            optax.exponential_decay(0.1, 7, 0.8, transition_begin=20, staircase=True),
        ),
        (
            optim.exponential_decay(0.1, 10, 0.5, end_value=0.01),
            optax.exponential_decay(0.1, 10, 0.5, end_value=0.01),
        ),
        (
            optim.exponential_decay(0.01, 10, 1.5, end_value=0.05),
            optax.exponential_decay(0.01, 10, 1.5, end_value=0.05),
        ),
        (optim.cosine_decay(0.2, 100), optax.cosine_decay_schedule(0.2, 100)),
        (
            optim.cosine_decay(0.2, 100, alpha=0.1, exponent=2.0),
            optax.cosine_decay_schedule(0.2, 100, alpha=0.1, exponent=2.0),
        ),
        (
            optim.warmup_cosine_decay(0.0, 0.5, 10, 100, end_value=0.01),
            optax.warmup_cosine_decay_schedule(0.0, 0.5, 10, 100, end_value=0.01),
        ),
        (
            optim.warmup_cosine_decay(0.05, 0.5, 0, 60),
            optax.warmup_cosine_decay_schedule(0.05, 0.5, 0, 60),
        ),
        (
            optim.piecewise_constant(0.1, {30: 0.1, 60: 0.5, 90: 0.1}),
            optax.piecewise_constant_schedule(0.1, {30: 0.1, 60: 0.5, 90: 0.1}),
        ),
    ],
)
def test_schedule_matches_optax(ours, theirs):
    got = jax.jit(jax.vmap(ours))(STEPS)
    want = jnp.stack([jnp.asarray(theirs(s), jnp.float32) for s in STEPS])
    chex.assert_shape(got, STEPS.shape)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def test_schedule_formulas_by_hand():
    np.testing.assert_allclose(optim.exponential_decay(1.0, 10, 0.5, staircase=True)(19), 0.5)
    np.testing.assert_allclose(optim.exponential_decay(1.0, 10, 0.5)(15), 2**-1.5, rtol=1e-6)
    np.testing.assert_allclose(optim.cosine_decay(1.0, 100, alpha=0.2)(50), 0.6, rtol=1e-6)
    np.testing.assert_allclose(optim.cosine_decay(1.0, 100, alpha=0.2)(500), 0.2, rtol=1e-6)
    w = optim.warmup_cosine_decay(0.0, 1.0, 10, 110, end_value=0.0)
    np.testing.assert_allclose([w(5), w(10), w(60), w(110)], [0.5, 1.0, 0.5, 0.0], atol=1e-6)
    p = optim.piecewise_constant(1.0, {10: 0.1})
    np.testing.assert_allclose([p(9), p(10)], [1.0, 0.1], rtol=1e-6)


def _plateau_reference(values, factor, patience, rtol, atol, cooldown, min_scale, mode):
    """Plain-Python ReduceLROnPlateau: the relative bar uses |best|, so it works for best < 0."""
    sign = 1.0 if mode == "min" else -1.0
    best, wait, cool, scale, out = sign * math.inf, 0, 0, 1.0, []
    for v in values:
        x, b = sign * v, sign * best
        improved = x < (b - rtol * abs(b) - atol if math.isfinite(b) else b)
        in_cool = cool > 0
        if in_cool:
            cool -= 1
            wait = 0
        if improved:
            best, wait = v, 0
        elif not in_cool:
            wait += 1
            if wait >= patience:
                scale, cool, wait = max(scale * factor, min_scale), cooldown, 0
        out.append(scale)
    return out


def _scales(opt, values):
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    update = jax.jit(opt.update)
    out = []
    for v in values:
        u, state = update({"w": jnp.ones(2)}, state, params, value=v)
        out.append(float(u["w"][0]))
    return out


POSITIVE = [5.0, 4.0, 4.0, 3.99, 4.1, 4.2, 2.0, 2.0, 2.0, 2.0, 2.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("cooldown", [0, 2])
def test_plateau_matches_optax_contrib_on_positive_values(cooldown):
    kw = dict(factor=0.5, patience=2, rtol=1e-2, atol=0.0, cooldown=cooldown, min_scale=0.1)
    got = _scales(optim.reduce_on_plateau(**kw), POSITIVE)
    want = _scales(optax.contrib.reduce_on_plateau(**kw), POSITIVE)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got, _plateau_reference(POSITIVE, mode="min", **kw), rtol=1e-6)
    assert min(got) < 1.0  # the sequence really triggers reductions


def test_plateau_is_correct_for_negative_values():
    # best = -10; -9.95 is WORSE. With the (1 - rtol) * best bar (-9.0 for rtol=0.1) it would
    # count as an improvement every time and the rate would never drop.
    values = [-10.0] + [-9.95] * 6
    kw = dict(factor=0.5, patience=2, rtol=0.1, atol=0.0, cooldown=0, min_scale=0.0)
    got = _scales(optim.reduce_on_plateau(**kw), values)
    want = _plateau_reference(values, mode="min", **kw)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got, [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125], rtol=1e-6)
    # optax.contrib's relative bar is fooled by the sign (documented pitfall).
    assert _scales(optax.contrib.reduce_on_plateau(**kw), values)[-1] == 1.0
    # A real improvement of a negative loss (by more than rtol * |best|) still resets the count.
    improving = [-1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
    assert _scales(optim.reduce_on_plateau(**kw), improving) == [1.0] * 6


def test_plateau_mode_max_and_accumulation():
    acc = [0.5, 0.6, 0.6, 0.6, 0.6, 0.61, 0.7, 0.7, 0.7]
    kw = dict(factor=0.2, patience=2, rtol=0.0, atol=0.005, cooldown=1, min_scale=0.0)
    got = _scales(optim.reduce_on_plateau(mode="max", **kw), acc)
    np.testing.assert_allclose(got, _plateau_reference(acc, mode="max", **kw), rtol=1e-6)
    assert got[-1] < 1.0
    # accumulation_size=3 decides on the mean of each block of three values.
    values = [3.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.1, 1.9, 2.0, 5.0, 0.0, 1.0]
    kw = dict(factor=0.5, patience=1, rtol=0.0, atol=0.0, cooldown=0, min_scale=0.0)
    got = _scales(optim.reduce_on_plateau(accumulation_size=3, **kw), values)
    # block means: 2, 2, 2, 2 -> decisions at calls 3, 6, 9, 12: no improvement after the first.
    np.testing.assert_allclose(got, [1, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125])


def test_plateau_in_a_chain_under_jit_scales_the_update_and_exposes_scale():
    opt = optim.chain(optim.sgd(0.1), optim.reduce_on_plateau(factor=0.5, patience=1))
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    traces = []

    @jax.jit
    def step(state, loss):
        traces.append(1)
        return opt.update({"w": jnp.ones(3)}, state, params, value=loss)

    updates = []
    for loss in [1.0, 1.0, 1.0]:
        u, state = step(state, loss)
        updates.append(float(u["w"][0]))
    np.testing.assert_allclose(updates, [-0.1, -0.05, -0.025], rtol=1e-6)
    assert float(state[1].scale) == 0.25
    assert optim.get_learning_rate(state) == pytest.approx(0.025)
    assert len(traces) == 1
