r"""The optimizers, each a :func:`~jaxdl.optim.chain` of ``scale_by_*`` pieces ending (or, for
RMSProp with momentum, continuing) with :func:`~jaxdl.optim.scale_by_learning_rate`.

Every alias takes ``learning_rate`` as a number or a schedule ``step -> value`` and keeps a
:class:`~jaxdl.optim.ScaleByLearningRateState` whose ``scale`` can be changed between steps from
outside ``jit`` (:func:`jaxdl.optim.scale_learning_rate`) without recompiling.
Parameters are updated with ``optax.apply_updates(params, updates)``: :math:`θ_t = θ_{t-1} + u_t`.
"""

from __future__ import annotations

from typing import Any

import optax
from jax.typing import DTypeLike

from jaxdl.optim import _checks
from jaxdl.optim.regularizers import Mask, add_decayed_weights
from jaxdl.optim.transforms import (
    ScalarOrSchedule,
    chain,
    scale_by_adam,
    scale_by_adamax,
    scale_by_learning_rate,
    scale_by_momentum,
    scale_by_radam,
    scale_by_rms,
)


def sgd(
    learning_rate: ScalarOrSchedule, momentum: float = 0.0, nesterov: bool = False
) -> optax.GradientTransformationExtraArgs:
    r"""Stochastic gradient descent (Robbins & Monro 1951): :math:`θ_t = θ_{t-1} - η g_t`.

    With ``momentum`` :math:`β > 0` it is the heavy ball of :func:`momentum` (``ema=False``):
    :math:`v_t = βv_{t-1} + g_t`, :math:`θ_t = θ_{t-1} - η v_t` (Nesterov's form with
    ``nesterov=True``), the signature of ``optax.sgd``, Keras's ``SGD`` and PyTorch's ``SGD``.
    """
    _checks.check_unit_interval("momentum", momentum)
    if nesterov and _checks._concrete(momentum) == 0.0:
        raise ValueError("nesterov=True needs momentum > 0, got momentum=0.0")
    if _checks._concrete(momentum) == 0.0:
        return chain(scale_by_learning_rate(learning_rate))
    return chain(
        scale_by_momentum(momentum, nesterov=nesterov), scale_by_learning_rate(learning_rate)
    )


