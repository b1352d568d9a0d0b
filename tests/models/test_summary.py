"""models.summary: per-layer rows against hand counts, totals, and XLA FLOPs against the analytic count."""

import flax.linen as nn
import numpy as np
import pytest

from jaxdl import models
from tests.models.test_resnet import param_count


def test_resnet_rows_and_totals():
    s = models.summary(models.resnet_cifar(8), (1, 32, 32, 3))
    rows = {r.path: r for r in s.rows}
    assert s.total_params == param_count(models.resnet_cifar(8), (1, 32, 32, 3))
    assert s.output_shape == (1, 10)
    assert rows["conv_init"].output_shape == (1, 32, 32, 16)
    assert rows["conv_init"].params == 3 * 3 * 3 * 16
    assert rows["stage2_block1"].type == "BasicBlock"
    assert rows["stage2_block1"].output_shape == (1, 16, 16, 32)
    # A block's row counts its whole subtree: two convs and two BNs.
    assert rows["stage2_block1"].params == 9 * 16 * 32 + 9 * 32 * 32 + 4 * 32
    assert rows["stage2_block1/conv2"].params == 9 * 32 * 32
    # The direct children partition the parameters.
    assert sum(r.params for r in s.rows if "/" not in r.path) == s.total_params
    # batch_stats: (mean, var) per BN channel: 16 (stem) + 2 * (16 + 32 + 64) channels.
    assert s.non_trainable == 2 * (16 + 2 * (16 + 32 + 64))
    # Parents are listed before their children.
    paths = [r.path for r in s.rows]
    assert paths.index("stage1_block1") < paths.index("stage1_block1/conv1")
    text = str(s)
    assert "stage2_block1/conv2" in text and "Total params: 75,290" in text


def test_depth_limits_rows():
    s = models.summary(models.resnet_cifar(8), (2, 8, 8, 3), depth=1, compute_flops=False)
    assert all("/" not in r.path for r in s.rows)
    assert len(s.rows) == 6  # conv_init, bn_init, three blocks, head
    assert s.flops is None


def test_flops_match_analytic_counts():
    # Dense: 2 * B * in * out multiply-add FLOPs plus B * out bias additions, exactly.
    s = models.summary(nn.Dense(10), (4, 100))
    assert s.flops == 2 * 4 * 100 * 10 + 4 * 10
    # MnistCNN: the multiply-adds of its four weighted layers, within the few percent that
    # activations, pooling and bias additions add.
    macs = 26 * 26 * 32 * 9 + 11 * 11 * 64 * 9 * 32 + 1600 * 128 + 128 * 10
    s = models.summary(models.MnistCNN(), (1, 28, 28, 1))
    assert s.total_params == 225_034
    np.testing.assert_allclose(s.flops / 2, macs, rtol=0.03)
    assert s.flops / 2 >= macs


def test_errors():
    with pytest.raises(ValueError, match="input_shape"):
        models.summary(models.MnistCNN(), (1, 0, 28, 1))
    with pytest.raises(ValueError, match="depth"):
        models.summary(models.MnistCNN(), (1, 28, 28, 1), depth=0)
    with pytest.raises(ValueError, match="must have shape"):  # the model's own check surfaces
        models.summary(models.MnistCNN(), (1, 28, 28, 3))


def test_recurrent_rows_show_outputs_not_carries():
    from jaxdl import models as m

    s = m.summary(
        m.SequenceClassifier(vocab_size=20, hidden=8, embed_dim=8),
        (2, 5),
        dtype="int32",
        compute_flops=False,
    )
    shapes = {row.path: row.output_shape for row in s.rows}
    assert shapes["rnn"] == (2, 5, 16)
    assert shapes["rnn/layers_0/forward_rnn"] == (2, 5, 8)
