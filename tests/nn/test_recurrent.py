"""Recurrent cells and RNN layers against NumPy loops of their formulas, flax.linen's own cells with
copied weights, finite differences and Keras's parameter counts."""

import chex
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jaxdl import nn

B, T, IN, H = 3, 6, 5, 4


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_params(variables):
    return {k: np.asarray(v, np.float64) for k, v in variables["params"]["cell"].items()}


def np_elman(p, x, h=None):
    """h_t = tanh(x_t W_i + h_{t-1} W_h + b), one step at a time, float64."""
    h = np.zeros((x.shape[0], p["w_h"].shape[0])) if h is None else h
    ys = []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ p["w_i"] + h @ p["w_h"] + p["b"])
        ys.append(h)
    return h, np.stack(ys, 1)


def np_lstm(p, x, carry=None):
    n = p["w_h"].shape[0]
    c, h = (np.zeros((x.shape[0], n)),) * 2 if carry is None else carry
    ys = []
    for t in range(x.shape[1]):
        z = x[:, t] @ p["w_i"] + h @ p["w_h"] + p["b"]
        i, f, g, o = z[:, :n], z[:, n : 2 * n], z[:, 2 * n : 3 * n], z[:, 3 * n :]
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        ys.append(h)
    return (c, h), np.stack(ys, 1)


def np_gru(p, x, h=None, reset_after=True):
    n = p["w_h"].shape[0]
    h = np.zeros((x.shape[0], n)) if h is None else h
    wi, wh, bi, bh = p["w_i"], p["w_h"], p["b_i"], p["b_h"]
    blk = [slice(0, n), slice(n, 2 * n), slice(2 * n, 3 * n)]
    ys = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        r = sig(xt @ wi[:, blk[0]] + bi[blk[0]] + h @ wh[:, blk[0]] + bh[blk[0]])
        z = sig(xt @ wi[:, blk[1]] + bi[blk[1]] + h @ wh[:, blk[1]] + bh[blk[1]])
        if reset_after:
            hn = r * (h @ wh[:, blk[2]] + bh[blk[2]])
        else:
            hn = (r * h) @ wh[:, blk[2]] + bh[blk[2]]
        cand = np.tanh(xt @ wi[:, blk[2]] + bi[blk[2]] + hn)
        h = (1 - z) * cand + z * h
        ys.append(h)
    return h, np.stack(ys, 1)


CELLS = {
    "elman": (lambda: nn.ElmanCell(H), np_elman),
    "lstm": (lambda: nn.LSTMCell(H), np_lstm),
    "gru": (lambda: nn.GRUCell(H), np_gru),
    "gru_paper": (
        lambda: nn.GRUCell(H, reset_after=False),
        lambda p, x: np_gru(p, x, reset_after=False),
    ),
}


def _random_variables(rnn, x, seed=0):
    """Init, then replace every parameter by N(0, 0.5^2) so biases are non-zero too."""
    v = rnn.init(jax.random.key(seed), x)
    leaves, tree = jax.tree_util.tree_flatten(v)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    leaves = [0.5 * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves, strict=True)]
    return jax.tree_util.tree_unflatten(tree, leaves)


def _x(seed=1, shape=(B, T, IN)):
    return jax.random.normal(jax.random.key(seed), shape)


class CellFormulaTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(k, k) for k in CELLS])
    def test_rnn_matches_numpy_loop_of_formula(self, name):
        make, ref = CELLS[name]
        rnn = nn.RNN(make(), return_carry=True, hoist_inputs=name != "gru")
        x = _x()
        v = _random_variables(rnn, x)
        carry, y = self.variant(rnn.apply)(v, x)
        ref_carry, ref_y = ref(np_params(v), np.asarray(x, np.float64))
        chex.assert_shape(y, (B, T, H))
        chex.assert_trees_all_close(y, ref_y.astype(np.float32), atol=1e-5)
        chex.assert_trees_all_close(
            carry, jax.tree_util.tree_map(lambda a: a.astype(np.float32), ref_carry), atol=1e-5
        )

    @chex.variants(with_jit=True)
    @parameterized.named_parameters(*[(k, k) for k in CELLS])
    def test_rnn_equals_python_loop_over_cell(self, name):
        make, _ = CELLS[name]
        cell = make()
        x = _x(seed=2)
        v = _random_variables(nn.RNN(cell), x)
        cell_vars = {"params": v["params"]["cell"]}
        carry = cell.initialize_carry(jax.random.key(0), (B, IN))
        step = self.variant(lambda c, xt: cell.apply(cell_vars, c, xt))
        ys = []
        for t in range(T):
            carry, y_t = step(carry, x[:, t])
            ys.append(y_t)
        settings = [(1, True), (1, False)] + ([(4, True), (3, False)] if name == "lstm" else [])
        for unroll, hoist in settings:
            rnn = nn.RNN(cell, return_carry=True, unroll=unroll, hoist_inputs=hoist)
            out_carry, y = jax.jit(rnn.apply)(v, x)
            chex.assert_trees_all_close(y, jnp.stack(ys, 1), atol=1e-6)
            chex.assert_trees_all_close(out_carry, carry, atol=1e-6)


