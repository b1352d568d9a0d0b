"""Bidirectional and stacked RNNs: NumPy loops per sequence, padding semantics, dropout placement."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import nn
from tests.nn.test_recurrent import np_gru, np_lstm

T, IN, H = 5, 3, 4
LENGTHS = np.array([5, 2, 0, 4])


def _batch(seed=0):
    x = np.random.default_rng(seed).normal(size=(len(LENGTHS), T, IN)).astype(np.float32)
    for b, n in enumerate(LENGTHS):
        x[b, n:] = -3.0  # padding garbage
    return jnp.asarray(x)


def _np(tree):
    return {k: np.asarray(v, np.float64) for k, v in tree.items()}


def _reference_bidirectional(params, x, ref_fn):
    """Per sequence: forward loop over x[:L], backward loop over x[L-1::-1] re-aligned; pad zeros."""
    pf, pb = _np(params["forward_rnn"]["cell"]), _np(params["backward_rnn"]["cell"])
    out_f = np.zeros(x.shape[:2] + (H,))
    out_b = np.zeros_like(out_f)
    for b, n in enumerate(LENGTHS):
        if n == 0:
            continue
        seq = np.asarray(x[b : b + 1, :n], np.float64)
        out_f[b, :n] = ref_fn(pf, seq)[1][0]
        out_b[b, :n] = ref_fn(pb, seq[:, ::-1])[1][0][::-1]
    return out_f, out_b


@pytest.mark.parametrize(
    "make, ref_fn", [(lambda: nn.LSTMCell(H), np_lstm), (lambda: nn.GRUCell(H), np_gru)]
)
def test_bidirectional_concat_matches_per_sequence_numpy_loops(make, ref_fn):
    layer = nn.Bidirectional(nn.RNN(make()), nn.RNN(make()))
    x = _batch()
    v = layer.init(jax.random.key(0), x, seq_lengths=LENGTHS)
    assert set(v["params"]) == {"forward_rnn", "backward_rnn"}
    y = jax.jit(lambda v, x, n: layer.apply(v, x, seq_lengths=n))(v, x, LENGTHS)
    chex.assert_shape(y, (len(LENGTHS), T, 2 * H))
    out_f, out_b = _reference_bidirectional(v["params"], x, ref_fn)
    np.testing.assert_allclose(y[..., :H], out_f, atol=1e-5)  # forward half first
    np.testing.assert_allclose(y[..., H:], out_b, atol=1e-5)


def test_bidirectional_merges_and_carry():
    x = _batch(1)
    fwd, bwd = nn.RNN(nn.GRUCell(H)), nn.RNN(nn.GRUCell(H))
    concat = nn.Bidirectional(fwd, bwd, return_carry=True)
    v = concat.init(jax.random.key(0), x)
    (carry_f, carry_b), y = concat.apply(v, x, seq_lengths=LENGTHS)
    y_f, y_b = y[..., :H], y[..., H:]
    for merge, expected in [("sum", y_f + y_b), ("mul", y_f * y_b), ("ave", (y_f + y_b) / 2)]:
        out = nn.Bidirectional(fwd, bwd, merge=merge).apply(v, x, seq_lengths=LENGTHS)
        chex.assert_trees_all_close(out, expected, atol=1e-6)
    # forward carry: state after the last valid step; backward carry: state after reading x[0]
    for b, n in enumerate(LENGTHS):
        if n:
            np.testing.assert_allclose(carry_f[b], y_f[b, n - 1], atol=1e-6)
            np.testing.assert_allclose(carry_b[b], y_b[b, 0], atol=1e-6)
        else:
            np.testing.assert_array_equal(carry_f[b], 0.0)
    with pytest.raises(ValueError, match="merge must be one of"):
        nn.Bidirectional(fwd, bwd, merge="max").init(jax.random.key(0), x)


def test_stacked_rnn_equals_manual_composition_and_drops_out_between_layers_only():
    layers = [
        nn.Bidirectional(nn.RNN(nn.LSTMCell(H)), nn.RNN(nn.LSTMCell(H))),
        nn.RNN(nn.GRUCell(H)),
    ]
    stack = nn.StackedRNN(layers, dropout_rate=0.5)
    x = _batch(2)
    v = stack.init(jax.random.key(0), x, seq_lengths=LENGTHS)
    p = v["params"]
    h1 = layers[0].apply({"params": p["layers_0"]}, x, seq_lengths=LENGTHS)
    y_ref = layers[1].apply({"params": p["layers_1"]}, h1, seq_lengths=LENGTHS)
    y = stack.apply(v, x, seq_lengths=LENGTHS)  # train=False: no dropout
    chex.assert_trees_all_close(y, y_ref, atol=1e-6)

    key = jax.random.key(3)
    y_train = stack.apply(v, x, seq_lengths=LENGTHS, train=True, rngs={"dropout": key})
    assert not np.allclose(y_train, y)
    for b, n in enumerate(LENGTHS):
        np.testing.assert_array_equal(y_train[b, n:], 0.0)  # padding stays zero under dropout
    carries, _ = stack.apply(v, x, seq_lengths=LENGTHS, return_carry=True)
    assert len(carries) == 2 and len(carries[0]) == 2  # (bidirectional (f, b), gru)
    with pytest.raises(ValueError, match="dropout_rate must be in"):
        nn.StackedRNN(layers, dropout_rate=1.0).init(jax.random.key(0), x)


def test_stacked_dropout_is_inverted_dropout_on_the_first_layers_output():
    """With rate r every unit of the first layer's output is either 0 or h / (1 - r).

    The second layer is an Elman RNN whose w_i we set to the identity and w_h, b to zero, so its
    output is tanh(dropout(h1)) and the dropout mask can be read off directly.
    """
    layers = [nn.RNN(nn.ElmanCell(H)), nn.RNN(nn.ElmanCell(H))]
    stack = nn.StackedRNN(layers, dropout_rate=0.25)
    x = _batch(4)
    v = stack.init(jax.random.key(0), x)
    p = jax.tree_util.tree_map(lambda a: a, v["params"])
    p["layers_1"]["cell"] = {"w_i": jnp.eye(H), "w_h": jnp.zeros((H, H)), "b": jnp.zeros(H)}
    h1 = layers[0].apply({"params": p["layers_0"]}, x)
    y = stack.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(7)})
    pre = np.arctanh(np.clip(np.asarray(y, np.float64), -0.999999, 0.999999))
    kept = np.abs(pre) > 1e-7
    np.testing.assert_allclose(pre[kept], np.asarray(h1)[kept] / 0.75, rtol=1e-3, atol=1e-4)
    assert 0.6 < kept.mean() < 0.9  # about 75% kept
