r"""Weight initialisers, as Flax initialisers: ``init(key, shape, dtype) -> array``.

Each one plugs into a Flax layer's init argument, e.g.
``flax.linen.Dense(128, kernel_init=jaxdl.nn.initializers.he_normal())``.

The variance-scaling family draws weights with variance ``scale / n``, where ``n`` is the fan:

* ``lecun_*``: ``1 / fan_in``, keeps the forward variance of linear, tanh or SELU units;
* ``glorot_*`` (Xavier): ``2 / (fan_in + fan_out)``, a compromise of forward and backward;
* ``he_*`` (Kaiming): ``2 / fan_in``, keeps the forward variance through ReLU units

(LeCun et al. 1998; Glorot & Bengio 2010; He et al. 2015). For a kernel of shape
``(*receptive_field, in, out)`` -- a dense ``(in, out)`` or a conv ``(kh, kw, in, out)``, Flax's
layouts -- ``fan_in = in * prod(receptive_field)`` and ``fan_out = out * prod(receptive_field)``.

``*_uniform`` draws from ``U(-a, a)`` with ``a = sqrt(3 * variance)``; ``*_normal`` draws from a
normal truncated at two standard deviations, rescaled so that the variance is still ``variance``
(the Keras and Flax convention: the truncated standard normal has std 0.87962566).
The derivations are in ``docs/derivations/initialization.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

FAN_MODES = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS = ("uniform", "truncated_normal", "normal")
# Standard deviation of a standard normal truncated to [-2, 2].
_TRUNCATED_STD = 0.87962566103423978


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a kernel laid out ``(*receptive_field, in, out)``.

    A 1-D shape ``(n,)`` has ``fan_in = fan_out = n``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1:
        raise ValueError(f"shape must have at least one dimension, got {shape}")
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def variance_scaling(scale: float, mode: str, distribution: str) -> Initializer:
    """Weights with variance ``scale / n``, ``n`` the fan chosen by ``mode``.

    Args:
      scale: positive multiplier (2 for He, 1 for LeCun and Glorot).
      mode: ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"`` (``(fan_in + fan_out) / 2``).
      distribution: ``"uniform"``, ``"truncated_normal"`` or ``"normal"``.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if mode not in FAN_MODES:
        raise ValueError(f"mode must be one of {FAN_MODES}, got {mode!r}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(n, 1)
        if distribution == "uniform":
            limit = math.sqrt(3.0 * variance)  # Var U(-a, a) = a^2 / 3
            return jax.random.uniform(key, shape, dtype, -limit, limit)
        if distribution == "normal":
            return math.sqrt(variance) * jax.random.normal(key, shape, dtype)
        std = math.sqrt(variance) / _TRUNCATED_STD
        return std * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)

    return init


def glorot_uniform() -> Initializer:
    """Glorot & Bengio (2010) uniform: ``U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``."""
    return variance_scaling(1.0, "fan_avg", "uniform")


def glorot_normal() -> Initializer:
    """Glorot & Bengio (2010) normal: variance ``2 / (fan_in + fan_out)`` (truncated at 2 std)."""
    return variance_scaling(1.0, "fan_avg", "truncated_normal")


def he_uniform() -> Initializer:
    """He et al. (2015) uniform: ``U(-a, a)``, ``a = sqrt(6 / fan_in)``."""
    return variance_scaling(2.0, "fan_in", "uniform")


def he_normal() -> Initializer:
    """He et al. (2015) normal: variance ``2 / fan_in`` (truncated at 2 std)."""
    return variance_scaling(2.0, "fan_in", "truncated_normal")


def lecun_uniform() -> Initializer:
    """LeCun et al. (1998) uniform: ``U(-a, a)``, ``a = sqrt(3 / fan_in)``."""
    return variance_scaling(1.0, "fan_in", "uniform")


def lecun_normal() -> Initializer:
    """LeCun et al. (1998) normal: variance ``1 / fan_in`` (truncated at 2 std)."""
    return variance_scaling(1.0, "fan_in", "truncated_normal")


xavier_uniform = glorot_uniform
xavier_normal = glorot_normal
kaiming_uniform = he_uniform
kaiming_normal = he_normal


def orthogonal(gain: float = 1.0) -> Initializer:
    """A (semi-)orthogonal matrix times ``gain`` (Saxe et al. 2014).

    The kernel is viewed as a matrix ``(prod(shape[:-1]), shape[-1])``; it is the ``Q`` of the QR
    decomposition of a Gaussian matrix, with the column signs fixed by ``sign(diag(R))`` so that
    ``Q`` is Haar-distributed (Mezzadri 2007). Its rows (if fewer) or columns (if fewer) are
    orthonormal, so every singular value is ``gain``: a linear layer then preserves norms exactly,
    in both directions.
    """
    if gain <= 0:
        raise ValueError(f"gain must be positive, got {gain}")

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        if len(shape) < 2:
            raise ValueError(f"orthogonal needs a shape with at least 2 dimensions, got {shape}")
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = jax.random.normal(key, (max(rows, cols), min(rows, cols)), jnp.float32)
        q, r = jnp.linalg.qr(a)  # q: (max, min), orthonormal columns
        q = q * jnp.sign(jnp.diag(r))[None, :]
        if rows < cols:
            q = q.T  # (rows, cols), orthonormal rows
        return (gain * q).reshape(shape).astype(dtype)

    return init


def zeros() -> Initializer:
    """All zeros: every unit of a layer computes the same function and gets the same gradient."""
    return lambda key, shape, dtype=jnp.float32: jnp.zeros(shape, dtype)


def normal(stddev: float = 0.01) -> Initializer:
    """``N(0, stddev^2)`` regardless of the fan (the 'small random numbers' of early practice)."""
    if stddev <= 0:
        raise ValueError(f"stddev must be positive, got {stddev}")
    return lambda key, shape, dtype=jnp.float32: stddev * jax.random.normal(key, shape, dtype)


_BY_NAME: dict[str, Callable[[], Initializer]] = {
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_uniform": glorot_uniform,
    "xavier_normal": glorot_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "kaiming_uniform": he_uniform,
    "kaiming_normal": he_normal,
    "lecun_uniform": lecun_uniform,
    "lecun_normal": lecun_normal,
    "orthogonal": orthogonal,
    "zeros": zeros,
    "normal": normal,
}
NAMES = tuple(sorted(_BY_NAME))


def get(name: str, **kwargs: Any) -> Initializer:
    """The initialiser called ``name`` (one of :data:`NAMES`), built with ``kwargs``."""
    try:
        factory = _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown initializer {name!r}; expected one of {NAMES}") from None
    return factory(**kwargs)
