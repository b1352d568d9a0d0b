"""Loss functions, written on log-probabilities for numerical stability, and weight penalties.

Every loss takes ``reduction="mean"`` (the mean of the per-example losses for classification, of the
per-element losses for regression, as PyTorch and Keras), ``"sum"`` or ``"none"``, and an optional
boolean ``mask`` that drops entries: with a mask, ``"mean"`` averages over the kept entries only and
``"none"`` returns zeros at the dropped ones.

Label checks (integer dtype, values in ``[0, K)``, non-negative class weights) run whenever the
arrays are concrete, i.e. outside ``jit``; under ``jit`` values cannot be inspected, so only the
shape checks apply there. Entries dropped by ``mask`` may hold any label (e.g. ``-1`` padding).

Weight penalties :func:`l1_penalty` and :func:`l2_penalty` sum over the parameters selected by a
mask; :func:`penalty_mask` is the usual choice: kernels yes, biases and normalisation scales no.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

REDUCTIONS = ("mean", "sum", "none")

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _reduce(
    per_entry: Array, reduction: str, weights: Array | None = None, mask: Array | None = None
) -> Array:
    """Weight, mask and reduce. ``mean`` divides by the number of kept entries (all, if no mask)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if weights is not None:
        per_entry = per_entry * weights
    if mask is not None:
        # where, not multiply: a dropped entry holding inf/nan must not poison the sum.
        per_entry = jnp.where(mask, per_entry, jnp.zeros_like(per_entry))
    if reduction == "none":
        return per_entry
    total = jnp.sum(per_entry)
    if reduction == "sum":
        return total
    if mask is None:
        return total / per_entry.size
    # An all-masked batch gives 0, not 0/0.
    return total / jnp.maximum(jnp.sum(mask), 1).astype(per_entry.dtype)


def _check_mask(mask: ArrayLike | None, shape: tuple[int, ...]) -> Array | None:
    """A boolean mask of ``shape`` or of a leading part of it (broadcast over the trailing axes)."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.shape != shape[: mask.ndim]:
        raise ValueError(f"mask must have shape {shape} or a leading part of it, got {mask.shape}")
    mask = mask.astype(bool)
    return jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim)), shape)


def _check_class_vector(name: str, v: ArrayLike, k: int, dtype) -> Array:
    v = jnp.asarray(v, dtype)
    if v.shape != (k,):
        raise ValueError(f"{name} must have shape ({k},) (one per class), got {v.shape}")
    if _is_concrete(v) and bool(np.any(np.asarray(v) < 0)):
        raise ValueError(f"{name} must be non-negative, got {np.asarray(v)}")
    return v


def _targets(logits: Array, labels: ArrayLike, mask: Array | None) -> tuple[Array, bool]:
    """Integer labels ``(...)`` or one-hot/probability labels ``(..., K)`` as ``(..., K)`` targets.

    Returns ``(targets, integer_labels)``. Integer labels outside ``[0, K)`` raise (where concrete
    and not masked); under ``jit`` they would silently give an all-zero target row.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim < 1:
        raise ValueError(f"logits must have a class axis, got shape {logits.shape}")
    k = logits.shape[-1]
    if labels.shape == logits.shape:
        return labels.astype(logits.dtype), False
    if labels.shape == logits.shape[:-1]:
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(
                f"labels of shape {labels.shape} must be integer class indices, got {labels.dtype}"
            )
        if _is_concrete(labels) and (mask is None or _is_concrete(mask)):
            lab = np.asarray(labels)
            keep = np.ones(lab.shape, bool) if mask is None else np.asarray(mask)
            bad = keep & ((lab < 0) | (lab >= k))
            if bad.any():
                raise ValueError(
                    f"labels must lie in [0, {k}) for {k} classes, got {lab[bad][:5].tolist()}"
                )
        return jax.nn.one_hot(labels, k, dtype=logits.dtype), True
    raise ValueError(
        f"labels must be integer with shape {logits.shape[:-1]} or one-hot with shape "
        f"{logits.shape}, got {labels.dtype} {labels.shape}"
    )


