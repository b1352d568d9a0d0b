"""jaxdl.nn.BatchNorm against flax.linen.BatchNorm (values, gradients, running statistics) and
float64 finite differences; cross-device statistics under a named axis."""

import functools

import chex
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import nn as jnn


def _pair(x, **kw):
    ours, ref = jnn.BatchNorm(**kw), fnn.BatchNorm(**kw)
    v = ref.init(jax.random.key(0), x, use_running_average=False)
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(1), p.shape), v)
    return ours, ref, params


@pytest.mark.parametrize("shape", [(8, 5, 5, 3), (16, 4), (4, 7, 6)])
def test_training_forward_grads_and_stats_equal_flax(shape):
    x = jax.random.normal(jax.random.key(2), shape) * 2.0 + 1.5
    ours, ref, v = _pair(x, momentum=0.9, epsilon=1e-3)
    w = jax.random.normal(jax.random.key(3), shape)

    def loss(module, params, x):
        y, upd = module.apply(
            {**v, "params": params}, x, use_running_average=False, mutable=["batch_stats"]
        )
        return jnp.sum(w * jnp.sin(y)), (y, upd["batch_stats"])

    (l1, (y1, s1)), g1 = jax.value_and_grad(
        functools.partial(loss, ours), argnums=(0, 1), has_aux=True
    )(v["params"], x)
    (l2, (y2, s2)), g2 = jax.value_and_grad(
        functools.partial(loss, ref), argnums=(0, 1), has_aux=True
    )(v["params"], x)
    chex.assert_trees_all_close(y1, y2, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(s1, s2, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(g1, g2, atol=1e-4, rtol=1e-4)


def test_inference_uses_running_statistics_like_flax():
    x = jax.random.normal(jax.random.key(4), (6, 3, 3, 4))
    ours, ref, v = _pair(x)
    v = {**v, "batch_stats": {"mean": jnp.arange(4.0), "var": jnp.arange(1.0, 5.0)}}
    chex.assert_trees_all_close(
        ours.apply(v, x, use_running_average=True),
        ref.apply(v, x, use_running_average=True),
        atol=1e-6,
    )


def test_gradient_matches_finite_differences_float64():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(5), (6, 3), jnp.float64)
        scale = jnp.array([0.5, 1.5, -1.0])
        bias = jnp.array([0.1, 0.0, -0.2])
        w = jax.random.normal(jax.random.key(6), (6, 3), jnp.float64)

        def f(x, scale, bias):
            y, mean, var = jnn.batch_norm(x, scale, bias, 1e-3)
            return jnp.sum(w * y**2) + jnp.sum(mean * var)  # the statistics' cotangents too

        analytic = jax.grad(f, argnums=(0, 1, 2))(x, scale, bias)
        for arg, g in zip((x, scale, bias), analytic, strict=True):
            flat = np.asarray(arg).ravel()
            num = np.zeros_like(flat)
            for i in range(flat.size):
                e = np.zeros_like(flat)
                e[i] = 1e-6
                args = [x, scale, bias]
                k = [a is arg for a in args].index(True)
                plus, minus = list(args), list(args)
                plus[k] = arg + e.reshape(arg.shape)
                minus[k] = arg - e.reshape(arg.shape)
                num[i] = (f(*plus) - f(*minus)) / 2e-6
            np.testing.assert_allclose(np.asarray(g).ravel(), num, rtol=1e-6, atol=1e-8)


def test_named_axis_gives_the_global_batch_statistics_and_gradient():
    x = jax.random.normal(jax.random.key(7), (4, 5, 3))  # 4 shards of 5 rows
    scale, bias = jnp.array([1.0, 2.0, 0.5]), jnp.array([0.0, 1.0, -1.0])
    w = jax.random.normal(jax.random.key(8), (4, 5, 3))

    def sharded(x, scale, bias):
        def one(xs, ws):
            y, _, _ = jnn.batch_norm(xs, scale, bias, 1e-5, axis_name="d")
            return jnp.sum(ws * y**2)

        return jnp.sum(jax.vmap(one, axis_name="d")(x, w))

    def whole(x, scale, bias):
        y, _, _ = jnn.batch_norm(x.reshape(20, 3), scale, bias, 1e-5)
        return jnp.sum(w.reshape(20, 3) * y**2)

    chex.assert_trees_all_close(
        jax.grad(sharded, argnums=(0, 1, 2))(x, scale, bias),
        jax.grad(whole, argnums=(0, 1, 2))(x, scale, bias),
        atol=1e-4,
        rtol=1e-4,
    )


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="scale must have shape"):
        jnn.batch_norm(jnp.ones((4, 3)), jnp.ones(2), jnp.zeros(3))
    with pytest.raises(ValueError, match="only the last axis"):
        jnn.BatchNorm(axis=1).init(
            jax.random.key(0), jnp.ones((2, 3, 4)), use_running_average=False
        )
    with pytest.raises(ValueError, match="rank >= 2"):
        jnn.BatchNorm().init(jax.random.key(0), jnp.ones((3,)), use_running_average=False)