def momentum(
    learning_rate: ScalarOrSchedule,
    beta: float = 0.9,
    nesterov: bool = False,
    ema: bool = False,
    *,
    accumulator_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""SGD with momentum: :math:`θ_t = θ_{t-1} - η v_t`, :math:`v_t` from :func:`scale_by_momentum`.

    ``ema=False``: :math:`v_t = βv_{t-1} + g_t` (heavy ball; equals ``optax.sgd(lr, momentum=β)``
    and PyTorch's SGD with ``dampening=0``). ``ema=True``: :math:`v_t = βv_{t-1} + (1-β)g_t` (the
    course's form; equals the heavy ball with learning rate :math:`η(1-β)`).
    """
    return chain(
        scale_by_momentum(beta, nesterov=nesterov, ema=ema, accumulator_dtype=accumulator_dtype),
        scale_by_learning_rate(learning_rate),
    )


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: float = 0.0,
    *,
    nesterov: bool = False,
    initial_scale: float = 0.0,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""RMSProp (Hinton 2012): :math:`θ_t = θ_{t-1} - η\, g_t/\sqrt{n_t + ε}` (see
    :func:`scale_by_rms` for ``eps_in_sqrt`` and ``centered``).

    With ``momentum`` :math:`μ > 0` the learning-rate-scaled steps are accumulated,
    :math:`b_t = μ b_{t-1} + η_t g_t/\sqrt{n_t+ε}`, :math:`θ_t = θ_{t-1} - b_t`, as optax, Keras and
    TensorFlow do. PyTorch accumulates the unscaled direction and multiplies by :math:`η` after;
    the two agree for a constant learning rate and differ under a schedule.
    """
    _checks.check_unit_interval("momentum", momentum)
    parts = [
        scale_by_rms(decay, eps, eps_in_sqrt, centered, initial_scale, nu_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
    ]
    # A traced momentum (optax.inject_hyperparams) keeps the accumulator: at 0 it is the identity.
    if _checks._concrete(momentum) != 0.0:
        parts.append(scale_by_momentum(momentum, nesterov=nesterov))
    return chain(*parts)


def adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    bias_correction: bool = True,
    *,
    eps_root: float = 0.0,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam (Kingma & Ba 2015): :math:`θ_t = θ_{t-1} - η\, \hat m_t/(\sqrt{\hat v_t} + ε)`; see
    :func:`scale_by_adam` for the moments, the bias correction and where ε goes."""
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, bias_correction, mu_dtype, nu_dtype),
        scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    mask: Mask | None = None,
    *,
    eps_root: float = 0.0,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdamW, Adam with decoupled weight decay (Loshchilov & Hutter 2019):

    .. math:: θ_t = θ_{t-1} - η_t \left(\frac{\hat m_t}{\sqrt{\hat v_t} + ε} + λ θ_{t-1}\right)

    The decay is multiplied by the learning rate, as PyTorch and optax do. The paper's Algorithm 2
    writes :math:`θ_t = θ_{t-1} - S_t(α\, \hat m_t/(\sqrt{\hat v_t}+ε) + λθ_{t-1})` with a schedule
    multiplier :math:`S_t` and a separate :math:`α`; that is
    ``chain(scale_by_adam(), scale_by_learning_rate(α, flip_sign=False), add_decayed_weights(λ),
    scale_by_learning_rate(S))``. ``mask`` selects the decayed leaves (see
    :func:`add_decayed_weights`; :func:`weight_decay_mask` gives the usual choice).
    """
    _checks.check_non_negative("weight_decay", weight_decay)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, True, mu_dtype, nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def adamax(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adamax (Kingma & Ba 2015, §7.1): :math:`θ_t = θ_{t-1} - η\, m_t/((1-β_1^t) u_t)`, with
    :math:`u_t = \max(β_2 u_{t-1}, |g_t| + ε)`; see :func:`scale_by_adamax`."""
    return chain(
        scale_by_adamax(b1, b2, eps, mu_dtype, nu_dtype),
        scale_by_learning_rate(learning_rate),
    )


def radam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    threshold: float = 5.0,
    *,
    eps_root: float = 0.0,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Rectified Adam (Liu et al. 2019): momentum SGD while :math:`ρ_t \le` ``threshold``, then
    Adam with its step multiplied by :math:`r_t`; see :func:`scale_by_radam`."""
    return chain(
        scale_by_radam(b1, b2, eps, eps_root, threshold, mu_dtype, nu_dtype),
        scale_by_learning_rate(learning_rate),
    )


_ALIASES = {
    "sgd": sgd,
    "momentum": momentum,
    "rmsprop": rmsprop,
    "adam": adam,
    "adamw": adamw,
    "adamax": adamax,
    "radam": radam,
}


def get(name: str, learning_rate: ScalarOrSchedule, **kwargs: Any) -> optax.GradientTransformation:
    """Build an optimizer by name: ``get("adam", 1e-3, b2=0.99)`` is ``adam(1e-3, b2=0.99)``.

    Names: ``sgd``, ``momentum``, ``rmsprop``, ``adam``, ``adamw``, ``adamax``, ``radam``, ``amsgrad``
    (case-insensitive).
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _ALIASES:
        raise ValueError(f"name must be one of {tuple(_ALIASES)}, got {name!r}")
    return _ALIASES[key](learning_rate, **kwargs)


# AMSGrad, appended after the others (its import lives here so the block above stays untouched).
from jaxdl.optim.transforms import scale_by_amsgrad  # noqa: E402


def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    eps_root: float = 0.0,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AMSGrad (Reddi et al. 2018) in PyTorch's form (``torch.optim.Adam(amsgrad=True)``):

    .. math:: θ_t = θ_{t-1} - η\, \frac{\hat m_t}{\sqrt{v^{\max}_t/(1-β_2^t)} + ε}, \qquad
              v^{\max}_t = \max(v^{\max}_{t-1}, v_t)

    the running maximum taken over the raw second moment; see :func:`scale_by_amsgrad` for how
    this differs from optax's and the paper's forms."""
    return chain(
        scale_by_amsgrad(b1, b2, eps, eps_root, mu_dtype, nu_dtype),
        scale_by_learning_rate(learning_rate),
    )


_ALIASES["amsgrad"] = amsgrad
