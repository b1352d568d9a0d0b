"""The zoo benchmark's analytic FLOP count (experiments/benchmarks/zoo_step.py) against a count by
hand: ResNet-20 on 32x32 is 40,551,040 multiply-adds per image (He et al. 2015 quote 41M)."""

import jax
import jax.numpy as jnp

from experiments.benchmarks.zoo_step import forward_flops, jaxdl_model


def test_resnet20_forward_flops_equal_the_hand_count():
    macs = (
        32 * 32 * 16 * 27  # stem 3x3x3 -> 16
        + 6 * 32 * 32 * 16 * 144  # stage 1: six 3x3x16 -> 16
        + 16 * 16 * 32 * 144  # stage 2, first conv (stride 2): 3x3x16 -> 32
        + 5 * 16 * 16 * 32 * 288  # stage 2, the rest: 3x3x32 -> 32
        + 8 * 8 * 64 * 288  # stage 3, first conv (stride 2)
        + 5 * 8 * 8 * 64 * 576  # stage 3, the rest
        + 64 * 10  # classifier
    )
    assert macs == 40_551_040
    model = jaxdl_model("resnet20")
    x = jnp.ones((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    assert forward_flops(model, variables, x) == 2 * macs


def test_depthwise_convolutions_are_counted_per_group():
    model = jaxdl_model("efficientnet_b0")
    x = jnp.ones((1, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    flops = forward_flops(model, variables, x)
    # EfficientNet-B0 is 0.39 GFLOPs (multiply-adds) at 224x224 (Tan & Le 2019, Table 2); at
    # 32x32 the spatial work shrinks 49x while the classifier-side 1x1 work does not scale
    # exactly, so expect 2 * 0.39e9 / 49 within a factor of 1.5.
    assert 2 * 0.39e9 / 49 / 1.5 < flops < 2 * 0.39e9 / 49 * 1.5
