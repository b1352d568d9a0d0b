"""models.UNet: shapes at 8x8 and 28x28, conditioning, the time embedding, errors, one training step."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import diffusion, models, optim


def test_timestep_embedding_formula():
    t = jnp.asarray([0, 3, 999])
    emb = models.timestep_embedding(t, 8)
    chex.assert_shape(emb, (3, 8))
    w = np.array([10000 ** (-i / 4) for i in range(4)])
    ref = np.concatenate([np.cos(np.outer(t, w)), np.sin(np.outer(t, w))], axis=1)
    np.testing.assert_allclose(emb, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="even"):
        models.timestep_embedding(t, 7)


def _key(i):
    # threefry-based init compiles slowly on CPU (every parameter's bits); rbg keeps these tests quick
    return jax.random.key(i, impl="unsafe_rbg")


@pytest.mark.parametrize(
    "size,mults,attention,num_classes",
    [(8, (1, 2), False, None), (8, (1, 2), True, 10), (28, (1, 2, 2), True, 10)],
)
def test_unet_shapes(size, mults, attention, num_classes):
    """Shapes by abstract evaluation (no compilation): output (B, H, W, C) for 8x8 and 28x28."""
    model = models.UNet(
        channels=16, channel_mults=mults, attention=attention, num_classes=num_classes
    )
    x = jax.ShapeDtypeStruct((2, size, size, 1), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.int32)
    y = None if num_classes is None else jax.ShapeDtypeStruct((2,), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), x, t, y)
    out = jax.eval_shape(model.apply, params, x, t, y)
    assert out.shape == (2, size, size, 1) and out.dtype == jnp.float32
    names = set(params["params"])
    assert ("SelfAttention_0" in names) == attention
    assert ("Embed_0" in names) == (num_classes is not None)


def test_unet_class_embedding_changes_output_and_defaults_to_null():
    model = models.UNet(channels=8, channel_mults=(1, 2), num_classes=3)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    t = jnp.asarray([1, 2])
    # random weights of the right shapes: init's own compile is the slow part on CPU, and its
    # zero-initialised layers would hide the class embedding's effect
    shapes = jax.eval_shape(model.init, jax.random.key(1), x, t, jnp.asarray([0, 1]))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: 0.3 * rng.standard_normal(p.shape, np.float32), shapes)
    apply = jax.jit(model.apply)
    a = apply(params, x, t, jnp.asarray([0, 0]))
    b = apply(params, x, t, jnp.asarray([1, 1]))
    assert float(jnp.abs(a - b).max()) > 1e-4
    chex.assert_trees_all_close(
        jax.jit(model.apply)(params, x, t), apply(params, x, t, jnp.asarray([3, 3]))
    )
    assert model.null_label == 3
    assert params["params"]["Embed_0"]["embedding"].shape == (4, 32)


def test_unet_bad_inputs():
    model = models.UNet(channels=8, channel_mults=(1, 2, 2))

    def init(*args):  # trace only: the checks run before any compilation
        return jax.eval_shape(model.init, *args)

    with pytest.raises(ValueError, match="divisible by 4"):
        init(jax.random.key(0), jnp.ones((1, 6, 6, 1)), jnp.asarray([0]))
    with pytest.raises(ValueError, match="NHWC"):
        init(jax.random.key(0), jnp.ones((8, 8, 1)), jnp.asarray([0]))
    with pytest.raises(ValueError, match="t must have shape"):
        init(jax.random.key(0), jnp.ones((2, 8, 8, 1)), jnp.asarray([0, 1, 2]))
    with pytest.raises(ValueError, match="num_classes is None"):
        init(jax.random.key(0), jnp.ones((1, 8, 8, 1)), jnp.asarray([0]), jnp.asarray([1]))


@pytest.mark.slow
def test_unet_trains_with_jitted_step_and_ema():
    """A few Adam steps on a fixed batch lower the denoising loss; the EMA tracks the weights."""
    model = models.UNet(channels=8, channel_mults=(1, 2))
    sched = diffusion.linear_schedule(100)
    x0 = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1)) * 2 - 1
    params = jax.jit(model.init)(_key(1), x0, jnp.zeros((16,), jnp.int32))
    opt = optim.adam(3e-3)
    state = opt.init(params)

    def loss_fn(p, key):
        return diffusion.denoising_loss(lambda x, t: model.apply(p, x, t), sched, x0, key)

    @jax.jit
    def step(p, s, ema, key):
        loss, g = jax.value_and_grad(loss_fn)(p, key)
        u, s = opt.update(g, s, p)
        p = jax.tree.map(lambda a, b: a + b, p, u)
        return p, s, diffusion.ema_update(ema, p, 0.9), loss

    key = jax.random.key(2)
    eval_key = jax.random.key(3)
    before = float(loss_fn(params, eval_key))
    ema = params
    for i in range(30):
        params, state, ema, _ = step(params, state, ema, jax.random.fold_in(key, i))
    after = float(loss_fn(params, eval_key))
    assert math.isfinite(after) and after < before
    assert jax.tree.all(jax.tree.map(lambda a, b: a.shape == b.shape, ema, params))
