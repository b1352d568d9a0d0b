import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import nn
from jaxdl.nn.pooling import max_pool_reference


class MaxPoolTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_reduce_window_forward_and_gradient(self):
        for shape in [(2, 26, 26, 3), (1, 11, 11, 4), (3, 5, 7, 2)]:
            x = jnp.asarray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
            pool = self.variant(nn.max_pool)
            chex.assert_trees_all_close(pool(x), max_pool_reference(x))
            weights = jnp.asarray(np.random.default_rng(1).normal(size=pool(x).shape), jnp.float32)
            g = jax.grad(lambda x: jnp.sum(pool(x) * weights))(x)
            g_ref = jax.grad(lambda x: jnp.sum(max_pool_reference(x) * weights))(x)
            chex.assert_trees_all_close(g, g_ref)

    def test_window_three(self):
        x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 9, 10, 1)).astype(np.float32))
        chex.assert_trees_all_close(nn.max_pool(x, 3), max_pool_reference(x, 3))


def test_bad_inputs():
    with pytest.raises(ValueError, match="rank 4"):
        nn.max_pool(jnp.zeros((4, 4)))
    with pytest.raises(ValueError, match="smaller"):
        nn.max_pool(jnp.zeros((1, 1, 4, 1)))
