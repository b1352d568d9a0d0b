"""ResNet: published parameter counts, shapes, BatchNorm semantics, shortcuts, errors, training."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import models
from jaxdl.models import resnet


def param_count(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Parameters of ``model`` at input ``shape`` via ``jax.eval_shape`` (nothing allocated)."""
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


def jit_train_step_smoke(model: nn.Module, x: jax.Array, y: jax.Array, steps: int = 8) -> list:
    """Run ``steps`` jitted Adam steps on one batch; return the losses. Checks batch_stats move."""
    variables = jax.jit(model.init)({"params": jax.random.PRNGKey(0)}, x)
    params, stats = variables["params"], variables.get("batch_stats", {})
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, stats, opt_state, key):
        def loss_fn(p):
            logits, updates = model.apply(
                {"params": p, "batch_stats": stats},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": key},
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, upd), updates["batch_stats"], opt_state, loss

    losses = []
    new_stats = stats
    for i in range(steps):
        params, new_stats, opt_state, loss = step(
            params, new_stats, opt_state, jax.random.PRNGKey(i)
        )
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    if stats:
        moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), stats, new_stats)
        assert max(jax.tree.leaves(moved)) > 0, "batch_stats did not update in training"
    logits = jax.jit(model.apply)({"params": params, "batch_stats": new_stats}, x)
    chex.assert_shape(logits, (x.shape[0], model.num_classes))
    chex.assert_tree_all_finite(logits)
    return losses


# torchvision's counts (torchvision.models.resnetXX().parameters(), 1000 classes).
TORCHVISION = {
    models.ResNet18: 11_689_512,
    models.ResNet34: 21_797_672,
    models.ResNet50: 25_557_032,
    models.ResNet101: 44_549_160,
    models.ResNet152: 60_192_808,
}


@pytest.mark.parametrize(
    "ctor,expected",
    # The deepest one traces for a few seconds: slow.
    [
        pytest.param(c, e, marks=[pytest.mark.slow] if e > 50e6 else [])
        for c, e in TORCHVISION.items()
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_imagenet_param_counts_equal_torchvision(ctor, expected):
    assert param_count(ctor(), (1, 224, 224, 3)) == expected


def cifar_count_by_hand(n: int, shortcut: str, classes: int = 10) -> int:
    """Closed form for the CIFAR net: convs (no bias) + BN (scale, bias) + dense."""
    conv_bn = lambda cin, cout, k=3: k * k * cin * cout + 2 * cout  # noqa: E731
    total = conv_bn(3, 16)
    for cin, cout in ((16, 16), (16, 32), (32, 64)):
        total += conv_bn(cin, cout) + conv_bn(cout, cout)  # first block of the stage
        total += (n - 1) * 2 * conv_bn(cout, cout)
        if shortcut == "B" and cin != cout:
            total += conv_bn(cin, cout, k=1)
    return total + 64 * classes + classes


@pytest.mark.parametrize(
    "depth,paper_millions", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)]
)
def test_cifar_param_counts(depth, paper_millions):
    n = (depth - 2) // 6
    count_a = param_count(models.resnet_cifar(depth), (1, 32, 32, 3))
    assert count_a == cifar_count_by_hand(n, "A")
    # The paper's Table 6 figures, to its two significant digits.
    assert round(count_a / 1e6, 2 if depth < 100 else 1) == paper_millions
    assert param_count(
        models.resnet_cifar(depth, shortcut="B"), (1, 32, 32, 3)
    ) == cifar_count_by_hand(n, "B")
    # Plain net: the same layers, so the same parameters as option A (whose shortcuts are free).
    assert param_count(models.plain_cifar(depth), (1, 32, 32, 3)) == count_a


def test_output_shapes_and_float32_logits():
    x = jnp.zeros((2, 32, 32, 3))
    for model in (models.ResNet18(num_classes=7), models.resnet_cifar(8, num_classes=5)):
        out = jax.eval_shape(lambda m=model: m.init_with_output(jax.random.PRNGKey(0), x)[0])
        chex.assert_shape(out, (2, model.num_classes))
        assert out.dtype == jnp.float32
    # bfloat16 computation still hands back float32 logits, with float32 parameters.
    model = models.resnet_cifar(8, dtype=jnp.bfloat16)
    out, variables = jax.jit(model.init_with_output)(jax.random.PRNGKey(0), jnp.ones((2, 8, 8, 3)))
    assert out.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))


