"""Loss functions, written on log-probabilities for numerical stability.

Every loss takes ``reduction="mean"`` (the mean of the per-example losses, as PyTorch and Keras),
``"sum"`` or ``"none"``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

REDUCTIONS = ("mean", "sum", "none")


def _reduce(per_example: jax.Array, reduction: str, weights: jax.Array | None = None) -> jax.Array:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if weights is not None:
        per_example = per_example * weights
    if reduction == "none":
        return per_example
    if reduction == "sum":
        return jnp.sum(per_example)
    return jnp.mean(per_example)


def _one_hot_targets(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Turn integer labels ``(N,)`` or one-hot/probability labels ``(N, K)`` into ``(N, K)``."""
    if logits.ndim < 1:
        raise ValueError(f"logits must have a class axis, got shape {logits.shape}")
    k = logits.shape[-1]
    if labels.shape == logits.shape:
        return labels.astype(logits.dtype)
    if labels.shape == logits.shape[:-1] and jnp.issubdtype(labels.dtype, jnp.integer):
        return jax.nn.one_hot(labels, k, dtype=logits.dtype)
    raise ValueError(
        f"labels must be integer with shape {logits.shape[:-1]} or one-hot with shape "
        f"{logits.shape}, got {labels.dtype} {labels.shape}"
    )


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None,
    *,
    reduction: str = "mean",
) -> jax.Array:
    """Softmax cross-entropy from logits.

    ``L = -sum_k q_k log softmax(z)_k``, with ``log softmax(z)_k = z_k - logsumexp(z)`` and the
    smoothed target ``q = (1 - s) y + s / K`` (Szegedy et al. 2016). Its gradient in the logits is
    ``softmax(z) - q``. ``class_weights`` (``(K,)``) weighs each example by the weight of its true
    class, ``w_y`` (Keras's ``class_weight``); the mean is then over examples, as Keras does.

    Args:
      logits: ``(..., K)``.
      labels: integer ``(...)`` or one-hot / probabilities ``(..., K)``.
      label_smoothing: ``s`` in ``[0, 1)``.
      class_weights: optional ``(K,)`` non-negative weights.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    targets = _one_hot_targets(logits, labels)
    k = logits.shape[-1]
    if label_smoothing:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / k
    log_p = jax.nn.log_softmax(logits, axis=-1)
    per_example = -jnp.sum(targets * log_p, axis=-1)
    weights = None
    if class_weights is not None:
        class_weights = jnp.asarray(class_weights, logits.dtype)
        if class_weights.shape != (k,):
            raise ValueError(f"class_weights must have shape ({k},), got {class_weights.shape}")
        weights = targets @ class_weights if labels.shape == logits.shape else class_weights[labels]
    return _reduce(per_example, reduction, weights)
