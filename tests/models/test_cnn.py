import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import data, losses, models
from jaxdl.nn.pooling import max_pool_reference


def _count(tree) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


def test_parameter_count_matches_keras():
    shapes = jax.eval_shape(models.MnistCNN().init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    # Keras's model.summary() for the course's model: 320 + 18,496 + 204,928 + 1,290.
    assert _count(shapes["params"]) == 225_034
    p = shapes["params"]
    chex.assert_shape(p["Conv_0"]["kernel"], (3, 3, 1, 32))
    chex.assert_shape(p["Conv_1"]["kernel"], (3, 3, 32, 64))
    chex.assert_shape(p["Dense_0"]["kernel"], (1600, 128))
    chex.assert_shape(p["Dense_1"]["kernel"], (128, 10))


def test_output_is_logits_of_shape_n_by_10():
    model = models.MnistCNN()
    x = jnp.asarray(np.random.default_rng(0).random((5, 28, 28, 1), np.float32))
    variables = model.init(jax.random.key(0), x)
    logits = model.apply(variables, x)
    chex.assert_shape(logits, (5, 10))
    # Logits, not probabilities: rows do not sum to one.
    assert not np.allclose(np.asarray(jnp.sum(logits, axis=-1)), 1.0)


def test_forward_matches_a_reference_built_from_flax_max_pool():
    model = models.MnistCNN()
    x = jnp.asarray(np.random.default_rng(1).random((3, 28, 28, 1), np.float32))
    variables = model.init(jax.random.key(1), x)
    p = variables["params"]

    def reference(params, x):
        conv = lambda x, q: (
            jax.lax.conv_general_dilated(  # noqa: E731
                x, q["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            + q["bias"].reshape(1, 1, 1, -1)
        )
        x = max_pool_reference(jax.nn.relu(conv(x, params["Conv_0"])))
        x = max_pool_reference(jax.nn.relu(conv(x, params["Conv_1"])))
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"][None])
        return x @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"][None]

    chex.assert_trees_all_close(model.apply(variables, x), reference(p, x), rtol=1e-5, atol=1e-5)
    y = jnp.arange(3)
    g_ours = jax.grad(lambda q: losses.cross_entropy(model.apply({"params": q}, x), y))(p)
    g_ref = jax.grad(lambda q: losses.cross_entropy(reference(q, x), y))(p)
    chex.assert_trees_all_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)


def test_dropout_only_in_training():
    model = models.MnistCNN()
    x = jnp.ones((4, 28, 28, 1))
    variables = model.init(jax.random.key(0), x)
    eval_a = model.apply(variables, x, train=False)
    eval_b = model.apply(variables, x, train=False)
    chex.assert_trees_all_equal(eval_a, eval_b)
    train_a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    train_b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(train_a, train_b)


@pytest.mark.parametrize("shape", [(2, 28, 28), (2, 28, 28, 3), (2, 32, 32, 1), (28, 28, 1)])
def test_wrong_input_shape_raises_naming_expected_shape(shape):
    model = models.MnistCNN()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(ValueError, match=r"\(N, 28, 28, 1\)"):
        model.apply(variables, jnp.zeros(shape))


def test_overfits_one_batch():
    x, y = data.load("mnist_5k", "train")
    i = np.random.default_rng(0).permutation(len(x))[:32]  # all ten classes, not a class block
    x, y = jnp.asarray(x[i]), jnp.asarray(y[i])
    model = models.MnistCNN()
    params = model.init(jax.random.key(0), x)["params"]
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, g = jax.value_and_grad(
            lambda q: losses.cross_entropy(model.apply({"params": q}, x), y)
        )(params)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    first = None
    for _ in range(200):
        params, opt_state, loss = step(params, opt_state)
        first = float(loss) if first is None else first
    assert first > 2.0
    assert float(loss) < 1e-2
