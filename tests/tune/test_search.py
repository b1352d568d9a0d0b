"""grid, random and Bayesian search: coverage, bounds, log scale, seeds, improvement, pruning."""

import itertools
import math

import numpy as np
import pytest

from jaxdl import tune

SPACE = {
    "learning_rate": tune.loguniform(1e-4, 1e-1),
    "dropout": tune.uniform(0.0, 0.6),
    "batch_size": tune.choice([32, 64, 128]),
}


def _quadratic(p):
    return (math.log10(p["learning_rate"]) + 2.5) ** 2 + 4 * (p["dropout"] - 0.3) ** 2


def test_grid_covers_the_grid():
    pts = tune.grid_points(SPACE, 32)
    assert pts["batch_size"] == [32, 64, 128]
    np.testing.assert_allclose(pts["dropout"], [0.1, 0.3, 0.5])
    np.testing.assert_allclose(np.log10(pts["learning_rate"]), [-3.5, -2.5, -1.5])
    study = tune.search(lambda p: _quadratic(p) + p["batch_size"] / 1e4, SPACE, "grid", 32)
    seen = {
        (t.params["learning_rate"], t.params["dropout"], t.params["batch_size"])
        for t in study.trials
    }
    assert len(study.trials) == 27 and seen == set(itertools.product(*pts.values()))
    assert study.best_params["batch_size"] == 32
    assert study.best_params["learning_rate"] == pytest.approx(10**-2.5)
    # a budget that does not fill the cube: all categories first, then floats evenly
    assert [len(v) for v in tune.grid_points(SPACE, 16).values()] == [2, 2, 3]
    assert len(tune.search(_quadratic, SPACE, "grid", 16).trials) == 12


def test_random_respects_bounds_log_scale_and_seed():
    study = tune.search(lambda p: 0.0, SPACE, "random", num_trials=400, seed=3)
    lr = np.array([t.params["learning_rate"] for t in study.trials])
    do = np.array([t.params["dropout"] for t in study.trials])
    bs = [t.params["batch_size"] for t in study.trials]
    assert lr.min() >= 1e-4 and lr.max() <= 1e-1 and do.min() >= 0 and do.max() <= 0.6
    assert set(bs) == {32, 64, 128} and all(type(b) is int for b in bs)
    # log-uniform: each decade gets about a third of the draws
    counts = np.histogram(np.log10(lr), bins=[-4, -3, -2, -1])[0]
    assert counts.min() > 100, counts
    assert abs(np.mean(do) - 0.3) < 0.03
    again = tune.search(lambda p: 0.0, SPACE, "random", num_trials=400, seed=3)
    assert [t.params for t in again.trials] == [t.params for t in study.trials]
    other = tune.search(lambda p: 0.0, SPACE, "random", num_trials=5, seed=4)
    assert other.trials[0].params != study.trials[0].params


def test_bayesian_beats_random_on_a_quadratic_on_average():
    space = {k: SPACE[k] for k in ("learning_rate", "dropout")}
    rand = [tune.search(_quadratic, space, "random", 30, seed=s).best_value for s in range(5)]
    bayes = [tune.search(_quadratic, space, "bayesian", 30, seed=s).best_value for s in range(5)]
    assert np.mean(bayes) < np.mean(rand), (bayes, rand)
    study = tune.search(_quadratic, space, "bayesian", 30, seed=0)
    assert study.best_value == min(t.value for t in study.trials)
    assert study.best_value == _quadratic(study.best_params)
    curve = study.best_so_far()
    assert curve.shape == (30,) and np.all(np.diff(curve) <= 0)


@pytest.mark.parametrize("method", ["random", "bayesian", "grid"])
def test_pruning_stops_bad_trials(method):
    calls = []

    def objective(params, report):
        x = params["x"]
        for step in range(5):
            calls.append(step)
            report(step, x * (step + 1))  # the bad trials are bad from the first step
        return x * 5

    study = tune.search(objective, {"x": tune.uniform(0.0, 1.0)}, method, num_trials=20, seed=0)
    pruned = [t for t in study.trials if t.state == "pruned"]
    done = [t for t in study.trials if t.state == "complete"]
    assert len(pruned) >= 4 and len(done) >= 3
    assert len(calls) < 5 * len(study.trials)
    assert all(len(t.intermediate) < 5 for t in pruned)
    # pruning only ever drops worse-than-median trials: the best survives
    assert study.best_value == min(t.value for t in done)
    assert study.best_params["x"] < np.median([t.params["x"] for t in study.trials])
    nothing = tune.search(objective, {"x": tune.uniform(0.0, 1.0)}, method, 10, pruner=None)
    assert all(t.state == "complete" for t in nothing.trials)


def test_failures_and_bad_input():
    study = tune.search(
        lambda p: float("nan") if p["x"] > 0.5 else p["x"], {"x": tune.uniform(0, 1)}, num_trials=10
    )
    assert any(t.state == "failed" for t in study.trials)
    assert study.best_value <= 0.5
    with pytest.raises(ValueError, match="method"):
        tune.search(_quadratic, SPACE, "evolution")
    with pytest.raises(ValueError, match="num_trials"):
        tune.search(_quadratic, SPACE, num_trials=0)
    with pytest.raises(TypeError, match="space"):
        tune.search(_quadratic, {"x": 3.0})
    with pytest.raises(ValueError, match="low"):
        tune.loguniform(0.0, 1.0)
    with pytest.raises(ValueError, match="low"):
        tune.uniform(1.0, 1.0)
