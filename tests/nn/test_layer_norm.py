"""jaxdl.nn.LayerNorm / layer_norm against flax.linen.LayerNorm (values, gradients, parameter
layout) and float64 finite differences."""

import chex
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import nn as jnn


@pytest.mark.parametrize("shape,eps", [((6, 16), 1e-6), ((2, 5, 32), 1e-5), ((3, 2, 4, 8), 1e-3)])
def test_values_and_gradients_equal_flax(shape, eps):
    x = jax.random.normal(jax.random.key(0), shape) * 3.0 + 1.0
    ours, ref = jnn.LayerNorm(epsilon=eps), fnn.LayerNorm(epsilon=eps)
    v = ref.init(jax.random.key(1), x)
    chex.assert_trees_all_equal_shapes_and_dtypes(ours.init(jax.random.key(1), x), v)
    v = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape), v)
    w = jax.random.normal(jax.random.key(3), shape)  # a different cotangent per element

    def loss(module, v, x):
        return jnp.sum(w * jnp.sin(module.apply(v, x)))

    chex.assert_trees_all_close(ours.apply(v, x), ref.apply(v, x), atol=2e-6)
    g1 = jax.grad(lambda v, x: loss(ours, v, x), (0, 1))(v, x)
    g2 = jax.grad(lambda v, x: loss(ref, v, x), (0, 1))(v, x)
    chex.assert_trees_all_close(g1, g2, rtol=1e-4, atol=1e-5)


def test_gradient_matches_finite_differences_float64():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(5), (5, 7), jnp.float64)
        scale = 1.0 + 0.2 * jax.random.normal(jax.random.key(6), (7,), jnp.float64)
        bias = 0.1 * jax.random.normal(jax.random.key(7), (7,), jnp.float64)
        w = jax.random.normal(jax.random.key(8), (5, 7), jnp.float64)
        f = lambda x, s, b: jnp.sum(w * jnp.tanh(jnn.layer_norm(x, s, b, 1e-5)))  # noqa: E731
        grads = jax.grad(f, (0, 1, 2))(x, scale, bias)
        eps = 1e-6
        for i, arg in enumerate((x, scale, bias)):
            flat = np.asarray(arg).ravel()
            num = np.zeros_like(flat)
            for j in range(flat.size):
                up, dn = flat.copy(), flat.copy()
                up[j] += eps
                dn[j] -= eps
                args_up = [x, scale, bias]
                args_dn = [x, scale, bias]
                args_up[i] = jnp.asarray(up.reshape(arg.shape))
                args_dn[i] = jnp.asarray(dn.reshape(arg.shape))
                num[j] = (f(*args_up) - f(*args_dn)) / (2 * eps)
            np.testing.assert_allclose(np.asarray(grads[i]).ravel(), num, rtol=1e-6, atol=1e-8)


def test_each_row_is_normalised_and_dtype_follows_flax():
    x = jax.random.normal(jax.random.key(9), (4, 3, 64)) * 5.0 - 2.0
    y = jnn.layer_norm(x, jnp.ones(64), jnp.zeros(64), 1e-6)
    chex.assert_trees_all_close(y.mean(-1), jnp.zeros((4, 3)), atol=1e-5)
    chex.assert_trees_all_close(y.var(-1), jnp.ones((4, 3)), atol=1e-4)
    xb = x.astype(jnp.bfloat16)
    v = fnn.LayerNorm().init(jax.random.key(0), xb)
    assert jnn.LayerNorm().apply(v, xb).dtype == fnn.LayerNorm().apply(v, xb).dtype
    assert jnn.LayerNorm(dtype=jnp.bfloat16).apply(v, x).dtype == jnp.bfloat16


def test_jit_vmap_and_no_scale_or_bias():
    x = jax.random.normal(jax.random.key(10), (3, 5, 8))
    ours = jnn.LayerNorm(use_scale=False, use_bias=False)
    ref = fnn.LayerNorm(use_scale=False, use_bias=False)
    assert ours.init(jax.random.key(0), x) == {}
    chex.assert_trees_all_close(jax.jit(ours.apply)({}, x), ref.apply({}, x), atol=2e-6)
    s, b = jnp.linspace(0.5, 1.5, 8), jnp.linspace(-1, 1, 8)
    batched = jax.vmap(lambda xi: jnn.layer_norm(xi, s, b))(x)
    chex.assert_trees_all_close(batched, jnn.layer_norm(x, s, b), atol=1e-6)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="scale must have shape"):
        jnn.layer_norm(jnp.ones((2, 4)), jnp.ones(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="bias must have shape"):
        jnn.layer_norm(jnp.ones((2, 4)), jnp.ones(4), jnp.zeros(5))
    with pytest.raises(ValueError, match="rank >= 1"):
        jnn.LayerNorm().init(jax.random.key(0), jnp.ones(()))
