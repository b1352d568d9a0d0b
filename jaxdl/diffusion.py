"""Denoising diffusion: noise schedules, the forward process, the training loss, DDPM and DDIM sampling,
classifier-free guidance and an EMA of the weights; :class:`DiffusionModel`, which makes a noise
predictor trainable with :func:`jaxdl.train.fit`.

Conventions (DESIGN.md): the step index ``t`` runs ``0 .. T-1`` (``T = schedule.num_steps``), and
``alphas_cumprod[t] = prod_{i <= t} (1 - betas[i])``, so index ``t`` here is step ``t + 1`` of Ho et
al. (2020), whose ``t`` runs ``1 .. T``. The clean data ``x_0`` sits "before" index 0: wherever a
formula needs :math:`\\bar\\alpha_{t-1}` at ``t = 0`` it is 1. Arrays are batch-first, ``(B, ...)``;
a timestep argument is an integer array ``(B,)`` (or a scalar, used for every example).

A noise predictor is a function ``eps_fn(x_t, t) -> eps`` with ``x_t (B, ...)``, ``t`` int32 ``(B,)``
and ``eps`` shaped like ``x_t`` (for a Flax model: ``lambda x, t: model.apply(params, x, t)``).
The derivations, each next to the line it becomes, are in ``docs/derivations/diffusion.md``.

References: Ho, Jain & Abbeel 2020 (DDPM); Song, Meng & Ermon 2021 (DDIM); Nichol & Dhariwal 2021
(cosine schedule); Salimans & Ho 2022 (v-prediction); Ho & Salimans 2022 (classifier-free guidance).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "Schedule",
    "schedule_from_betas",
    "linear_schedule",
    "cosine_schedule",
    "q_sample",
    "q_posterior",
    "predict_x0",
    "training_target",
    "eps_from_v",
    "denoising_loss",
    "ddpm_sample",
    "ddim_sample",
    "ddim_timesteps",
    "guided_eps_fn",
    "ema_update",
    "DiffusionModel",
    "diffusion_loss",
    "EmaState",
    "with_ema",
    "ema_params",
]

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
PREDICTIONS = ("epsilon", "v")


class Schedule(NamedTuple):
    """A noise schedule: three float32 arrays of shape ``(T,)`` (a pytree, so it can cross ``jit``).

    ``betas[t]`` is the variance added at step ``t``; ``alphas = 1 - betas``;
    ``alphas_cumprod[t] = prod_{i <= t} alphas[i]`` (written :math:`\\bar\\alpha_t`), so that
    ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``.
    """

    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas_cumprod_prev(self) -> jax.Array:
        """``abar_{t-1}`` for each ``t``, with ``abar_{-1} = 1`` (the clean data)."""
        return jnp.concatenate(
            [jnp.ones((1,), self.alphas_cumprod.dtype), self.alphas_cumprod[:-1]]
        )


def _check_num_steps(num_steps: Any, name: str = "num_steps") -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(num_steps).__name__}")
    if num_steps < 1:
        raise ValueError(f"{name} must be >= 1, got {num_steps}")
    return int(num_steps)


def schedule_from_betas(betas: Any) -> Schedule:
    """Build a :class:`Schedule` from any variances ``betas (T,)`` in ``(0, 1]``.

    The cumulative product is taken in float64 (NumPy) and then stored as float32, so that
    ``abar_t`` for large ``T`` carries no accumulated float32 rounding.
    """
    b = np.asarray(betas, dtype=np.float64)
    if b.ndim != 1 or b.shape[0] < 1:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {b.shape}")
    if not np.all(np.isfinite(b)) or np.any(b <= 0) or np.any(b > 1):
        raise ValueError("betas must all lie in (0, 1]")
    alphas = 1.0 - b
    abar = np.cumprod(alphas)  # abar[t] = prod_{i<=t} (1 - beta_i)
    return Schedule(
        betas=jnp.asarray(b, jnp.float32),
        alphas=jnp.asarray(alphas, jnp.float32),
        alphas_cumprod=jnp.asarray(abar, jnp.float32),
    )


def linear_schedule(
    num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Schedule:
    """Ho et al. (2020)'s schedule: ``betas = linspace(beta_start, beta_end, T)``.

    The paper's ``T = 1000``, ``beta_1 = 1e-4``, ``beta_T = 0.02`` are the defaults.
    """
    num_steps = _check_num_steps(num_steps)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
        )
    return schedule_from_betas(np.linspace(beta_start, beta_end, num_steps, dtype=np.float64))


def cosine_schedule(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal (2021)'s cosine schedule.

    ``f(u) = cos((u / T + s) / (1 + s) * pi / 2)^2`` and the target ``abar(u) = f(u) / f(0)``; the
    step variances are ``beta_t = min(1 - abar(t + 1) / abar(t), max_beta)`` for ``t = 0 .. T-1``
    (the paper's ``1 - abar_t / abar_{t-1}`` with its ``t`` one larger), clipped at 0.999 as in the
    paper to avoid the singularity at ``u = T``. ``alphas_cumprod`` is then the product of
    ``1 - beta``, which equals ``abar(t + 1)`` wherever no clipping happened.
    """
    num_steps = _check_num_steps(num_steps)
    if not s >= 0.0:
        raise ValueError(f"s must be >= 0, got {s}")
    if not 0.0 < max_beta <= 1.0:
        raise ValueError(f"max_beta must be in (0, 1], got {max_beta}")
    u = np.arange(num_steps + 1, dtype=np.float64)
    f = np.cos((u / num_steps + s) / (1.0 + s) * math.pi / 2.0) ** 2  # (T + 1,)
    abar = f / f[0]
    betas = np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)  # (T,)
    return schedule_from_betas(betas)