def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    *,
    mask: ArrayLike | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Softmax cross-entropy from logits.

    .. math::

        \ell = -\sum_k q_k \log \mathrm{softmax}(z)_k, \qquad
        \log \mathrm{softmax}(z)_k = z_k - \mathrm{logsumexp}(z),

    with the smoothed target ``q = (1 - s) y + s / K`` (Szegedy et al. 2016, "Rethinking the
    Inception architecture"). The gradient in the logits is ``softmax(z) - q``.
    ``class_weights`` ``w`` (``(K,)``) multiplies each example's loss by the weight of its true
    class, ``w_y`` (for soft labels, ``sum_k y_k w_k``, taken before smoothing) -- Keras's
    ``class_weight``; the mean stays the mean over examples, as in Keras.

    Args:
      logits: ``(..., K)``.
      labels: integer ``(...)`` in ``[0, K)`` or one-hot / probabilities ``(..., K)``.
      label_smoothing: ``s`` in ``[0, 1)``.
      class_weights: optional ``(K,)`` non-negative weights.
      mask: optional boolean ``(...)``; ``False`` drops an example.
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(...)`` per-example losses).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    logits = jnp.asarray(logits)
    mask = _check_mask(mask, logits.shape[:-1])
    targets, _ = _targets(logits, labels, mask)
    k = logits.shape[-1]
    weights = None
    if class_weights is not None:
        class_weights = _check_class_vector("class_weights", class_weights, k, logits.dtype)
        weights = targets @ class_weights  # (...): w_y for one-hot targets
    if label_smoothing:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / k
    log_p = jax.nn.log_softmax(logits, axis=-1)
    per_example = -jnp.sum(targets * log_p, axis=-1)
    return _reduce(per_example, reduction, weights, mask)


def focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    gamma: float = 2.0,
    alpha: float | ArrayLike | None = None,
    *,
    mask: ArrayLike | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Softmax focal loss (Lin et al. 2017, "Focal loss for dense object detection").

    .. math::

        \ell = -\sum_k y_k\, \alpha_k\, (1 - p_k)^\gamma \log p_k, \qquad p = \mathrm{softmax}(z),

    i.e. ``-alpha_y (1 - p_y)^gamma log p_y`` for an integer label ``y``. The factor
    ``(1 - p_y)^gamma`` shrinks the loss of examples already classified with confidence, so the
    rare, hard ones dominate the gradient; ``gamma = 0`` and ``alpha = None`` give
    :func:`cross_entropy` exactly. ``alpha`` is the paper's balancing weight: a ``(K,)`` vector of
    per-class weights (e.g. inverse frequencies) or one float applied to every class.

    ``1 - p_y`` is computed as ``-expm1(log p_y)``, which keeps its relative precision when
    ``p_y`` is close to 1.

    Args:
      logits: ``(..., K)``.
      labels: integer ``(...)`` or one-hot / probabilities ``(..., K)``.
      gamma: focusing parameter ``>= 0``.
      alpha: ``None``, a float ``>= 0``, or ``(K,)`` non-negative class weights.
      mask: optional boolean ``(...)``.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    logits = jnp.asarray(logits)
    mask = _check_mask(mask, logits.shape[:-1])
    targets, _ = _targets(logits, labels, mask)
    k = logits.shape[-1]
    log_p = jax.nn.log_softmax(logits, axis=-1)
    # Floored at the smallest normal float: d(1-p)^gamma is infinite at p = 1 for gamma < 1, and
    # inf * 0 would turn the (finite, vanishing) true gradient into nan.
    one_minus_p = jnp.maximum(-jnp.expm1(log_p), jnp.finfo(log_p.dtype).tiny)
    # gamma == 0 is special-cased: 0**0 = 1 in value, but its gradient would be nan at p = 1.
    modulator = jnp.ones_like(log_p) if gamma == 0 else one_minus_p**gamma
    per_class = -targets * modulator * log_p  # (..., K)
    if alpha is not None:
        if np.ndim(alpha) == 0:
            if _is_concrete(alpha) and float(alpha) < 0:
                raise ValueError(f"alpha must be non-negative, got {alpha}")
            per_class = per_class * jnp.asarray(alpha, logits.dtype)
        else:
            alpha = _check_class_vector("alpha", alpha, k, logits.dtype)
            per_class = per_class * alpha.reshape((1,) * (per_class.ndim - 1) + (k,))
    return _reduce(jnp.sum(per_class, axis=-1), reduction, None, mask)


