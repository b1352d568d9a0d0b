"""A small U-Net noise predictor for diffusion models (Ho et al. 2020, after Ronneberger et al. 2015).

Layout (``channel_mults = (1, 2)`` on 8x8, ``(1, 2, 2)`` on 28x28)::

    x (B, H, W, C) -> conv3x3 -> [ResBlock x num_res_blocks, downsample]  per level   (skips saved)
                   -> ResBlock -> (SelfAttention) -> ResBlock                 lowest resolution
                   -> [ResBlock x (num_res_blocks + 1) on concat(skip), upsample] per level
                   -> GroupNorm -> SiLU -> conv3x3 (zero-initialised) -> eps (B, H, W, C)

Every ResBlock adds a projection of the conditioning vector ``emb = MLP(sinusoid(t)) (+ class
embedding)`` between its two convolutions. Downsampling is a stride-2 conv (28 -> 14 -> 7);
upsampling is nearest-neighbour x2 and a conv.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding of integer steps (Vaswani et al. 2017, as in Ho et al. 2020):

    ``emb[:, i] = cos(t * w_i)``, ``emb[:, half + i] = sin(t * w_i)``, ``w_i = max_period^(-i / half)``.

    Args:
      t: ``(B,)`` timesteps (ints or floats).
      dim: even embedding width.

    Returns:
      ``(B, dim)`` float32.
    """
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)  # (half,)
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]  # (B, half)
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, + Dense(emb), GroupNorm -> SiLU -> dropout -> conv3x3, + skip."""

    features: int
    groups: int = 8
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
        h = nn.silu(nn.GroupNorm(num_groups=self.groups)(x))
        h = nn.Conv(self.features, (3, 3))(h)  # (B, H, W, F)
        h = h + nn.Dense(self.features)(nn.silu(emb))[:, None, None, :]  # per-example shift
        h = nn.silu(nn.GroupNorm(num_groups=self.groups)(h))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        h = nn.Conv(self.features, (3, 3), kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1))(x)
        return x + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the ``H*W`` positions, residual: ``x + W_o softmax(q k^T / sqrt(C)) v``."""

    groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        y = nn.GroupNorm(num_groups=self.groups)(x).reshape(b, h * w, c)
        q, k, v = jnp.split(nn.Dense(3 * c)(y), 3, axis=-1)  # each (B, HW, C)
        att = jax.nn.softmax(
            jnp.einsum("bqc,bkc->bqk", q, k) / math.sqrt(c), axis=-1
        )  # (B, HW, HW)
        y = jnp.einsum("bqk,bkc->bqc", att, v)
        y = nn.Dense(c, kernel_init=nn.initializers.zeros)(y)
        return x + y.reshape(b, h, w, c)


class UNet(nn.Module):
    """Noise predictor ``eps(x_t, t[, y])`` for :mod:`jaxdl.diffusion`.

    Attributes:
      channels: width of the first level; level ``i`` has ``channels * channel_mults[i]``.
      channel_mults: one entry per resolution level (``len - 1`` downsamplings).
      num_res_blocks: ResBlocks per level on the way down (one more on the way up).
      attention: self-attention in the middle (lowest-resolution) block.
      num_classes: if set, a learned class embedding is added to the time embedding; label
        ``num_classes`` (:attr:`null_label`) is the "no class" token used for classifier-free
        guidance (train with labels randomly replaced by it, sample with
        :func:`jaxdl.diffusion.guided_eps_fn`).
      out_channels: output channels (default: the input's).
      groups: GroupNorm groups (must divide every level's width).
      dropout_rate: dropout inside ResBlocks (``train=True`` only; ``'dropout'`` rng stream).

    ``__call__(x (B, H, W, C), t int (B,), y int (B,) | None = None, train=False) -> (B, H, W, C)``.
    ``H`` and ``W`` must be divisible by ``2^(len(channel_mults) - 1)``.
    """

    channels: int = 32
    channel_mults: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    attention: bool = False
    num_classes: int | None = None
    out_channels: int | None = None
    groups: int = 8
    dropout_rate: float = 0.0

    @property
    def null_label(self) -> int:
        if self.num_classes is None:
            raise ValueError("null_label needs num_classes")
        return self.num_classes

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"UNet: x must be NHWC (B, H, W, C), got shape {tuple(x.shape)}")
        factor = 2 ** (len(self.channel_mults) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"UNet: H and W must be divisible by {factor} (2^(len(channel_mults)-1)), "
                f"got {x.shape[1:3]}"
            )
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (x.shape[0],))
        if t.shape != (x.shape[0],):
            raise ValueError(f"UNet: t must have shape ({x.shape[0]},), got {t.shape}")
        for m in self.channel_mults:
            if (self.channels * m) % self.groups:
                raise ValueError(
                    f"UNet: groups={self.groups} must divide every level's width {self.channels * m}"
                )

        emb_dim = 4 * self.channels
        emb = timestep_embedding(t, self.channels)  # (B, channels)
        emb = nn.Dense(emb_dim)(emb)
        emb = nn.Dense(emb_dim)(nn.silu(emb))  # (B, 4 channels)
        if self.num_classes is not None:
            if y is None:
                y = jnp.full((x.shape[0],), self.num_classes, jnp.int32)  # unconditional
            y = jnp.asarray(y)
            if y.shape != (x.shape[0],) or not jnp.issubdtype(y.dtype, jnp.integer):
                raise ValueError(f"UNet: y must be int ({x.shape[0]},), got {y.dtype} {y.shape}")
            emb = emb + nn.Embed(self.num_classes + 1, emb_dim)(y)  # +1: the null class
        elif y is not None:
            raise ValueError("UNet: y was given but num_classes is None")

        block = lambda f: ResBlock(f, self.groups, self.dropout_rate)  # noqa: E731
        h = nn.Conv(self.channels, (3, 3))(x)
        skips = [h]
        for level, mult in enumerate(self.channel_mults):
            for _ in range(self.num_res_blocks):
                h = block(self.channels * mult)(h, emb, train)
                skips.append(h)
            if level != len(self.channel_mults) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2))(h)  # (B, H/2, W/2, F)
                skips.append(h)

        h = block(h.shape[-1])(h, emb, train)
        if self.attention:
            h = SelfAttention(self.groups)(h)
        h = block(h.shape[-1])(h, emb, train)

        for level, mult in reversed(list(enumerate(self.channel_mults))):
            for _ in range(self.num_res_blocks + 1):
                h = block(self.channels * mult)(
                    jnp.concatenate([h, skips.pop()], axis=-1), emb, train
                )
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest x2: (B, 2H, 2W, F)
                h = nn.Conv(h.shape[-1], (3, 3))(h)

        h = nn.silu(nn.GroupNorm(num_groups=self.groups)(h))
        out = self.out_channels or x.shape[-1]
        return nn.Conv(out, (3, 3), kernel_init=nn.initializers.zeros)(h)  # (B, H, W, C)
