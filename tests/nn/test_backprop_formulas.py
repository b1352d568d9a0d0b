"""The backward-pass formulas of docs/derivations/backprop_layers.md against JAX's gradients."""

import chex
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np


def test_batchnorm_input_gradient_formula_equals_jax_grad_of_flax_batchnorm():
    rng = np.random.default_rng(0)
    m, f, eps = 16, 3, 1e-5
    x = rng.normal(2.0, 3.0, (m, f))
    g = rng.normal(size=(m, f))  # the upstream gradient dL/dy
    gamma = rng.normal(size=(f,))
    bn = fnn.BatchNorm(use_running_average=False, epsilon=eps)
    x32 = jnp.asarray(x, jnp.float32)
    variables = bn.init(jax.random.key(0), x32)
    params = {"scale": jnp.asarray(gamma, jnp.float32), "bias": jnp.zeros((f,), jnp.float32)}

    def loss(x, params):
        y, _ = bn.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"]
        )
        return jnp.sum(y * jnp.asarray(g, jnp.float32))

    dx, dparams = jax.grad(loss, argnums=(0, 1))(x32, params)

    sigma_hat = np.sqrt(x.var(0) + eps)
    x_hat = (x - x.mean(0)) / sigma_hat
    dx_ref = gamma / sigma_hat * (g - g.mean(0) - x_hat * (g * x_hat).mean(0))  # (m, F)
    chex.assert_trees_all_close(np.asarray(dx), dx_ref, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(np.asarray(dparams["scale"]), (g * x_hat).sum(0), rtol=1e-4)
    chex.assert_trees_all_close(np.asarray(dparams["bias"]), g.sum(0), rtol=1e-4)
    # the gradient is orthogonal to the constant direction and to x_hat
    np.testing.assert_allclose(np.asarray(dx).sum(0), 0.0, atol=1e-4)
    np.testing.assert_allclose((np.asarray(dx) * x_hat).sum(0), 0.0, atol=1e-4)