# ----------------------------------------------------------------------------- input checks


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_t(t: Any, schedule: Schedule, batch: int, name: str = "t") -> jax.Array:
    """Validate a timestep argument: an integer scalar or ``(batch,)``; returns int32 ``(batch,)``."""
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {t.dtype}")
    if t.ndim == 0:
        t = jnp.broadcast_to(t, (batch,))
    if t.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) (one step per example), got {t.shape}")
    if not _is_traced(t):  # range is checkable only on concrete values; traced ones are clamped
        tn = np.asarray(t)
        if tn.size and (tn.min() < 0 or tn.max() >= schedule.num_steps):
            raise ValueError(
                f"{name} must lie in [0, {schedule.num_steps - 1}] (the schedule's steps), "
                f"got values in [{tn.min()}, {tn.max()}]"
            )
    return t.astype(jnp.int32)


def _check_x(x: Any, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"{name} must be batch-first with rank >= 1, got a scalar")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    return x


def _check_same_shape(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_b} must have the shape of {name_a} {a.shape}, got {b.shape}")


def _per_example(coef: jax.Array, x: jax.Array) -> jax.Array:
    """Reshape ``(B,)`` coefficients to ``(B, 1, ..., 1)`` to scale ``x (B, ...)`` (explicitly,
    so code stays valid with ``jax_numpy_rank_promotion='raise'``)."""
    return coef.reshape(coef.shape + (1,) * (x.ndim - 1)).astype(x.dtype)


def _check_schedule(schedule: Any) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"schedule must be a jaxdl.diffusion.Schedule (linear_schedule, cosine_schedule, ...), "
            f"got {type(schedule).__name__}"
        )
    return schedule


# ----------------------------------------------------------------------------- forward process


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Draw ``x_t ~ q(x_t | x_0)`` in closed form (Ho et al. 2020, eq. 4):

    ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise``,  ``noise ~ N(0, I)``.

    Args:
      schedule: the noise schedule.
      x0: clean data ``(B, ...)``.
      t: int ``(B,)`` (or a scalar) in ``[0, T)``.
      noise: ``(B, ...)``, the same shape as ``x0``.

    Returns:
      ``x_t``, shaped like ``x0``.
    """
    schedule = _check_schedule(schedule)
    x0 = _check_x(x0, "x0")
    noise = _check_x(noise, "noise")
    _check_same_shape(x0, noise, "x0", "noise")
    t = _check_t(t, schedule, x0.shape[0])
    abar = schedule.alphas_cumprod[t]  # (B,)
    return _per_example(jnp.sqrt(abar), x0) * x0 + _per_example(jnp.sqrt(1.0 - abar), x0) * noise


def q_posterior(
    schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of the forward-process posterior ``q(x_{t-1} | x_t, x_0)`` (Ho et al. eq. 6-7):

    ``mean = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t``,
    ``var = (1 - abar_{t-1}) / (1 - abar_t) beta_t`` (``beta~_t``), with ``abar_{-1} = 1``, so at
    ``t = 0`` the mean is ``x_0`` and the variance 0.

    Returns:
      ``(mean, variance)``: ``mean`` shaped like ``x_t``; ``variance`` float32 ``(B,)``.
    """
    schedule = _check_schedule(schedule)
    x0 = _check_x(x0, "x0")
    x_t = _check_x(x_t, "x_t")
    _check_same_shape(x0, x_t, "x0", "x_t")
    t = _check_t(t, schedule, x0.shape[0])
    beta, alpha = schedule.betas[t], schedule.alphas[t]
    abar, abar_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod_prev[t]
    coef_x0 = jnp.sqrt(abar_prev) * beta / (1.0 - abar)
    coef_xt = jnp.sqrt(alpha) * (1.0 - abar_prev) / (1.0 - abar)
    mean = _per_example(coef_x0, x0) * x0 + _per_example(coef_xt, x_t) * x_t
    variance = (1.0 - abar_prev) / (1.0 - abar) * beta
    return mean, variance