def _check_same_shape(a_name: str, a: Array, b_name: str, b: Array) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape, got {a.shape} and {b.shape}"
        )


def binary_cross_entropy_with_logits(
    logits: ArrayLike,
    labels: ArrayLike,
    pos_weight: float | ArrayLike | None = None,
    *,
    mask: ArrayLike | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Sigmoid cross-entropy from logits, element-wise (binary or multi-label).

    .. math::

        \ell = -\,[\,w_+\, y \log \sigma(z) + (1 - y) \log (1 - \sigma(z))\,],

    evaluated stably as ``(1 - y) z + (1 + (w_+ - 1) y) softplus(-z)`` with
    ``softplus(-z) = max(-z, 0) + log1p(exp(-|z|))`` -- no ``exp`` of a large positive number.
    ``pos_weight`` ``w_+`` (PyTorch's ``pos_weight``) up-weights the positive term.

    Args:
      logits: any shape.
      labels: same shape, values in ``[0, 1]``.
      pos_weight: optional weight of positives (scalar or broadcastable to the last axis).
      mask: optional boolean, the shape of ``logits`` or a leading part of it.
      reduction: ``"mean"`` (over elements), ``"sum"`` or ``"none"``.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels).astype(logits.dtype)
    _check_same_shape("logits", logits, "labels", labels)
    if (
        _is_concrete(labels)
        and labels.size
        and (float(jnp.min(labels)) < 0 or float(jnp.max(labels)) > 1)
    ):
        raise ValueError("labels must lie in [0, 1] for binary cross-entropy")
    mask = _check_mask(mask, logits.shape)
    log_sig_neg = jax.nn.softplus(-logits)  # -log sigmoid(z)
    if pos_weight is None:
        per_elem = (1.0 - labels) * logits + log_sig_neg
    else:
        pw = jnp.asarray(pos_weight, logits.dtype)
        pw = pw.reshape((1,) * (logits.ndim - pw.ndim) + pw.shape)  # explicit broadcast
        per_elem = (1.0 - labels) * logits + (1.0 + (pw - 1.0) * labels) * log_sig_neg
    return _reduce(per_elem, reduction, None, mask)


def sigmoid_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    gamma: float = 2.0,
    alpha: float | None = None,
    *,
    mask: ArrayLike | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Binary (sigmoid) focal loss, element-wise: the form of Lin et al. 2017, eq. (5).

    .. math::

        \ell = -\alpha_t (1 - p_t)^\gamma \log p_t, \quad
        p_t = y\,\sigma(z) + (1 - y)(1 - \sigma(z)), \quad
        \alpha_t = y\,\alpha + (1 - y)(1 - \alpha).

    ``alpha=None`` drops ``alpha_t``; ``gamma = 0`` and ``alpha=None`` give
    :func:`binary_cross_entropy_with_logits`.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels).astype(logits.dtype)
    ce = binary_cross_entropy_with_logits(logits, labels, reduction="none")  # -log p_t
    p = jax.nn.sigmoid(logits)
    p_t = labels * p + (1.0 - labels) * (1.0 - p)
    per_elem = ce if gamma == 0 else ce * (1.0 - p_t) ** gamma
    if alpha is not None:
        per_elem = per_elem * (labels * alpha + (1.0 - labels) * (1.0 - alpha))
    return _reduce(per_elem, reduction, None, _check_mask(mask, logits.shape))


