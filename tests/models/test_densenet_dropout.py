"""DenseNet's dropout in the default suite (issue 24): inverted dropout after each dense layer's
3x3 conv, drawn from the 'dropout' rng in training only."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import models
from jaxdl.models.densenet import DenseLayer

# BatchNorm fixed to its running statistics, so train=True and train=False differ by dropout only.
CONV = functools.partial(nn.Conv, use_bias=False)
NORM = functools.partial(nn.BatchNorm, use_running_average=True)
X = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 6))
K2, K3 = jax.random.PRNGKey(2), jax.random.PRNGKey(3)


def test_dense_layer_dropout_is_inverted_dropout_in_training_only():
    layer = DenseLayer(growth_rate=8, bn_size=2, drop_rate=0.5, conv=CONV, norm=NORM)
    no_drop = layer.clone(drop_rate=0.0)
    variables = layer.init(jax.random.PRNGKey(1), X, False)

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def run(module, train, key):
        return module.apply(variables, X, train, rngs={"dropout": key})

    evaluate = run(layer, False, K2)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)  # jit vs eager
    close(evaluate, layer.apply(variables, X, False))  # no rng needed
    close(run(no_drop, True, K3), evaluate)  # rate 0 trains as it infers
    a, b = run(layer, True, K2), run(layer, True, K3)
    assert not np.array_equal(a, b)  # a new mask per key
    np.testing.assert_array_equal(a, run(layer, True, K2))  # the same mask for the same key
    # each unit is dropped (0) or kept and scaled by 1 / (1 - p) = 2
    a, evaluate = np.asarray(a), np.asarray(evaluate)
    kept = a != 0
    close(a[kept], 2 * evaluate[kept])
    assert 0.3 < kept.mean() < 0.7
    with pytest.raises(Exception, match="dropout"):  # training without the rng stream fails loudly
        layer.apply(variables, X, True)


def test_densenet_passes_train_and_the_rng_to_its_layers():
    model = models.DenseNet(
        block_sizes=(2,),
        growth_rate=4,
        num_init_features=6,
        stem="cifar",
        drop_rate=0.5,
        num_classes=3,
        input_channels=6,
    )
    plain = model.clone(drop_rate=0.0)
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), X)

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def run(m, train, key):
        out = m.apply(variables, X, train=train, mutable=["batch_stats"], rngs={"dropout": key})
        return out[0]

    np.testing.assert_array_equal(run(model, False, K2), run(model, False, K3))
    assert float(jnp.max(jnp.abs(run(model, True, K2) - run(model, True, K3)))) > 1e-4
    np.testing.assert_array_equal(run(plain, True, K2), run(plain, True, K3))
