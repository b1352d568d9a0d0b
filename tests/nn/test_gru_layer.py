"""``nn.gru_layer``, the reset-after GRU layer with its own backward pass, against JAX's autodiff
of the plain :class:`GRUCell` scan (outputs and every gradient), float64 finite differences, and
through ``nn.RNN`` (``impl="gru_layer"`` agrees with ``impl="scan"``; ``"auto"`` keeps the scan)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import nn

T, B, IN, H = 6, 8, 3, 5


def _problem(seed=0, dtype=jnp.float32):
    r = np.random.default_rng(seed)
    params = {
        "w_i": r.normal(size=(IN, 3 * H)) * 0.6,
        "w_h": r.normal(size=(H, 3 * H)) * 0.6,
        "b_i": r.normal(size=(3 * H,)),
        "b_h": r.normal(size=(3 * H,)),
    }
    h0, xs = r.normal(size=(B, H)), r.normal(size=(T, B, IN))
    cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    return jax.tree.map(cast, params), cast(h0), cast(xs)


def _reference(params, h0, xs):
    """JAX's autodiff path: the cell's own step in a plain scan."""
    cell = nn.GRUCell(H)
    return jax.lax.scan(lambda h, x: cell.step(params, h, cell.project(params, x)), h0, xs)


def _loss(layer, seed=1, dtype=jnp.float32):
    """A scalar that weights every output differently: hs and h_T both get cotangents."""
    r = np.random.default_rng(seed)
    w_hs, w_h = (jnp.asarray(r.normal(size=s), dtype) for s in ((T, B, H), (B, H)))

    def loss(params, h0, xs):
        h, hs = layer(params, h0, xs)
        return jnp.sum(w_hs * jnp.sin(hs)) + jnp.sum(w_h * h**2)

    return loss


@pytest.mark.parametrize("batch_splits,unroll", [(1, 1), (2, 3)])
def test_outputs_and_gradients_equal_autodiff_of_the_cell_scan(batch_splits, unroll):
    params, h0, xs = _problem()
    ours = functools.partial(nn.gru_layer, batch_splits=batch_splits, unroll=unroll)
    chex.assert_trees_all_close(ours(params, h0, xs), _reference(params, h0, xs), atol=1e-6)
    g_ours = jax.grad(_loss(ours), argnums=(0, 1, 2))(params, h0, xs)
    g_ref = jax.grad(_loss(_reference), argnums=(0, 1, 2))(params, h0, xs)
    chex.assert_trees_all_close(g_ours, g_ref, rtol=1e-5, atol=1e-5)


def test_gradients_match_float64_finite_differences():
    with jax.enable_x64(True):
        params, h0, xs = _problem(dtype=jnp.float64)
        loss = jax.jit(_loss(functools.partial(nn.gru_layer, batch_splits=2), 1, jnp.float64))
        grads = jax.grad(loss, argnums=(0, 1, 2))(params, h0, xs)
        flat, unravel = jax.flatten_util.ravel_pytree((params, h0, xs))
        g_flat, _ = jax.flatten_util.ravel_pytree(grads)
        rng, eps = np.random.default_rng(2), 1e-6
        for _ in range(3):
            d = jnp.asarray(rng.normal(size=flat.shape))
            fd = (loss(*unravel(flat + eps * d)) - loss(*unravel(flat - eps * d))) / (2 * eps)
            np.testing.assert_allclose(float(g_flat @ d), float(fd), rtol=1e-6, atol=1e-8)


def test_rnn_gru_layer_agrees_with_the_scan_and_auto_keeps_the_scan():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(B, T, IN)), jnp.float32)
    auto = nn.RNN(nn.GRUCell(H), return_carry=True, batch_splits=2, impl="gru_layer")
    v = auto.init(jax.random.key(0), x)
    scan = nn.RNN(nn.GRUCell(H), return_carry=True, impl="scan")
    chex.assert_trees_all_close(auto.apply(v, x), scan.apply(v, x), atol=1e-6)

    def grads(rnn):
        return jax.grad(lambda v: jnp.sum(jnp.sin(rnn.apply(v, x)[1])))(v)

    chex.assert_trees_all_close(grads(auto), grads(scan), rtol=1e-5, atol=1e-6)
    # gru_layer really ran: its jaxpr holds the custom_vjp, the scan's and auto's do not
    jaxpr = str(jax.make_jaxpr(lambda v: auto.apply(v, x))(v))
    assert "custom_vjp" in jaxpr
    assert "custom_vjp" not in str(jax.make_jaxpr(lambda v: scan.apply(v, x))(v))
    default = nn.RNN(nn.GRUCell(H), return_carry=True)
    assert "custom_vjp" not in str(jax.make_jaxpr(lambda v: default.apply(v, x))(v))


def test_reset_before_gru_and_padded_batches_keep_the_scan():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(B, T, IN)), jnp.float32)
    before = nn.RNN(nn.GRUCell(H, reset_after=False))
    v = before.init(jax.random.key(0), x)
    assert "custom_vjp" not in str(jax.make_jaxpr(lambda v: before.apply(v, x))(v))
    with pytest.raises(ValueError, match="reset_after=False"):
        nn.RNN(nn.GRUCell(H, reset_after=False), impl="gru_layer").init(jax.random.key(0), x)
    rnn = nn.RNN(nn.GRUCell(H), impl="gru_layer")
    v = rnn.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="seq_lengths given"):
        rnn.apply(v, x, seq_lengths=jnp.arange(B) % T)
    with pytest.raises(ValueError, match="cell is a LSTMCell"):
        nn.RNN(nn.LSTMCell(H), impl="gru_layer").init(jax.random.key(0), x)


def test_bad_batch_splits_raise_naming_the_argument():
    params, h0, xs = _problem()
    with pytest.raises(ValueError, match="batch_splits must be a positive divisor of the batch"):
        nn.gru_layer(params, h0, xs, batch_splits=3)
