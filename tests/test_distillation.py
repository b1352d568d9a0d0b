"""distillation_loss against a NumPy formula, its T^2 scaling, and its gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import losses


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_distill(z, t, temp):
    p, q = _np_softmax(t / temp), _np_softmax(z / temp)
    return temp**2 * np.sum(p * (np.log(p) - np.log(q)), -1)


@pytest.mark.parametrize("temp", [1.0, 2.0, 5.0])
def test_matches_numpy_formula(temp):
    rng = np.random.default_rng(0)
    z, t = rng.normal(size=(2, 6, 10)) * 3, rng.normal(size=(2, 6, 10)) * 3
    ref = _np_distill(z, t, temp)
    got = losses.distillation_loss(
        z.astype(np.float32), t.astype(np.float32), temp, reduction="none"
    )
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses.distillation_loss(z, t, temp), ref.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        losses.distillation_loss(z, t, temp, reduction="sum"), ref.sum(), rtol=1e-5
    )


def test_zero_when_student_equals_teacher_and_mask():
    z = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5)), jnp.float32)
    assert float(losses.distillation_loss(z, z)) == pytest.approx(0.0, abs=1e-6)
    t = z.at[3].add(5.0)
    mask = jnp.array([True, True, True, False])
    assert float(losses.distillation_loss(z, t, mask=mask)) == pytest.approx(0.0, abs=1e-6)


def test_gradient_is_T_times_prob_difference_and_T2_scaling():
    rng = np.random.default_rng(2)
    z = jnp.asarray(rng.normal(size=(3, 7)), jnp.float32)
    t = jnp.asarray(rng.normal(size=(3, 7)), jnp.float32)
    for temp in (1.0, 4.0, 20.0):
        g = jax.grad(lambda z: losses.distillation_loss(z, t, temp, reduction="sum"))(z)
        want = temp * (jax.nn.softmax(z / temp) - jax.nn.softmax(t / temp))
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)
    # without T^2 the gradient would shrink like 1/T; with it, for large T it tends to the
    # logit-matching gradient (z - t)/K for zero-mean logits (Hinton et al. 2015, section 2.1)
    zc, tc = z - z.mean(-1, keepdims=True), t - t.mean(-1, keepdims=True)
    g = jax.grad(lambda z: losses.distillation_loss(z, tc, 200.0, reduction="sum"))(zc)
    np.testing.assert_allclose(g, (zc - tc) / 7, rtol=2e-2, atol=1e-4)
    # no gradient into the teacher
    gt = jax.grad(lambda t: losses.distillation_loss(z, t, 2.0))(t)
    assert float(jnp.abs(gt).max()) == 0.0


def test_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        losses.distillation_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), 0.0)
    with pytest.raises(ValueError, match="same shape"):
        losses.distillation_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="reduction"):
        losses.distillation_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), reduction="avg")
