"""EfficientNet B0-B7 (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for CNNs").

Compound scaling grows a baseline network's depth, width and input resolution together:

    d = alpha ** phi,   w = beta ** phi,   r = gamma ** phi,
    with alpha * beta**2 * gamma**2 ~= 2  (alpha = 1.2, beta = 1.1, gamma = 1.15),

so that FLOPs (linear in depth, quadratic in width and in resolution) grow by about ``2 ** phi``.
The published B1-B7 use hand-rounded coefficients near these (table :data:`VARIANTS`); every
architecture follows from B0's stage table (:data:`B0_STAGES`) through :func:`round_filters`
(channels times ``w``, rounded to a multiple of 8, never more than 10% down) and
:func:`round_repeats` (``ceil(d * repeats)``). Nothing per-variant is hard-coded beyond the four
numbers (width, depth, resolution, dropout).

The block is MBConv (Sandler et al. 2018; Tan et al. 2019): 1x1 expansion by ``t`` - depthwise
``k x k`` conv - squeeze-and-excitation (Hu et al. 2018) - 1x1 linear projection, with swish
(``x * sigmoid(x)``) activations and an identity shortcut when shapes allow. The shortcut's
residual branch is dropped per example during training with probability growing linearly with the
block index, ``p_i = p * i / N`` (stochastic depth, Huang et al. 2016).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.models.resnet import ModuleDef, bind_conv_norm, check_images
from jaxdl.nn.conv import Conv


class StageSpec(NamedTuple):
    """One row of the baseline table: ``repeats`` MBConv blocks (stride on the first one)."""

    expand_ratio: int
    kernel: int
    stride: int
    features: int
    repeats: int


# EfficientNet-B0 (the paper's Table 1): stem conv3x3/2 with 32 filters, these stages, then a
# 1x1 conv to 1280 features, global average pool, dropout, dense.
B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 16, 1),
    StageSpec(6, 3, 2, 24, 2),
    StageSpec(6, 5, 2, 40, 2),
    StageSpec(6, 3, 2, 80, 3),
    StageSpec(6, 5, 1, 112, 3),
    StageSpec(6, 5, 2, 192, 4),
    StageSpec(6, 3, 1, 320, 1),
)
B0_STEM = 32
B0_HEAD = 1280


class Scaling(NamedTuple):
    """The published coefficients of one variant."""

    width: float
    depth: float
    resolution: int
    dropout: float


# The reference implementation's coefficients (width, depth, resolution, dropout).
VARIANTS: dict[str, Scaling] = {
    "b0": Scaling(1.0, 1.0, 224, 0.2),
    "b1": Scaling(1.0, 1.1, 240, 0.2),
    "b2": Scaling(1.1, 1.2, 260, 0.3),
    "b3": Scaling(1.2, 1.4, 300, 0.3),
    "b4": Scaling(1.4, 1.8, 380, 0.4),
    "b5": Scaling(1.6, 2.2, 456, 0.4),
    "b6": Scaling(1.8, 2.6, 528, 0.5),
    "b7": Scaling(2.0, 3.1, 600, 0.5),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width``, rounded to the nearest multiple of ``divisor`` (at least
    ``divisor``), bumped up by one ``divisor`` if rounding lost more than 10%."""
    if filters < 1 or width <= 0 or divisor < 1:
        raise ValueError(
            f"round_filters: need filters >= 1, width > 0, divisor >= 1; got {filters}, {width}, {divisor}"
        )
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Blocks in a stage scaled by ``depth``: ``ceil(depth * repeats)``."""
    if repeats < 1 or depth <= 0:
        raise ValueError(f"round_repeats: need repeats >= 1 and depth > 0; got {repeats}, {depth}")
    return int(math.ceil(depth * repeats))


def scale_stages(
    width: float, depth: float, stages: Sequence[StageSpec] = B0_STAGES
) -> tuple[StageSpec, ...]:
    """The stage table of a scaled network: features through :func:`round_filters`, repeats through
    :func:`round_repeats`; expansion, kernel and stride unchanged."""
    return tuple(
        s._replace(
            features=round_filters(s.features, width), repeats=round_repeats(s.repeats, depth)
        )
        for s in stages
    )


@dataclasses.dataclass(frozen=True)
class CompoundScaling:
    """Compound-scaling multipliers for coefficient ``phi``: depth ``alpha**phi``, width
    ``beta**phi``, resolution ``gamma**phi`` (times the base resolution), FLOPs factor
    ``(alpha * beta**2 * gamma**2) ** phi``."""

    phi: float
    depth: float
    width: float
    resolution: int
    flops_factor: float


def compound_scaling(
    phi: float,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    base_resolution: int = 224,
) -> CompoundScaling:
    """The paper's equation (3): ``d = alpha**phi, w = beta**phi, r = gamma**phi`` with
    ``alpha * beta**2 * gamma**2 ~= 2`` (defaults: the grid-searched 1.2, 1.1, 1.15).

    The published B1-B7 (:data:`VARIANTS`) round these by hand; pass the result's ``width`` and
    ``depth`` to :class:`EfficientNet` to build the un-rounded family.
    """
    if min(alpha, beta, gamma) < 1.0:
        raise ValueError(
            f"compound_scaling: alpha, beta, gamma must be >= 1; got {alpha}, {beta}, {gamma}"
        )
    return CompoundScaling(
        phi=phi,
        depth=alpha**phi,
        width=beta**phi,
        resolution=int(round(base_resolution * gamma**phi)),
        flops_factor=(alpha * beta**2 * gamma**2) ** phi,
    )


def stochastic_depth_rates(num_blocks: int, rate: float) -> list[float]:
    """Drop probability of block ``i`` (0-based) of ``num_blocks``: ``rate * i / num_blocks``."""
    return [rate * i / num_blocks for i in range(num_blocks)]


def stochastic_depth(
    x: jax.Array, rate: float, deterministic: bool, rng: jax.Array | None
) -> jax.Array:
    """Drop whole examples of a residual branch: ``x * Bernoulli(1 - rate) / (1 - rate)`` per
    example in training (so the expectation is ``x``), the identity at inference."""
    if deterministic or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))  # (N, 1, 1, 1)
    return x * mask.astype(x.dtype) / jnp.asarray(keep, x.dtype)


# The reference implementation's initialisers: He normal on the fan-out for convs, which for a
# depthwise kernel (k, k, 1, C) is the k*k taps each output sees (flax's fan_in of that shape), and
# uniform(+-1/sqrt(classes)) for the classifier.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
depthwise_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-and-excitation.

    ``h = act(BN(conv1x1_{tC}(x)))`` (skipped when ``t = 1``); ``h = act(BN(dwconv_{k,s}(h)))``;
    ``h = h * sigmoid(W_2 act(W_1 mean_{HW}(h) + b_1) + b_2)`` with ``W_1`` to
    ``max(1, int(C * se_ratio))`` channels; ``y = BN(conv1x1_{out}(h))``;
    ``y = x + stochastic_depth(y)`` when ``s = 1`` and ``out = C``.

    Shapes: ``(N, H, W, C) -> (N, H/s, W/s, out_features)``.
    """

    out_features: int
    expand_ratio: int
    kernel: int
    stride: int
    se_ratio: float
    drop_rate: float
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[jax.Array], jax.Array] = nn.swish

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        in_features = x.shape[-1]
        hidden = in_features * self.expand_ratio
        h = x
        if self.expand_ratio != 1:
            h = self.conv(hidden, (1, 1), name="expand_conv")(h)  # (N, H, W, tC)
            h = self.act(self.norm(name="expand_bn")(h))
        p = self.kernel // 2
        h = self.conv(
            hidden,
            (self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            padding=((p, p), (p, p)),
            feature_group_count=hidden,
            kernel_init=depthwise_init,
            name="depthwise_conv",
        )(h)  # (N, H/s, W/s, tC)
        h = self.act(self.norm(name="depthwise_bn")(h))
        if self.se_ratio > 0:
            squeezed = max(1, int(in_features * self.se_ratio))
            s = jnp.mean(h, axis=(1, 2), keepdims=True)  # (N, 1, 1, tC)
            s = self.act(self.conv(squeezed, (1, 1), use_bias=True, name="se_reduce")(s))
            s = nn.sigmoid(self.conv(hidden, (1, 1), use_bias=True, name="se_expand")(s))
            h = h * s
        h = self.conv(self.out_features, (1, 1), name="project_conv")(h)  # (N, H/s, W/s, out)
        h = self.norm(name="project_bn")(h)
        if self.stride == 1 and in_features == self.out_features:
            rng = self.make_rng("dropout") if train and self.drop_rate > 0 else None
            h = x + stochastic_depth(h, self.drop_rate, not train, rng)
        return h


class EfficientNet(nn.Module):
    """EfficientNet with width/depth multipliers applied to a baseline stage table.

    conv3x3/2(``round_filters(32)``)-BN-swish; the scaled MBConv stages; conv1x1
    (``round_filters(1280)``)-BN-swish; global average pool; dropout; dense.

    Shapes: ``(N, H, W, input_channels) -> (N, num_classes)`` float32 logits; ``H, W >= 32``.
    ``resolution`` is the variant's training resolution (informational: any size >= 32 runs).

    Attributes:
      width: channel multiplier ``w``.
      depth: repeat multiplier ``d``.
      resolution: the input side the variant was designed for.
      dropout_rate: dropout before the classifier (``train=True`` only, rng stream ``'dropout'``).
      stochastic_depth_rate: ``p``; block ``i`` (0-based) of ``N`` drops its branch with
        probability ``p * i / N`` (torchvision's ``stochastic_depth_prob``, same schedule;
        draws from the ``'dropout'`` stream).
      stages, stem_features, head_features: the baseline (B0) architecture.
      se_ratio: squeeze channels as a fraction of a block's input channels.
      bn_epsilon, bn_momentum: BatchNorm's epsilon and its momentum on the old running value.
        The defaults are torchvision's (eps 1e-5, PyTorch momentum 0.1 = 0.9 here for B0 to B4;
        :func:`efficientnet` sets eps 1e-3, momentum 0.99 for B5 to B7, the values torchvision
        gives those variants), so that :func:`~jaxdl.models.from_torchvision`'s weights reproduce
        torchvision's outputs. The TensorFlow reference uses eps 1e-3, momentum 0.99 throughout.
      num_classes, input_channels, dtype, param_dtype, conv, norm, act: as :class:`~jaxdl.models.ResNet`.
    """

    width: float = 1.0
    depth: float = 1.0
    resolution: int = 224
    dropout_rate: float = 0.2
    stochastic_depth_rate: float = 0.2
    stages: Sequence[StageSpec] = B0_STAGES
    stem_features: int = B0_STEM
    head_features: int = B0_HEAD
    se_ratio: float = 0.25
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9
    num_classes: int = 1000
    input_channels: int = 3
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv: ModuleDef = Conv  # jaxdl.nn.Conv: flax's parameters, jaxdl's lowerings
    norm: ModuleDef = nn.BatchNorm
    act: Callable[[jax.Array], jax.Array] = nn.swish

    @property
    def downsampling(self) -> int:
        """Total stride: the smallest input side the network accepts."""
        return 2 * math.prod(s.stride for s in self.stages)

    @property
    def scaled_stages(self) -> tuple[StageSpec, ...]:
        """This network's stage table (:func:`scale_stages` of the baseline)."""
        return scale_stages(self.width, self.depth, self.stages)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        name = type(self).__name__
        for attr in ("dropout_rate", "stochastic_depth_rate"):
            if not 0.0 <= getattr(self, attr) < 1.0:
                raise ValueError(f"{name}: {attr} must be in [0, 1), got {getattr(self, attr)}")
        check_images(x, self.input_channels, self.downsampling, name)
        if self.bn_epsilon <= 0 or not 0.0 <= self.bn_momentum < 1.0:
            raise ValueError(
                f"{name}: need bn_epsilon > 0 and bn_momentum in [0, 1), got "
                f"{self.bn_epsilon}, {self.bn_momentum}"
            )
        conv, norm = bind_conv_norm(
            self, train, conv_init, momentum=self.bn_momentum, epsilon=self.bn_epsilon
        )
        x = jnp.asarray(x, self.dtype)
        stem = round_filters(self.stem_features, self.width)
        x = conv(stem, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), name="stem_conv")(x)
        x = self.act(norm(name="stem_bn")(x))  # (N, H/2, W/2, stem)
        stages = self.scaled_stages
        rates = stochastic_depth_rates(sum(s.repeats for s in stages), self.stochastic_depth_rate)
        block = 0
        for i, s in enumerate(stages):
            for j in range(s.repeats):
                x = MBConv(
                    out_features=s.features,
                    expand_ratio=s.expand_ratio,
                    kernel=s.kernel,
                    stride=s.stride if j == 0 else 1,
                    se_ratio=self.se_ratio,
                    drop_rate=rates[block],
                    conv=conv,
                    norm=norm,
                    act=self.act,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, train)
                block += 1
        head = round_filters(self.head_features, self.width)
        x = self.act(norm(name="head_bn")(conv(head, (1, 1), name="head_conv")(x)))
        x = jnp.mean(x, axis=(1, 2))  # (N, head)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(
            self.num_classes,
            kernel_init=dense_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="classifier",
        )(x)
        return jnp.asarray(x, jnp.float32)


