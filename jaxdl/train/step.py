"""The jit-compiled train and eval steps."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdl import losses, xla_flags
from jaxdl.train.precision import all_finite, cast_outputs, current_loss_scale
from jaxdl.train.state import TrainState, apply_model, batch_rows

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


def mixes_labels(augment: Callable[..., Any]) -> bool:
    """Whether ``augment`` is declared label-mixing, ``(key, x, y) -> (x, y_soft)`` (mixup), by
    its ``mixes_labels`` attribute (:func:`jaxdl.data.augment.label_mixing` sets it); otherwise it
    is ``(key, x) -> x``.

    Raises:
      ValueError: ``augment`` requires three or more positional arguments but is not declared
        label-mixing (it would silently receive the labels under a guess by arity).
    """
    if getattr(augment, "mixes_labels", False):
        return True
    try:
        params = inspect.signature(augment).parameters.values()
    except (TypeError, ValueError):
        return False
    required = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(required) >= 3:
        raise ValueError(
            f"augment {getattr(augment, '__name__', augment)!r} takes {len(required)} positional "
            "arguments; an augmentation is (key, x) -> x, and a label-mixing one (key, x, y) -> "
            "(x, y_soft) must say so: wrap it in jaxdl.data.augment.label_mixing(fn)"
        )
    return False


def jit_train_step(fn: Callable[..., Any], donate: bool = True, **jit_kwargs: Any):
    """``jax.jit`` of a train step as every jaxdl step factory compiles it: the state (argument 0)
    donated, and :func:`jaxdl.xla_flags.train_step_compiler_options` (the XLA:CPU option that made
    the course's CNN fast; empty elsewhere or with ``JAXDL_XLA_FLAGS=0``). Use it for a train step
    you write yourself to get the same program."""

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with xla_flags.tuned_step():  # traced here with the option: no performance warning
            return fn(*args, **kwargs)

    return jax.jit(
        traced,
        donate_argnums=(0,) if donate else (),
        compiler_options=xla_flags.train_step_compiler_options(),
        **jit_kwargs,
    )


def jit_inference(fn: Callable[..., Any], model: Any = None, **jit_kwargs: Any):
    """``jax.jit`` of an inference function of ``model`` as jaxdl's own inference paths compile it
    (:func:`make_eval_step`, ``evaluate``, ``predict``): with
    :func:`jaxdl.xla_flags.inference_compiler_options` for ``model`` (on CPU, XLA's own
    convolution kernels, 1.3-1.6x faster on the zoo's models; nothing elsewhere). Use it in place
    of ``jax.jit`` for a forward pass you write yourself::

        forward = jaxdl.train.jit_inference(lambda v, x: model.apply(v, x, train=False), model)
    """
    return jax.jit(fn, compiler_options=xla_flags.inference_compiler_options(model), **jit_kwargs)


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
    """Build ``train_step(state, x, y, mask=None) -> (state, metrics)``, compiled once, state
    donated.

    The objective is ``L(theta) = (1/M) sum_n m_n w_{y_n} l(f_theta(x_n), y_n)`` with ``w = 1``
    unless ``class_weights`` is given (Keras's ``class_weight``: the mean stays over examples),
    ``m = 1`` and ``M = N`` unless a 0/1 ``mask`` ``(N,)`` is given, then ``M = sum_n m_n``: a
    short final batch padded to the full batch size trains exactly as the short batch would
    (its padded rows take no part in the loss, the gradient or the metrics; BatchNorm's batch
    statistics do see them), and ``fit`` compiles one step for the whole run.
    ``x`` is an array, a tuple of arrays (positional inputs) or a dict (keyword inputs), see
    :func:`jaxdl.train.state.model_inputs`. One step
    applies ``theta <- theta + optimizer.update(grad L, ...)``. Dropout and augmentation draw from
    ``state.step_key()``, so a step's randomness depends only on the step number.

    ``augment(key, x) -> x`` transforms the inputs; an augmentation declared label-mixing
    (:func:`mixes_labels`; e.g. :func:`jaxdl.data.augment.mixup`), ``(key, x, y) -> (x, y_soft)``,
    also mixes the labels the loss sees, while accuracy is still measured against the original
    labels.

    Metrics are sums (``loss_sum``, ``correct``, ``count``) so that batches of different sizes
    average exactly over an epoch.

    Half-precision outputs are cast to float32 before the loss; if the optimizer is wrapped in
    :func:`jaxdl.train.precision.dynamic_loss_scale`, the loss is multiplied by its scale before
    differentiation and a skipped (non-finite) step also keeps the old BatchNorm statistics.

    ``axis_name`` (for :func:`jax.pmap`, see :mod:`jaxdl.train.parallel`): gradients and
    BatchNorm statistics are ``pmean``-ed (with a mask: the gradient is the ``psum`` of each
    device's masked sum over the global ``M``) and metric sums ``psum``-ed over that axis, and dropout
    and augmentation keys are folded with the device index. ``jit=False`` returns the step
    uncompiled, for the caller to wrap in ``jax.jit`` with shardings or in ``jax.pmap``. The
    step is compiled by :func:`jit_train_step`.
    """
    loss_fn = loss_fn or losses.cross_entropy
    label_mixing = augment is not None and mixes_labels(augment)

    def train_step(state: TrainState, x: Any, y: jax.Array, mask: jax.Array | None = None):
        k_dropout, k_augment = jax.random.split(state.step_key())
        if axis_name is not None:  # each device its own dropout mask and augmentation draw
            k_dropout, k_augment = (
                jax.random.fold_in(k, jax.lax.axis_index(axis_name)) for k in (k_dropout, k_augment)
            )
        scaling = current_loss_scale(state.opt_state)
        targets = y
        if augment is not None:
            if label_mixing:  # e.g. mixup: (key, x, y) -> (x, soft labels)
                x, targets = augment(k_augment, x, y)
            else:
                x = augment(k_augment, x)
        mutable = ["batch_stats"] if jax.tree.leaves(state.batch_stats) else False

        def objective(params):
            variables = {**_variables(state), "params": params}
            out = apply_model(
                model, variables, x, True, rngs={"dropout": k_dropout}, mutable=mutable
            )
            outputs, new_vars = out if mutable else (out, {})
            outputs = cast_outputs(outputs)  # half-precision logits -> float32 for the loss
            per_example = _per_example(loss_fn, outputs, targets)  # (N,)
            if class_weights is not None:
                per_example = per_example * class_weights[y]
            if mask is None:
                loss = jnp.mean(per_example)
            else:  # over the real rows of the global batch (all devices under axis_name)
                loss = jnp.sum(per_example * mask) / jnp.maximum(total, 1.0)
            scaled = loss if scaling is None else loss * scaling.scale
            return scaled, (loss, outputs, new_vars.get("batch_stats", state.batch_stats))

        if mask is not None:
            mask = mask.astype(jnp.float32)
            total = jnp.sum(mask)
            if axis_name is not None:
                total = jax.lax.psum(total, axis_name)

        (_, (loss, outputs, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        if axis_name is not None:  # the mean of equal-sized shards' means is the global mean
            # (with a mask each device's loss is already its share of the global mean: sum them)
            reduce = jax.lax.pmean if mask is None else jax.lax.psum
            grads = reduce(grads, axis_name)
            batch_stats = jax.lax.pmean(batch_stats, axis_name)
        if scaling is not None:  # a skipped step keeps the old statistics too
            ok = all_finite(grads)
            batch_stats = jax.tree.map(
                lambda new, old: jnp.where(ok, new, old), batch_stats, state.batch_stats
            )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if mask is None:
            n = jnp.asarray(batch_rows(x), jnp.float32)
            metrics = {"loss_sum": loss * n, "count": n}
        else:  # loss * total is this device's masked sum (psum-ed below under axis_name)
            metrics = {"loss_sum": loss * total, "count": jnp.sum(mask)}
        correct = _correct(outputs, y)
        if correct is not None:
            metrics["correct"] = jnp.sum(correct if mask is None else correct * mask)
        if axis_name is not None:
            metrics = jax.lax.psum(metrics, axis_name)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, metrics

    if not jit:
        return train_step
    return jit_train_step(train_step, donate)


def make_eval_step(
    model: nn.Module, *, loss_fn: LossFn | None = None
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], dict[str, jax.Array]]:
    """Build ``eval_step(state, x, y, mask) -> metric sums`` (inference mode: no dropout, running
    BatchNorm statistics). ``mask`` (``(N,)`` of 0/1) lets a padded final batch reuse the compiled
    shape; padded rows count for nothing. ``state`` may also be a variables dict; only the
    variables reach the compiled function, so states with different optimizers share it."""
    loss_fn = loss_fn or losses.cross_entropy

    def on_variables(variables: dict, x: Any, y: jax.Array, mask: jax.Array):
        outputs = cast_outputs(apply_model(model, variables, x, False))
        metrics = {
            "loss_sum": jnp.sum(_per_example(loss_fn, outputs, y) * mask),
            "count": jnp.sum(mask),
        }
        correct = _correct(outputs, y)
        if correct is not None:
            metrics["correct"] = jnp.sum(correct * mask)
        return metrics

    on_variables = jit_inference(on_variables, model)

    def eval_step(state: TrainState | dict, x: Any, y: jax.Array, mask: jax.Array):
        variables = _variables(state) if isinstance(state, TrainState) else state
        return on_variables(variables, x, y, mask)

    eval_step._cache_size = on_variables._cache_size
    return eval_step
