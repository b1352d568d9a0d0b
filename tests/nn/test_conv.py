"""The patches convolution against ``jax.lax.conv_general_dilated``: forward, gradients, jit,
vmap, second order, flax integration and errors."""

import functools

import chex
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from jaxdl import nn
from jaxdl.nn.conv import MAX_DIRECT_TERMS, _conv_patches_slices, conv_patches, patches_conv

HI = lax.Precision.HIGHEST  # both sides at full f32 so the comparison tests the lowering, not TF32

# (x shape, kernel shape, strides, padding)
CASES = [
    ((3, 28, 28, 1), (3, 3, 1, 32), (1, 1), "VALID"),  # MnistCNN's first layer
    ((3, 13, 13, 32), (3, 3, 32, 64), (1, 1), "VALID"),  # its second
    ((2, 9, 10, 3), (3, 2, 3, 5), (2, 3), "SAME"),
    ((2, 9, 10, 3), (3, 3, 3, 5), (2, 1), ((1, 2), (0, 1))),
    ((2, 17, 4), (5, 4, 6), (2,), "SAME"),  # 1-D
    ((1, 5, 6, 7, 2), (2, 3, 2, 2, 3), (1, 2, 1), "VALID"),  # 3-D
]
IDS = ["mnist_conv0", "mnist_conv1", "same_strided", "explicit_pads", "conv1d", "conv3d"]
FORWARDS = ["patches", "lax", "direct"]


def _supports(forward, ks) -> bool:
    return forward != "direct" or int(np.prod(ks[:-1])) <= MAX_DIRECT_TERMS


def _dn(ndim: int) -> tuple[str, str, str]:
    return {3: ("NWC", "WIO", "NWC"), 4: ("NHWC", "HWIO", "NHWC"), 5: ("NDHWC", "DHWIO", "NDHWC")}[
        ndim
    ]


def _inputs(xs, ks, seed=0):
    r = np.random.default_rng(seed)
    return (
        jnp.asarray(r.standard_normal(xs), jnp.float32),
        jnp.asarray(r.standard_normal(ks) / np.sqrt(np.prod(ks[:-1])), jnp.float32),
    )


def _reference(x, k, strides, padding):
    return lax.conv_general_dilated(
        x, k, strides, padding, dimension_numbers=_dn(x.ndim), precision=HI
    )


@pytest.mark.parametrize("forward", FORWARDS)
@pytest.mark.parametrize("xs,ks,strides,padding", CASES, ids=IDS)
def test_forward_and_gradients_equal_lax(xs, ks, strides, padding, forward):
    if not _supports(forward, ks):
        with pytest.raises(ValueError, match="direct"):  # refused with a clear error instead
            patches_conv(*_inputs(xs, ks), forward=forward)
        return
    x, k = _inputs(xs, ks)
    ours = functools.partial(
        patches_conv,
        strides=strides,
        padding=padding,
        precision=HI,
        forward=forward,
    )
    ref = functools.partial(_reference, strides=strides, padding=padding)
    y = ours(x, k)
    chex.assert_trees_all_close(y, ref(x, k), rtol=1e-5, atol=1e-5)
    # a random cotangent, so every output position and channel is weighted differently
    ct = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape), jnp.float32)
    g_ours = jax.grad(lambda x, k: jnp.sum(ours(x, k) * ct), (0, 1))(x, k)
    g_ref = jax.grad(lambda x, k: jnp.sum(ref(x, k) * ct), (0, 1))(x, k)
    chex.assert_trees_all_close(g_ours, g_ref, rtol=1e-5, atol=1e-4)


