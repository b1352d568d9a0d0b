"""``nn.bias_add`` and ``nn.column_sum`` against ``y + b`` and JAX's own gradient of it."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import nn


@pytest.mark.parametrize("shape", [(5, 3), (2, 7, 6, 4), (3, 1, 2)])
def test_value_and_gradients_equal_the_plain_broadcast_add(shape):
    r = np.random.default_rng(0)
    y = jnp.asarray(r.normal(size=shape), jnp.float32)
    b = jnp.asarray(r.normal(size=shape[-1:]), jnp.float32)
    w = jnp.asarray(r.normal(size=shape), jnp.float32)  # a different cotangent per element
    plain = lambda y, b: y + b.reshape((1,) * (y.ndim - 1) + b.shape)  # noqa: E731
    chex.assert_trees_all_equal(nn.bias_add(y, b), plain(y, b))
    grads = jax.grad(lambda y, b: jnp.sum(w * jnp.tanh(nn.bias_add(y, b))), (0, 1))(y, b)
    ref = jax.grad(lambda y, b: jnp.sum(w * jnp.tanh(plain(y, b))), (0, 1))(y, b)
    chex.assert_trees_all_close(grads, ref, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(nn.column_sum(w), w.reshape(-1, shape[-1]).sum(0), atol=1e-5)


def test_jit_vmap_and_second_order():
    r = np.random.default_rng(1)
    y = jnp.asarray(r.normal(size=(4, 6, 3)), jnp.float32)
    b = jnp.asarray(r.normal(size=(4, 3)), jnp.float32)  # one bias per vmapped problem

    def loss(y, b):
        return jnp.sum(jnp.sin(nn.bias_add(y, b)) ** 2)

    g = jax.jit(jax.vmap(jax.grad(loss, 1)))(y, b)
    ref = jnp.stack([jax.grad(loss, 1)(y[i], b[i]) for i in range(4)])
    chex.assert_trees_all_close(g, ref, rtol=1e-5, atol=1e-5)
    # the backward is linear in the cotangent, so reverse-over-reverse works too
    hess_diag = jax.grad(lambda b: jnp.sum(jax.grad(loss, 1)(y[0], b)))(b[0])
    ref_diag = jax.grad(
        lambda b: jnp.sum(jax.grad(lambda b: jnp.sum(jnp.sin(y[0] + b[None]) ** 2))(b))
    )(b[0])
    chex.assert_trees_all_close(hess_diag, ref_diag, rtol=1e-4, atol=1e-5)
