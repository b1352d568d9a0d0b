"""The copy-task generator: layout, the copied symbols, the memoryless baseline's scores."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import losses
from jaxdl.data.synthetic_sequences import BLANK, copy_baseline, copy_task, copy_vocab_size


@pytest.mark.parametrize("delay,n,alphabet", [(1, 1, 1), (5, 3, 4), (50, 10, 8)])
def test_copy_task_layout(delay, n, alphabet):
    x, y = copy_task(jax.random.key(3), 7, delay, n, alphabet)
    length = delay + 2 * n
    chex.assert_shape([x, y], (7, length))
    assert x.dtype == y.dtype == jnp.int32
    x, y = np.asarray(x), np.asarray(y)
    cue = alphabet + 1
    assert copy_vocab_size(alphabet) == alphabet + 2
    # inputs: symbols, T - 1 blanks, the cue at T + n - 1, n blanks
    assert ((x[:, :n] >= 1) & (x[:, :n] <= alphabet)).all()
    assert (x[:, n : delay + n - 1] == BLANK).all()
    assert (x[:, delay + n - 1] == cue).all()
    assert (x[:, delay + n :] == BLANK).all()
    # targets: blank until the recall, then the symbols in order, each seen T + n steps earlier
    assert (y[:, : delay + n] == BLANK).all()
    np.testing.assert_array_equal(y[:, delay + n :], x[:, :n])
    for i in range(n):
        np.testing.assert_array_equal(y[:, delay + n + i], x[:, i])


def test_copy_task_symbols_are_uniform_and_keyed():
    x, _ = copy_task(jax.random.key(0), 4000, 3, 10, 8)
    counts = np.bincount(np.asarray(x[:, :10]).ravel(), minlength=9)[1:]
    assert counts.sum() == 40_000
    np.testing.assert_allclose(counts / 40_000, 1 / 8, atol=0.01)  # 5000 +- ~66 each
    a, _ = copy_task(jax.random.key(0), 4, 3)
    b, _ = copy_task(jax.random.key(0), 4, 3)
    c, _ = copy_task(jax.random.key(1), 4, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_copy_task_jits():
    f = jax.jit(copy_task, static_argnums=(1, 2, 3, 4))
    x, y = f(jax.random.key(2), 3, 6, 4, 5)
    chex.assert_shape([x, y], (3, 14))


@pytest.mark.parametrize("delay,n,alphabet", [(50, 10, 8), (7, 3, 5)])
def test_copy_baseline_is_the_memoryless_predictors_score(delay, n, alphabet):
    """The predictor that puts probability 1 on blank before the recall and 1/A on each symbol
    during it scores the analytic loss exactly (cross-entropy of the generated targets)."""
    x, y = copy_task(jax.random.key(5), 64, delay, n, alphabet)
    vocab = copy_vocab_size(alphabet)
    probs = np.zeros((delay + 2 * n, vocab))
    probs[: delay + n, BLANK] = 1.0
    probs[delay + n :, 1 : alphabet + 1] = 1.0 / alphabet
    logits = jnp.log(jnp.asarray(probs) + 1e-30)[None]  # (1, L, V) -> broadcast over the batch
    logits = jnp.broadcast_to(logits, (*y.shape, vocab))
    base = copy_baseline(delay, n, alphabet)
    assert base["loss_all_steps"] == pytest.approx(n * math.log(alphabet) / (delay + 2 * n))
    np.testing.assert_allclose(losses.cross_entropy(logits, y), base["loss_all_steps"], rtol=1e-5)
    np.testing.assert_allclose(
        losses.cross_entropy(logits[:, -n:], y[:, -n:]), base["loss_recall"], rtol=1e-5
    )
    assert base["accuracy_recall"] == pytest.approx(1 / alphabet)


@pytest.mark.parametrize(
    "kwargs,name",
    [({"batch": 0}, "batch"), ({"delay": 0}, "delay"), ({"num_symbols": 0}, "num_symbols"),
     ({"alphabet": 0}, "alphabet"), ({"delay": 2.5}, "delay")],
)  # fmt: skip
def test_copy_task_rejects_bad_sizes(kwargs, name):
    args = {"batch": 2, "delay": 3, "num_symbols": 2, "alphabet": 4, **kwargs}
    with pytest.raises(ValueError, match=name):
        copy_task(jax.random.key(0), **args)
    if name != "batch":
        base_args = {k: v for k, v in args.items() if k != "batch"}
        with pytest.raises(ValueError, match=name):
            copy_baseline(**base_args)
