"""Clipping and regularizer transforms against optax and against their formulas."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import optim


def _tree(scale=1.0):
    k = jax.random.split(jax.random.key(3), 3)
    return {
        "conv": {"kernel": scale * jax.random.normal(k[0], (3, 3, 2, 4)), "bias": jnp.ones(4)},
        "bn": {"scale": jnp.full((4,), 2.0), "bias": jnp.full((4,), -1.0)},
        "dense": {"kernel": scale * jax.random.normal(k[1], (8, 2))},
    }


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e4])
def test_clip_by_global_norm_matches_optax(max_norm):
    g = _tree(2.0)
    got, _ = optim.clip_by_global_norm(max_norm).update(g, optax.EmptyState())
    want, _ = optax.clip_by_global_norm(max_norm).update(g, optax.EmptyState())
    chex.assert_trees_all_close(got, want, rtol=1e-6)
    norm = float(optim.global_norm(got))
    ref = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(g)))
    np.testing.assert_allclose(float(optim.global_norm(g)), ref, rtol=1e-6)
    np.testing.assert_allclose(norm, min(ref, max_norm), rtol=1e-5)


def test_clip_by_global_norm_zero_gradient_is_finite():
    g = jax.tree.map(jnp.zeros_like, _tree())
    got, _ = optim.clip_by_global_norm(1.0).update(g, optax.EmptyState())
    chex.assert_trees_all_equal(got, g)


def test_clip_by_value_matches_optax():
    g = _tree(3.0)
    got, _ = optim.clip_by_value(1.5).update(g, optax.EmptyState())
    want, _ = optax.clip(1.5).update(g, optax.EmptyState())
    chex.assert_trees_all_equal(got, want)
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(got)) == 1.5


def test_weight_decay_mask_excludes_biases_and_norm_parameters():
    mask = optim.weight_decay_mask(_tree())
    assert mask == {
        "conv": {"kernel": True, "bias": False},
        "bn": {"scale": False, "bias": False},
        "dense": {"kernel": True},
    }


@pytest.mark.parametrize("use_mask", [False, True])
def test_add_decayed_weights_matches_optax(use_mask):
    params, g = _tree(), _tree(0.1)
    mask = optim.weight_decay_mask if use_mask else None
    ours, theirs = optim.add_decayed_weights(0.3, mask), optax.add_decayed_weights(0.3, mask)
    got, _ = ours.update(g, ours.init(params), params)
    want, _ = theirs.update(g, theirs.init(params), params)
    chex.assert_trees_all_close(got, want, rtol=1e-6)
    if use_mask:
        chex.assert_trees_all_equal(got["bn"], g["bn"])


def test_prefix_mask_and_l1():
    params, g = _tree(), _tree(0.1)
    mask = {"conv": True, "bn": False, "dense": True}  # a prefix: one flag per sub-module
    got, _ = optim.add_l1(0.01, mask).update(g, optim.add_l1(0.01).init(params), params)
    for mod in ("conv", "dense"):
        for name, p in params[mod].items():
            want = np.asarray(g[mod][name]) + 0.01 * np.sign(np.asarray(p))
            np.testing.assert_allclose(got[mod][name], want, rtol=1e-6)
    chex.assert_trees_all_equal(got["bn"], g["bn"])
    with pytest.raises(ValueError, match="mask"):
        bad = {"conv": 1, "bn": 0, "dense": 1}
        optim.add_l1(0.01, bad).update(g, optim.add_l1(0.01).init(params), params)


def test_adam_plus_l2_differs_from_adamw():
    # Adam + L2 divides the decay term by sqrt(v_hat); AdamW does not (Loshchilov & Hutter 2019).
    params = {"w": jnp.array([1.0, 1.0])}
    g = {"w": jnp.array([10.0, 0.01])}  # very different gradient scales per coordinate
    l2 = optim.chain(optim.add_decayed_weights(0.1), optim.adam(0.01))
    l2_ref = optax.chain(optax.add_decayed_weights(0.1), optax.adam(0.01))
    u_l2, _ = l2.update(g, l2.init(params), params)
    u_ref, _ = l2_ref.update(g, l2_ref.init(params), params)
    chex.assert_trees_all_close(u_l2, u_ref, rtol=1e-5)
    w = optim.adamw(0.01, weight_decay=0.1)
    u_w, _ = w.update(g, w.init(params), params)
    # AdamW at step 1: -lr (sign(g) + wd * theta) for every coordinate.
    np.testing.assert_allclose(u_w["w"], [-0.01 * 1.1, -0.01 * 1.1], rtol=1e-5)
    # Adam+L2: the decay is drowned for the large-gradient coordinate: -lr (10 + 0.1)/(10.1).
    np.testing.assert_allclose(u_l2["w"], [-0.01, -0.01], rtol=1e-5)