def test_lstm_matches_flax_lstm_cell_with_copied_weights():
    cell = nn.LSTMCell(H)
    x = _x(seed=3)
    v = _random_variables(nn.RNN(cell), x)
    p = v["params"]["cell"]
    blocks = dict(zip("ifgo", range(4), strict=True))
    fp = {}
    for g, k in blocks.items():
        s = slice(k * H, (k + 1) * H)
        fp[f"i{g}"] = {"kernel": p["w_i"][:, s]}
        fp[f"h{g}"] = {"kernel": p["w_h"][:, s], "bias": p["b"][s]}
    ref = fnn.RNN(fnn.LSTMCell(H)).apply({"params": {"cell": fp}}, x)
    chex.assert_trees_all_close(nn.RNN(cell).apply(v, x), ref, atol=1e-5)


def test_gru_matches_flax_gru_cell_with_copied_weights():
    cell = nn.GRUCell(H)
    x = _x(seed=4)
    v = _random_variables(nn.RNN(cell), x)
    p = v["params"]["cell"]
    s = [slice(k * H, (k + 1) * H) for k in range(3)]
    # flax: ir, iz, in, hn have a bias, hr, hz none: fold our b_h (r, z) into ir, iz.
    fp = {
        "ir": {"kernel": p["w_i"][:, s[0]], "bias": p["b_i"][s[0]] + p["b_h"][s[0]]},
        "iz": {"kernel": p["w_i"][:, s[1]], "bias": p["b_i"][s[1]] + p["b_h"][s[1]]},
        "in": {"kernel": p["w_i"][:, s[2]], "bias": p["b_i"][s[2]]},
        "hr": {"kernel": p["w_h"][:, s[0]]},
        "hz": {"kernel": p["w_h"][:, s[1]]},
        "hn": {"kernel": p["w_h"][:, s[2]], "bias": p["b_h"][s[2]]},
    }
    ref = fnn.RNN(fnn.GRUCell(H)).apply({"params": {"cell": fp}}, x)
    chex.assert_trees_all_close(nn.RNN(cell).apply(v, x), ref, atol=1e-5)


@pytest.mark.parametrize(
    "cell, count",
    [
        # Keras on 8 features: SimpleRNN(64) 4,672; LSTM(64) 18,688; GRU(64) 14,208 (reset_after)
        (nn.ElmanCell(64), 8 * 64 + 64 * 64 + 64),
        (nn.LSTMCell(64), 18_688),
        (nn.GRUCell(64), 14_208),
    ],
)
def test_parameter_counts_equal_keras(cell, count):
    v = nn.RNN(cell).init(jax.random.key(0), jnp.zeros((1, 3, 8)))
    assert sum(a.size for a in jax.tree_util.tree_leaves(v)) == count
    assert count in (4_672, 18_688, 14_208)


def test_parameter_layout_and_keras_initialisers():
    n_in, n = 8, 16
    p = nn.RNN(nn.LSTMCell(n)).init(jax.random.key(0), jnp.zeros((1, 2, n_in)))["params"]["cell"]
    chex.assert_shape([p["w_i"], p["w_h"], p["b"]], [(n_in, 4 * n), (n, 4 * n), (4 * n,)])
    expected_b = np.zeros(4 * n)
    expected_b[n : 2 * n] = 1.0  # forget gate
    np.testing.assert_array_equal(p["b"], expected_b)
    # orthogonal (H, 4H): orthonormal rows
    np.testing.assert_allclose(p["w_h"] @ p["w_h"].T, np.eye(n), atol=1e-5)
    limit = np.sqrt(6.0 / (n_in + 4 * n))  # Glorot-uniform on the fused (in, 4H) kernel
    assert np.abs(p["w_i"]).max() <= limit and np.abs(p["w_i"]).max() > 0.8 * limit
    g = nn.RNN(nn.GRUCell(n)).init(jax.random.key(0), jnp.zeros((1, 2, n_in)))["params"]["cell"]
    assert sorted(g) == ["b_h", "b_i", "w_h", "w_i"]
    chex.assert_shape(
        [g["w_i"], g["w_h"], g["b_i"], g["b_h"]], [(n_in, 3 * n), (n, 3 * n)] + [(3 * n,)] * 2
    )