def efficientnet(variant: str, **kwargs: Any) -> EfficientNet:
    """EfficientNet-``variant`` (``"b0"`` ... ``"b7"``): B0's table with that variant's coefficients
    from :data:`VARIANTS`. ``kwargs`` override any :class:`EfficientNet` attribute.

    Everything matches torchvision's ``efficientnet_b*``: the stage table and rounding, the
    head width (``4 * round_filters(320)`` there, ``round_filters(1280)`` here: equal for every
    variant), the SE width ``max(1, C_in // 4)``, the dropout, stochastic depth ``0.2 * i / N``,
    and BatchNorm (eps 1e-5, momentum 0.9 for B0 to B4; eps 1e-3, momentum 0.99 for B5 to B7).
    """
    key = variant.lower()
    if key not in VARIANTS:
        raise ValueError(
            f"efficientnet: variant must be one of {sorted(VARIANTS)}, got {variant!r}"
        )
    s = VARIANTS[key]
    config: dict[str, Any] = dict(
        width=s.width, depth=s.depth, resolution=s.resolution, dropout_rate=s.dropout
    )
    if key in ("b5", "b6", "b7"):  # torchvision's BatchNorm for these (its weights were ported)
        config.update(bn_epsilon=1e-3, bn_momentum=0.99)
    config.update(kwargs)
    return EfficientNet(**config)


