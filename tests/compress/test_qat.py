"""Fake quantisation: forward equals quantize-dequantize, straight-through gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import compress


def test_forward_equals_quantize_dequantize():
    rng = np.random.default_rng(0)
    params = {
        "c": {
            "kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
            "bias": np.ones(4, np.float32),
        }
    }
    for bits in (8, 4):
        fq = compress.fake_quant_params(params, bits)
        qd = compress.dequantize(compress.quantize(params, bits))
        np.testing.assert_allclose(fq["c"]["kernel"], qd["c"]["kernel"], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(fq["c"]["bias"], params["c"]["bias"])


def test_straight_through_gradient():
    x = jnp.array([-3.0, -1.04, -0.3, 0.0, 0.26, 0.99, 2.5])
    s = jnp.asarray(0.25)  # 3 bits: q_max = 3, range [-0.75, 0.75]
    y = compress.fake_quant(x, s, bits=3)
    np.testing.assert_allclose(y, [-0.75, -0.75, -0.25, 0.0, 0.25, 0.75, 0.75])
    g = jax.grad(lambda x: jnp.sum(compress.fake_quant(x, s, 3) * jnp.arange(1.0, 8.0)))(x)
    # identity inside the clip range, zero outside it
    np.testing.assert_array_equal(g, [0.0, 0.0, 3.0, 4.0, 5.0, 0.0, 0.0])


def test_weight_gradient_passes_straight_through():
    w = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)), jnp.float32)
    c = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3)), jnp.float32)
    g = jax.grad(
        lambda w: jnp.sum(compress.fake_quant_params({"k": {"kernel": w}})["k"]["kernel"] * c)
    )(w)
    np.testing.assert_allclose(g, c, rtol=1e-6)  # the per-channel max is inside its own range


def test_bad_args():
    with pytest.raises(ValueError, match="bits"):
        compress.fake_quant(jnp.ones(3), 0.1, bits=1)
    with pytest.raises(ValueError, match="rank"):
        compress.fake_quant(jnp.ones((2, 3)), jnp.ones(3))
