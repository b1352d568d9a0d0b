"""Residual networks (He et al. 2015, "Deep Residual Learning for Image Recognition").

A residual block computes ``y = act(F(x) + shortcut(x))``. Stacking ``L`` of them gives
``x_L = x_l + sum_{i=l}^{L-1} F_i(x_i)`` (before the final activations), so
``dx_L/dx_l = 1 + d/dx_l sum_i F_i``: the gradient reaching layer ``l`` always contains the
identity term and cannot vanish through the product of many small Jacobians. The *plain* nets
(``shortcut="none"``) are the same layers without that term; they exhibit the paper's
degradation problem (deeper plain nets train worse).

Two layouts:

- ImageNet (:func:`ResNet18` ... :func:`ResNet152`): 7x7/2 stem conv, 3x3/2 max pool, four stages
  of 64, 128, 256, 512 filters, projection shortcuts (option B) where shapes change, global average
  pooling, a dense classifier. The :class:`Bottleneck` puts its stride on the 3x3 conv
  (torchvision's "ResNet v1.5"; ``stride_in_1x1=True`` gives the paper's v1, stride on the first
  1x1 conv). Parameter counts equal torchvision's, and so do the forward passes: BatchNorm
  epsilon 1e-5, momentum 0.1 in PyTorch's convention (0.9 on the old value here), symmetric
  padding; :func:`~jaxdl.models.from_torchvision` loads torchvision's weights.
- CIFAR (:func:`resnet_cifar`): 3x3 stem with 16 filters, three stages of ``n`` basic blocks with
  16, 32, 64 filters, depth ``6n + 2``; option-A (zero-padded, parameter-free) shortcuts by default.

Conv and norm are injected as module factories (``functools.partial`` welcome): pass
``norm=functools.partial(nn.BatchNorm, axis_name="batch")`` for cross-device statistics or set
``dtype=jnp.bfloat16`` for mixed precision. Parameters stay float32 (``param_dtype``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.nn.conv import Conv
from jaxdl.nn.materialize import materialize
from jaxdl.nn.normalization import BatchNorm

ModuleDef = Any

# He et al. initialise convs "as in [He et al. 2015b]": zero-mean normal with variance 2 / n.
# torchvision (and hence the published counts we match) uses n = fan_out; either keeps the
# activation variance constant through ReLU layers.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

SHORTCUTS = ("A", "B", "none")


def bind_conv_norm(
    model: nn.Module,
    train: bool,
    kernel_init: Callable[..., jax.Array],
    momentum: float = 0.9,
    epsilon: float = 1e-5,
) -> tuple[ModuleDef, ModuleDef]:
    """The model's injected ``conv`` and ``norm`` with what all their layers share.

    Convolutions carry no bias (a normalisation follows each one); both compute in the model's
    ``dtype`` with ``param_dtype`` parameters; BatchNorm uses batch statistics in training and the
    running averages (``batch_stats``) in inference. ``momentum`` weighs the old running value.
    """
    conv = functools.partial(
        model.conv,
        use_bias=False,
        kernel_init=kernel_init,
        dtype=model.dtype,
        param_dtype=model.param_dtype,
    )
    norm = functools.partial(
        model.norm,
        use_running_average=not train,
        momentum=momentum,
        epsilon=epsilon,
        dtype=model.dtype,
        param_dtype=model.param_dtype,
    )
    return conv, norm


def check_images(
    x: jax.Array, channels: int, min_size: int, model: str, min_size_reason: str = ""
) -> None:
    """Raise ``ValueError`` unless ``x`` is an NHWC batch with ``channels`` channels and
    ``H, W >= min_size`` (the network's total downsampling factor)."""
    if x.ndim != 4:
        raise ValueError(f"{model}: x must be an NHWC batch of rank 4, got shape {tuple(x.shape)}")
    if x.shape[-1] != channels:
        raise ValueError(
            f"{model}: x must have {channels} channels (input_channels={channels}), got "
            f"{x.shape[-1]} in shape {tuple(x.shape)}; set input_channels to match the data"
        )
    h, w = x.shape[1:3]
    if h < min_size or w < min_size:
        raise ValueError(
            f"{model}: images must be at least {min_size}x{min_size} "
            f"(the network downsamples by {min_size}{min_size_reason}), got {h}x{w}"
        )


def _pad(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    # Symmetric k//2 padding as in the papers and torchvision. Flax's "SAME" pads (0, 1) on even
    # inputs with stride 2, which shifts every feature map by half a pixel relative to them.
    p = kernel // 2
    return ((p, p), (p, p))


def _shortcut(
    x: jax.Array, out_channels: int, strides: int, kind: str, conv: ModuleDef, norm: ModuleDef
) -> jax.Array | None:
    """The shortcut branch of a block, or ``None`` for a plain block."""
    if kind == "none":
        return None
    if x.shape[-1] == out_channels and strides == 1:
        return x
    if kind == "A":
        # Option A: identity on the subsampled map, new channels filled with zeros (no parameters).
        x = x[:, ::strides, ::strides, :]
        extra = out_channels - x.shape[-1]
        if extra < 0:
            raise ValueError(
                f"option-A shortcut cannot reduce channels ({x.shape[-1]} -> {out_channels})"
            )
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    # Option B: 1x1 projection with the block's stride, then BatchNorm.
    x = conv(out_channels, (1, 1), strides=(strides, strides), name="proj_conv")(x)
    return norm(name="proj_bn")(x)


class BasicBlock(nn.Module):
    """Two 3x3 convs: ``y = act(BN(conv3(act(BN(conv3_s(x))))) + shortcut(x))``; ``filters`` out.

    Shapes: ``(N, H, W, C) -> (N, H/s, W/s, filters)``.

    Attributes:
      filters: output channels.
      conv, norm: module factories (``nn.Conv``/``nn.BatchNorm`` with defaults bound).
      strides: stride of the first conv (and the shortcut).
      shortcut: ``"A"`` zero-pad identity, ``"B"`` 1x1 projection where shapes change,
        ``"none"`` plain block.
      zero_init_residual: start the last BN scale at 0 so the block is the identity at init
        (Goyal et al. 2017).
      act: the nonlinearity.
    """

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    shortcut: str = "B"
    zero_init_residual: bool = False
    act: Callable[[jax.Array], jax.Array] = nn.relu

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = (self.strides, self.strides)
        y = self.conv(self.filters, (3, 3), strides=s, padding=_pad(3), name="conv1")(x)
        y = self.act(self.norm(name="bn1")(y))
        y = self.conv(self.filters, (3, 3), padding=_pad(3), name="conv2")(y)
        scale_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        y = self.norm(scale_init=scale_init, name="bn2")(y)
        r = _shortcut(x, self.filters, self.strides, self.shortcut, self.conv, self.norm)
        # the block output feeds the next block twice (conv and shortcut): computed once, see
        # jaxdl.nn.materialize
        return materialize(self.act(y if r is None else y + r))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride: "v1.5"), 1x1 expand to ``4 * filters``; plus shortcut.

    ``y = act(BN(conv1(act(BN(conv3_s(act(BN(conv1(x)))))))) + shortcut(x))``.
    Shapes: ``(N, H, W, C) -> (N, H/s, W/s, 4 * filters)``. Attributes as :class:`BasicBlock`, and
    ``stride_in_1x1``: put the stride on the first 1x1 conv instead (He et al.'s original "v1";
    torchvision and its weights use v1.5, the default, which is slightly more accurate).
    """

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    shortcut: str = "B"
    zero_init_residual: bool = False
    act: Callable[[jax.Array], jax.Array] = nn.relu
    stride_in_1x1: bool = False

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = (self.strides, self.strides)
        s1, s3 = (s, (1, 1)) if self.stride_in_1x1 else ((1, 1), s)
        y = self.conv(self.filters, (1, 1), strides=s1, name="conv1")(x)
        y = self.act(self.norm(name="bn1")(y))
        y = self.conv(self.filters, (3, 3), strides=s3, padding=_pad(3), name="conv2")(y)
        y = self.act(self.norm(name="bn2")(y))
        y = self.conv(4 * self.filters, (1, 1), name="conv3")(y)
        scale_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        y = self.norm(scale_init=scale_init, name="bn3")(y)
        r = _shortcut(x, 4 * self.filters, self.strides, self.shortcut, self.conv, self.norm)
        # the block output feeds the next block twice (conv and shortcut): computed once, see
        # jaxdl.nn.materialize
        return materialize(self.act(y if r is None else y + r))


class ResNet(nn.Module):
    """A residual (or, with ``shortcut="none"``, plain) network.

    Layout ``stem="imagenet"``: conv7x7/2 (``num_filters``) - BN - ReLU - maxpool3x3/2, then stage
    ``i`` has ``stage_sizes[i]`` blocks of ``num_filters * 2**i`` filters (stride 2 on the first
    block of every stage after the first), global average pool, dense. Total downsampling 32.

    Layout ``stem="cifar"``: conv3x3 (``num_filters``) - BN - ReLU, no pool; otherwise the same.
    With ``num_filters=16`` and three stages this is the paper's CIFAR net (downsampling 4).

    Shapes: ``(N, H, W, input_channels) -> (N, num_classes)`` float32 logits.

    Attributes:
      stage_sizes: blocks per stage.
      block_cls: :class:`BasicBlock` or :class:`Bottleneck`.
      num_classes: classifier width.
      num_filters: filters of the stem and the first stage.
      stem: ``"imagenet"`` or ``"cifar"``.
      shortcut: ``"B"`` (projection), ``"A"`` (zero-padded identity) or ``"none"`` (plain net).
      zero_init_residual: zero-initialise each block's last BN scale (Goyal et al. 2017).
      stride_in_1x1: bottleneck nets only: the stride on each block's first 1x1 conv (ResNet v1)
        instead of its 3x3 conv (v1.5, torchvision's layout, the default).
      input_channels: expected channels of ``x`` (checked).
      dtype: computation dtype; parameters stay in ``param_dtype``; logits are returned as float32.
      param_dtype: parameter dtype.
      conv: conv factory; called as ``conv(features, kernel_size, strides=..., padding=...)``.
      norm: norm factory; called as ``norm(use_running_average=..., scale_init=..., name=...)``.
      act: the nonlinearity.
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int = 1000
    num_filters: int = 64
    stem: str = "imagenet"
    shortcut: str = "B"
    zero_init_residual: bool = False
    stride_in_1x1: bool = False
    input_channels: int = 3
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv: ModuleDef = Conv  # jaxdl.nn.Conv: flax's parameters, jaxdl's lowerings
    norm: ModuleDef = BatchNorm  # jaxdl.nn.BatchNorm: flax's variables, GEMV sums
    act: Callable[[jax.Array], jax.Array] = nn.relu

    @property
    def downsampling(self) -> int:
        """Total stride of the network: the smallest input side it accepts."""
        stem = 4 if self.stem == "imagenet" else 1
        return stem * 2 ** (len(self.stage_sizes) - 1)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        name = type(self).__name__
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(f"{name}: stem must be 'imagenet' or 'cifar', got {self.stem!r}")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"{name}: shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        if self.zero_init_residual and self.shortcut == "none":
            raise ValueError(
                f"{name}: zero_init_residual=True with shortcut='none' zeroes every block's output"
            )
        if self.stride_in_1x1 and getattr(self.block_cls, "expansion", 1) != 4:
            raise ValueError(f"{name}: stride_in_1x1 applies to Bottleneck blocks only")
        block_kwargs = {"stride_in_1x1": True} if self.stride_in_1x1 else {}
        check_images(x, self.input_channels, self.downsampling, name)
        # torchvision's BN: momentum 0.1 on the new value (= 0.9 on the old here), eps 1e-5.
        conv, norm = bind_conv_norm(self, train, he_normal, momentum=0.9, epsilon=1e-5)
        x = jnp.asarray(x, self.dtype)
        if self.stem == "imagenet":
            x = conv(self.num_filters, (7, 7), strides=(2, 2), padding=_pad(7), name="conv_init")(x)
            x = self.act(norm(name="bn_init")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # (N, H/4, W/4, F)
        else:
            x = conv(self.num_filters, (3, 3), padding=_pad(3), name="conv_init")(x)
            x = self.act(norm(name="bn_init")(x))
        for i, n_blocks in enumerate(self.stage_sizes):
            for j in range(n_blocks):
                x = self.block_cls(
                    filters=self.num_filters * 2**i,
                    conv=conv,
                    norm=norm,
                    strides=2 if i > 0 and j == 0 else 1,
                    shortcut=self.shortcut,
                    zero_init_residual=self.zero_init_residual,
                    act=self.act,
                    name=f"stage{i + 1}_block{j + 1}",
                    **block_kwargs,
                )(x)
        x = jnp.mean(x, axis=(1, 2))  # (N, C) global average pool
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(
            x
        )
        return jnp.asarray(x, jnp.float32)


# Stage sizes are data: (blocks per stage, block type) for each ImageNet depth.
IMAGENET_CONFIGS: dict[int, tuple[tuple[int, ...], type[nn.Module]]] = {
    18: ((2, 2, 2, 2), BasicBlock),
    34: ((3, 4, 6, 3), BasicBlock),
    50: ((3, 4, 6, 3), Bottleneck),
    101: ((3, 4, 23, 3), Bottleneck),
    152: ((3, 8, 36, 3), Bottleneck),
}


def _imagenet(depth: int, kwargs: dict[str, Any]) -> ResNet:
    stage_sizes, block = IMAGENET_CONFIGS[depth]
    return ResNet(stage_sizes=stage_sizes, block_cls=block, **kwargs)


def ResNet18(**kwargs: Any) -> ResNet:  # noqa: N802 (the papers' and torchvision's names)
    """ResNet-18: basic blocks (2, 2, 2, 2); 11,689,512 parameters at 1000 classes."""
    return _imagenet(18, kwargs)


def ResNet34(**kwargs: Any) -> ResNet:  # noqa: N802
    """ResNet-34: basic blocks (3, 4, 6, 3); 21,797,672 parameters at 1000 classes."""
    return _imagenet(34, kwargs)


def ResNet50(**kwargs: Any) -> ResNet:  # noqa: N802
    """ResNet-50 (v1.5): bottlenecks (3, 4, 6, 3); 25,557,032 parameters at 1000 classes."""
    return _imagenet(50, kwargs)


def ResNet101(**kwargs: Any) -> ResNet:  # noqa: N802
    """ResNet-101 (v1.5): bottlenecks (3, 4, 23, 3); 44,549,160 parameters at 1000 classes."""
    return _imagenet(101, kwargs)


def ResNet152(**kwargs: Any) -> ResNet:  # noqa: N802
    """ResNet-152 (v1.5): bottlenecks (3, 8, 36, 3); 60,192,808 parameters at 1000 classes."""
    return _imagenet(152, kwargs)


def resnet_cifar(depth: int, num_classes: int = 10, shortcut: str = "A", **kwargs: Any) -> ResNet:
    """The CIFAR-10 ResNet of He et al. (2015, section 4.2): depth ``6n + 2``.

    conv3x3(16) - BN - ReLU, then three stages of ``n`` basic blocks with 16, 32, 64 filters
    (stride 2 entering stages 2 and 3), global average pool, dense. ``depth`` counts the weighted
    layers: ``1 + 2 * 3n + 1``. With option-A shortcuts: ResNet-20/32/44/56/110 have
    0.27M/0.46M/0.66M/0.85M/1.7M parameters (the paper's Table 6).

    Args:
      depth: ``6n + 2`` for ``n >= 1``, e.g. 20, 32, 44, 56, 110.
      num_classes: classifier width.
      shortcut: ``"A"`` (paper's CIFAR choice), ``"B"`` (projection) or ``"none"`` (plain net).
      **kwargs: further :class:`ResNet` attributes (``num_filters`` to change the width from the
        paper's 16, ``input_channels``, ``dtype``, ``conv``, ``norm``, ...).
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"resnet_cifar: depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), "
            f"got {depth!r}"
        )
    n = (depth - 2) // 6
    return ResNet(
        stage_sizes=(n, n, n),
        block_cls=BasicBlock,
        num_classes=num_classes,
        stem="cifar",
        shortcut=shortcut,
        **{"num_filters": 16, **kwargs},
    )


def plain_cifar(depth: int, num_classes: int = 10, **kwargs: Any) -> ResNet:
    """The plain counterpart of :func:`resnet_cifar` (same layers, no shortcuts): the paper's
    plain-20/32/44/56 of Figure 6 (left)."""
    return resnet_cifar(depth, num_classes=num_classes, shortcut="none", **kwargs)
