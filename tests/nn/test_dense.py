"""jaxdl.nn.Dense against flax.linen.Dense: the same parameters from the same key, values and
gradients, with and without bias."""

import chex
import flax.linen as fnn
import jax
import jax.numpy as jnp
import pytest

from jaxdl import nn as jnn


@pytest.mark.parametrize("shape,use_bias", [((6, 5), True), ((2, 3, 7), True), ((4, 5), False)])
def test_parameters_values_and_gradients_equal_flax(shape, use_bias):
    x = jax.random.normal(jax.random.key(0), shape)
    ours, ref = jnn.Dense(9, use_bias=use_bias), fnn.Dense(9, use_bias=use_bias)
    v = ref.init(jax.random.key(1), x)
    chex.assert_trees_all_equal(ours.init(jax.random.key(1), x), v)
    v = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), v)
    w = jax.random.normal(jax.random.key(3), shape[:-1] + (9,))

    def loss(module, v, x):
        return jnp.sum(w * jnp.tanh(module.apply(v, x)))

    chex.assert_trees_all_close(ours.apply(v, x), ref.apply(v, x), atol=1e-6)
    g1 = jax.jit(jax.grad(lambda v, x: loss(ours, v, x), (0, 1)))(v, x)
    g2 = jax.grad(lambda v, x: loss(ref, v, x), (0, 1))(v, x)
    chex.assert_trees_all_close(g1, g2, rtol=1e-5, atol=1e-6)


def test_dtype_and_bad_input():
    x = jnp.ones((2, 4), jnp.bfloat16)
    v = fnn.Dense(3).init(jax.random.key(0), x)
    assert jnn.Dense(3).apply(v, x).dtype == fnn.Dense(3).apply(v, x).dtype
    assert jnn.Dense(3, dtype=jnp.bfloat16).apply(v, x.astype(jnp.float32)).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="features must be a positive int"):
        jnn.Dense(0).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="rank >= 1"):
        jnn.Dense(3).init(jax.random.key(0), jnp.ones(()))
