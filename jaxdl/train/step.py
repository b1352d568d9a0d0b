"""The jit-compiled train and eval steps."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdl import losses
from jaxdl.train.state import TrainState, train_kwargs

LossFn = Callable[..., jax.Array]  # loss_fn(logits, labels, reduction="none") -> per-example


def _variables(state: TrainState) -> dict[str, Any]:
    if jax.tree.leaves(state.batch_stats):
        return {"params": state.params, "batch_stats": state.batch_stats}
    return {"params": state.params}


def _per_example(loss_fn: LossFn, outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example losses ``(N,)``; element-wise losses (regression) are averaged per example."""
    values = loss_fn(outputs, labels, reduction="none")
    return values.reshape(values.shape[0], -1).mean(axis=1) if values.ndim > 1 else values


def _correct(outputs: jax.Array, labels: jax.Array) -> jax.Array | None:
    """Per-example 0/1 correctness for classification outputs ``(N, K)``; ``None`` otherwise."""
    if outputs.ndim != 2 or outputs.shape[-1] < 2:
        return None
    if labels.ndim == 2:  # one-hot or soft labels
        labels = jnp.argmax(labels, axis=-1)
    elif not jnp.issubdtype(labels.dtype, jnp.integer):
        return None
    return (jnp.argmax(outputs, axis=-1) == labels).astype(jnp.float32)


def takes_labels(augment: Callable[..., Any]) -> bool:
    """Whether an augmentation has the label-mixing form ``(key, x, y) -> (x, y)`` (mixup)
    rather than ``(key, x) -> x``."""
    try:
        params = inspect.signature(augment).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    *,
    loss_fn: LossFn | None = None,
    class_weights: jax.Array | None = None,
    augment: Callable[..., Any] | None = None,
    donate: bool = True,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """Build ``train_step(state, x, y) -> (state, metrics)``, compiled once, state donated.

    The objective is ``L(theta) = (1/N) sum_n w_{y_n} l(f_theta(x_n), y_n)`` with ``w = 1`` unless
    ``class_weights`` is given (Keras's ``class_weight``: the mean stays over examples). One step
    applies ``theta <- theta + optimizer.update(grad L, ...)``. Dropout and augmentation draw from
    ``state.step_key()``, so a step's randomness depends only on the step number.

    ``augment(key, x) -> x`` transforms the inputs; ``augment(key, x, y) -> (x, y_soft)`` (e.g.
    :func:`jaxdl.data.augment.mixup`) also mixes the labels the loss sees, while accuracy is still
    measured against the original labels.

    Metrics are sums (``loss_sum``, ``correct``, ``count``) so that batches of different sizes
    average exactly over an epoch.
    """
    loss_fn = loss_fn or losses.cross_entropy
    mixes_labels = augment is not None and takes_labels(augment)

    def train_step(state: TrainState, x: jax.Array, y: jax.Array):
        k_dropout, k_augment = jax.random.split(state.step_key())
        targets = y
        if augment is not None:
            if mixes_labels:  # e.g. mixup: (key, x, y) -> (x, soft labels)
                x, targets = augment(k_augment, x, y)
            else:
                x = augment(k_augment, x)
        mutable = ["batch_stats"] if jax.tree.leaves(state.batch_stats) else False

        def objective(params):
            variables = {**_variables(state), "params": params}
            out = model.apply(
                variables,
                x,
                **train_kwargs(model, True),
                rngs={"dropout": k_dropout},
                mutable=mutable,
            )
            outputs, new_vars = out if mutable else (out, {})
            per_example = _per_example(loss_fn, outputs, targets)  # (N,)
            if class_weights is not None:
                per_example = per_example * class_weights[y]
            return jnp.mean(per_example), (outputs, new_vars.get("batch_stats", state.batch_stats))

        (loss, (outputs, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        n = jnp.asarray(x.shape[0], jnp.float32)
        metrics = {"loss_sum": loss * n, "count": n}
        correct = _correct(outputs, y)
        if correct is not None:
            metrics["correct"] = jnp.sum(correct)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=(0,) if donate else ())


def make_eval_step(
    model: nn.Module, *, loss_fn: LossFn | None = None
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], dict[str, jax.Array]]:
    """Build ``eval_step(state, x, y, mask) -> metric sums`` (inference mode: no dropout, running
    BatchNorm statistics). ``mask`` (``(N,)`` of 0/1) lets a padded final batch reuse the compiled
    shape; padded rows count for nothing."""
    loss_fn = loss_fn or losses.cross_entropy

    def eval_step(state: TrainState, x: jax.Array, y: jax.Array, mask: jax.Array):
        outputs = model.apply(_variables(state), x, **train_kwargs(model, False))
        metrics = {
            "loss_sum": jnp.sum(_per_example(loss_fn, outputs, y) * mask),
            "count": jnp.sum(mask),
        }
        correct = _correct(outputs, y)
        if correct is not None:
            metrics["correct"] = jnp.sum(correct * mask)
        return metrics

    return jax.jit(eval_step)