def EfficientNetB0(**kwargs: Any) -> EfficientNet:  # noqa: N802 (the paper's names)
    """EfficientNet-B0 (w 1.0, d 1.0, 224 px, dropout 0.2): 5,288,548 parameters at 1000 classes."""
    return efficientnet("b0", **kwargs)


def EfficientNetB1(**kwargs: Any) -> EfficientNet:  # noqa: N802
    """EfficientNet-B1 (w 1.0, d 1.1, 240 px, dropout 0.2): 7.79M parameters."""
    return efficientnet("b1", **kwargs)


def EfficientNetB2(**kwargs: Any) -> EfficientNet:  # noqa: N802
    """EfficientNet-B2 (w 1.1, d 1.2, 260 px, dropout 0.3): 9.11M parameters."""
    return efficientnet("b2", **kwargs)


def EfficientNetB3(**kwargs: Any) -> EfficientNet:  # noqa: N802
    """EfficientNet-B3 (w 1.2, d 1.4, 300 px, dropout 0.3): 12.23M parameters."""
    return efficientnet("b3", **kwargs)


def EfficientNetB4(**kwargs: Any) -> EfficientNet:  # noqa: N802
    """EfficientNet-B4 (w 1.4, d 1.8, 380 px, dropout 0.4): 19.34M parameters."""
    return efficientnet("b4", **kwargs)


def EfficientNetB5(**kwargs: Any) -> EfficientNet:  # noqa: N802
    """EfficientNet-B5 (w 1.6, d 2.2, 456 px, dropout 0.4): 30.39M parameters."""
    return efficientnet("b5", **kwargs)


def EfficientNetB6(**kwargs: Any) -> EfficientNet:  # noqa: N802
    """EfficientNet-B6 (w 1.8, d 2.6, 528 px, dropout 0.5): 43.04M parameters."""
    return efficientnet("b6", **kwargs)


def EfficientNetB7(**kwargs: Any) -> EfficientNet:  # noqa: N802
    """EfficientNet-B7 (w 2.0, d 3.1, 600 px, dropout 0.5): 66.35M parameters."""
    return efficientnet("b7", **kwargs)
