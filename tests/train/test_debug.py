"""The debugging toolkit: statistics against hand computations, and each tool on a planted bug."""

import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import data, train
from jaxdl.train import debug

X, Y = data.load("digits", "train")
X, Y = X[:256], Y[:256]


class MLP(nn.Module):
    hidden: int = 32
    relu: bool = True

    @nn.compact
    def __call__(self, x, train=False):
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(self.hidden)(x)
        if self.relu:
            x = nn.relu(x)
        return nn.Dense(10)(x)


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_nonfinite_paths_and_assert_finite():
    tree = {"a": {"kernel": jnp.ones((2, 2)), "bias": jnp.array([0.0, jnp.nan])}, "b": jnp.inf}
    assert debug.nonfinite_paths(tree) == ["a/bias", "b"]
    with pytest.raises(debug.NonFiniteError, match="at step 7: a/bias, b") as e:
        debug.assert_finite(tree, step=7)
    assert e.value.step == 7 and e.value.paths == ["a/bias", "b"]
    debug.assert_finite({"w": jnp.zeros(3)}, step=0)  # no error


def test_activation_stats_dead_units_match_numpy():
    model = MLP(hidden=4)
    variables = model.init(jax.random.PRNGKey(0), X[:1])
    w = np.asarray(variables["params"]["Dense_0"]["kernel"]).copy()
    w[:, 1] = -np.abs(w[:, 1]) - 0.1  # inputs are >= 0, so unit 1 is negative for every example
    params = {**variables["params"], "Dense_0": {"kernel": jnp.asarray(w), "bias": jnp.zeros(4)}}
    stats = debug.activation_stats(model, {"params": params}, X)
    assert list(stats) == ["Dense_0", "Dense_1"]
    pre = X.reshape(len(X), -1) @ w  # (N, 4)
    np.testing.assert_allclose(stats["Dense_0"]["dead_fraction"], np.mean(np.all(pre <= 0, 0)))
    assert stats["Dense_0"]["dead_fraction"] >= 0.25
    np.testing.assert_allclose(stats["Dense_0"]["frac_nonpositive"], np.mean(pre <= 0), atol=1e-6)
    np.testing.assert_allclose(stats["Dense_0"]["std"], pre.std(), rtol=1e-4)


def test_gradient_stats_match_the_softmax_regression_formula():
    model = Linear()
    variables = model.init(jax.random.PRNGKey(1), X[:1])
    w = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
    xf = X.reshape(len(X), -1).astype(np.float64)
    z = xf @ w
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g_w = xf.T @ (p - np.eye(10)[Y]) / len(X)  # d mean CE / dW = X^T (softmax - onehot) / N
    stats = debug.gradient_stats(model, variables, X, Y)
    np.testing.assert_allclose(stats["Dense_0/kernel"]["grad_norm"], np.linalg.norm(g_w), rtol=1e-4)
    np.testing.assert_allclose(stats["Dense_0/kernel"]["param_norm"], np.linalg.norm(w), rtol=1e-5)
    np.testing.assert_allclose(
        stats["Dense_0/kernel"]["grad_to_param"], np.linalg.norm(g_w) / np.linalg.norm(w), 1e-4
    )


def test_overfit_one_batch_passes_for_a_healthy_setup_and_fails_for_a_frozen_one():
    batch = (X[:16], Y[:16])
    ok = debug.overfit_one_batch(MLP(), optax.adam(1e-2), batch, steps=200)
    assert ok.passed and ok.final_accuracy == 1.0 and ok.final_loss < 0.05
    assert ok.losses[-1] < ok.losses[0]
    frozen = debug.overfit_one_batch(MLP(), optax.sgd(0.0), batch, steps=20)
    assert not frozen.passed and frozen.steps == 20
    np.testing.assert_allclose(frozen.losses, frozen.losses[0], rtol=1e-6)


def test_find_first_nonfinite_names_step_layer_and_parameters():
    assert debug.find_first_nonfinite(MLP(), optax.adam(1e-3), (X, Y), steps=3) is None
    x = X.copy()
    x[3, 2, 2, 0] = np.nan  # one corrupt pixel
    report = debug.find_first_nonfinite(MLP(), optax.adam(1e-3), (x, Y), steps=5, batch_size=256)
    assert report.step == 0 and not np.isfinite(report.loss)
    assert report.activation_paths[0] == "Dense_0"
    assert "Dense_0/kernel" in report.grad_paths
    assert "step 0" in report.message
    # An absurd learning rate: finite at first, parameters overflow a few steps later.
    blowup = debug.find_first_nonfinite(MLP(), optax.sgd(1e36), (X, Y), steps=20, batch_size=64)
    assert blowup is not None and blowup.step >= 1
    assert blowup.param_paths or blowup.grad_paths


def test_lr_range_test_schedule_divergence_and_plot(tmp_path):
    res = debug.lr_range_test(
        MLP(), optax.sgd, (X, Y), min_lr=1e-3, max_lr=1e3, num_steps=60, batch_size=64
    )
    n = len(res.learning_rates)
    expected = 1e-3 * 1e6 ** (np.arange(n) / 59)
    np.testing.assert_allclose(res.learning_rates, expected, rtol=1e-4)
    assert res.diverged_at is not None and n < 60  # a rate of 1e3 diverges
    assert res.suggestion == pytest.approx(res.min_loss_lr / 10)
    assert min(res.smoothed) < res.smoothed[0]  # the useful range exists
    path = os.path.join(tmp_path, "lr.png")
    debug.plot_lr_range_test(res, path)
    assert os.path.getsize(path) > 1000


def test_layer_stats_logger_through_fit():
    logger = debug.LayerStatsLogger(MLP(), (X[:64], Y[:64]))
    hist = train.fit(
        MLP(), optax.adam(1e-3), (X, Y), epochs=2, batch_size=64, callbacks=[logger], verbose=False
    )
    assert [r["epoch"] for r in logger.records] == [0, 1]
    assert set(logger.records[0]["activations"]) == {"Dense_0", "Dense_1"}
    assert len(hist.history["dead_relu_fraction"]) == 2
    assert all(g > 0 for g in hist.history["grad_norm"])


def test_bad_input():
    with pytest.raises(ValueError, match="min_lr"):
        debug.lr_range_test(MLP(), optax.sgd, (X, Y), min_lr=1.0, max_lr=0.1)
    with pytest.raises(ValueError, match="batch must be a pair"):
        debug.overfit_one_batch(MLP(), optax.sgd(0.1), X)
    logger = debug.LayerStatsLogger(MLP(), (X[:8], Y[:8]), relu_layers=("Conv_0",))
    trainer = types.SimpleNamespace(state=train.create_train_state(MLP(), optax.sgd(0.1), X[:1]))
    with pytest.raises(ValueError, match="relu_layers"):
        logger.on_epoch_end(0, {}, trainer)