def test_initialize_carry_shapes():
    c, h = nn.LSTMCell(7).initialize_carry(jax.random.key(0), (2, 3))
    chex.assert_shape([c, h], [(2, 7), (2, 7)])
    chex.assert_shape(nn.GRUCell(7).initialize_carry(jax.random.key(0), (5, 3)), (5, 7))
    with pytest.raises(ValueError, match="input_shape"):
        nn.ElmanCell(7).initialize_carry(jax.random.key(0), ())


# ---------------------------------------------------------------- masking and direction

LENGTHS = np.array([6, 3, 0, 1])


def _padded_batch(seed=5):
    x = np.array(_x(seed, (len(LENGTHS), T, IN)))
    for b, n in enumerate(LENGTHS):
        x[b, n:] = 7.0  # garbage in the padding: it must not leak into anything
    return jnp.asarray(x)


@pytest.mark.parametrize(
    "name, reverse, keep_order",
    [("elman", False, False), ("lstm", False, False), ("lstm", True, True), ("gru", True, False)],
)
def test_padded_batch_equals_each_sequence_alone(name, reverse, keep_order):
    make, _ = CELLS[name]
    rnn = nn.RNN(make(), return_carry=True, reverse=reverse, keep_order=keep_order)
    x = _padded_batch()
    v = _random_variables(rnn, x)
    carry, y = jax.jit(lambda v, x, n: rnn.apply(v, x, seq_lengths=n))(v, x, LENGTHS)
    zero_carry = rnn.cell.initialize_carry(None, (1, IN))
    for b, n in enumerate(LENGTHS):
        if n == 0:
            alone_carry, alone_y = zero_carry, jnp.zeros((1, 0, H))
        else:
            alone_carry, alone_y = rnn.apply(v, x[b : b + 1, :n])
        chex.assert_trees_all_close(
            jax.tree_util.tree_map(lambda a, b=b: a[b : b + 1], carry), alone_carry, atol=1e-6
        )
        chex.assert_trees_all_close(y[b, :n], alone_y[0], atol=1e-6)
        np.testing.assert_array_equal(y[b, n:], 0.0)  # padded outputs are zero


def test_reverse_runs_backwards_from_last_valid_step():
    """With keep_order, output t of the reversed RNN is the cell run over x[L-1], ..., x[t]."""
    cell = nn.ElmanCell(H)
    x = _padded_batch()
    v = _random_variables(nn.RNN(cell), x)
    y = nn.RNN(cell, reverse=True, keep_order=True).apply(v, x, seq_lengths=LENGTHS)
    p = np_params(v)
    for b, n in enumerate(LENGTHS):
        if n == 0:
            continue
        seq = np.asarray(x[b : b + 1, :n], np.float64)[:, ::-1]
        _, ys = np_elman(p, seq)
        np.testing.assert_allclose(y[b, :n], ys[0, ::-1], atol=1e-5)


def test_flip_sequences_is_an_involution_that_keeps_padding_at_the_end():
    x = jnp.arange(4 * 5).reshape(4, 5)[..., None]
    lengths = jnp.array([5, 2, 0, 3])
    f = nn.flip_sequences(x, lengths)
    np.testing.assert_array_equal(f[1, :2, 0], [6, 5])
    np.testing.assert_array_equal(f[3, :3, 0], [17, 16, 15])
    np.testing.assert_array_equal(f[0, :, 0], [4, 3, 2, 1, 0])
    np.testing.assert_array_equal(nn.flip_sequences(f, lengths), x)


def test_generic_path_for_a_flax_cell_matches_flax_rnn():
    cell = fnn.GRUCell(H)
    x = _x(seed=6)
    v = fnn.RNN(cell).init(jax.random.key(0), x)
    chex.assert_trees_all_close(nn.RNN(cell).apply(v, x), fnn.RNN(cell).apply(v, x), atol=1e-6)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", ["lstm", "gru", "gru_paper"])
