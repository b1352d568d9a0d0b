"""Magnitude masks (global vs layer, ties, exact counts) and gradual pruning through optimizers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import compress, optim


def _tree():
    return {
        "a": {"kernel": jnp.array([[1.0, -8.0], [3.0, 0.5]]), "bias": jnp.array([0.01, 0.02])},
        "b": {"kernel": jnp.array([[-2.0, 4.0, 6.0], [7.0, -0.1, 5.0]])},
        "norm": {"scale": jnp.array([0.001, 0.002])},
    }


def test_global_keeps_largest_overall():
    m = compress.magnitude_mask(_tree(), 0.5, scope="global")
    # 10 kernel entries, prune 5: |w| sorted 0.1 0.5 1 2 3 | 4 5 6 7 8
    np.testing.assert_array_equal(m["a"]["kernel"], [[False, True], [False, False]])
    np.testing.assert_array_equal(m["b"]["kernel"], [[False, True, True], [True, False, True]])
    # biases and norm parameters are never pruned
    assert bool(m["a"]["bias"].all()) and bool(m["norm"]["scale"].all())


def test_layer_prunes_each_kernel_separately():
    m = compress.magnitude_mask(_tree(), 0.5, scope="layer")
    np.testing.assert_array_equal(m["a"]["kernel"], [[False, True], [True, False]])  # 2 of 4
    np.testing.assert_array_equal(m["b"]["kernel"], [[False, False, True], [True, False, True]])


def test_ties_broken_by_position_and_exact_count():
    params = {"d": {"kernel": jnp.ones((4, 5))}}
    m = compress.magnitude_mask(params, 0.3)
    flat = np.asarray(m["d"]["kernel"]).ravel()
    assert flat.sum() == 14  # round(0.3 * 20) = 6 pruned
    np.testing.assert_array_equal(flat, [True] * 14 + [False] * 6)  # earlier entries kept
    # global ties across layers: tree order decides
    params = {"x": {"kernel": jnp.ones((2, 2))}, "y": {"kernel": jnp.ones((2, 2))}}
    m = compress.magnitude_mask(params, 0.5)
    assert bool(m["x"]["kernel"].all()) and not bool(m["y"]["kernel"].any())


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_against_numpy_sort(scope):
    rng = np.random.default_rng(0)
    params = {
        "l1": {"kernel": rng.normal(size=(30, 20))},
        "l2": {"kernel": 3 * rng.normal(size=(20, 7))},
    }
    s = 0.83
    m = compress.magnitude_mask(params, s, scope=scope)
    if scope == "global":
        allw = np.concatenate([np.abs(params[k]["kernel"]).ravel() for k in ("l1", "l2")])
        thr = np.sort(allw)[int(round(s * allw.size))]  # the smallest kept magnitude
        for k in ("l1", "l2"):
            np.testing.assert_array_equal(m[k]["kernel"], np.abs(params[k]["kernel"]) >= thr)
    else:
        for k in ("l1", "l2"):
            w = np.abs(params[k]["kernel"]).ravel()
            thr = np.sort(w)[int(round(s * w.size))]
            np.testing.assert_array_equal(m[k]["kernel"], np.abs(params[k]["kernel"]) >= thr)


def test_apply_mask_and_sparsity_helpers():
    params = _tree()
    pruned = compress.apply_mask(params, compress.magnitude_mask(params, 0.5))
    assert compress.kernel_sparsity(pruned) == 0.5
    np.testing.assert_array_equal(pruned["a"]["bias"], params["a"]["bias"])
    assert compress.sparse_size_bytes(pruned) == 5 * 4 + 1 + 1 + 4 * 4
    # quantised: one byte per non-zero, the bitmaps, the per-channel scales, float biases/norms
    q = compress.quantize(pruned)
    assert compress.sparse_size_bytes(q) == 5 * 1 + 1 + 1 + 4 * (2 + 3) + 4 * 4
    with pytest.raises(ValueError, match="sparsity"):
        compress.magnitude_mask(params, 1.5)
    with pytest.raises(ValueError, match="scope"):
        compress.magnitude_mask(params, 0.5, scope="row")


def test_polynomial_schedule():
    s = [float(compress.polynomial_sparsity(t, 0.9, 10, 50, 0.1)) for t in (0, 10, 30, 50, 80)]
    np.testing.assert_allclose(s, [0.1, 0.1, 0.9 - 0.8 * 0.125, 0.9, 0.9], rtol=1e-6)
    # begin == end: one-shot, the final sparsity from that step on
    s = [float(compress.polynomial_sparsity(t, 0.9, 3, 3)) for t in (0, 3, 4)]
    np.testing.assert_allclose(s, [0.0, 0.9, 0.9], rtol=1e-6)


def _quadratic_problem():
    rng = np.random.default_rng(1)
    target = {
        "d": {
            "kernel": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(6,)), jnp.float32),
        }
    }
    loss = lambda p: sum(
        jnp.sum((a - b) ** 2)
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target), strict=True)
    )
    return target, loss


@pytest.mark.parametrize("make_inner", [lambda: optim.adam(0.05), lambda: optim.momentum(0.05)])
def test_gradual_pruning_keeps_pruned_weights_zero(make_inner):
    target, loss = _quadratic_problem()
    params = jax.tree.map(jnp.zeros_like, target)
    opt = compress.gradual_pruning(make_inner(), 0.75, begin_step=5, end_step=25, frequency=5)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        g = jax.grad(loss)(params)
        u, state = opt.update(g, state, params)
        return optax.apply_updates(params, u), state

    sparsities = []
    for _ in range(60):
        params, state = step(params, state)
        kept = state.mask["d"]["kernel"]
        # pruned weights are exactly zero after every update, whatever the optimizer's momentum
        assert not bool(jnp.any(jnp.where(kept, 0.0, params["d"]["kernel"]) != 0))
        sparsities.append(compress.kernel_sparsity(params))
    assert int(state.count) == 60
    assert sparsities[3] == 0.0
    assert sparsities[-1] == pytest.approx(0.75, abs=1e-9)  # round(0.75 * 48) = 36 pruned
    assert bool(state.mask["d"]["bias"].all())
    # the kept weights are the largest targets, and they converged to them
    want = compress.magnitude_mask(target, 0.75)["d"]["kernel"]
    np.testing.assert_array_equal(state.mask["d"]["kernel"], want)


def test_gradual_pruning_through_fit_and_with_schedules():
    import flax.linen as nn

    from jaxdl import train

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3)(nn.relu(nn.Dense(16)(x)))

    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32)
    opt = compress.gradual_pruning(optim.adam(1e-2), 0.8, begin_step=0, end_step=12, frequency=4)
    hist = train.fit(Tiny(), opt, (x, y), epochs=8, batch_size=16, verbose=False)
    assert compress.kernel_sparsity(hist.state.params) == pytest.approx(0.8, abs=0.01)


def test_one_shot_then_masked_fine_tuning():
    target, loss = _quadratic_problem()
    params = jax.tree.map(lambda t: t + 0.1, target)
    opt = compress.gradual_pruning(optim.sgd(0.1), 0.5, 0, 0)
    state = opt.init(params)
    for _ in range(5):
        u, state = opt.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, u)
    assert compress.kernel_sparsity(params) == 0.5


def test_gradual_pruning_bad_args():
    with pytest.raises(ValueError, match="begin_step"):
        compress.gradual_pruning(optim.sgd(0.1), 0.5, 10, 5)
    with pytest.raises(ValueError, match="frequency"):
        compress.gradual_pruning(optim.sgd(0.1), 0.5, 0, 5, frequency=0)
    with pytest.raises(ValueError, match="initial_sparsity"):
        compress.gradual_pruning(optim.sgd(0.1), 0.5, 0, 5, initial_sparsity=0.7)
    opt = compress.gradual_pruning(optim.sgd(0.1), 0.5, 0, 5)
    p = {"k": {"kernel": jnp.ones((2, 2))}}
    with pytest.raises(ValueError, match="params"):
        opt.update(p, opt.init(p))
