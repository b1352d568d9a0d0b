"""Sequence models: Keras parameter counts, agreement with the layers they are built from, and a
short fit that must reduce the loss."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import models, nn


def _count(tree):
    return sum(a.size for a in jax.tree_util.tree_leaves(tree))


def test_forecaster_has_keras_parameter_count_and_equals_rnn_then_dense():
    model = models.Forecaster()  # the course's LSTM(64) -> Dense(1)
    x = jax.random.normal(jax.random.key(0), (2, 100, 8))
    v = model.init(jax.random.key(1), x)
    assert _count(v) == 18_753  # Keras: LSTM(64) 18,688 + Dense(1) 65
    y = model.apply(v, x)
    chex.assert_shape(y, (2, 1))
    p = v["params"]
    h = nn.RNN(nn.LSTMCell(64)).apply({"params": p["rnn"]}, x)[:, -1]  # (2, 64)
    np.testing.assert_allclose(y, h @ p["head"]["kernel"] + p["head"]["bias"][None], atol=1e-5)


def test_forecaster_return_sequences_is_the_elman_output_equation():
    model = models.Forecaster(hidden=6, cell="elman", out_features=2, return_sequences=True)
    x = jax.random.normal(jax.random.key(0), (3, 7, 4))
    v = model.init(jax.random.key(1), x)
    p = v["params"]
    h = nn.RNN(nn.ElmanCell(6)).apply({"params": p["rnn"]}, x)  # (3, 7, 6)
    y = model.apply(v, x)
    chex.assert_shape(y, (3, 7, 2))
    np.testing.assert_allclose(
        y, h @ p["head"]["kernel"] + p["head"]["bias"][None, None], atol=1e-5
    )


@pytest.mark.parametrize(
    "cell, per_dir", [("lstm", 4 * (16 * 8 + 8 * 8 + 8)), ("gru", 3 * (16 * 8 + 8 * 8 + 2 * 8))]
)
def test_classifier_parameter_count_matches_keras_formula(cell, per_dir):
    model = models.SequenceClassifier(
        vocab_size=50, num_classes=3, embed_dim=16, hidden=8, cell=cell
    )
    v = model.init(jax.random.key(0), jnp.zeros((2, 5), jnp.int32))
    # Embedding(50, 16) + Bidirectional(cell(8)) + Dense(16 -> 3)
    assert _count(v) == 50 * 16 + 2 * per_dir + (16 * 3 + 3)


def test_classifier_ignores_padding_and_reads_final_states():
    model = models.SequenceClassifier(vocab_size=20, embed_dim=6, hidden=5, cell="gru")
    tokens = jnp.array([[3, 4, 5, 0, 0], [7, 8, 9, 10, 11]])
    lengths = jnp.array([3, 5])
    v = model.init(jax.random.key(0), tokens, lengths)
    logits = model.apply(v, tokens, lengths)
    chex.assert_shape(logits, (2, 2))
    other_padding = tokens.at[0, 3:].set(17)
    chex.assert_trees_all_close(model.apply(v, other_padding, lengths), logits, atol=1e-6)
    alone = model.apply(v, tokens[:1, :3], jnp.array([3]))
    chex.assert_trees_all_close(alone, logits[:1], atol=1e-6)
    with pytest.raises(ValueError, match=r"tokens must be integer ids of shape \(batch, time\)"):
        model.apply(v, tokens.astype(jnp.float32), lengths)


def test_classifier_learns_a_later_token_task():
    """Label = whether token 1 occurs in the second half: a short Adam run must fit it."""
    rng = np.random.default_rng(0)
    x = rng.integers(2, 6, size=(256, 8)).astype(np.int32)
    y = rng.integers(0, 2, size=256).astype(np.int32)
    pos = rng.integers(4, 8, size=256)
    x[np.arange(256)[y == 1], pos[y == 1]] = 1
    model = models.SequenceClassifier(
        vocab_size=6, embed_dim=8, hidden=8, num_layers=2, dropout_rate=0.1
    )
    params = model.init(jax.random.key(0), x[:2])["params"]
    opt = optax.adam(0.02)
    state = opt.init(params)

    def loss_fn(p, key):
        logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s, key):
        loss, g = jax.value_and_grad(loss_fn)(p, key)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    first = None
    for k in range(60):
        params, state, loss = step(params, state, jax.random.key(k))
        first = loss if first is None else first
    acc = (model.apply({"params": params}, x).argmax(-1) == y).mean()
    assert loss < 0.5 * first and acc > 0.9


def test_models_compute_in_the_requested_dtype_with_float32_params():
    x = jax.random.normal(jax.random.key(0), (2, 9, 3))
    f32 = models.Forecaster(hidden=8)
    v = f32.init(jax.random.key(1), x)
    bf16 = models.Forecaster(hidden=8, dtype=jnp.bfloat16)
    assert all(
        a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(bf16.init(jax.random.key(1), x))
    )
    y16 = bf16.apply(v, x)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), f32.apply(v, x), atol=0.05)
    clf = models.SequenceClassifier(vocab_size=7, embed_dim=4, hidden=4, dtype=jnp.bfloat16)
    tokens = jnp.array([[1, 2, 3], [4, 5, 0]])
    cv = clf.init(jax.random.key(0), tokens)
    assert clf.apply(cv, tokens, jnp.array([3, 2])).dtype == jnp.bfloat16
