r"""The ``scale_by_*`` building blocks: each is a state ``NamedTuple`` plus a factory returning an
:class:`optax.GradientTransformation`, so they chain with optax's own transforms and ours alike.

Notation used in every docstring: :math:`g_t` is the incoming update (the gradient, or what an
earlier transform made of it) at step :math:`t = 1, 2, \dots`; every rule is applied leaf by leaf
and element by element; the returned update :math:`u_t` has the shape and dtype of :math:`g_t`.
Descent happens in :func:`scale_by_learning_rate`, which multiplies by :math:`-\eta_t`, so the
``scale_by_*`` transforms return directions, not steps.

Precision: moments are stored in the parameters' dtype unless ``mu_dtype`` / ``nu_dtype`` ask for
another (``jnp.float32`` keeps Adam's moments in full precision for ``bfloat16`` parameters); the
arithmetic runs in the wider of the two dtypes and the update is cast back to the gradient's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from jaxdl.optim import _checks

Schedule = Callable[[jax.Array], ArrayLike]
ScalarOrSchedule = float | jax.Array | Schedule


# ----------------------------------------------------------------------------------------------
# helpers


def _increment(count: jax.Array) -> jax.Array:
    """``count + 1`` that saturates at the int32 maximum instead of wrapping to a negative step."""
    return jnp.where(count < jnp.iinfo(jnp.int32).max, count + 1, count).astype(jnp.int32)


def _zeros(params: Any, dtype: DTypeLike | None) -> Any:
    return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), dtype or jnp.result_type(p)), params)


def _full(params: Any, value: float, dtype: DTypeLike | None) -> Any:
    return jax.tree.map(
        lambda p: jnp.full(jnp.shape(p), value, dtype or jnp.result_type(p)), params
    )


def _cast_like(tree: Any, like: Any) -> Any:
    return jax.tree.map(lambda t, l: t.astype(l.dtype), tree, like)


def _abs_sq(g: jax.Array) -> jax.Array:
    """:math:`|g|^2 = g \\bar g`, real for complex ``g`` (optax's convention), ``g * g`` otherwise."""
    if jnp.iscomplexobj(g):
        return (g * jnp.conj(g)).real
    return g * g


def _log_decay(decay: ArrayLike) -> ArrayLike:
    """:math:`\\log\\beta`, in double precision when β is a Python number (0 maps to -inf)."""
    v = _checks._concrete(decay)
    if v is None:
        return jnp.log(jnp.asarray(decay, jnp.float32))
    return math.log(v) if v > 0.0 else -math.inf


def _bias_correction(decay: ArrayLike, count: jax.Array) -> jax.Array:
    r""":math:`1 - \beta^t` in float32, accurate to a few ulp.

    Computed as :math:`-\operatorname{expm1}(t \log\beta)` with :math:`\log\beta` taken in
    double precision. The direct ``1 - beta**t`` in float32 loses digits to cancellation: at
    :math:`\beta_2 = 0.999, t = 1` it is off by about 1e-5 relative (optax's rounding), which a
    float64 reference sees in the first Adam steps.
    """
    log_b = jnp.float32(_log_decay(decay))
    return -jnp.expm1(count.astype(jnp.float32) * log_b)


# The chain is optax's own: jaxdl's optimizers are chains of optax-compatible pieces, and a second
# implementation would only have to be kept in step with it. ``optax.chain`` applies the transforms
# in order, its state is the tuple of their states, and extra ``update`` arguments (``value=loss``
# for :func:`reduce_on_plateau`) reach only the transforms that accept them.
chain = optax.chain


# ----------------------------------------------------------------------------------------------
# momentum


class ScaleByMomentumState(NamedTuple):
    """State of :func:`scale_by_momentum`: the velocity :math:`v`, shaped like the parameters."""

    trace: Any


def scale_by_momentum(
    beta: float = 0.9,
    nesterov: bool = False,
    ema: bool = False,
    accumulator_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Momentum: accumulate a velocity and step along it.

    Heavy ball (Polyak 1964; ``ema=False``, the form of PyTorch and :func:`optax.trace`):

    .. math:: v_t = \beta v_{t-1} + g_t, \qquad u_t = v_t
              \quad(\text{Nesterov: } u_t = g_t + \beta v_t)

    Exponential moving average (``ema=True``, the course's form):

    .. math:: v_t = \beta v_{t-1} + (1-\beta) g_t, \qquad u_t = v_t
              \quad(\text{Nesterov: } u_t = (1-\beta) g_t + \beta v_t)

    Both start from :math:`v_0 = 0` without bias correction. With a constant gradient the EMA
    velocity tends to :math:`g` and the heavy-ball one to :math:`g/(1-\beta)`: the two forms are
    the same optimizer with learning rates differing by the factor :math:`1/(1-\beta)`.
    The Nesterov form is the look-ahead gradient rewritten in terms of the current parameters
    (Sutskever et al. 2013, as implemented by PyTorch and optax).

    Args:
        beta: momentum coefficient :math:`\beta \in [0, 1)`.
        nesterov: use the Nesterov look-ahead update.
        ema: use the EMA form instead of the heavy-ball form.
        accumulator_dtype: dtype of :math:`v`; ``None`` keeps the parameters' dtype.
    """
    _checks.check_unit_interval("beta", beta)
    damp = (1.0 - beta) if ema else 1.0

    def init_fn(params):
        return ScaleByMomentumState(trace=_zeros(params, accumulator_dtype))

    def update_fn(updates, state, params=None):
        del params
        trace = jax.tree.map(lambda g, v: beta * v + damp * g, updates, state.trace)
        if nesterov:
            out = jax.tree.map(lambda g, v: damp * g + beta * v, updates, trace)
        else:
            out = trace
        out = _cast_like(out, updates)
        return out, ScaleByMomentumState(trace=_cast_like(trace, state.trace))

    return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------------------------
# RMSProp


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`: the running mean of squares :math:`n`."""

    nu: Any


class ScaleByCenteredRmsState(NamedTuple):
    """State of the centered :func:`scale_by_rms`: running means of :math:`g` and :math:`g^2`."""

    mu: Any
    nu: Any


def scale_by_rms(
    decay: float = 0.9,
    eps: float = 1e-8,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    initial_scale: float = 0.0,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""RMSProp's scaling by the root of a running mean of squared gradients (Hinton 2012).

    .. math:: n_t = \rho\, n_{t-1} + (1-\rho)\, g_t^2, \qquad n_0 = \text{initial\_scale}

    ``eps_in_sqrt=True`` (the course's and optax's form):
    :math:`u_t = g_t / \sqrt{n_t + \epsilon}`;
    ``eps_in_sqrt=False`` (PyTorch's and Keras's form):
    :math:`u_t = g_t / (\sqrt{n_t} + \epsilon)`.

    ``centered=True`` (Graves 2013) also tracks :math:`m_t = \rho m_{t-1} + (1-\rho) g_t` and
    divides by the root of the variance estimate :math:`n_t - m_t^2` (with ε placed as above).
    No bias correction is applied: :math:`n_t` starts at ``initial_scale`` (0 as in optax and
    PyTorch; TensorFlow 1 used 1).

    Args:
        decay: :math:`\rho \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        eps_in_sqrt: where ε goes (see above).
        centered: divide by the running standard deviation instead of the running RMS.
        initial_scale: :math:`n_0`.
        nu_dtype: dtype of the running means; ``None`` keeps the parameters' dtype.
    """
    _checks.check_unit_interval("decay", decay)
    _checks.check_non_negative("eps", eps)
    _checks.check_non_negative("initial_scale", initial_scale)

    def denom(n):
        return jnp.sqrt(n + eps) if eps_in_sqrt else jnp.sqrt(n) + eps

    def init_fn(params):
        nu = _full(params, initial_scale, nu_dtype)
        if centered:
            return ScaleByCenteredRmsState(mu=_zeros(params, nu_dtype), nu=nu)
        return ScaleByRmsState(nu=nu)

    def update_fn(updates, state, params=None):
        del params
        nu = jax.tree.map(lambda g, n: decay * n + (1 - decay) * _abs_sq(g), updates, state.nu)
        if centered:
            mu = jax.tree.map(lambda g, m: decay * m + (1 - decay) * g, updates, state.mu)
            out = jax.tree.map(lambda g, m, n: g / denom(n - _abs_sq(m)), updates, mu, nu)
            new_state = ScaleByCenteredRmsState(
                mu=_cast_like(mu, state.mu), nu=_cast_like(nu, state.nu)
            )
        else:
            out = jax.tree.map(lambda g, n: g / denom(n), updates, nu)
            new_state = ScaleByRmsState(nu=_cast_like(nu, state.nu))
        return _cast_like(out, updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------------------------
# Adam family


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`, :func:`scale_by_adamax` and :func:`scale_by_radam`.

    ``count`` is the number of updates made (int32, shape ()); ``mu`` and ``nu`` are the first
    and second (for Adamax: infinity-norm) moments, shaped like the parameters.
    """

    count: jax.Array
    mu: Any
    nu: Any


def _adam_init(mu_dtype, nu_dtype):
    def init_fn(params):
        return ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=_zeros(params, mu_dtype),
            nu=_zeros(params, nu_dtype),
        )

    return init_fn


def _check_adam(b1, b2, eps, eps_root=0.0):
    _checks.check_unit_interval("b1", b1)
    _checks.check_unit_interval("b2", b2)
    _checks.check_non_negative("eps", eps)
    _checks.check_non_negative("eps_root", eps_root)


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    bias_correction: bool = True,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Adam's scaling (Kingma & Ba 2015, Algorithm 1).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \qquad m_0 = v_0 = 0

    With ``bias_correction=True`` (the paper, PyTorch, optax):

    .. math::
        \hat m_t = \frac{m_t}{1-\beta_1^t}, \quad \hat v_t = \frac{v_t}{1-\beta_2^t}, \quad
        u_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}

    With ``bias_correction=False``: :math:`u_t = m_t / (\sqrt{v_t + \epsilon_{root}} + \epsilon)`.

    ε sits outside the root and is added to the *corrected* :math:`\sqrt{\hat v_t}`, as in the
    paper's Algorithm 1, PyTorch and optax. Keras and TensorFlow instead fold the correction into
    the step size, :math:`\eta\sqrt{1-\beta_2^t}/(1-\beta_1^t) \cdot m_t/(\sqrt{v_t}+\hat\epsilon)`,
    which equals this rule with :math:`\epsilon = \hat\epsilon / \sqrt{1-\beta_2^t}`.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: ε added outside the square root.
        eps_root: ε added inside the square root (keeps the gradient of the update finite when
            differentiating through it, e.g. in meta-learning; 0 by default).
        bias_correction: divide the moments by :math:`1-\beta^t`.
        mu_dtype, nu_dtype: dtypes of the moments; ``None`` keeps the parameters' dtype.
    """
    _check_adam(b1, b2, eps, eps_root)

    def update_fn(updates, state, params=None):
        del params
        count = _increment(state.count)
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * _abs_sq(g), updates, state.nu)
        if bias_correction:
            # Scalar reciprocals: two multiplies per element instead of two divides (the update
            # is compute-bound on CPU); within 1 ulp of dividing.
            inv_c1, inv_c2 = 1.0 / _bias_correction(b1, count), 1.0 / _bias_correction(b2, count)

            def direction(m, v):
                m_hat = m * inv_c1.astype(m.dtype)
                v_hat = v * inv_c2.astype(v.dtype)
                return m_hat / (jnp.sqrt(v_hat + eps_root) + eps)
        else:

            def direction(m, v):
                return m / (jnp.sqrt(v + eps_root) + eps)

        out = _cast_like(jax.tree.map(direction, mu, nu), updates)
        new_state = ScaleByAdamState(count, _cast_like(mu, state.mu), _cast_like(nu, state.nu))
        return out, new_state

    return optax.GradientTransformation(_adam_init(mu_dtype, nu_dtype), update_fn)


def scale_by_adamax(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Adamax's scaling, Adam with the infinity norm (Kingma & Ba 2015, §7.1, Algorithm 2).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        u_t^{\infty} = \max(\beta_2 u^{\infty}_{t-1},\ |g_t| + \epsilon), \qquad
        u_t = \frac{m_t}{(1-\beta_1^t)\, u^{\infty}_t}

    The paper's Algorithm 2 has no ε; it is added inside the max, as PyTorch and optax do,
    so a parameter whose gradients have all been zero divides 0 by ε instead of 0 by 0.
    Keras adds it outside, :math:`m_t / ((1-\beta_1^t)(u^\infty_t + \epsilon))`.
    The infinity norm needs no bias correction: the max of decayed magnitudes is not pulled
    towards its zero initial value the way an average is.
    """
    _check_adam(b1, b2, eps)

    def update_fn(updates, state, params=None):
        del params
        count = _increment(state.count)
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, u: jnp.maximum(b2 * u, jnp.abs(g) + eps), updates, state.nu)
        inv_c1 = 1.0 / _bias_correction(b1, count)
        out = jax.tree.map(lambda m, u: (m * inv_c1.astype(m.dtype)) / u, mu, nu)
        new_state = ScaleByAdamState(count, _cast_like(mu, state.mu), _cast_like(nu, state.nu))
        return _cast_like(out, updates), new_state

    return optax.GradientTransformation(_adam_init(mu_dtype, nu_dtype), update_fn)


def radam_rho(count: ArrayLike, b2: float = 0.999) -> jax.Array:
    r"""RAdam's length of the approximated simple moving average (Liu et al. 2019, eq. 6-7).

    .. math:: \rho_\infty = \frac{2}{1-\beta_2} - 1, \qquad
              \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t}

    With :math:`\beta_2 = 0.999`: :math:`\rho_5 \approx 4.996`, :math:`\rho_6 \approx 5.994`.

    Evaluated without cancellation: with :math:`\lambda = -\log\beta_2` and :math:`x = t\lambda`,
    :math:`2t\beta_2^t/(1-\beta_2^t) = (2/\lambda)\, x/(e^x - 1)`, so
    :math:`\rho_t = (\rho_\infty + 1 - 2/\lambda) - 1 + (2/\lambda)\, h(x)` with
    :math:`h(x) = 1 - x/(e^x-1) = x/2 - x^2/12 + x^4/720 - \dots` (a series for small x), and the
    constants taken in double precision. The textbook expression in float32 subtracts two numbers
    near 2000 to get 5 and is off by up to a few percent at the switch (0.3% at t = 6, 0.7% at
    t = 5 with numpy's float32 power), enough to move the switch for some β2.
    """
    t = jnp.asarray(count, jnp.float32)
    v = _checks._concrete(b2)
    if v is None:  # traced b2 (inject_hyperparams): the plain formula, float32 accuracy
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        b2t = jnp.asarray(b2, jnp.float32) ** t
        return rho_inf - 2.0 * t * b2t / (1.0 - b2t)
    if v == 0.0:  # rho_inf = 1 and beta^t = 0 for t >= 1
        return jnp.ones_like(t)
    lam = -math.log(v)
    k = 2.0 / lam
    offset = 2.0 / (1.0 - v) - 1.0 - k  # rho_inf - 2/lambda, a small constant
    x = t * jnp.float32(lam)
    x2 = x * x
    series = x / 2 - x2 / 12 + x2 * x2 / 720 - x2**3 / 30240 + x2**4 / 1209600
    direct = 1.0 - x / jnp.expm1(jnp.maximum(x, 0.5))
    h = jnp.where(x < 0.5, series, direct)
    return jnp.float32(offset) + jnp.float32(k) * h


def scale_by_radam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Rectified Adam's scaling (Liu et al. 2019, Algorithm 2).

    Moments and :math:`\hat m_t, \hat v_t` as in :func:`scale_by_adam`; :math:`\rho_t` from
    :func:`radam_rho`. While the variance of the adaptive step is intractable
    (:math:`\rho_t \le` ``threshold``) the update is momentum SGD, :math:`u_t = \hat m_t`;
    afterwards it is the Adam direction times the rectification term

    .. math:: r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}
                            {(\rho_\infty-4)(\rho_\infty-2)\rho_t}}, \qquad
              u_t = r_t\, \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}.

    ``threshold=5`` is what PyTorch and optax use; the paper's text says :math:`\rho_t > 4`
    (where :math:`r_t` is real). The switch is strict, :math:`\rho_t >` ``threshold``, as in the
    paper and PyTorch (optax writes ``>=``; the two differ only if :math:`\rho_t` equals the
    threshold exactly). ε is placed as in :func:`scale_by_adam` and optax; PyTorch adds ε to the
    uncorrected :math:`\sqrt{v_t}`, i.e. uses :math:`\epsilon\sqrt{1-\beta_2^t}` here.
    """
    _check_adam(b1, b2, eps, eps_root)
    _checks.check_non_negative("threshold", threshold)
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def update_fn(updates, state, params=None):
        del params
        count = _increment(state.count)
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * _abs_sq(g), updates, state.nu)
        inv_c1, inv_c2 = 1.0 / _bias_correction(b1, count), 1.0 / _bias_correction(b2, count)
        rho = radam_rho(count, b2)
        rectified = rho > threshold
        # Guard the root: below the threshold rho may be < 4 and r_t would be NaN; that branch is
        # discarded by the `where`, but a NaN there would still poison reverse-mode gradients.
        rho_safe = jnp.where(rectified, rho, rho_inf)
        r = jnp.sqrt(
            (rho_safe - 4.0)
            * (rho_safe - 2.0)
            * rho_inf
            / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_safe)
        )

        def direction(m, v):
            m_hat = m * inv_c1.astype(m.dtype)
            v_hat = v * inv_c2.astype(v.dtype)
            adam = (r.astype(m.dtype) * m_hat) / (jnp.sqrt(v_hat + eps_root) + eps)
            return jnp.where(rectified, adam, m_hat)

        out = _cast_like(jax.tree.map(direction, mu, nu), updates)
        new_state = ScaleByAdamState(count, _cast_like(mu, state.mu), _cast_like(nu, state.nu))
        return out, new_state

    return optax.GradientTransformation(_adam_init(mu_dtype, nu_dtype), update_fn)


# ----------------------------------------------------------------------------------------------
# learning rate


class ScaleByLearningRateState(NamedTuple):
    r"""State of :func:`scale_by_learning_rate`.

    ``count``: updates made so far (int32, shape ()). ``learning_rate``: the schedule's value
    :math:`\eta(\text{count})` that the next update will use (float32, shape ()). ``scale``: a
    multiplier :math:`s` on top of it (float32, shape (), starts at 1) that code outside ``jit``
    may change between steps -- see :func:`jaxdl.optim.scale_learning_rate`.
    """

    count: jax.Array
    learning_rate: jax.Array
    scale: jax.Array


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, flip_sign: bool = True
) -> optax.GradientTransformation:
    r"""Multiply by the (negated) learning rate: :math:`u_t = -s\, \eta(t-1)\, g_t`.

    ``learning_rate`` is a number or a schedule ``step -> value`` called with the number of
    updates made before this one (0 on the first update, as optax). :math:`s` is the state's
    ``scale`` (1 unless changed from outside, see :class:`ScaleByLearningRateState`); because it
    is an array in the state, changing it does not recompile a jitted step.

    Args:
        learning_rate: :math:`\eta`, a non-negative number or a schedule.
        flip_sign: multiply by :math:`-\eta` (descent, the default) rather than :math:`+\eta`.
    """
    _checks.check_learning_rate(learning_rate)
    sign = -1.0 if flip_sign else 1.0
    lr_fn = learning_rate if callable(learning_rate) else (lambda count: learning_rate)

    def lr_at(count):
        return jnp.asarray(lr_fn(count), jnp.float32)

    def init_fn(params):
        del params
        count = jnp.zeros([], jnp.int32)
        return ScaleByLearningRateState(count, lr_at(count), jnp.ones([], jnp.float32))

    def update_fn(updates, state, params=None):
        del params
        step = sign * lr_at(state.count) * state.scale
        out = jax.tree.map(lambda g: step.astype(g.dtype) * g, updates)
        count = _increment(state.count)
        return out, ScaleByLearningRateState(count, lr_at(count), state.scale)

    return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------------------------
# AMSGrad


class ScaleByAmsgradState(NamedTuple):
    """State of :func:`scale_by_amsgrad`.

    ``count`` is the number of updates made (int32, shape ()); ``mu`` and ``nu`` are Adam's
    first and second moments and ``nu_max`` the running maximum of the *raw* (not bias-corrected)
    ``nu``, all shaped like the parameters.
    """

    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any


def scale_by_amsgrad(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""AMSGrad's scaling (Reddi, Kale & Kumar 2018, Algorithm 2), in PyTorch's form.

    Adam's moments, a running maximum of the raw second moment, then the bias corrections:

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \qquad
        v^{\max}_t = \max(v^{\max}_{t-1}, v_t), \qquad m_0 = v_0 = v^{\max}_0 = 0

    .. math::
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v^{\max}_t / (1-\beta_2^t) + \epsilon_{root}}
              + \epsilon}

    This is ``torch.optim.Adam(amsgrad=True)``. The paper's Algorithm 2 has no bias correction;
    :func:`optax.scale_by_amsgrad` takes the maximum over the *corrected*
    :math:`\hat v_s = v_s/(1-\beta_2^s)`. The three agree while :math:`\hat v_t` never falls
    (e.g. a constant gradient) and differ once it does: the maximum of corrected values keeps
    a large early :math:`\hat v_s` for ever, whereas :math:`\max_s v_s` divided by the growing
    :math:`1-\beta_2^t` may fall, to no less than :math:`(1-\beta_2)\max_s \hat v_s`. So
    PyTorch's denominator lies between :math:`\sqrt{1-\beta_2}` times optax's and optax's.
    In both the denominator is (up to that bounded factor) non-decreasing, so the effective
    step :math:`\eta/\sqrt{\cdot}` cannot grow when a large gradient becomes rare, which is
    what repairs Adam's non-convergence on Reddi et al.'s example.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: ε added outside the square root.
        eps_root: ε added inside the square root (0 by default, as in :func:`scale_by_adam`).
        mu_dtype, nu_dtype: dtypes of the moments (``nu_dtype`` also for ``nu_max``); ``None``
            keeps the parameters' dtype.
    """
    _check_adam(b1, b2, eps, eps_root)

    def init_fn(params):
        return ScaleByAmsgradState(
            count=jnp.zeros([], jnp.int32),
            mu=_zeros(params, mu_dtype),
            nu=_zeros(params, nu_dtype),
            nu_max=_zeros(params, nu_dtype),
        )

    def update_fn(updates, state, params=None):
        del params
        count = _increment(state.count)
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, updates, state.nu)
        # The max is taken over the raw v (PyTorch), the correction applied afterwards.
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
        inv_c1, inv_c2 = 1.0 / _bias_correction(b1, count), 1.0 / _bias_correction(b2, count)

        def direction(m, v):
            m_hat = m * inv_c1.astype(m.dtype)
            v_hat = v * inv_c2.astype(v.dtype)
            return m_hat / (jnp.sqrt(v_hat + eps_root) + eps)

        out = _cast_like(jax.tree.map(direction, mu, nu_max), updates)
        new_state = ScaleByAmsgradState(
            count,
            _cast_like(mu, state.mu),
            _cast_like(nu, state.nu),
            _cast_like(nu_max, state.nu_max),
        )
        return out, new_state

    return optax.GradientTransformation(init_fn, update_fn)