def predict_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """Invert :func:`q_sample` for ``x_0`` given the noise: ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
    schedule = _check_schedule(schedule)
    x_t = _check_x(x_t, "x_t")
    eps = _check_x(eps, "eps")
    _check_same_shape(x_t, eps, "x_t", "eps")
    t = _check_t(t, schedule, x_t.shape[0])
    abar = schedule.alphas_cumprod[t]
    return (x_t - _per_example(jnp.sqrt(1.0 - abar), x_t) * eps) / _per_example(jnp.sqrt(abar), x_t)


def training_target(
    schedule: Schedule,
    x0: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    prediction: str = "epsilon",
) -> jax.Array:
    """What the network regresses on: ``noise`` for ``"epsilon"``; for ``"v"`` the velocity of
    Salimans & Ho (2022), ``v = sqrt(abar_t) noise - sqrt(1 - abar_t) x_0``."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if prediction == "epsilon":
        return jnp.asarray(noise)
    schedule = _check_schedule(schedule)
    x0 = _check_x(x0, "x0")
    noise = _check_x(noise, "noise")
    _check_same_shape(x0, noise, "x0", "noise")
    t = _check_t(t, schedule, x0.shape[0])
    abar = schedule.alphas_cumprod[t]
    return _per_example(jnp.sqrt(abar), x0) * noise - _per_example(jnp.sqrt(1.0 - abar), x0) * x0


def eps_from_v(v_fn: EpsFn, schedule: Schedule) -> EpsFn:
    """Turn a v-predicting network into the noise predictor the samplers take.

    From ``x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps`` and ``v = sqrt(abar) eps - sqrt(1 - abar) x_0``:
    ``eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t``.
    """
    schedule = _check_schedule(schedule)

    def eps_fn(x_t: jax.Array, t: jax.Array) -> jax.Array:
        abar = schedule.alphas_cumprod[t]
        v = v_fn(x_t, t)
        return _per_example(jnp.sqrt(abar), x_t) * v + _per_example(jnp.sqrt(1.0 - abar), x_t) * x_t

    return eps_fn