def test_batchnorm_train_vs_eval():
    model = models.resnet_cifar(8)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 8, 8, 3)) * 2.0 + 0.5
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["batch_stats"]))
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    # Eval: an example's output does not depend on the rest of the batch (running statistics are
    # used), and batch_stats come back unchanged even when asked for as mutable.
    out_eval, same = evaluate(variables, x)
    x_other = x.at[2:].set(-x[2:] * 3.0)  # same first two examples, different batch mates
    chex.assert_trees_all_close(evaluate(variables, x_other)[0][:2], out_eval[:2], atol=1e-5)
    chex.assert_trees_all_equal(same["batch_stats"], variables["batch_stats"])
    # Train: batch statistics are used (the output of an example changes with its batch mates),
    # and the running statistics move as mean <- 0.9 mean + 0.1 batch_mean.
    out_train, updates = train(variables, x)
    assert float(jnp.max(jnp.abs(out_train[:2] - train(variables, x_other)[0][:2]))) > 1e-4
    kernel = variables["params"]["conv_init"]["kernel"]  # (3, 3, 3, 16) HWIO
    conv = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    old = variables["batch_stats"]["bn_init"]
    new = updates["batch_stats"]["bn_init"]
    chex.assert_trees_all_close(
        new["mean"], 0.9 * old["mean"] + 0.1 * conv.mean((0, 1, 2)), atol=1e-5
    )
    chex.assert_trees_all_close(new["var"], 0.9 * old["var"] + 0.1 * conv.var((0, 1, 2)), atol=1e-4)


def test_option_a_shortcut_is_zero_padded_subsample():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 16))
    got = resnet._shortcut(x, 32, 2, "A", None, None)
    expected = np.zeros((2, 4, 4, 32), np.float32)
    expected[..., 8:24] = np.asarray(x)[:, ::2, ::2, :]
    np.testing.assert_array_equal(np.asarray(got), expected)
    assert resnet._shortcut(x, 16, 1, "A", None, None) is x
    assert resnet._shortcut(x, 16, 1, "none", None, None) is None


def test_plain_net_has_no_shortcut_and_residual_net_is_identity_plus_f():
    # With zero-initialised last BN scales each residual block is relu(0 + x) = x on x >= 0, so the
    # residual ImageNet-free CIFAR net's features pass through the blocks unchanged at init.
    block = resnet.BasicBlock(
        16,
        conv=nn.Conv,
        norm=lambda **kw: nn.BatchNorm(use_running_average=True, **kw),
        zero_init_residual=True,
        shortcut="A",
    )
    x = jax.nn.relu(jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 16)))
    variables = jax.jit(block.init)(jax.random.PRNGKey(1), x)
    chex.assert_trees_all_close(jax.jit(block.apply)(variables, x), x)
    plain = block.clone(shortcut="none")
    chex.assert_trees_all_close(jax.jit(plain.apply)(variables, x), jnp.zeros_like(x))


def test_zero_init_residual_zeroes_last_bn_scale():
    small = models.ResNet(
        stage_sizes=(1, 1), block_cls=resnet.Bottleneck, num_filters=4, zero_init_residual=True
    )
    small = jax.jit(small.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    for name in ("stage1_block1", "stage2_block1"):
        assert float(jnp.abs(small["params"][name]["bn3"]["scale"]).max()) == 0.0
        assert float(small["params"][name]["bn2"]["scale"].min()) == 1.0


def test_he_init_variance():
    # Kaiming normal, fan_out mode: Var(w) = 2 / (k * k * C_out), untruncated.
    model = models.resnet_cifar(8)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    k = variables["params"]["stage3_block1"]["conv2"]["kernel"]  # (3, 3, 64, 64)
    np.testing.assert_allclose(float(jnp.var(k)), 2.0 / (3 * 3 * 64), rtol=0.05)
    np.testing.assert_allclose(float(jnp.mean(k)), 0.0, atol=3e-3)


def test_errors():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.resnet_cifar(21)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.resnet_cifar(2)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="3 channels"):
        models.ResNet18().init(key, jnp.zeros((1, 64, 64, 1)))
    with pytest.raises(ValueError, match="at least 32x32"):
        models.ResNet18().init(key, jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="at least 4x4"):
        models.resnet_cifar(8).init(key, jnp.zeros((1, 2, 2, 3)))
    with pytest.raises(ValueError, match="rank 4"):
        models.resnet_cifar(8).init(key, jnp.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match="shortcut"):
        models.resnet_cifar(8, shortcut="C").init(key, jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="zero_init_residual"):
        models.plain_cifar(8, zero_init_residual=True).init(key, jnp.zeros((1, 8, 8, 3)))


def test_norm_injection():
    # A norm factory with its own defaults bound (here: GroupNorm has no batch_stats at all).
    gn = lambda use_running_average=None, momentum=None, epsilon=1e-5, **kw: nn.GroupNorm(  # noqa: E731
        num_groups=4, epsilon=epsilon, **kw
    )
    model = models.resnet_cifar(8, norm=gn)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    assert "batch_stats" not in variables
    assert "GroupNorm" not in str(variables)  # parameter names come from our block, not the class
    assert set(variables["params"]["stage1_block1"]["bn1"]) == {"scale", "bias"}


@pytest.mark.parametrize("block", ["basic", pytest.param("bottleneck", marks=pytest.mark.slow)])
def test_jit_train_step(block):
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 3))
    y = jnp.arange(8) % 4
    if block == "basic":
        model = models.resnet_cifar(8, num_classes=4)
    else:
        model = models.ResNet(
            stage_sizes=(1, 1),
            block_cls=resnet.Bottleneck,
            num_filters=4,
            num_classes=4,
            stem="cifar",
            zero_init_residual=True,
        )
    losses = jit_train_step_smoke(model, x, y)
    assert losses[-1] < losses[0]
