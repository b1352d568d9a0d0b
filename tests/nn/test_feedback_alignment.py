"""Feedback-alignment dense layer: forward equals Dense, backward sends the error through the
fixed matrix B instead of W^T, weight gradients stay the true ones (all against hand computations)."""

import chex
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import nn


def _arrays(batch=(5,), n_in=4, n_out=3, seed=0):
    k = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(k[0], (*batch, n_in))
    w = jax.random.normal(k[1], (n_in, n_out))
    b = jax.random.normal(k[2], (n_out,))
    fb = jax.random.normal(k[3], (n_in, n_out))
    delta = jax.random.normal(k[4], (*batch, n_out))  # an upstream cotangent dL/dy
    return x, w, b, fb, delta


class FunctionTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_forward_and_vjp_against_hand_computation(self):
        x, w, b, fb, delta = _arrays()
        f = self.variant(nn.feedback_alignment_dense)
        y, vjp = jax.vjp(f, x, w, b, fb)
        chex.assert_trees_all_close(y, x @ w + b[None], rtol=1e-6)
        dx, dw, db, dfb = vjp(delta)
        xn, dn, fbn = map(np.asarray, (x, delta, fb))
        chex.assert_trees_all_close(dx, dn @ fbn.T, rtol=1e-5, atol=1e-6)  # B, not W^T
        chex.assert_trees_all_close(dw, xn.T @ dn, rtol=1e-5, atol=1e-6)  # true weight gradient
        chex.assert_trees_all_close(db, dn.sum(0), rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_equal(dfb, jnp.zeros_like(fb))
        # With feedback = kernel it is exactly backpropagation.
        _, vjp_bp = jax.vjp(f, x, w, b, w)
        _, vjp_dense = jax.vjp(lambda x, w, b: x @ w + b[None], x, w, b)
        chex.assert_trees_all_close(vjp_bp(delta)[:3], vjp_dense(delta), rtol=1e-5, atol=1e-6)

    def test_leading_batch_axes_and_no_bias(self):
        x, w, _, fb, delta = _arrays(batch=(2, 3))
        y, vjp = jax.vjp(lambda x, w: nn.feedback_alignment_dense(x, w, None, fb), x, w)
        chex.assert_shape(y, (2, 3, 3))
        dx, dw = vjp(delta)
        chex.assert_trees_all_close(dx, delta @ fb.T, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(dw, jnp.einsum("abi,abo->io", x, delta), rtol=1e-5, atol=1e-6)

    def test_two_layer_network_gradient_by_hand(self):
        """L = sum(tanh(x W1) W2): the first layer's gradient uses B2 where backprop uses W2^T."""
        x, w1, _, _, _ = _arrays(n_in=4, n_out=6)
        k1, k2 = jax.random.split(jax.random.key(7))
        w2 = jax.random.normal(k1, (6, 2))
        b2 = jax.random.normal(k2, (6, 2))  # feedback of the second layer

        def loss(w1, w2):
            h = jnp.tanh(nn.feedback_alignment_dense(x, w1, None, jnp.zeros_like(w1)))
            return jnp.sum(nn.feedback_alignment_dense(h, w2, None, b2))

        g1, g2 = jax.grad(loss, argnums=(0, 1))(w1, w2)
        h = np.tanh(np.asarray(x) @ np.asarray(w1))
        e = np.ones((x.shape[0], 2))  # dL/dy
        delta_h = (e @ np.asarray(b2).T) * (1 - h**2)  # B e, through tanh'
        np.testing.assert_allclose(g2, h.T @ e, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(g1, np.asarray(x).T @ delta_h, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shapes, match",
    [
        (((5, 4), (4, 3), (3,), (3, 4)), "feedback must have the kernel's shape"),
        (((5, 2), (4, 3), (3,), (4, 3)), r"x must have shape \(\.\.\., 4\)"),
        (((5, 4), (4,), (3,), (4,)), "kernel must have rank 2"),
        (((5, 4), (4, 3), (2,), (4, 3)), "bias must have shape"),
    ],
)
def test_bad_shapes_raise(shapes, match):
    args = [jnp.zeros(s) for s in shapes]
    with pytest.raises(ValueError, match=match):
        nn.feedback_alignment_dense(*args)


def test_module_equals_dense_forward_and_keeps_feedback_fixed():
    x, *_ = _arrays(batch=(5,), n_in=4)
    layer = nn.FeedbackAlignmentDense(3)
    variables = layer.init(jax.random.key(0), x)
    assert set(variables) == {"params", "feedback"}
    chex.assert_shape(variables["feedback"]["feedback"], (4, 3))
    dense_y = fnn.Dense(3).apply({"params": variables["params"]}, x)
    chex.assert_trees_all_close(layer.apply(variables, x), dense_y, rtol=1e-6)

    def loss(params):
        return jnp.sum(layer.apply({"params": params, "feedback": variables["feedback"]}, x) ** 2)

    def dense_loss(params):
        return jnp.sum(fnn.Dense(3).apply({"params": params}, x) ** 2)

    # Parameter gradients of a single layer are the true ones (only d/dx changes).
    chex.assert_trees_all_close(
        jax.grad(loss)(variables["params"]), jax.grad(dense_loss)(variables["params"]), rtol=1e-5
    )
    # The feedback differs from the kernel (independent draw).
    assert not np.allclose(variables["feedback"]["feedback"], variables["params"]["kernel"])