def test_gradients_match_finite_differences(name):
    make, _ = CELLS[name]
    rnn = nn.RNN(make(), reverse=True, keep_order=True, hoist_inputs=name == "lstm")
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 3)))
        lengths = jnp.array([4, 2])
        v = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), _random_variables(rnn, x))
        w = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, H)))

        @jax.jit
        def loss(v, x):
            return jnp.sum(w * rnn.apply(v, x, seq_lengths=lengths) ** 2)

        gv, gx = jax.grad(loss, argnums=(0, 1))(v, x)
        flat, unravel = jax.flatten_util.ravel_pytree((v, x))
        g_flat, _ = jax.flatten_util.ravel_pytree((gv, gx))
        rng = np.random.default_rng(2)
        eps = 1e-6
        for _ in range(3):
            d = jnp.asarray(rng.normal(size=flat.shape))
            fd = (loss(*unravel(flat + eps * d)) - loss(*unravel(flat - eps * d))) / (2 * eps)
            np.testing.assert_allclose(float(g_flat @ d), float(fd), rtol=1e-6, atol=1e-8)
        # padded inputs get exactly zero gradient
        np.testing.assert_array_equal(gx[1, 2:], 0.0)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_value_errors_naming_the_argument():
    rnn = nn.RNN(nn.LSTMCell(H))
    x = _x()
    v = rnn.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"inputs must have rank 3, \(batch, time, features\)"):
        rnn.apply(v, x[0])
    with pytest.raises(ValueError, match=r"expected inputs of shape \(\.\.\., 5\)"):
        rnn.apply(v, x[..., :3])
    with pytest.raises(ValueError, match=r"seq_lengths must lie in \[0, T\] = \[0, 6\]"):
        rnn.apply(v, x, seq_lengths=jnp.array([1, 7, 2]))
    with pytest.raises(ValueError, match=r"seq_lengths must lie in \[0, T\]"):
        rnn.apply(v, x, seq_lengths=jnp.array([1, -1, 2]))
    with pytest.raises(ValueError, match=r"seq_lengths must have shape \(batch,\) = \(3,\)"):
        rnn.apply(v, x, seq_lengths=jnp.array([1, 2]))
    with pytest.raises(ValueError, match="features must be a positive int"):
        nn.RNN(nn.GRUCell(0)).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="unroll must be >= 1"):
        nn.RNN(nn.GRUCell(2), unroll=0).init(jax.random.key(0), x)


# ---------------------------------------------------------------- RNN's explicit impl


class _PeepholeishLSTM(nn.LSTMCell):
    """An LSTMCell subclass that changes the step: the fast LSTM layer must not bypass it."""

    @fnn.nowrap
    def step(self, params, carry, xp):
        (c, h), y = super().step(params, carry, xp)
        return (c, 0.5 * h), 0.5 * y


def test_rnn_runs_an_lstm_subclass_by_its_own_step():
    cell = _PeepholeishLSTM(H)
    x = _x(seed=4)
    v = nn.RNN(cell).init(jax.random.key(0), x)
    cell_vars = {"params": v["params"]["cell"]}
    carry = cell.initialize_carry(jax.random.key(0), (B, IN))
    ys = []
    for t in range(T):
        carry, y_t = cell.apply(cell_vars, carry, x[:, t])
        ys.append(y_t)
    for impl in ("auto", "scan"):
        y = nn.RNN(cell, impl=impl).apply(v, x)
        chex.assert_trees_all_close(y, jnp.stack(ys, 1), atol=1e-6)
    # ...and the plain formula would differ: the test would catch a silent bypass
    plain = nn.RNN(nn.LSTMCell(H)).apply(v, x)
    assert not np.allclose(plain, jnp.stack(ys, 1), atol=1e-3)
    with pytest.raises(ValueError, match="overrides LSTMCell's step"):
        nn.RNN(cell, impl="lstm_layer").apply(v, x)


def test_rnn_impl_scan_and_lstm_layer_agree_on_an_lstm():
    x = _x(seed=5)
    rnn = nn.RNN(nn.LSTMCell(H), return_carry=True)
    v = rnn.init(jax.random.key(0), x)
    fast = nn.RNN(nn.LSTMCell(H), return_carry=True, impl="lstm_layer").apply(v, x)
    slow = nn.RNN(nn.LSTMCell(H), return_carry=True, impl="scan").apply(v, x)
    chex.assert_trees_all_close(fast, slow, atol=1e-6)
    chex.assert_trees_all_close(rnn.apply(v, x), fast, atol=0.0)


def test_rnn_impl_errors():
    x = _x()
    with pytest.raises(ValueError, match="impl must be one of"):
        nn.RNN(nn.LSTMCell(H), impl="cudnn").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="cell is a GRUCell"):
        nn.RNN(nn.GRUCell(H), impl="lstm_layer").init(jax.random.key(0), x)
    rnn = nn.RNN(nn.LSTMCell(H), impl="lstm_layer")
    v = rnn.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="seq_lengths given"):
        rnn.apply(v, x, seq_lengths=jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match="impl='lstm_layer' runs jaxdl's LSTMCell"):
        nn.RNN(fnn.LSTMCell(H), impl="lstm_layer").init(jax.random.key(0), x)