def _regression(predictions: ArrayLike, targets: ArrayLike) -> tuple[Array, Array]:
    predictions = jnp.asarray(predictions)
    targets = jnp.asarray(targets).astype(predictions.dtype)
    _check_same_shape("predictions", predictions, "targets", targets)
    return predictions, targets


def mse(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Mean squared error, ``(\hat y - y)^2`` per element (no 1/2 factor, as Keras and PyTorch).

    ``predictions`` and ``targets`` must have the same shape: an ``(N, 1)`` against ``(N,)``
    broadcast to ``(N, N)`` is the classic silent bug this refuses.
    """
    p, t = _regression(predictions, targets)
    return _reduce(jnp.square(p - t), reduction, None, _check_mask(mask, p.shape))


def mae(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Mean absolute error, ``|\hat y - y|`` per element."""
    p, t = _regression(predictions, targets)
    return _reduce(jnp.abs(p - t), reduction, None, _check_mask(mask, p.shape))


def huber(
    predictions: ArrayLike,
    targets: ArrayLike,
    delta: float = 1.0,
    *,
    mask: ArrayLike | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Huber loss (Huber 1964), per element with ``r = \hat y - y``:

    .. math::

        \ell = \tfrac12 r^2 \ \text{if}\ |r| \le \delta, \qquad
        \delta\,(|r| - \tfrac12 \delta)\ \text{otherwise};

    quadratic near zero, linear (gradient bounded by ``delta``) for outliers. Same as Keras's
    ``Huber`` and optax's ``huber_loss``.
    """
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta}")
    p, t = _regression(predictions, targets)
    abs_r = jnp.abs(p - t)
    quad = jnp.minimum(abs_r, delta)  # the quadratic part, written so both branches stay finite
    per_elem = 0.5 * quad**2 + delta * (abs_r - quad)
    return _reduce(per_elem, reduction, None, _check_mask(mask, p.shape))


# --- weight penalties -----------------------------------------------------------------------------

_NOT_PENALISED = ("bias", "scale", "offset", "b")


def penalty_mask(params: Any) -> Any:
    """A pytree of bools like ``params``: ``True`` for weights a penalty or decay should touch.

    ``True`` for leaves with at least two dimensions (dense and conv kernels, embeddings);
    ``False`` for one-dimensional leaves and leaves named ``bias``, ``scale``, ``offset``, ``b`` or
    ``b_*`` (biases, BatchNorm/LayerNorm scales and offsets). Penalising a bias or a norm scale
    does not limit the function's complexity -- it only pulls its shift or gain toward zero.
    Usable as ``optax.add_decayed_weights(..., mask=penalty_mask)``.
    """

    def keep(path, leaf) -> bool:
        last = path[-1] if path else None
        name = str(getattr(last, "key", getattr(last, "name", "")))
        if name in _NOT_PENALISED or name.startswith("b_"):
            return False
        return jnp.ndim(leaf) >= 2

    return jax.tree_util.tree_map_with_path(keep, params)


def _selected(params: Any, mask: Any | Callable[[Any], Any] | None) -> list[Array]:
    if mask is None:
        mask = penalty_mask(params)
    elif callable(mask):
        mask = mask(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    mask_leaves = treedef.flatten_up_to(mask)
    return [leaf for leaf, m in zip(leaves, mask_leaves, strict=True) if m]


def l2_penalty(params: Any, coeff: float, mask: Any | Callable[[Any], Any] | None = None) -> Array:
    r"""``(coeff / 2) * sum_i w_i^2`` over the masked parameters.

    The 1/2 makes the gradient ``coeff * w``, so under plain SGD this penalty and weight decay
    ``coeff`` are the same update; under Adam they differ (Loshchilov & Hutter 2019), see
    :func:`jaxdl.optim.adamw`. Keras's ``l2(l)`` is ``l * sum w^2``: ``coeff = 2 l``.

    Args:
      params: a parameter pytree.
      coeff: ``>= 0``.
      mask: a pytree of bools, a callable ``params -> mask``, or ``None`` for :func:`penalty_mask`.
    """
    if coeff < 0:
        raise ValueError(f"coeff must be non-negative, got {coeff}")
    leaves = _selected(params, mask)
    if not leaves:
        return jnp.zeros(())
    return 0.5 * coeff * sum(jnp.sum(jnp.square(w)) for w in leaves)


def l1_penalty(params: Any, coeff: float, mask: Any | Callable[[Any], Any] | None = None) -> Array:
    r"""``coeff * sum_i |w_i|`` over the masked parameters (Tibshirani 1996's lasso penalty).

    Its (sub)gradient ``coeff * sign(w)`` has constant size, which drives small weights to exactly
    zero -- sparsity -- where L2 only shrinks them proportionally.
    ``mask`` as in :func:`l2_penalty`.
    """
    if coeff < 0:
        raise ValueError(f"coeff must be non-negative, got {coeff}")
    leaves = _selected(params, mask)
    if not leaves:
        return jnp.zeros(())
    return coeff * sum(jnp.sum(jnp.abs(w)) for w in leaves)


_BY_NAME: dict[str, Callable[..., Array]] = {
    "cross_entropy": cross_entropy,
    "focal": focal_loss,
    "focal_loss": focal_loss,
    "binary_cross_entropy": binary_cross_entropy_with_logits,
    "sigmoid_focal": sigmoid_focal_loss,
    "mse": mse,
    "mae": mae,
    "huber": huber,
}


def get(name: str) -> Callable[..., Array]:
    """The loss called ``name`` (e.g. in an experiment config): one of :data:`NAMES`."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(_BY_NAME)}") from None


NAMES = tuple(sorted(_BY_NAME))


def distillation_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    temperature: float = 4.0,
    *,
    mask: ArrayLike | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Knowledge distillation's soft-target loss (Hinton, Vinyals & Dean 2015).

    .. math::

        \ell = T^2\, \mathrm{KL}\big(p^T \,\|\, q^T\big)
             = T^2 \sum_k p^T_k \big(\log p^T_k - \log q^T_k\big), \qquad
        p^T = \mathrm{softmax}(t / T), \quad q^T = \mathrm{softmax}(z / T),

    for teacher logits ``t`` and student logits ``z``. The gradient in the student's logits is
    ``T (q^T - p^T)``: for large ``T`` it approaches ``(z - t) / K`` when the logits are zero-mean
    (the paper's logit matching), and it is ``O(1)`` in ``T`` -- the ``T^2`` keeps the soft term's
    weight comparable to the hard-label loss whatever the temperature, so ``alpha *
    cross_entropy + (1 - alpha) * distillation_loss`` needs no retuning when ``T`` changes. The
    KL form differs from the paper's soft cross-entropy by the teacher's entropy, a constant in
    the student: same gradient, and zero when the student matches the teacher. No gradient
    flows into the teacher (``stop_gradient``).

    Args:
      student_logits, teacher_logits: ``(..., K)``, the same shape.
      temperature: ``T > 0``.
      mask: optional boolean ``(...)``; ``False`` drops an example.
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(...)`` per-example losses).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = jnp.asarray(student_logits)
    t = jax.lax.stop_gradient(jnp.asarray(teacher_logits))
    if z.shape != t.shape or z.ndim < 1:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape (..., K), got "
            f"{z.shape} and {t.shape}"
        )
    mask = _check_mask(mask, z.shape[:-1])
    log_p = jax.nn.log_softmax(t / temperature, axis=-1)
    log_q = jax.nn.log_softmax(z / temperature, axis=-1)
    per_example = temperature**2 * jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    return _reduce(per_example, reduction, None, mask)
