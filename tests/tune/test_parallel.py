"""K trials in one vmapped program equal K separate runs."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxdl import optim, tune


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Dense(16)(x))
        x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.Dense(3)(x)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
    return x, y


@pytest.mark.slow  # two compilations of a scanned training loop: ~10 s idle, ~60 s on a loaded CPU
def test_vmapped_trials_equal_separate_runs():
    x, y = _data()
    train = tune.make_train_fn(
        _MLP(),
        lambda h: optim.adamw(h["learning_rate"], weight_decay=h["weight_decay"]),
        (x, y),
        num_steps=15,
        batch_size=16,
        eval_data=(x, y),
    )
    hp = {
        "learning_rate": np.array([1e-3, 1e-2, 3e-2]),
        "weight_decay": np.array([0.0, 1e-2, 1e-1]),
    }
    seeds = np.array([0, 1, 2])
    together = tune.vmap_trials(train, hp, seeds)
    assert together["loss"].shape == (3, 15)
    single = jax.jit(train)
    for k in range(3):
        alone = single({n: np.float32(v[k]) for n, v in hp.items()}, seeds[k])
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(together), strict=True):
            np.testing.assert_allclose(b[k], a, rtol=2e-5, atol=2e-6)
    # the trials really differ
    assert len({round(float(v), 6) for v in together["eval_loss"]}) == 3


def test_bad_input():
    x, y = _data()
    train = tune.make_train_fn(_MLP(), lambda h: optim.sgd(h["lr"]), (x, y), 2, 8)
    with pytest.raises(ValueError, match="seeds"):
        tune.vmap_trials(train, {"lr": [0.1, 0.2]}, [0.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        tune.vmap_trials(train, {"lr": [0.1, 0.2, 0.3]}, [0, 1])
    with pytest.raises(ValueError, match="num_steps"):
        tune.make_train_fn(_MLP(), lambda h: optim.sgd(0.1), (x, y), 0, 8)