def test_patches_are_the_im2col_of_the_definition():
    x, _ = _inputs((2, 6, 7, 3), (3, 2, 3, 1))
    p = np.asarray(conv_patches(x, (3, 2), (2, 1)))  # (2, 2, 6, 3*2*3)
    xn = np.asarray(x)
    chex.assert_shape(p, (2, 2, 6, 18))
    for i in range(2):
        for j in range(6):
            window = xn[:, 2 * i : 2 * i + 3, j : j + 2, :]  # (N, 3, 2, C)
            np.testing.assert_array_equal(p[:, i, j], window.reshape(2, -1))
    # the slice-built form, whose transpose is the col2im of the backward pass, is the same matrix
    np.testing.assert_array_equal(np.asarray(_conv_patches_slices(x, (3, 2), (2, 1))), p)


@pytest.mark.parametrize("forward", FORWARDS)
def test_gradients_match_finite_differences(forward):
    x, k = _inputs((2, 6, 5, 2), (3, 3, 2, 3))
    f = functools.partial(
        patches_conv,
        strides=(2, 1),
        padding="SAME",
        precision=HI,
        forward=forward,
    )
    # custom_vjp defines reverse mode only; float32 central differences need a loose tolerance
    check_grads(f, (x, k), order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)


class TestTransforms(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_no_jit_agree_with_lax(self):
        x, k = _inputs((2, 13, 13, 8), (3, 3, 8, 4))

        @self.variant
        def loss_and_grad(x, k):
            return jax.value_and_grad(lambda k: jnp.sum(patches_conv(x, k, precision=HI) ** 2))(k)

        value, grad = loss_and_grad(x, k)
        ref_value, ref_grad = jax.value_and_grad(
            lambda k: jnp.sum(_reference(x, k, (1, 1), "VALID") ** 2)
        )(k)
        chex.assert_trees_all_close((value, grad), (ref_value, ref_grad), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("forward", FORWARDS)
def test_vmap_over_an_extra_axis_equals_a_loop(forward):
    xs, ks = _inputs((4, 2, 9, 9, 3), (4, 3, 3, 3, 5))  # 4 independent (x, kernel) problems
    conv = functools.partial(patches_conv, precision=HI, forward=forward)

    def loss(x, k):
        return jnp.sum(conv(x, k, padding="SAME") ** 2)

    g_vmap = jax.vmap(jax.grad(loss, (0, 1)))(xs, ks)
    g_loop = [jax.grad(loss, (0, 1))(xs[i], ks[i]) for i in range(4)]
    chex.assert_trees_all_close(
        g_vmap, jax.tree.map(lambda *a: jnp.stack(a), *g_loop), rtol=1e-5, atol=1e-5
    )
    y_vmap = jax.vmap(conv)(xs, ks)
    chex.assert_trees_all_close(
        y_vmap[2], _reference(xs[2], ks[2], (1, 1), "VALID"), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("forward", FORWARDS)
def test_second_order_reverse_over_reverse_equals_lax(forward):
    x, k = _inputs((2, 8, 8, 3), (3, 3, 3, 4))

    def grad_norm(conv):
        # d/dk of ||dL/dx||^2: differentiates through the backward pass itself
        def inner(x, k):
            return jnp.sum(jnp.tanh(conv(x, k)))

        return jax.grad(lambda k: jnp.sum(jax.grad(inner)(x, k) ** 2))(k)

    ours = grad_norm(lambda x, k: patches_conv(x, k, precision=HI, forward=forward))
    ref = grad_norm(lambda x, k: _reference(x, k, (1, 1), "VALID"))
    chex.assert_trees_all_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_flax_conv_with_the_drop_in_equals_the_default_conv():
    x, _ = _inputs((2, 12, 12, 3), (1, 1, 1, 1))
    default = fnn.Conv(8, (3, 3), strides=(2, 2), padding="SAME", precision=HI)
    fast = fnn.Conv(
        8,
        (3, 3),
        strides=(2, 2),
        padding="SAME",
        precision=HI,
        conv_general_dilated=nn.conv_general_dilated,
    )
    variables = default.init(jax.random.key(0), x)
    # same parameter tree, so the fast layer is a drop-in for existing checkpoints
    chex.assert_trees_all_equal_shapes(variables, fast.init(jax.random.key(0), x))
    chex.assert_trees_all_close(
        fast.apply(variables, x), default.apply(variables, x), rtol=1e-5, atol=1e-5
    )
    g_fast = jax.grad(lambda v: jnp.sum(fast.apply(v, x) ** 2))(variables)
    g_default = jax.grad(lambda v: jnp.sum(default.apply(v, x) ** 2))(variables)
    chex.assert_trees_all_close(g_fast, g_default, rtol=1e-5, atol=1e-4)


def test_unsupported_configurations_fall_back_to_lax():
    r = np.random.default_rng(0)
    x = jnp.asarray(r.standard_normal((2, 3, 9, 9)), jnp.float32)  # NCHW
    k = jnp.asarray(r.standard_normal((4, 3, 3, 3)), jnp.float32)  # OIHW
    for kwargs in (
        {"dimension_numbers": ("NCHW", "OIHW", "NCHW")},
        {"dimension_numbers": ("NCHW", "OIHW", "NCHW"), "rhs_dilation": (2, 2)},
    ):
        ours = nn.conv_general_dilated(x, k, (1, 1), "SAME", precision=HI, **kwargs)
        ref = lax.conv_general_dilated(x, k, (1, 1), "SAME", precision=HI, **kwargs)
        chex.assert_trees_all_close(ours, ref, rtol=1e-5, atol=1e-5)
    # channels-last but dilated: also forwarded to lax
    xh, kh = _inputs((2, 9, 9, 3), (3, 3, 3, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    ours = nn.conv_general_dilated(
        xh, kh, (1, 1), "VALID", rhs_dilation=(2, 2), dimension_numbers=dn, precision=HI
    )
    ref = lax.conv_general_dilated(
        xh, kh, (1, 1), "VALID", rhs_dilation=(2, 2), dimension_numbers=dn, precision=HI
    )
    chex.assert_trees_all_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_naming_the_argument():
    x, k = _inputs((2, 8, 8, 3), (3, 3, 3, 4))
    with pytest.raises(ValueError, match="channels"):
        patches_conv(x[..., :2], k)
    with pytest.raises(ValueError, match="rank"):
        patches_conv(x[0], k)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        patches_conv(x[:, :2], k)
    with pytest.raises(ValueError, match="strides"):
        patches_conv(x, k, strides=(0, 1))
    with pytest.raises(ValueError, match="forward"):
        patches_conv(x, k, forward="fast")
    wide = jnp.zeros((3, 3, 8, 4))  # 72 multiply-adds per output: more than "direct" unrolls
    with pytest.raises(ValueError, match="forward='direct'.*72"):
        patches_conv(jnp.zeros((2, 8, 8, 8)), wide, forward="direct")
    with pytest.raises(ValueError, match="padding"):
        patches_conv(x, k, padding=((1, 1),))


@pytest.mark.parametrize("which", ["window", "slices"])  # MnistCNN's inference / training pools
@pytest.mark.parametrize("shape", [(2, 26, 26, 3), (2, 11, 11, 4)])  # even, and odd (floor mode)
def test_mnistcnn_pool_equals_reduce_window_forward_and_gradient(shape, which):
    _pool = functools.partial(nn.max_pool, window=2, impl=which)

    # continuous random values: every window's maximum is unique, where the gradients must agree
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    ref = lambda x: fnn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")  # noqa: E731
    chex.assert_trees_all_equal(_pool(x), ref(x))
    ct = jnp.asarray(np.random.default_rng(1).standard_normal(ref(x).shape), jnp.float32)
    g = jax.grad(lambda x: jnp.sum(_pool(x) * ct))(x)
    chex.assert_trees_all_equal(g, jax.grad(lambda x: jnp.sum(ref(x) * ct))(x))
    chex.assert_trees_all_equal(jax.jit(jax.vmap(_pool))(x[None])[0], ref(x))
