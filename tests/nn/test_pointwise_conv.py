"""jaxdl.nn.pointwise_conv (1x1 convolution, GEMM gradients) against lax.conv_general_dilated in
value and both gradients, and jaxdl.nn.Conv's 1x1 path against flax.linen.Conv."""

import chex
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxdl import nn as jnn

CASES = [
    # (x shape, strides)
    ((2, 6, 6, 5), (1, 1)),
    ((2, 7, 6, 4), (2, 2)),
    ((3, 9, 3), (2,)),
    ((2, 4, 5, 3, 2), (1, 2, 1)),
]


def _reference(x, k, strides):
    n = x.ndim - 2
    lhs = "N" + "HWD"[:n] + "C"
    return lax.conv_general_dilated(
        x, k, strides, "VALID", dimension_numbers=(lhs, "HWD"[:n] + "IO", lhs)
    )


@pytest.mark.parametrize("shape,strides", CASES)
def test_value_and_gradients_equal_lax(shape, strides):
    n = len(shape) - 2
    x = jax.random.normal(jax.random.key(0), shape)
    k = jax.random.normal(jax.random.key(1), (*(1,) * n, shape[-1], 3))
    y_ref = _reference(x, k, strides)
    y = jnn.pointwise_conv(x, k, strides)
    chex.assert_shape(y, y_ref.shape)
    chex.assert_trees_all_close(y, y_ref, atol=1e-5, rtol=1e-5)
    w = jax.random.normal(jax.random.key(2), y_ref.shape)

    def loss(f):
        return lambda x, k: jnp.sum(w * jnp.tanh(f(x, k, strides)))

    for grad in (
        jax.grad(loss(jnn.pointwise_conv), (0, 1)),
        jax.jit(jax.grad(loss(jnn.pointwise_conv), (0, 1))),
    ):
        chex.assert_trees_all_close(
            grad(x, k), jax.grad(loss(_reference), (0, 1))(x, k), atol=1e-4, rtol=1e-4
        )


def test_gradient_equals_finite_differences_in_float64():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(3), (2, 5, 4, 3), jnp.float64)
        k = jax.random.normal(jax.random.key(4), (1, 1, 3, 2), jnp.float64)
        w = jax.random.normal(jax.random.key(5), (2, 3, 2, 2), jnp.float64)
        loss = lambda x, k: jnp.sum(w * jnp.sin(jnn.pointwise_conv(x, k, (2, 2))))  # noqa: E731
        gx, gk = jax.grad(loss, (0, 1))(x, k)
        eps = 1e-6
        for arr, g, which in ((x, gx, 0), (k, gk, 1)):
            d = jax.random.normal(jax.random.key(6 + which), arr.shape, jnp.float64)
            args_p = [x, k]
            args_m = [x, k]
            args_p[which] = arr + eps * d
            args_m[which] = arr - eps * d
            fd = (loss(*args_p) - loss(*args_m)) / (2 * eps)
            np.testing.assert_allclose(float(jnp.vdot(g, d)), float(fd), rtol=1e-6)


@pytest.mark.parametrize("strides,padding", [((1, 1), "SAME"), ((2, 2), "VALID"), ((2, 2), "SAME")])
def test_conv_layer_1x1_equals_flax(strides, padding):
    x = jax.random.normal(jax.random.key(7), (2, 8, 7, 6))
    ours = jnn.Conv(5, (1, 1), strides=strides, padding=padding)
    ref = fnn.Conv(5, (1, 1), strides=strides, padding=padding)
    variables = ours.init(jax.random.key(8), x)
    chex.assert_trees_all_equal_shapes(variables, ref.init(jax.random.key(8), x))
    chex.assert_trees_all_close(ours.apply(variables, x), ref.apply(variables, x), atol=1e-5)

    def loss(m):
        return lambda v: jnp.sum(jnp.tanh(m.apply(v, x)))

    chex.assert_trees_all_close(
        jax.grad(loss(ours))(variables), jax.grad(loss(ref))(variables), atol=1e-4, rtol=1e-4
    )


def test_padded_1x1_takes_the_general_path():
    x = jax.random.normal(jax.random.key(9), (2, 5, 5, 3))
    m = jnn.Conv(4, (1, 1), padding=((1, 0), (0, 1)))
    v = m.init(jax.random.key(10), x)
    ref = fnn.Conv(4, (1, 1), padding=((1, 0), (0, 1)))
    chex.assert_trees_all_close(m.apply(v, x), ref.apply(v, x), atol=1e-5)


def test_bad_shapes_are_named():
    x = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"kernel must be \(1, ..., 1, C, F\)"):
        jnn.pointwise_conv(x, jnp.zeros((3, 3, 3, 2)))
    with pytest.raises(ValueError, match="C = 5"):
        jnn.pointwise_conv(x, jnp.zeros((1, 1, 5, 2)))
    with pytest.raises(ValueError, match="strides must be 2 positive ints"):
        jnn.pointwise_conv(x, jnp.zeros((1, 1, 3, 2)), (0, 1))
