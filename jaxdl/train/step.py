"""The jit-compiled train and eval steps."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdl import losses, xla_flags
from jaxdl.train.precision import all_finite, cast_outputs, current_loss_scale
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
    axis_name: str | None = None,
    jit: bool = True,
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

    Half-precision outputs are cast to float32 before the loss; if the optimizer is wrapped in
    :func:`jaxdl.train.precision.dynamic_loss_scale`, the loss is multiplied by its scale before
    differentiation and a skipped (non-finite) step also keeps the old BatchNorm statistics.

    ``axis_name`` (for :func:`jax.pmap`, see :mod:`jaxdl.train.parallel`): gradients and
    BatchNorm statistics are ``pmean``-ed and metric sums ``psum``-ed over that axis, and dropout
    and augmentation keys are folded with the device index. ``jit=False`` returns the step
    uncompiled, for the caller to wrap in ``jax.jit`` with shardings or in ``jax.pmap``. On CPU the
    step is compiled with :func:`jaxdl.xla_flags.train_step_compiler_options`.
    """
    loss_fn = loss_fn or losses.cross_entropy
    mixes_labels = augment is not None and takes_labels(augment)

    def train_step(state: TrainState, x: jax.Array, y: jax.Array):
        k_dropout, k_augment = jax.random.split(state.step_key())
        if axis_name is not None:  # each device its own dropout mask and augmentation draw
            k_dropout, k_augment = (
                jax.random.fold_in(k, jax.lax.axis_index(axis_name)) for k in (k_dropout, k_augment)
            )
        scaling = current_loss_scale(state.opt_state)
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
            outputs = cast_outputs(outputs)  # half-precision logits -> float32 for the loss
            per_example = _per_example(loss_fn, outputs, targets)  # (N,)
            if class_weights is not None:
                per_example = per_example * class_weights[y]
            loss = jnp.mean(per_example)
            scaled = loss if scaling is None else loss * scaling.scale
            return scaled, (loss, outputs, new_vars.get("batch_stats", state.batch_stats))

        (_, (loss, outputs, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        if axis_name is not None:  # the mean of equal-sized shards' means is the global mean
            grads = jax.lax.pmean(grads, axis_name)
            batch_stats = jax.lax.pmean(batch_stats, axis_name)
        if scaling is not None:  # a skipped step keeps the old statistics too
            ok = all_finite(grads)
            batch_stats = jax.tree.map(
                lambda new, old: jnp.where(ok, new, old), batch_stats, state.batch_stats
            )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        n = jnp.asarray(x.shape[0], jnp.float32)
        metrics = {"loss_sum": loss * n, "count": n}
        correct = _correct(outputs, y)
        if correct is not None:
            metrics["correct"] = jnp.sum(correct)
        if axis_name is not None:
            metrics = jax.lax.psum(metrics, axis_name)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, metrics

    if not jit:
        return train_step
    return jax.jit(
        train_step,
        donate_argnums=(0,) if donate else (),
        compiler_options=xla_flags.train_step_compiler_options(),
    )


def make_eval_step(
    model: nn.Module, *, loss_fn: LossFn | None = None
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], dict[str, jax.Array]]:
    """Build ``eval_step(state, x, y, mask) -> metric sums`` (inference mode: no dropout, running
    BatchNorm statistics). ``mask`` (``(N,)`` of 0/1) lets a padded final batch reuse the compiled
    shape; padded rows count for nothing."""
    loss_fn = loss_fn or losses.cross_entropy

    def eval_step(state: TrainState, x: jax.Array, y: jax.Array, mask: jax.Array):
        outputs = cast_outputs(model.apply(_variables(state), x, **train_kwargs(model, False)))
        metrics = {
            "loss_sum": jnp.sum(_per_example(loss_fn, outputs, y) * mask),
            "count": jnp.sum(mask),
        }
        correct = _correct(outputs, y)
        if correct is not None:
            metrics["correct"] = jnp.sum(correct * mask)
        return metrics

    return jax.jit(eval_step)
