"""``nn.lstm_layer``, the LSTM layer with its own backward pass, against JAX's autodiff of the
plain cell scan (outputs and every gradient), float64 finite differences, vmap/jit, and through
``nn.RNN``."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import nn

T, B, IN, H = 7, 8, 3, 5


def _problem(seed=0, dtype=jnp.float32):
    r = np.random.default_rng(seed)
    params = {
        "w_i": r.normal(size=(IN, 4 * H)) * 0.6,
        "w_h": r.normal(size=(H, 4 * H)) * 0.6,
        "b": r.normal(size=(4 * H,)),
    }
    carry = (r.normal(size=(B, H)), r.normal(size=(B, H)))
    xs = r.normal(size=(T, B, IN))
    cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    return jax.tree.map(cast, params), jax.tree.map(cast, carry), cast(xs)


def _reference(params, carry, xs):
    """JAX's autodiff path: the cell's own step in a plain scan."""
    cell = nn.LSTMCell(H)
    return jax.lax.scan(lambda c, x: cell.step(params, c, cell.project(params, x)), carry, xs)


def _loss(layer, weights):
    """A scalar that weights every output differently: hs, c_T and h_T all get cotangents."""
    w_hs, w_c, w_h = weights

    def loss(params, carry, xs):
        (c, h), hs = layer(params, carry, xs)
        return jnp.sum(w_hs * jnp.sin(hs)) + jnp.sum(w_c * c**2) + jnp.sum(w_h * h)

    return loss


def _weights(seed=1, dtype=jnp.float32):
    r = np.random.default_rng(seed)
    return tuple(jnp.asarray(r.normal(size=s), dtype) for s in ((T, B, H), (B, H), (B, H)))


@pytest.mark.parametrize(
    "hoist,batch_splits,unroll", [(False, 1, 1), (False, 4, 3), (True, 2, 1), (True, 1, 3)]
)
def test_outputs_and_gradients_equal_autodiff_of_the_cell_scan(hoist, batch_splits, unroll):
    params, carry, xs = _problem()
    ours = functools.partial(nn.lstm_layer, hoist=hoist, unroll=unroll, batch_splits=batch_splits)
    chex.assert_trees_all_close(ours(params, carry, xs), _reference(params, carry, xs), atol=1e-6)
    w = _weights()
    g_ours = jax.grad(_loss(ours, w), argnums=(0, 1, 2))(params, carry, xs)
    g_ref = jax.grad(_loss(_reference, w), argnums=(0, 1, 2))(params, carry, xs)
    chex.assert_trees_all_close(g_ours, g_ref, rtol=1e-5, atol=1e-5)


def test_gradients_match_float64_finite_differences():
    with jax.enable_x64(True):
        params, carry, xs = _problem(dtype=jnp.float64)
        loss = jax.jit(
            _loss(functools.partial(nn.lstm_layer, batch_splits=2), _weights(1, jnp.float64))
        )
        grads = jax.grad(loss, argnums=(0, 1, 2))(params, carry, xs)
        flat, unravel = jax.flatten_util.ravel_pytree((params, carry, xs))
        g_flat, _ = jax.flatten_util.ravel_pytree(grads)
        rng, eps = np.random.default_rng(2), 1e-6
        for _ in range(3):
            d = jnp.asarray(rng.normal(size=flat.shape))
            fd = (loss(*unravel(flat + eps * d)) - loss(*unravel(flat - eps * d))) / (2 * eps)
            np.testing.assert_allclose(float(g_flat @ d), float(fd), rtol=1e-6, atol=1e-8)


class TestTransforms(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_no_jit_agree(self):
        params, carry, xs = _problem()
        loss = _loss(functools.partial(nn.lstm_layer, batch_splits=4), _weights())
        ref = jax.grad(_loss(_reference, _weights()))(params, carry, xs)
        chex.assert_trees_all_close(self.variant(jax.grad(loss))(params, carry, xs), ref, atol=1e-5)


def test_vmap_over_independent_problems_equals_a_loop():
    problems = [_problem(seed) for seed in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *problems)
    grad = jax.grad(_loss(functools.partial(nn.lstm_layer, batch_splits=2), _weights()))
    g_vmap = jax.vmap(grad)(*stacked)
    g_loop = jax.tree.map(lambda *a: jnp.stack(a), *[grad(*p) for p in problems])
    chex.assert_trees_all_close(g_vmap, g_loop, rtol=1e-5, atol=1e-6)


def test_rnn_takes_the_layer_and_its_batch_splits_do_not_change_the_function():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(B, T, IN)), jnp.float32)
    one, four = (nn.RNN(nn.LSTMCell(H), batch_splits=k) for k in (1, 4))
    v = one.init(jax.random.key(0), x)
    chex.assert_trees_all_close(four.apply(v, x), one.apply(v, x), atol=1e-6)

    def grads(rnn):
        return jax.grad(lambda v: jnp.sum(jnp.sin(rnn.apply(v, x))))(v)

    chex.assert_trees_all_close(grads(four), grads(one), rtol=1e-5, atol=1e-6)
    # and it is the cell's function: the same as flax's RNN over the same cell, step by step
    ref = jax.lax.scan(
        lambda c, xt: nn.LSTMCell(H).apply({"params": v["params"]["cell"]}, c, xt),
        (jnp.zeros((B, H)),) * 2,
        jnp.swapaxes(x, 0, 1),
    )[1]
    chex.assert_trees_all_close(four.apply(v, x), jnp.swapaxes(ref, 0, 1), atol=1e-6)


def test_bad_batch_splits_raise_naming_the_argument():
    params, carry, xs = _problem()
    with pytest.raises(ValueError, match="batch_splits must be a positive divisor of the batch"):
        nn.lstm_layer(params, carry, xs, batch_splits=3)
    with pytest.raises(ValueError, match="batch_splits"):
        nn.lstm_layer(params, carry, xs, batch_splits=0)


@pytest.mark.parametrize("store_acts,store_z", [(False, False), (True, True)])
def test_every_loop_layout_computes_the_same_function_and_gradients(
    monkeypatch, store_acts, store_z
):
    """``_LSTMOpts`` only changes what the loop bodies store for XLA, never the maths."""
    from jaxdl.nn import recurrent

    opts = recurrent._LSTMOpts(store_acts=store_acts, store_z=store_z)
    monkeypatch.setattr(recurrent, "_LSTM_OPTS", opts)
    params, carry, xs = _problem()
    ours = functools.partial(nn.lstm_layer, hoist=True, batch_splits=2)
    chex.assert_trees_all_close(ours(params, carry, xs), _reference(params, carry, xs), atol=1e-6)
    w = _weights()
    g_ours = jax.grad(_loss(ours, w), argnums=(0, 1, 2))(params, carry, xs)
    g_ref = jax.grad(_loss(_reference, w), argnums=(0, 1, 2))(params, carry, xs)
    chex.assert_trees_all_close(g_ours, g_ref, rtol=1e-5, atol=1e-5)
