"""The A/B and per-operation benchmark scripts run end to end at tiny sizes (their numbers are
measurements, never asserted; what they report about jaxdl's own choices is)."""

import json

from experiments.benchmarks import inference_ab
from jaxdl import xla_flags


def test_inference_ab_smoke(tmp_path):
    out = tmp_path / "ab.json"
    rows = inference_ab.main(
        ["--models", "mnist_cnn,resnet20", "--batch_size", "2", "--rounds", "1", "--steps", "1",
         "--out", str(out)]
    )  # fmt: skip
    assert [r["model"] for r in rows] == ["mnist_cnn", "resnet20"]
    assert all(r["ms"]["xla_defaults"] > 0 and r["ms"]["jit_inference"] > 0 for r in rows)
    assert rows[0]["jit_inference_options"] is None  # MnistCNN keeps XLA's defaults
    assert rows[1]["jit_inference_options"] == xla_flags.inference_compiler_options()
    assert json.loads(out.read_text())[1]["model"] == "resnet20"


def test_conv_ops_smoke():
    from experiments.benchmarks import conv_ops

    rows = conv_ops.measure(batch_size=2, repeats=1, calls=1)
    assert len(rows) == 2 * len(conv_ops.LAYERS)
    assert {r["kernels"] for r in rows} == {"xla", "library"}
    assert all(r["ms"][op] > 0 for r in rows for op in conv_ops.OPS)


def test_zoo_ab_variant_swaps_the_pointwise_lowering_and_restores_it():
    import jax
    import jax.numpy as jnp
    import pytest

    from experiments.benchmarks import zoo_ab
    from jaxdl import nn as jnn
    from jaxdl.nn import conv

    original = conv.pointwise_conv
    layer = jnn.Conv(4, (1, 1), strides=(2, 2))
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    variables = layer.init(jax.random.key(1), x)
    expected = layer.apply(variables, x)
    with zoo_ab.variant("xla_pointwise_grads"):
        assert conv.pointwise_conv is not original
        assert jnp.allclose(layer.apply(variables, x), expected, atol=1e-5)
    assert conv.pointwise_conv is original
    with pytest.raises(ValueError, match="variant must be one of"):
        with zoo_ab.variant("nope"):
            pass


def test_gpt_ab_variants_swap_the_layers_and_restore_them():
    import jax
    import jax.numpy as jnp
    import pytest

    from experiments.benchmarks import gpt_ab
    from jaxdl import models
    from jaxdl.nn import linear

    model = models.GPT(16, 8, 1, 2, 8)
    tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, 16)
    variables = model.init(jax.random.key(1), tokens)
    expected = model.apply(variables, tokens)
    original = linear.flat_matmul
    for name in gpt_ab.VARIANTS:
        with gpt_ab.variant(name):
            # every variant computes the same function, only differently
            assert jnp.allclose(model.apply(variables, tokens), expected, atol=1e-5)
            if name == "rank3_matmul":
                assert linear.flat_matmul is not original
    assert linear.flat_matmul is original
    with pytest.raises(ValueError, match="variant must be one of"):
        with gpt_ab.variant("nope"):
            pass


def test_attention_ops_smoke(tmp_path):
    from experiments.benchmarks import attention_ops

    out = tmp_path / "attention_ops.json"
    res = attention_ops.main(
        ["--batch", "2", "--length", "16", "--heads", "2", "--head_dim", "4", "--repeats", "1",
         "--calls", "1", "--out", str(out)]
    )  # fmt: skip
    assert [r["product"] for r in res["products"]] == list(attention_ops.PRODUCTS)
    assert all(r["batch"] == 4 and min(r["ms"].values()) > 0 for r in res["products"])
    assert {"jaxdl_blocked", "jaxdl_one_block"} <= set(res["attention_ms"])
    assert json.loads(out.read_text())["config"]["length"] == 16
