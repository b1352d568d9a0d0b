"""jaxdl.nn.depthwise_conv against lax.conv_general_dilated(feature_group_count=C): values and
gradients, 1-D and 2-D, strides, paddings; and jaxdl.nn.Conv's grouped path."""

import chex
import jax
import jax.numpy as jnp
import pytest
from jax import lax

from jaxdl import nn as jnn

CASES = [
    # (x shape, window, strides, padding)
    ((2, 7, 7, 3), (3, 3), (1, 1), "SAME"),
    ((2, 8, 8, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((2, 9, 9, 5), (5, 5), (2, 2), ((2, 2), (2, 2))),
    ((2, 9, 8, 2), (3, 3), (2, 3), "VALID"),
    ((3, 10, 4), (4,), (3,), ((1, 0),)),
    ((2, 6, 6, 3), (1, 1), (1, 1), "VALID"),
]


def _reference(x, k, strides, padding):
    n = x.ndim - 2
    lhs = "N" + "HWD"[:n] + "C"
    dn = (lhs, "HWD"[:n] + "IO", lhs)
    return lax.conv_general_dilated(
        x, k, strides, padding, dimension_numbers=dn, feature_group_count=x.shape[-1]
    )


@pytest.mark.parametrize("shape,window,strides,padding", CASES)
def test_value_and_gradients_equal_lax(shape, window, strides, padding):
    x = jax.random.normal(jax.random.key(0), shape)
    k = jax.random.normal(jax.random.key(1), (*window, 1, shape[-1]))
    y_ref = _reference(x, k, strides, padding)
    y = jnn.depthwise_conv(x, k, strides, padding)
    chex.assert_shape(y, y_ref.shape)
    chex.assert_trees_all_close(y, y_ref, atol=1e-5, rtol=1e-5)
    w = jax.random.normal(jax.random.key(2), y_ref.shape)

    def loss(f):
        return lambda x, k: jnp.sum(w * jnp.tanh(f(x, k, strides, padding)))

    chex.assert_trees_all_close(
        jax.jit(jax.grad(loss(jnn.depthwise_conv), argnums=(0, 1)))(x, k),
        jax.grad(loss(_reference), argnums=(0, 1))(x, k),
        atol=1e-4,
        rtol=1e-4,
    )


def test_conv_layer_grouped_paths_equal_flax():
    import flax.linen as fnn

    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 6))
    for groups, features in ((6, 6), (3, 6), (2, 4)):
        ref = fnn.Conv(
            features, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=groups
        )
        ours = jnn.Conv(
            features, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=groups
        )
        v = ref.init(jax.random.key(4), x)
        chex.assert_trees_all_equal_shapes(v, ours.init(jax.random.key(4), x))
        chex.assert_trees_all_close(ours.apply(v, x), ref.apply(v, x), atol=1e-5)
        g_ours = jax.grad(lambda v: jnp.sum(ours.apply(v, x) ** 2))(v)
        g_ref = jax.grad(lambda v: jnp.sum(ref.apply(v, x) ** 2))(v)
        chex.assert_trees_all_close(g_ours, g_ref, atol=1e-4, rtol=1e-4)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"kernel must be \(\*window, 1, C\)"):
        jnn.depthwise_conv(jnp.ones((1, 5, 5, 3)), jnp.ones((3, 3, 3, 3)))
    with pytest.raises(ValueError, match="C = 3"):
        jnn.depthwise_conv(jnp.ones((1, 5, 5, 4)), jnp.ones((3, 3, 1, 3)))
    with pytest.raises(ValueError, match="smaller than the kernel window"):
        jnn.depthwise_conv(jnp.ones((1, 2, 2, 3)), jnp.ones((3, 3, 1, 3)))
    with pytest.raises(ValueError, match="feature_group_count"):
        jnn.Conv(5, (3, 3), feature_group_count=2).init(jax.random.key(0), jnp.ones((1, 4, 4, 4)))
