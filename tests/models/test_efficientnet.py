"""EfficientNet: compound-scaling arithmetic, published counts B0-B7, MBConv parts, stochastic depth."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import models
from jaxdl.models import efficientnet as eff
from tests.models.test_resnet import jit_train_step_smoke, param_count

# torchvision's num_params for efficientnet_b0..b7 (the paper's 5.3M, 7.8M, 9.2M, 12M, 19M, 30M,
# 43M, 66M to more digits).
PUBLISHED = {
    "b0": 5_288_548,
    "b1": 7_794_184,
    "b2": 9_109_994,
    "b3": 12_233_232,
    "b4": 19_341_616,
    "b5": 30_389_784,
    "b6": 43_040_704,
    "b7": 66_347_960,
}

# Worked by hand from B0's table: ceil(d * (1, 2, 2, 3, 3, 4, 1)) per variant, and
# round_filters of (32 stem, 16, 24, 40, 80, 112, 192, 320, 1280 head).
REPEATS = {
    "b0": (1, 2, 2, 3, 3, 4, 1),
    "b1": (2, 3, 3, 4, 4, 5, 2),
    "b2": (2, 3, 3, 4, 4, 5, 2),
    "b3": (2, 3, 3, 5, 5, 6, 2),
    "b4": (2, 4, 4, 6, 6, 8, 2),
    "b5": (3, 5, 5, 7, 7, 9, 3),
    "b6": (3, 6, 6, 8, 8, 11, 3),
    "b7": (4, 7, 7, 10, 10, 13, 4),
}
CHANNELS = {  # stem, the seven stages, head
    "b0": (32, 16, 24, 40, 80, 112, 192, 320, 1280),
    "b1": (32, 16, 24, 40, 80, 112, 192, 320, 1280),
    "b2": (32, 16, 24, 48, 88, 120, 208, 352, 1408),
    "b3": (40, 24, 32, 48, 96, 136, 232, 384, 1536),
    "b4": (48, 24, 32, 56, 112, 160, 272, 448, 1792),
    "b5": (48, 24, 40, 64, 128, 176, 304, 512, 2048),
    "b6": (56, 32, 40, 72, 144, 200, 344, 576, 2304),
    "b7": (64, 32, 48, 80, 160, 224, 384, 640, 2560),
}


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_compound_scaling_arithmetic(variant):
    model = eff.efficientnet(variant)
    stages = model.scaled_stages
    assert tuple(s.repeats for s in stages) == REPEATS[variant]
    widths = (eff.round_filters(32, model.width),)
    widths += tuple(s.features for s in stages) + (eff.round_filters(1280, model.width),)
    assert widths == CHANNELS[variant]
    # Expansion, kernels and strides come from B0 unchanged.
    assert [s[:3] for s in stages] == [s[:3] for s in eff.B0_STAGES]


@pytest.mark.parametrize(
    "variant",
    # B6 and B7 trace for a few seconds each: slow.
    [
        pytest.param(v, marks=[pytest.mark.slow] if v in ("b6", "b7") else [])
        for v in sorted(PUBLISHED)
    ],
)
def test_published_param_counts(variant):
    # Parameters do not depend on resolution; 32x32 keeps the abstract trace small.
    ctor = getattr(models, f"EfficientNet{variant.upper()}")
    assert param_count(ctor(), (1, 32, 32, 3)) == PUBLISHED[variant]


def test_round_filters_and_repeats():
    assert eff.round_filters(32, 1.1) == 32  # 35.2 rounds down to 32, within 10%
    assert eff.round_filters(16, 1.2) == 24  # 19.2 would round to 16, 17% down: bumped to 24
    assert eff.round_filters(112, 1.1) == 120  # 123.2 -> 120
    assert eff.round_filters(3, 1.0) == 8  # never below the divisor
    assert eff.round_repeats(3, 3.1) == 10  # ceil(9.3)
    assert eff.round_repeats(1, 1.0) == 1
    with pytest.raises(ValueError, match="width > 0"):
        eff.round_filters(16, 0.0)
    with pytest.raises(ValueError, match="depth > 0"):
        eff.round_repeats(2, -1.0)


def test_compound_scaling_equation():
    base = eff.compound_scaling(0.0)
    assert (base.depth, base.width, base.resolution, base.flops_factor) == (1.0, 1.0, 224, 1.0)
    one = eff.compound_scaling(1.0)
    np.testing.assert_allclose(one.flops_factor, 1.2 * 1.1**2 * 1.15**2)  # ~1.92, "about 2"
    assert abs(one.flops_factor - 2.0) < 0.1
    three = eff.compound_scaling(3.0)
    np.testing.assert_allclose((three.depth, three.width), (1.2**3, 1.1**3))
    assert three.resolution == round(224 * 1.15**3)
    with pytest.raises(ValueError, match="alpha"):
        eff.compound_scaling(1.0, alpha=0.5)


def test_stochastic_depth_rates_grow_linearly():
    rates = eff.stochastic_depth_rates(16, 0.2)
    np.testing.assert_allclose(rates, 0.2 * np.arange(16) / 16)


def test_stochastic_depth_function():
    x = jnp.ones((4000, 1, 1, 2))
    y = eff.stochastic_depth(x, 0.3, deterministic=False, rng=jax.random.PRNGKey(0))
    kept = np.asarray(y[:, 0, 0, 0])
    # Whole examples are dropped (both channels together) and survivors are scaled by 1/(1-p).
    np.testing.assert_array_equal(np.asarray(y[..., 0]), np.asarray(y[..., 1]))
    np.testing.assert_allclose(kept[kept != 0], 1 / 0.7, rtol=1e-6)
    assert abs((kept == 0).mean() - 0.3) < 0.03
    assert abs(kept.mean() - 1.0) < 0.05  # unbiased
    assert eff.stochastic_depth(x, 0.3, deterministic=True, rng=None) is x


def test_mbconv_squeeze_excitation_and_shapes():
    block = eff.MBConv(
        out_features=8,
        expand_ratio=6,
        kernel=5,
        stride=2,
        se_ratio=0.25,
        drop_rate=0.0,
        conv=lambda *a, **k: nn.Conv(*a, **{"use_bias": False, **k}),
        norm=lambda **k: nn.BatchNorm(use_running_average=True, **k),
    )
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 4))
    variables = jax.eval_shape(block.init, jax.random.PRNGKey(1), x, False)
    p = variables["params"]
    assert p["expand_conv"]["kernel"].shape == (1, 1, 4, 24)
    assert p["depthwise_conv"]["kernel"].shape == (5, 5, 1, 24)  # one filter per channel
    assert p["se_reduce"]["kernel"].shape == (1, 1, 24, 1)  # max(1, int(4 * 0.25)) = 1
    assert p["se_expand"]["bias"].shape == (24,)
    out = jax.eval_shape(block.apply, variables, x, False)
    chex.assert_shape(out, (2, 5, 5, 8))  # symmetric padding: ceil(9 / 2) = 5


def test_stochastic_depth_and_dropout_only_in_training():
    # Three of B0's stages (downsampling 8) keep the compile short; the blocks are the real ones.
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
    model = models.EfficientNetB0(
        width=0.25,
        stages=eff.B0_STAGES[:3],
        num_classes=3,
        dropout_rate=0.0,
        stochastic_depth_rate=0.5,
    )
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)
    train = jax.jit(
        lambda v, key, m=model: m.apply(
            v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
        )[0]
    )
    a, b = train(variables, jax.random.PRNGKey(2)), train(variables, jax.random.PRNGKey(3))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-5  # blocks dropped at random in training
    # Without stochastic depth (and dropout) the training pass does not depend on the key.
    no_sd = model.clone(stochastic_depth_rate=0.0)
    train0 = jax.jit(
        lambda v, key: no_sd.apply(
            v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
        )[0]
    )
    chex.assert_trees_all_close(
        train0(variables, jax.random.PRNGKey(2)), train0(variables, jax.random.PRNGKey(3))
    )
    # Evaluation needs no rng and is deterministic.
    out = jax.jit(model.apply)(variables, x)
    chex.assert_shape(out, (4, 3))
    chex.assert_trees_all_equal(out, jax.jit(model.apply)(variables, x))


def test_errors():
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="variant must be one of"):
        eff.efficientnet("b8")
    with pytest.raises(ValueError, match="3 channels"):
        jax.eval_shape(models.EfficientNetB0().init, key, jnp.zeros((1, 64, 64, 1)))
    with pytest.raises(ValueError, match="at least 32x32"):
        jax.eval_shape(models.EfficientNetB0().init, key, jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="stochastic_depth_rate"):
        jax.eval_shape(
            models.EfficientNetB0(stochastic_depth_rate=1.0).init, key, jnp.zeros((1, 32, 32, 3))
        )


@pytest.mark.slow  # 25 s on 2 cores; the default suite keeps B0's blocks' value tests
def test_jit_train_step():
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 3))
    y = jnp.arange(8) % 4
    model = models.EfficientNetB0(
        width=0.25, stages=eff.B0_STAGES[:3], num_classes=4, dropout_rate=0.1
    )
    losses = jit_train_step_smoke(model, x, y)
    assert losses[-1] < losses[0]
