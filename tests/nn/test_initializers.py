"""Initialisers: fans, moments against the closed-form variances, bounds, orthogonality, and the
same distributions as Flax's (jax.nn.initializers) built-ins."""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jaxdl.nn import initializers as inits

KEY = jax.random.PRNGKey(0)


def test_compute_fans():
    assert inits.compute_fans((300, 200)) == (300, 200)
    assert inits.compute_fans((3, 3, 16, 32)) == (144, 288)
    assert inits.compute_fans((7,)) == (7, 7)
    with pytest.raises(ValueError, match="shape"):
        inits.compute_fans(())


class VarianceTest(parameterized.TestCase):
    # (name, variance as a function of (fan_in, fan_out), the flax built-in with the same law)
    @parameterized.parameters(
        ("glorot_uniform", lambda i, o: 2 / (i + o), jax.nn.initializers.glorot_uniform),
        ("glorot_normal", lambda i, o: 2 / (i + o), jax.nn.initializers.glorot_normal),
        ("he_uniform", lambda i, o: 2 / i, jax.nn.initializers.he_uniform),
        ("he_normal", lambda i, o: 2 / i, jax.nn.initializers.he_normal),
        ("lecun_uniform", lambda i, o: 1 / i, jax.nn.initializers.lecun_uniform),
        ("lecun_normal", lambda i, o: 1 / i, jax.nn.initializers.lecun_normal),
    )
    def test_variance_and_bounds(self, name, variance, flax_init):
        shape = (3, 3, 64, 128)  # fan_in 576, fan_out 1152; 73,728 draws
        fan_in, fan_out = inits.compute_fans(shape)
        w = np.asarray(inits.get(name)(KEY, shape), np.float64)
        v = variance(fan_in, fan_out)
        # Sample variance of 73,728 draws: relative standard error below 1%; allow 4%.
        np.testing.assert_allclose(w.var(), v, rtol=0.04)
        assert abs(w.mean()) < 4 * np.sqrt(v / w.size)
        if name.endswith("uniform"):
            assert np.abs(w).max() <= np.sqrt(3 * v) + 1e-7
        else:  # truncated at two (pre-rescaling) standard deviations
            assert np.abs(w).max() <= 2 * np.sqrt(v) / 0.87962566 + 1e-6
        ref = np.asarray(flax_init()(jax.random.PRNGKey(1), shape), np.float64)
        np.testing.assert_allclose(w.var(), ref.var(), rtol=0.05)
        np.testing.assert_allclose(np.abs(w).max(), np.abs(ref).max(), rtol=0.05)

    def test_dtype_and_key_determinism(self):
        init = inits.he_normal()
        a = init(KEY, (5, 4), jnp.bfloat16)
        assert a.dtype == jnp.bfloat16 and a.shape == (5, 4)
        np.testing.assert_array_equal(init(KEY, (5, 4)), init(KEY, (5, 4)))


class OrthogonalTest(parameterized.TestCase):
    @parameterized.parameters(((64, 32),), ((32, 64),), ((3, 3, 8, 16),), ((40, 40),))
    def test_orthonormal(self, shape):
        w = np.asarray(inits.orthogonal(gain=2.0)(KEY, shape), np.float64)
        assert w.shape == shape
        m = w.reshape(-1, shape[-1])
        small = min(m.shape)
        gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
        np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=1e-5)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="at least 2 dimensions"):
            inits.orthogonal()(KEY, (5,))
        with pytest.raises(ValueError, match="gain"):
            inits.orthogonal(0.0)


def test_plugs_into_flax_layers():
    layer = fnn.Dense(256, kernel_init=inits.he_uniform())
    params = layer.init(KEY, jnp.ones((1, 512)))
    k = np.asarray(params["params"]["kernel"])
    assert np.abs(k).max() <= np.sqrt(6 / 512) + 1e-7
    np.testing.assert_allclose(k.var(), 2 / 512, rtol=0.05)


def test_zeros_normal_and_names():
    assert not np.any(inits.get("zeros")(KEY, (3, 3)))
    w = inits.get("normal", stddev=0.01)(KEY, (400, 400))
    np.testing.assert_allclose(np.std(w), 0.01, rtol=0.02)
    assert inits.xavier_uniform is inits.glorot_uniform
    with pytest.raises(ValueError, match="unknown initializer 'glorot'"):
        inits.get("glorot")
    with pytest.raises(ValueError, match="mode"):
        inits.variance_scaling(1.0, "fan_sum", "uniform")
    with pytest.raises(ValueError, match="distribution"):
        inits.variance_scaling(1.0, "fan_in", "cauchy")
