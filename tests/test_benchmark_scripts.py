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
