"""Densely connected networks (Huang et al. 2017, "Densely Connected Convolutional Networks").

Inside a dense block layer ``l`` sees the concatenation of every earlier feature map,
``x_l = H_l([x_0, x_1, ..., x_{l-1}])``, and adds ``k`` (the *growth rate*) channels of its own, so
a block entered with ``c_0`` channels leaves with ``c_0 + L k``. ``H_l`` is the bottleneck
"BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k)" (the "B" of DenseNet-BC). Between blocks a transition
"BN-ReLU-Conv1x1(floor(theta c))-AvgPool2x2" halves the resolution and compresses the channels by
``theta = 0.5`` (the "C"). Feature reuse is what lets ``k`` be small (12 to 32).

:func:`DenseNet121` / :func:`DenseNet169` / :func:`DenseNet201` follow torchvision's ImageNet
layout (k = 32, 64 stem features, parameter counts equal); :func:`densenet_cifar` builds the
paper's CIFAR DenseNet-BC (L = 100, k = 12: 0.8M parameters).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.models.resnet import ModuleDef, bind_conv_norm, check_images
from jaxdl.nn.conv import Conv
from jaxdl.nn.normalization import BatchNorm

# He et al.'s normal init with the fan-in (torchvision's kaiming_normal_ default for DenseNet).
he_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class DenseLayer(nn.Module):
    """``H_l``: BN-act-conv1x1(``bn_size * growth_rate``)-BN-act-conv3x3(``growth_rate``)[-dropout].

    Shapes: ``(N, H, W, C) -> (N, H, W, growth_rate)`` (the new features only; the block concatenates).
    """

    growth_rate: int
    bn_size: int
    drop_rate: float
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = self.act(self.norm(name="bn1")(x))
        y = self.conv(self.bn_size * self.growth_rate, (1, 1), name="conv1")(y)  # (N, H, W, 4k)
        y = self.act(self.norm(name="bn2")(y))
        y = self.conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        if self.drop_rate > 0:
            y = nn.Dropout(self.drop_rate, deterministic=not train)(y)
        return y  # (N, H, W, k)


class DenseNet(nn.Module):
    """DenseNet-BC.

    ``stem="imagenet"``: conv7x7/2(``num_init_features``)-BN-ReLU-maxpool3x3/2 (downsampling 32
    with four blocks). ``stem="cifar"``: conv3x3(``num_init_features``) (downsampling 4 with three
    blocks; the paper's CIFAR nets start with a bare conv, the first dense layer's BN follows).
    Then dense blocks of ``block_sizes[i]`` layers with transitions between them, a final BN-ReLU,
    global average pooling and a dense classifier.

    Shapes: ``(N, H, W, input_channels) -> (N, num_classes)`` float32 logits.

    Attributes:
      block_sizes: dense layers per block.
      growth_rate: ``k``, channels each dense layer adds.
      num_init_features: stem channels.
      bn_size: the bottleneck's width multiple (``4k`` channels after the 1x1 conv).
      compression: ``theta`` in (0, 1], the transition's channel factor.
      drop_rate: dropout after each 3x3 conv (``train=True`` only, rng stream ``'dropout'``).
      num_classes, input_channels, dtype, param_dtype, conv, norm, act: as :class:`~jaxdl.models.ResNet`.
    """

    block_sizes: Sequence[int]
    growth_rate: int = 32
    num_init_features: int = 64
    bn_size: int = 4
    compression: float = 0.5
    drop_rate: float = 0.0
    stem: str = "imagenet"
    num_classes: int = 1000
    input_channels: int = 3
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv: ModuleDef = Conv  # jaxdl.nn.Conv: flax's parameters, jaxdl's lowerings
    norm: ModuleDef = BatchNorm  # jaxdl.nn.BatchNorm: flax's variables, GEMV sums
    act: Callable[[jax.Array], jax.Array] = nn.relu

    @property
    def downsampling(self) -> int:
        """Total stride: the smallest input side the network accepts."""
        return (4 if self.stem == "imagenet" else 1) * 2 ** (len(self.block_sizes) - 1)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        name = type(self).__name__
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(f"{name}: stem must be 'imagenet' or 'cifar', got {self.stem!r}")
        if not 0.0 < self.compression <= 1.0:
            raise ValueError(f"{name}: compression must be in (0, 1], got {self.compression}")
        if self.growth_rate < 1:
            raise ValueError(f"{name}: growth_rate must be >= 1, got {self.growth_rate}")
        check_images(x, self.input_channels, self.downsampling, name)
        conv, norm = bind_conv_norm(self, train, he_normal_fan_in, momentum=0.9, epsilon=1e-5)
        x = jnp.asarray(x, self.dtype)
        if self.stem == "imagenet":
            x = conv(
                self.num_init_features, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv_init"
            )(x)
            x = self.act(norm(name="bn_init")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            x = conv(self.num_init_features, (3, 3), padding=((1, 1), (1, 1)), name="conv_init")(x)
        for i, n_layers in enumerate(self.block_sizes):
            for j in range(n_layers):
                new = DenseLayer(
                    self.growth_rate,
                    self.bn_size,
                    self.drop_rate,
                    conv,
                    norm,
                    self.act,
                    name=f"block{i + 1}_layer{j + 1}",
                )(x, train)
                x = jnp.concatenate([x, new], axis=-1)  # (N, H, W, c_0 + (j + 1) k)
            if i + 1 < len(self.block_sizes):
                y = self.act(norm(name=f"transition{i + 1}_bn")(x))
                out = int(x.shape[-1] * self.compression)  # floor(theta c)
                y = conv(out, (1, 1), name=f"transition{i + 1}_conv")(y)
                x = nn.avg_pool(y, (2, 2), strides=(2, 2))  # (N, H/2, W/2, out)
        x = self.act(norm(name="bn_final")(x))
        x = jnp.mean(x, axis=(1, 2))  # (N, C)
        x = nn.Dense(
            self.num_classes,
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head",
        )(x)
        return jnp.asarray(x, jnp.float32)


IMAGENET_BLOCKS: dict[int, tuple[int, ...]] = {
    121: (6, 12, 24, 16),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
}


def DenseNet121(**kwargs: Any) -> DenseNet:  # noqa: N802 (the paper's and torchvision's names)
    """DenseNet-121: blocks (6, 12, 24, 16), k = 32; 7,978,856 parameters at 1000 classes."""
    return DenseNet(block_sizes=IMAGENET_BLOCKS[121], **kwargs)


def DenseNet169(**kwargs: Any) -> DenseNet:  # noqa: N802
    """DenseNet-169: blocks (6, 12, 32, 32), k = 32; 14,149,480 parameters at 1000 classes."""
    return DenseNet(block_sizes=IMAGENET_BLOCKS[169], **kwargs)


def DenseNet201(**kwargs: Any) -> DenseNet:  # noqa: N802
    """DenseNet-201: blocks (6, 12, 48, 32), k = 32; 20,013,928 parameters at 1000 classes."""
    return DenseNet(block_sizes=IMAGENET_BLOCKS[201], **kwargs)


def densenet_cifar(
    depth: int = 100, growth_rate: int = 12, num_classes: int = 10, **kwargs: Any
) -> DenseNet:
    """The paper's CIFAR DenseNet-BC: three dense blocks of ``(depth - 4) / 6`` bottleneck layers.

    ``depth`` counts the weighted layers: the stem conv, two convs per dense layer, two
    transitions and the classifier, ``1 + 3 * 2n + 2 + 1 = 6n + 4``. The stem has ``2k`` filters.
    L = 100, k = 12 gives 0.8M parameters (the paper's Table 2); L = 250, k = 24 gives 15.3M.

    Args:
      depth: ``6n + 4`` with ``n >= 1`` (e.g. 40, 100, 190, 250).
      growth_rate: ``k``.
      num_classes: classifier width.
      **kwargs: further :class:`DenseNet` attributes (``drop_rate``, ``dtype``, ``norm``, ...).
    """
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(
            f"densenet_cifar: depth must be 6n + 4 with n >= 1 (10, 40, 100, 190, 250, ...), "
            f"got {depth!r}"
        )
    n = (depth - 4) // 6
    return DenseNet(
        block_sizes=(n, n, n),
        growth_rate=growth_rate,
        num_init_features=2 * growth_rate,
        stem="cifar",
        num_classes=num_classes,
        **kwargs,
    )
