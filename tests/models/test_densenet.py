"""DenseNet: torchvision's and the paper's parameter counts, concatenation widths, dropout, errors."""

import chex
import jax
import jax.numpy as jnp
import pytest

from jaxdl import models
from tests.models.test_resnet import jit_train_step_smoke, param_count

TORCHVISION = {
    models.DenseNet121: 7_978_856,
    models.DenseNet169: 14_149_480,
    models.DenseNet201: 20_013_928,
}


@pytest.mark.parametrize(
    "ctor,expected",
    # The deepest one traces for a few seconds: slow.
    [
        pytest.param(c, e, marks=[pytest.mark.slow] if e > 20e6 else [])
        for c, e in TORCHVISION.items()
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_imagenet_param_counts_equal_torchvision(ctor, expected):
    # Parameters do not depend on the resolution; 32x32 keeps the abstract trace small.
    assert param_count(ctor(), (1, 32, 32, 3)) == expected


def bc_count_by_hand(n: int, k: int, classes: int = 10, theta: float = 0.5) -> int:
    """Closed form for DenseNet-BC on CIFAR: convs have no bias, BN has (scale, bias)."""
    c = 2 * k
    total = 3 * 3 * 3 * c  # stem conv
    for block in range(3):
        for _ in range(n):
            total += 2 * c + c * 4 * k  # BN, conv1x1
            total += 2 * 4 * k + 9 * 4 * k * k  # BN, conv3x3
            c += k
        if block < 2:
            out = int(c * theta)
            total += 2 * c + c * out  # BN, conv1x1
            c = out
    return total + 2 * c + c * classes + classes  # final BN, dense


def test_cifar_densenet_bc_count():
    count = param_count(models.densenet_cifar(100, 12), (1, 32, 32, 3))
    assert count == bc_count_by_hand(16, 12)
    assert round(count / 1e6, 1) == 0.8  # the paper's Table 2


def test_concatenation_widths():
    # L=100, k=12: block 1 ends with 24 + 16 * 12 = 216 channels, compressed to 108; block 2 ends
    # with 108 + 192 = 300 -> 150; block 3 ends with 150 + 192 = 342 channels into the classifier.
    v = jax.eval_shape(
        lambda: models.densenet_cifar(100).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    )["params"]
    assert v["transition1_conv"]["kernel"].shape == (1, 1, 216, 108)
    assert v["transition2_conv"]["kernel"].shape == (1, 1, 300, 150)
    assert v["head"]["kernel"].shape == (342, 10)
    # Layer j of block 1 sees every earlier map: 24 + (j - 1) * 12 input channels.
    assert v["block1_layer5"]["conv1"]["kernel"].shape == (1, 1, 24 + 4 * 12, 48)
    assert v["block1_layer5"]["conv2"]["kernel"].shape == (3, 3, 48, 12)


@pytest.mark.slow
def test_output_shape_and_dropout_only_in_training():
    model = models.densenet_cifar(10, growth_rate=4, drop_rate=0.5, num_classes=3)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)
    evaluate = jax.jit(lambda v, x: model.apply(v, x))
    train = jax.jit(
        lambda v, x, key: model.apply(
            v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
        )[0]
    )
    out = evaluate(variables, x)
    chex.assert_shape(out, (2, 3))
    chex.assert_trees_all_equal(out, evaluate(variables, x))  # eval is deterministic
    a = train(variables, x, jax.random.PRNGKey(2))
    b = train(variables, x, jax.random.PRNGKey(3))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4  # training draws dropout masks


def test_errors():
    with pytest.raises(ValueError, match="6n \\+ 4"):
        models.densenet_cifar(101)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="3 channels"):
        jax.eval_shape(models.DenseNet121().init, key, jnp.zeros((1, 64, 64, 4)))
    with pytest.raises(ValueError, match="at least 32x32"):
        jax.eval_shape(models.DenseNet121().init, key, jnp.zeros((1, 31, 64, 3)))
    with pytest.raises(ValueError, match="compression"):
        jax.eval_shape(
            models.densenet_cifar(10, compression=0.0).init, key, jnp.zeros((1, 8, 8, 3))
        )


def test_jit_train_step():
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 3))
    y = jnp.arange(8) % 4
    losses = jit_train_step_smoke(models.densenet_cifar(10, growth_rate=4, num_classes=4), x, y)
    assert losses[-1] < losses[0]
