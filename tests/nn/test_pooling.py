import chex
import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import nn
from jaxdl.nn.pooling import max_pool_reference


class MaxPoolTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_reduce_window_forward_and_gradient(self):
        for shape in [(2, 26, 26, 3), (1, 11, 11, 4), (3, 5, 7, 2)]:
            x = jnp.asarray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
            pool = self.variant(nn.max_pool)
            chex.assert_trees_all_close(pool(x), max_pool_reference(x))
            weights = jnp.asarray(np.random.default_rng(1).normal(size=pool(x).shape), jnp.float32)
            g = jax.grad(lambda x: jnp.sum(pool(x) * weights))(x)
            g_ref = jax.grad(lambda x: jnp.sum(max_pool_reference(x) * weights))(x)
            chex.assert_trees_all_close(g, g_ref)

    def test_window_three(self):
        x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 9, 10, 1)).astype(np.float32))
        chex.assert_trees_all_close(nn.max_pool(x, 3), max_pool_reference(x, 3))


def test_bad_inputs():
    with pytest.raises(ValueError, match="rank 4"):
        nn.max_pool(jnp.zeros((4, 4)))
    with pytest.raises(ValueError, match="smaller"):
        nn.max_pool(jnp.zeros((1, 1, 4, 1)))


# --- one max_pool, several lowerings (jaxdl.nn.pooling): each against lax.reduce_window ---

IMPLS = ["auto", "reduce_window", "reshape", "window", "slices"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("window", [2, 3, (2, 3)])
def test_every_impl_matches_reduce_window_forward_and_gradient(impl, window):
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 11, 13, 3)), jnp.float32)
    k = (window, window) if isinstance(window, int) else window
    ref = lambda x: flax.linen.max_pool(x, k, strides=k, padding="VALID")  # noqa: E731
    pool = jax.jit(lambda x: nn.max_pool(x, window, impl=impl))
    chex.assert_trees_all_equal(pool(x), ref(x))
    ct = jnp.asarray(np.random.default_rng(4).normal(size=ref(x).shape), jnp.float32)
    g = jax.grad(lambda x: jnp.sum(pool(x) * ct))(x)
    chex.assert_trees_all_close(g, jax.grad(lambda x: jnp.sum(ref(x) * ct))(x))


@pytest.mark.parametrize(
    "window, strides, padding",
    [((3, 3), (2, 2), ((1, 1), (1, 1))), ((3, 3), (2, 2), "SAME"), ((2, 2), (1, 1), "VALID")],
)
def test_overlapping_and_padded_windows_use_reduce_window(window, strides, padding):
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 9, 8, 2)), jnp.float32)
    ref = flax.linen.max_pool(x, window, strides=strides, padding=padding)
    for impl in ("auto", "reduce_window"):
        chex.assert_trees_all_equal(nn.max_pool(x, window, strides, padding, impl=impl), ref)
    with pytest.raises(ValueError, match="impl='slices' needs non-overlapping"):
        nn.max_pool(x, window, strides, padding, impl="slices")


def test_one_pass_backward_on_a_tie_gives_each_tied_entry_the_gradient():
    # the documented difference: "window"/"slices" give every tied maximum the full cotangent
    x = jnp.ones((1, 2, 2, 1))
    g = {i: jax.grad(lambda x, i=i: jnp.sum(nn.max_pool(x, impl=i)))(x) for i in IMPLS[1:]}
    assert float(g["reduce_window"].sum()) == 1.0 and float(g["reshape"].sum()) == 1.0
    chex.assert_trees_all_equal(g["window"], jnp.ones_like(x), g["slices"])


def test_bad_impl_window_and_padding():
    x = jnp.zeros((1, 4, 4, 1))
    with pytest.raises(ValueError, match="impl must be one of"):
        nn.max_pool(x, impl="fast")
    with pytest.raises(ValueError, match="window must be a positive int"):
        nn.max_pool(x, 0)
    with pytest.raises(ValueError, match="padding"):
        nn.max_pool(x, 2, 1, "FULL")


# --- the Conv layer (jaxdl.nn.conv.Conv) against flax.linen.Conv with the same variables ---


@pytest.mark.parametrize("impl", ["xla", "lax", "patches", "direct"])
def test_conv_layer_equals_flax_conv(impl):
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 10, 9, 2)), jnp.float32)
    ours = nn.Conv(4, (3, 3), strides=(2, 1), padding="SAME", impl=impl)
    theirs = flax.linen.Conv(4, (3, 3), strides=(2, 1), padding="SAME")
    v = ours.init(jax.random.key(0), x)
    chex.assert_trees_all_equal_shapes(v, theirs.init(jax.random.key(0), x))
    hi = jax.default_matmul_precision("highest")
    with hi:
        chex.assert_trees_all_close(ours.apply(v, x), theirs.apply(v, x), rtol=1e-5, atol=1e-5)
        loss = lambda m: lambda v: jnp.sum(jnp.sin(m.apply(v, x)))  # noqa: E731
        chex.assert_trees_all_close(
            jax.grad(loss(ours))(v), jax.grad(loss(theirs))(v), rtol=1e-4, atol=1e-5
        )


def test_conv_layer_errors():
    with pytest.raises(ValueError, match="impl must be one of"):
        nn.Conv(2, impl="fast").init(jax.random.key(0), jnp.zeros((1, 5, 5, 1)))
    with pytest.raises(ValueError, match="rank 4"):
        nn.Conv(2).init(jax.random.key(0), jnp.zeros((5, 5, 1)))
