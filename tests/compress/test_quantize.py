"""Quantisation: the rounding bound, storage, per-channel scales, int8 inference vs float."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import compress, models


def _params(rng):
    return {
        "Dense_0": {
            "kernel": rng.normal(size=(20, 8)).astype(np.float32),
            "bias": rng.normal(size=(8,)).astype(np.float32),
        },
        "Conv_0": {"kernel": (rng.normal(size=(3, 3, 2, 5)) * np.arange(1, 6)).astype(np.float32)},
        "BatchNorm_0": {"scale": np.ones((5,), np.float32), "bias": np.zeros((5,), np.float32)},
    }


def _cnn_params(rng):
    """MnistCNN's parameter tree, Glorot-scaled, without paying for model.init's compile."""
    shapes = {
        "Conv_0": (3, 3, 1, 32),
        "Conv_1": (3, 3, 32, 64),
        "Dense_0": (1600, 128),
        "Dense_1": (128, 10),
    }
    out = {}
    for name, shape in shapes.items():
        fan = np.prod(shape[:-1]) + shape[-1]
        out[name] = {
            "kernel": (rng.normal(size=shape) * np.sqrt(2 / fan)).astype(np.float32),
            "bias": (0.01 * rng.normal(size=shape[-1:])).astype(np.float32),
        }
    return out


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("per_channel", [True, False])
def test_error_bound_and_grid(bits, per_channel):
    params = _params(np.random.default_rng(0))
    q = compress.quantize(params, bits=bits, per_channel=per_channel)
    back = compress.dequantize(q)
    qmax = 2 ** (bits - 1) - 1
    for name in ("Dense_0", "Conv_0"):
        qk, w = q[name]["kernel"], params[name]["kernel"]
        assert isinstance(qk, compress.QuantizedArray)
        assert qk.values.dtype == jnp.int8 and qk.scale.dtype == jnp.float32
        want_scale_shape = (1,) * (w.ndim - 1) + (w.shape[-1],) if per_channel else (1,) * w.ndim
        assert qk.scale.shape == want_scale_shape
        v = np.asarray(qk.values)
        assert v.min() >= -qmax and v.max() <= qmax
        # the largest |w| of each channel lands exactly on +-q_max
        axes = tuple(range(w.ndim - 1)) if per_channel else None
        np.testing.assert_array_equal(np.abs(v).max(axis=axes), qmax)
        err = np.abs(w.astype(np.float64) - np.asarray(back[name]["kernel"], np.float64))
        bound = np.asarray(qk.scale, np.float64) / 2
        assert np.all(err <= bound * (1 + 1e-6)), (err / bound).max()
        # and the bound is nearly attained: rounding error is roughly uniform in [0, s/2]
        assert (err / bound).max() > 0.8
    # biases and norm parameters untouched, float
    for path in (("Dense_0", "bias"), ("BatchNorm_0", "scale"), ("BatchNorm_0", "bias")):
        np.testing.assert_array_equal(q[path[0]][path[1]], params[path[0]][path[1]])


def test_reference_numpy_formula():
    w = np.random.default_rng(1).normal(size=(6, 4))
    q = compress.quantize_array(w, bits=8)
    s = np.abs(w).max(0, keepdims=True) / 127
    np.testing.assert_array_equal(q.values, np.round(w / s).astype(np.int8))
    np.testing.assert_allclose(q.scale, s, rtol=1e-7)


def test_zero_channel_and_jit_path():
    w = np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32)
    w[:, 1] = 0
    q = compress.quantize_array(w)
    np.testing.assert_array_equal(q.values[:, 1], 0)
    assert np.isfinite(np.asarray(q.scale)).all()
    qj = jax.jit(compress.quantize_array)(w)
    np.testing.assert_array_equal(qj.values, q.values)
    np.testing.assert_allclose(qj.scale, q.scale, rtol=1e-6)


def test_per_channel_beats_per_tensor_on_unequal_channels():
    params = _params(np.random.default_rng(3))
    w = params["Conv_0"]["kernel"]  # channel c has scale ~ c + 1
    errs = {}
    for pc in (True, False):
        back = compress.dequantize(compress.quantize(params, 4, per_channel=pc))
        errs[pc] = np.abs(back["Conv_0"]["kernel"] - w)[..., 0].mean()  # the smallest channel
    assert errs[True] < errs[False] / 2


def test_size_bytes():
    params = _params(np.random.default_rng(4))
    n_float = 20 * 8 + 8 + 3 * 3 * 2 * 5 + 5 + 5
    assert compress.size_bytes(params) == 4 * n_float
    q = compress.quantize(params)
    # kernels: 1 byte per entry + 4 per scale; the rest float32
    want = (20 * 8 + 8 * 4) + (3 * 3 * 2 * 5 + 5 * 4) + 4 * (8 + 5 + 5)
    assert compress.size_bytes(q) == want
    bf16 = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
    assert compress.size_bytes(bf16) == 2 * n_float
    qt = compress.quantize(params, per_channel=False)
    assert compress.size_bytes(qt) == (20 * 8 + 4) + (90 + 4) + 4 * 18


def test_quantized_tree_is_a_pytree_and_bad_bits():
    q = compress.quantize(_params(np.random.default_rng(5)))
    leaves = jax.tree.leaves(q)
    assert sum(x.dtype == jnp.int8 for x in leaves) == 2
    q2 = jax.jit(lambda t: t)(q)
    assert isinstance(q2["Dense_0"]["kernel"], compress.QuantizedArray)
    for bad in (1, 9, 8.0):
        with pytest.raises(ValueError, match="bits"):
            compress.quantize(_params(np.random.default_rng(5)), bits=bad)


def test_int8_inference_matches_float_on_mnist_cnn():
    model = models.MnistCNN()
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    variables = {"params": _cnn_params(np.random.default_rng(7))}
    q = {"params": compress.quantize(variables["params"])}
    scales = compress.calibrate(model, variables, [x[:2], x[2:]])
    assert set(scales) == {"Conv_0", "Conv_1", "Dense_0", "Dense_1"}
    np.testing.assert_allclose(scales["Conv_0"], float(jnp.max(x)) / 127, rtol=1e-6)
    lowered = jax.jit(functools.partial(compress.int8_apply, model)).lower(q, scales, x)
    # the program really multiplies int8 by int8 into int32
    text = lowered.as_text()
    assert "xi8>" in text and "xi32>" in text
    y8 = lowered.compile()(q, scales, x)
    yf = model.apply(variables, x)
    rel = float(jnp.abs(y8 - yf).max() / jnp.abs(yf).max())
    assert rel < 0.05, rel


def test_int8_dense_equals_integer_reference():
    import flax.linen as nn

    model = nn.Dense(6)
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(4, 9)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    q = {"params": compress.quantize(variables["params"])}
    s_x = 0.05
    y = compress.int8_apply(model, q, {"": s_x}, x)
    qk = q["params"]["kernel"]
    xq = np.clip(np.round(np.asarray(x) / s_x), -127, 127).astype(np.int64)
    acc = xq @ np.asarray(qk.values, np.int64)
    ref = acc * s_x * np.asarray(qk.scale) + np.asarray(variables["params"]["bias"])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_int8_flax_conv_strided_same_padding_matches_float():
    import flax.linen as nn

    model = nn.Conv(4, (3, 3), strides=2, padding="SAME")
    x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 9, 9, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    q = {"params": compress.quantize(variables["params"])}
    scales = compress.calibrate(model, variables, [x])
    y8 = compress.int8_apply(model, q, scales, x)
    yf = model.apply(variables, x)
    assert y8.shape == yf.shape == (2, 5, 5, 4)
    assert float(jnp.abs(y8 - yf).max() / jnp.abs(yf).max()) < 0.03
