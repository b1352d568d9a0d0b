"""jaxdl.nn.flat_matmul against ``x @ w``: values, gradients of every order and mode, the shape of
the kernel gradient it hands XLA (one contracting axis), and its errors."""

import chex
import jax
import jax.numpy as jnp
import pytest

from jaxdl import nn as jnn

SHAPES = [(5,), (6, 5), (2, 3, 5), (2, 3, 4, 5)]


def _inputs(shape, d_out=4):
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (shape[-1], d_out))
    c = jax.random.normal(jax.random.key(2), shape[:-1] + (d_out,))
    return x, w, c


class TestValuesAndGradients(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_equal_plain_matmul_for_every_rank(self):
        for shape in SHAPES:
            x, w, c = _inputs(shape)
            y = self.variant(jnn.flat_matmul)(x, w)
            chex.assert_shape(y, shape[:-1] + (4,))
            chex.assert_trees_all_close(y, x @ w, atol=1e-6)

            def loss(f, c=c):
                return lambda x, w: jnp.sum(c * jnp.tanh(f(x, w)))

            grads = self.variant(jax.grad(loss(jnn.flat_matmul), (0, 1)))(x, w)
            chex.assert_trees_all_close(
                grads, jax.grad(loss(jnp.matmul), (0, 1))(x, w), atol=1e-5, rtol=1e-5
            )


def test_forward_mode_and_second_derivatives():
    x, w, c = _inputs((2, 3, 5))
    dx, dw = (
        jax.random.normal(jax.random.key(3), x.shape),
        jax.random.normal(jax.random.key(4), w.shape),
    )
    y, t = jax.jvp(jnn.flat_matmul, (x, w), (dx, dw))
    y_ref, t_ref = jax.jvp(jnp.matmul, (x, w), (dx, dw))
    chex.assert_trees_all_close((y, t), (y_ref, t_ref), atol=1e-5)

    def loss(f):
        return lambda w: jnp.sum(jnp.sin(f(x, w)) * c)

    chex.assert_trees_all_close(
        jax.hessian(loss(jnn.flat_matmul))(w), jax.hessian(loss(jnp.matmul))(w), atol=1e-4
    )
    chex.assert_trees_all_close(
        jax.vmap(jnn.flat_matmul, (0, None))(x, w),
        jax.vmap(jnp.matmul, (0, None))(x, w),
        atol=1e-6,
    )


def _contracting_axes(fn, *args):
    """The number of contracting axes of every dot_general in the jaxpr of ``fn(*args)``."""
    jaxpr = jax.make_jaxpr(fn)(*args)
    return [
        len(eqn.params["dimension_numbers"][0][0])
        for eqn in jaxpr.jaxpr.eqns
        if eqn.primitive.name == "dot_general"
    ]


def test_kernel_gradient_is_one_gemm_over_the_flattened_rows():
    # The reason the function exists: differentiating ``x @ w`` for a rank-3 x contracts the
    # kernel gradient over two axes (B and T), which XLA:CPU runs with extra copies.
    x, w, c = _inputs((2, 3, 5))
    kernel_grad = lambda f: jax.grad(lambda w: jnp.sum(c * f(x, w)))  # noqa: E731
    # forward product, then the kernel gradient
    assert _contracting_axes(kernel_grad(jnp.matmul), w) == [1, 2]
    assert _contracting_axes(kernel_grad(jnn.flat_matmul), w) == [1, 1]


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"x \(3, 5\) and w \(4, 2\)"):
        jnn.flat_matmul(jnp.ones((3, 5)), jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="w \\(5,\\)"):
        jnn.flat_matmul(jnp.ones((3, 5)), jnp.ones((5,)))
    with pytest.raises(ValueError, match="x must be"):
        jnn.flat_matmul(jnp.ones(()), jnp.ones((1, 2)))
