"""jaxdl.nn.materialize: the identity in value and gradient, and still a stored buffer after XLA's
optimisations (if a future XLA simplifies it away, the ResNet speed-up is gone and this fails)."""

import chex
import jax
import jax.numpy as jnp
import pytest

from jaxdl import nn as jnn


@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4), (2, 4, 4, 3)])
def test_identity_in_value_and_gradient(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    chex.assert_trees_all_equal(jax.jit(jnn.materialize)(x), x)
    w = jax.random.normal(jax.random.key(1), shape)
    g = jax.grad(lambda x: jnp.sum(w * jnp.sin(jnn.materialize(x))))(x)
    chex.assert_trees_all_close(g, w * jnp.cos(x), atol=1e-6)


def test_survives_xla_as_a_stored_buffer():
    def f(x):
        y = jnn.materialize(jnp.maximum(x * 2.0 + 1.0, 0.0))
        return y + jnp.transpose(y, (3, 1, 2, 0))[0, 0, 0, 0]

    hlo = jax.jit(f).lower(jnp.ones((4, 3, 3, 2))).compile().as_text()
    assert "dynamic-update-slice" in hlo