def denoising_loss(
    pred_fn: EpsFn,
    schedule: Schedule,
    x0: jax.Array,
    key: jax.Array,
    prediction: str = "epsilon",
) -> jax.Array:
    """The simplified DDPM objective (Ho et al. 2020, eq. 14), a mean squared error:

    ``t ~ U{0, .., T-1}``, ``eps ~ N(0, I)``, ``x_t = q_sample(x_0, t, eps)``,
    ``L = mean || target - pred_fn(x_t, t) ||^2`` with ``target = eps`` (``prediction="epsilon"``)
    or ``v`` (``prediction="v"``, Salimans & Ho 2022; see :func:`training_target`).

    Args:
      pred_fn: ``(x_t (B, ...), t int32 (B,)) -> prediction (B, ...)``. For class-conditional
        training, close over the (possibly label-dropped) labels.
      schedule: the noise schedule.
      x0: a batch of clean data ``(B, ...)``.
      key: PRNG key for ``t`` and the noise.
      prediction: ``"epsilon"`` or ``"v"``.

    Returns:
      The scalar loss (mean over every element of the batch).
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    schedule = _check_schedule(schedule)
    x0 = _check_x(x0, "x0")
    kt, kn = jax.random.split(key)
    t = jax.random.randint(kt, (x0.shape[0],), 0, schedule.num_steps, dtype=jnp.int32)
    noise = jax.random.normal(kn, x0.shape, x0.dtype)
    x_t = q_sample(schedule, x0, t, noise)
    target = training_target(schedule, x0, t, noise, prediction)
    pred = pred_fn(x_t, t)
    if pred.shape != x0.shape:
        raise ValueError(f"pred_fn must return the shape of x_t {x0.shape}, got {pred.shape}")
    return jnp.mean(jnp.square(pred - target))


# ----------------------------------------------------------------------------- samplers


def _check_shape(shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints (B, ...), got {shape!r}") from None
    if len(shape) < 1 or any(d < 1 for d in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive ints (B, ...), got {shape}")
    return shape


def _initial_noise(key: jax.Array, shape: tuple[int, ...], x_T: jax.Array | None) -> jax.Array:
    if x_T is None:
        return jax.random.normal(jax.random.split(key)[0], shape, jnp.float32)
    x_T = jnp.asarray(x_T)
    if x_T.shape != shape:
        raise ValueError(f"x_T must have shape {shape} (the shape argument), got {x_T.shape}")
    return x_T


def _step_noise(key: jax.Array, t: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    # One fresh draw per *timestep value*: DDPM and DDIM over the same steps then use the same z_t,
    # which is what lets the tests compare DDIM(eta=1, every step) with DDPM draw for draw.
    return jax.random.normal(jax.random.fold_in(jax.random.split(key)[1], t), shape, dtype)


def _call_eps(eps_fn: EpsFn, x: jax.Array, t: jax.Array) -> jax.Array:
    eps = eps_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
    if eps.shape != x.shape:
        raise ValueError(f"eps_fn must return the shape of x_t {x.shape}, got {eps.shape}")
    return eps.astype(x.dtype)


def ddpm_sample(
    eps_fn: EpsFn,
    schedule: Schedule,
    shape: Sequence[int],
    key: jax.Array,
    *,
    variance: str = "beta",
    clip_x0: float | None = None,
    x_T: jax.Array | None = None,
) -> jax.Array:
    """Ancestral sampling, Ho et al. (2020) Algorithm 2, as one ``lax.scan`` over ``t = T-1 .. 0``:

    ``x_{t-1} = 1 / sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps_fn(x_t, t)) + sigma_t z``,
    ``z ~ N(0, I)`` except at the last step (``t = 0``), where ``z = 0``.

    Args:
      eps_fn: the noise predictor ``(x_t, t (B,)) -> eps``.
      schedule: the noise schedule the predictor was trained with.
      shape: ``(B, ...)``, the shape of the samples.
      key: PRNG key.
      variance: ``"beta"`` (``sigma_t^2 = beta_t``, the paper's default) or ``"posterior"``
        (``sigma_t^2 = beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t``, the other choice of the
        paper; equal to DDIM with every step and ``eta = 1``).
      clip_x0: if given, the mean is computed in its posterior form from the predicted ``x_0``
        clipped to ``[-clip_x0, clip_x0]`` (what Ho et al.'s code does for images in [-1, 1]);
        ``None`` (default) is Algorithm 2 unchanged.
      x_T: optional starting noise ``shape`` (otherwise drawn from ``key``).

    Returns:
      ``x_0`` samples of ``shape``. Jittable (``shape`` static, ``eps_fn`` closed over).
    """
    schedule = _check_schedule(schedule)
    shape = _check_shape(shape)
    if variance not in ("beta", "posterior"):
        raise ValueError(f"variance must be 'beta' or 'posterior', got {variance!r}")
    if clip_x0 is not None and not clip_x0 > 0:
        raise ValueError(f"clip_x0 must be positive or None, got {clip_x0}")
    x = _initial_noise(key, shape, x_T)
    betas, alphas = schedule.betas, schedule.alphas
    abars, abars_prev = schedule.alphas_cumprod, schedule.alphas_cumprod_prev

    def step(x, t):
        beta, alpha, abar, abar_prev = betas[t], alphas[t], abars[t], abars_prev[t]
        eps = _call_eps(eps_fn, x, t)
        if clip_x0 is None:
            mean = (x - beta / jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(alpha)  # Algorithm 2, line 4
        else:
            x0 = jnp.clip((x - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar), -clip_x0, clip_x0)
            mean = (jnp.sqrt(abar_prev) * beta * x0 + jnp.sqrt(alpha) * (1.0 - abar_prev) * x) / (
                1.0 - abar
            )
        var = beta if variance == "beta" else (1.0 - abar_prev) / (1.0 - abar) * beta
        z = _step_noise(key, t, shape, x.dtype)
        x = mean + jnp.where(t > 0, jnp.sqrt(var), 0.0) * z  # no noise at the last step
        return x, None

    ts = jnp.arange(schedule.num_steps - 1, -1, -1, dtype=jnp.int32)  # T-1, ..., 0
    x, _ = jax.lax.scan(step, x, ts)
    return x


def ddim_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
    """The evenly spaced sub-sequence ``tau`` of Song et al. (2021), increasing: ``c * i`` for
    ``i = 0 .. S-1`` with ``c = T // S`` (their "uniform" skip; diffusers' ``"leading"`` spacing).
    With ``S = T`` it is every step."""
    num_train_steps = _check_num_steps(num_train_steps, "num_train_steps")
    num_steps = _check_num_steps(num_steps)
    if num_steps > num_train_steps:
        raise ValueError(
            f"num_steps ({num_steps}) must not exceed the schedule's length ({num_train_steps})"
        )
    return np.arange(num_steps, dtype=np.int64) * (num_train_steps // num_steps)


def ddim_sample(
    eps_fn: EpsFn,
    schedule: Schedule,
    shape: Sequence[int],
    key: jax.Array,
    num_steps: int = 50,
    eta: float = 0.0,
    *,
    timesteps: Sequence[int] | None = None,
    clip_x0: float | None = None,
    x_T: jax.Array | None = None,
) -> jax.Array:
    """DDIM sampling (Song, Meng & Ermon 2021, eq. 12) over a sub-sequence ``tau`` of the steps.

    From ``x_t`` at ``t = tau_i`` to ``s = tau_{i-1}`` (``abar_s = 1`` past the first step):

    ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``,
    ``sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)``,
    ``x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps + sigma z``.

    ``eta = 0`` is deterministic given ``x_T`` (the DDIM ODE); ``eta = 1`` with every step is DDPM
    with ``sigma_t^2 = beta~_t`` (``ddpm_sample(..., variance="posterior")``, same draws).

    Args:
      eps_fn: the noise predictor ``(x_t, t (B,)) -> eps``.
      schedule: the noise schedule the predictor was trained with.
      shape: ``(B, ...)``.
      key: PRNG key.
      num_steps: ``S``, how many network evaluations; ``tau`` = :func:`ddim_timesteps`.
      eta: ``>= 0``, the amount of fresh noise (0: DDIM, 1: DDPM-like).
      timesteps: optional explicit ``tau``, strictly increasing ints in ``[0, T)`` (overrides
        ``num_steps``).
      clip_x0: if given, clip ``x0_hat`` to ``[-clip_x0, clip_x0]`` (and recompute ``eps`` from it).
      x_T: optional starting noise ``shape``.

    Returns:
      ``x_0`` samples of ``shape``; jittable (static ``shape``, ``num_steps``, ``timesteps``).
    """
    schedule = _check_schedule(schedule)
    shape = _check_shape(shape)
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if clip_x0 is not None and not clip_x0 > 0:
        raise ValueError(f"clip_x0 must be positive or None, got {clip_x0}")
    T = schedule.num_steps
    if timesteps is None:
        tau = ddim_timesteps(T, num_steps)
    else:
        tau = np.asarray(timesteps)
        if tau.ndim != 1 or tau.size < 1 or not np.issubdtype(tau.dtype, np.integer):
            raise ValueError(
                f"timesteps must be a non-empty 1-D sequence of ints, got {timesteps!r}"
            )
        if np.any(np.diff(tau) <= 0) or tau[0] < 0 or tau[-1] >= T:
            raise ValueError(f"timesteps must be strictly increasing ints in [0, {T - 1}]")
    x = _initial_noise(key, shape, x_T)
    ts = jnp.asarray(tau[::-1].copy(), jnp.int32)  # tau_S, ..., tau_1
    prev = jnp.asarray(np.concatenate([tau[::-1][1:], [-1]]), jnp.int32)  # next lower step; -1: x_0
    abars = schedule.alphas_cumprod

    def step(x, ts_prev):
        t, s = ts_prev
        abar_t = abars[t]
        abar_s = jnp.where(s >= 0, abars[jnp.maximum(s, 0)], 1.0)
        eps = _call_eps(eps_fn, x, t)
        x0 = (x - jnp.sqrt(1.0 - abar_t) * eps) / jnp.sqrt(abar_t)
        if clip_x0 is not None:
            x0 = jnp.clip(x0, -clip_x0, clip_x0)
            eps = (x - jnp.sqrt(abar_t) * x0) / jnp.sqrt(1.0 - abar_t)
        sigma = eta * jnp.sqrt((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s))
        direction = jnp.sqrt(jnp.maximum(1.0 - abar_s - sigma**2, 0.0)) * eps
        x = jnp.sqrt(abar_s) * x0 + direction
        if eta > 0:  # static: eta = 0 draws nothing
            x = x + sigma * _step_noise(key, t, shape, x.dtype)
        return x, None

    x, _ = jax.lax.scan(step, x, (ts, prev))
    return x


# ----------------------------------------------------------------------------- guidance, EMA


def guided_eps_fn(
    cond_eps_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    labels: jax.Array,
    guidance_scale: float,
    null_label: int,
) -> EpsFn:
    """Classifier-free guidance (Ho & Salimans 2022) as a noise predictor for the samplers.

    ``eps~(x, t) = eps(x, t, null) + s (eps(x, t, y) - eps(x, t, null))``, ``s = guidance_scale``.
    This is diffusers' ``guidance_scale``; the paper writes ``(1 + w) eps(x, t, y) - w eps(x, t, null)``,
    so ``w = s - 1``: ``s = 1`` is the plain conditional model, ``s = 0`` the unconditional one.
    In score terms the guided score is ``grad log p(x) + s grad log p(y | x)`` (an implicit
    classifier, sharpened by ``s``). Both predictions come from one call on a doubled batch.

    Args:
      cond_eps_fn: ``(x_t (B, ...), t (B,), y int (B,)) -> eps``, a model trained with label
        dropout to ``null_label`` (e.g. :class:`jaxdl.models.UNet` with ``num_classes``).
      labels: int ``(B,)``, the classes to sample.
      guidance_scale: ``s >= 0``.
      null_label: the label that means "no class" (``UNet.num_classes``).
    """
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be an int array (B,), got {labels.dtype} {labels.shape}")
    if not guidance_scale >= 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    null = jnp.full_like(labels, null_label)

    def eps_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        if x.shape[0] != labels.shape[0]:
            raise ValueError(f"labels has {labels.shape[0]} entries but x_t has batch {x.shape[0]}")
        eps = cond_eps_fn(
            jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([labels, null])
        )
        eps_c, eps_u = jnp.split(eps, 2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    return eps_fn


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
    """Exponential moving average of weights: ``ema <- decay * ema + (1 - decay) * params``,
    leaf by leaf (Ho et al. sample from an EMA with decay 0.9999)."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


# ----------------------------------------------------------------------------- training through fit


def _takes_train(module: nn.Module) -> bool:
    import inspect

    try:
        return "train" in inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return False


class DiffusionModel(nn.Module):
    """A noise predictor and its schedule as one Flax module whose forward pass *is* a draw of the
    DDPM training objective, so that :func:`jaxdl.train.fit` (or any loop written for supervised
    models) trains it with :func:`diffusion_loss`.

    ``__call__(x0 (B, ...), y=None, train=False)`` draws, per example (Ho et al. 2020, Algorithm 1),

    ``t ~ U{0, .., T-1}``, ``eps ~ N(0, I)``, ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``,

    and returns ``stack([network(x_t, t[, y]), target], axis=1)``, shape ``(B, 2, ...)``, with
    ``target = eps`` (``prediction="epsilon"``) or ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0``
    (``"v"``, Salimans & Ho 2022). :func:`diffusion_loss` is then the mean squared difference of the
    two halves: exactly :func:`denoising_loss`. With ``p_uncond > 0`` and labels, each label is
    replaced by the network's null label with that probability during training (classifier-free
    guidance, Ho & Salimans 2022), so one network learns the conditional and unconditional model.

    Randomness: from the ``'diffusion'`` rng stream when the caller supplies one
    (``apply(..., rngs={'diffusion': key})``), else, in training, from the ``'dropout'`` stream,
    which :func:`jaxdl.train.fit` passes to every step (a fresh key per step, from its seed).
    Without either (``train.evaluate``, ``fit``'s ``val_data``) ``t`` and the noise come from the
    fixed key ``eval_seed``, so a validation loss is a deterministic function of the weights.

    Training data for ``fit``: ``(x0, y)``, ``y`` of length ``B`` and ignored by the loss
    (unconditional), or ``((x0, labels), labels)`` (the labels reach the network as its ``y``).
    Sampling: :meth:`eps_fn` turns trained variables into the noise predictor the samplers take.

    Attributes:
      network: ``network(x_t, t int32 (B,)[, y], train=...) -> (B, ...)``, e.g.
        :class:`jaxdl.models.UNet`; its parameters live under ``params['network']``.
      schedule: the :class:`Schedule` to train (and later sample) with.
      prediction: ``"epsilon"`` or ``"v"``, what the network outputs.
      p_uncond: label-dropout probability in training, in ``[0, 1]``.
      null_label: the "no class" label (default: ``network.null_label``, as UNet has).
      eval_seed: the fixed key's seed when no rng stream is given.
    """

    network: nn.Module
    schedule: Schedule
    prediction: str = "epsilon"
    p_uncond: float = 0.0
    null_label: int | None = None
    eval_seed: int = 0

    def _null(self) -> int:
        if self.null_label is not None:
            return self.null_label
        null = getattr(self.network, "null_label", None)
        if null is None:
            raise ValueError(
                "DiffusionModel: label dropout and guidance need a null label: set null_label or "
                "use a network with one (UNet(num_classes=...))"
            )
        return int(null)

    def _check(self) -> None:
        _check_schedule(self.schedule)
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if not 0.0 <= self.p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {self.p_uncond}")

    def _key(self, train: bool) -> jax.Array:
        if self.has_rng("diffusion"):
            return self.make_rng("diffusion")
        if train and self.has_rng("dropout"):
            return self.make_rng("dropout")
        if train:
            raise ValueError(
                "DiffusionModel needs a key for t and the noise in training: "
                "apply(..., rngs={'diffusion': key}) (train.fit passes its 'dropout' stream)"
            )
        return jax.random.key(self.eval_seed)

    def predict(
        self, x_t: jax.Array, t: jax.Array, y: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        """The network's raw output (``epsilon`` or ``v``) for ``x_t`` at steps ``t``."""
        kwargs = {"train": train} if _takes_train(self.network) else {}
        out = self.network(x_t, t, **kwargs) if y is None else self.network(x_t, t, y, **kwargs)
        if out.shape != x_t.shape:
            raise ValueError(f"network must return the shape of x_t {x_t.shape}, got {out.shape}")
        return out

    def eps(self, x_t: jax.Array, t: jax.Array, y: jax.Array | None = None) -> jax.Array:
        """The predicted noise (a v-prediction converted: ``eps = sqrt(abar) v + sqrt(1-abar) x_t``)."""
        out = self.predict(x_t, t, y)
        if self.prediction == "epsilon":
            return out
        abar = self.schedule.alphas_cumprod[t]
        return _per_example(jnp.sqrt(abar), x_t) * out + _per_example(jnp.sqrt(1 - abar), x_t) * x_t

    def __call__(self, x: jax.Array, y: jax.Array | None = None, train: bool = False) -> jax.Array:
        self._check()
        x0 = _check_x(x, "x")
        if x0.ndim < 2:
            raise ValueError(f"x must be a batch (B, ...) of rank >= 2, got shape {x0.shape}")
        kt, kn, kd = jax.random.split(self._key(train), 3)
        b = x0.shape[0]
        t = jax.random.randint(kt, (b,), 0, self.schedule.num_steps, dtype=jnp.int32)  # (B,)
        noise = jax.random.normal(kn, x0.shape, x0.dtype)
        x_t = q_sample(self.schedule, x0, t, noise)  # Algorithm 1, line 5
        target = training_target(self.schedule, x0, t, noise, self.prediction)
        if y is not None:
            y = jnp.asarray(y)
            if y.shape != (b,) or not jnp.issubdtype(y.dtype, jnp.integer):
                raise ValueError(f"y must be int labels ({b},), got {y.dtype} {y.shape}")
            if train and self.p_uncond > 0:  # classifier-free guidance: drop labels to null
                drop = jax.random.uniform(kd, (b,)) < self.p_uncond
                y = jnp.where(drop, self._null(), y)
        pred = self.predict(x_t, t, y, train)
        return jnp.stack([pred, target.astype(pred.dtype)], axis=1)  # (B, 2, ...)

    @nn.nowrap
    def eps_fn(
        self, variables: Any, labels: jax.Array | None = None, guidance_scale: float | None = None
    ) -> EpsFn:
        """The noise predictor ``(x_t, t) -> eps`` of trained ``variables`` for :func:`ddpm_sample`
        and :func:`ddim_sample`: unconditional (no ``labels``; a class-conditional UNet then uses
        its null label), conditional on ``labels`` (``guidance_scale`` ``None``), or guided
        (:func:`guided_eps_fn` with scale ``guidance_scale``). ``variables`` is ``{"params": ...}``
        or the params tree itself (e.g. :func:`ema_params` of the state)."""
        variables = {"params": variables["params"] if "params" in variables else variables}

        def cond(x, t, y=None):
            return self.apply(variables, x, t, y, method=DiffusionModel.eps)

        if labels is None:
            if guidance_scale is not None:
                raise ValueError("guidance_scale needs labels")
            return cond
        labels = jnp.asarray(labels)
        if guidance_scale is None:
            return lambda x, t: cond(x, t, labels)
        return guided_eps_fn(cond, labels, guidance_scale, self._null())


def diffusion_loss(outputs: jax.Array, labels: Any = None, reduction: str = "mean") -> jax.Array:
    """The loss for :class:`DiffusionModel` outputs ``(B, 2, ...)`` = (prediction, target):

    ``L = mean (prediction - target)^2`` (Ho et al. 2020, eq. 14), the same value as
    :func:`denoising_loss`. ``labels`` is ignored (``fit`` passes its ``y``). ``reduction``:
    ``"mean"`` (scalar), ``"sum"``, or ``"none"`` (the squared errors ``(B, ...)``, which ``fit``
    averages per example). Use it as ``train.fit(..., loss_fn=diffusion.diffusion_loss)``.
    """
    outputs = jnp.asarray(outputs)
    if outputs.ndim < 2 or outputs.shape[1] != 2:
        raise ValueError(
            "outputs must be a DiffusionModel's (B, 2, ...) stack of prediction and target, "
            f"got shape {outputs.shape}"
        )
    sq = jnp.square(outputs[:, 0] - outputs[:, 1])  # (B, ...)
    if reduction == "none":
        return sq
    if reduction == "mean":
        return jnp.mean(sq)
    if reduction == "sum":
        return jnp.sum(sq)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


class EmaState(NamedTuple):
    """State of :func:`with_ema`: the wrapped optimizer's state and the averaged parameters."""

    inner_state: Any
    ema: Any


def with_ema(optimizer: optax.GradientTransformation, decay: float = 0.999):
    """``optimizer`` that also keeps an exponential moving average of the parameters it updates:

    ``theta_k = theta_{k-1} + u_k`` (the updates ``optimizer`` returns, unchanged), and
    ``ema_k = decay ema_{k-1} + (1 - decay) theta_k``, ``ema_0 = theta_0`` (the weights DDPM
    samples with; Ho et al. use decay 0.9999 over 800k steps).

    The average lives in the optimizer state (:class:`EmaState`), so it is updated inside the
    compiled step, donated with it, and checkpointed and resumed by ``fit`` with everything else.
    Read it with :func:`ema_params`. Put it outermost (after any learning-rate scaling), so that the
    updates it sees are the ones applied.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    inner = optax.with_extra_args_support(optimizer)

    def init_fn(params):
        ema = jax.tree.map(lambda p: jnp.array(p, copy=True), params)  # own buffers (donation)
        return EmaState(inner_state=inner.init(params), ema=ema)

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("with_ema needs params: call update(updates, state, params)")
        updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        new_params = optax.apply_updates(params, updates)
        ema = jax.tree.map(
            lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), state.ema, new_params
        )
        return updates, EmaState(inner_state=inner_state, ema=ema)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ema_params(state: Any) -> Any:
    """The averaged parameters of a :func:`with_ema` optimizer, from its state or from a
    :class:`jaxdl.train.TrainState` (e.g. ``history.state``) whose optimizer is one."""
    opt_state = getattr(state, "opt_state", state)
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, EmaState))
        if isinstance(s, EmaState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"expected one with_ema state in the optimizer state, found {len(found)}: "
            "train with optimizer=diffusion.with_ema(...)"
        )
    return found[0].ema
