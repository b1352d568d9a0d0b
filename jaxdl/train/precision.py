"""Mixed precision: a dtype policy for the models, and dynamic loss scaling for float16.

A :class:`Policy` names three dtypes (Micikevicius et al. 2018, "Mixed Precision Training"):
parameters are *stored* in ``param_dtype`` (float32, so that small updates ``lr * g`` are not
rounded away), the forward and backward passes *compute* in ``compute_dtype`` (bfloat16 or
float16: half the memory traffic, and the fast matrix units on GPUs and TPUs), and the logits are
handed to the loss in ``output_dtype`` (float32, so that ``log_softmax`` and the mean over the batch
are accurate). The policy reaches a model through the model's own ``dtype`` and ``param_dtype``
attributes (flax layers cast their inputs and kernels to ``dtype`` before computing).

float16 keeps 10 mantissa bits but only 5 exponent bits: the smallest positive normal number is
``2**-14 ~ 6.1e-5`` and the smallest subnormal ``2**-24 ~ 6.0e-8``; the largest finite value is
65,504. Gradients of an averaged loss are often below ``2**-24`` and flush to zero in float16.
Loss scaling multiplies the loss by ``S`` before differentiation, so every backward-pass value is
``S`` times larger and lands in float16's range, and divides the float32 parameter gradient by
``S`` afterwards: ``g = (1/S) d(S L)/d theta`` is exactly ``dL/d theta`` when nothing over- or
underflows. :func:`dynamic_loss_scale` chooses ``S`` on the fly: after ``period`` consecutive
finite steps it multiplies ``S`` by ``factor``; when a gradient is non-finite (``S`` too large) it
divides ``S`` by ``factor`` and skips the update, leaving parameters and optimizer state as they
were. bfloat16 has float32's 8 exponent bits, so it needs no scaling.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which dtype stores parameters, which computes, which the loss sees.

    Attributes:
      param_dtype: storage dtype of parameters and optimizer state.
      compute_dtype: dtype of activations and of the kernels inside each layer's computation.
      output_dtype: dtype the model's outputs are cast to before the loss.
    """

    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.float32
    output_dtype: Any = jnp.float32

    @property
    def needs_loss_scaling(self) -> bool:
        """True for a float16 computation (5 exponent bits: gradients underflow)."""
        return jnp.dtype(self.compute_dtype) == jnp.float16


POLICIES: dict[str, Policy] = {
    "float32": Policy(),
    "bfloat16": Policy(compute_dtype=jnp.bfloat16),
    "float16": Policy(compute_dtype=jnp.float16),
}
_ALIASES = {
    "fp32": "float32",
    "f32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "f16": "float16",
}


def get_policy(precision: str | Policy) -> Policy:
    """The policy named ``precision``: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (also
    ``"fp32"``, ``"bf16"``, ``"fp16"``); parameters and outputs stay float32 in all three."""
    if isinstance(precision, Policy):
        return precision
    if not isinstance(precision, str):
        raise ValueError(f"precision must be a policy name or a Policy, got {precision!r}")
    name = _ALIASES.get(precision.lower(), precision.lower())
    if name not in POLICIES:
        raise ValueError(
            f"precision must be one of {sorted(POLICIES)} (or {sorted(_ALIASES)}), got {precision!r}"
        )
    return POLICIES[name]


def apply_policy(model: nn.Module, precision: str | Policy) -> nn.Module:
    """Return ``model`` with its ``dtype`` (and ``param_dtype``, if it has one) set by the policy.

    The parameter tree is unchanged (same names and shapes), so a checkpoint trained in one
    precision loads into the model built for another. Outputs are cast to ``output_dtype`` by the
    train and eval steps (:func:`cast_outputs`), not by the model.

    Raises:
      ValueError: if ``precision`` is unknown, or a non-float32 policy is asked of a model without a
        ``dtype`` attribute (it could not honour it).
    """
    policy = get_policy(precision)
    fields = {f.name for f in dataclasses.fields(model)}
    if "dtype" not in fields:
        if policy == POLICIES["float32"]:
            return model
        raise ValueError(
            f"{type(model).__name__} has no 'dtype' attribute, so precision={precision!r} cannot be "
            "applied; give the model a computation dtype attribute"
        )
    changes: dict[str, Any] = {"dtype": policy.compute_dtype}
    if "param_dtype" in fields:
        changes["param_dtype"] = policy.param_dtype
    return model.clone(**changes)


def cast_outputs(outputs: Any, dtype: Any = jnp.float32) -> Any:
    """Half-precision floating outputs -> ``dtype`` (float32), so the loss is computed accurately;
    other arrays pass unchanged."""

    def cast(a):
        if jnp.dtype(a.dtype) in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)):
            return a.astype(dtype)
        return a

    return jax.tree.map(cast, outputs)


class LossScaleState(NamedTuple):
    """State of :func:`dynamic_loss_scale`.

    Attributes:
      scale: the current loss scale ``S`` (float32 scalar).
      good_steps: consecutive finite steps since ``S`` last changed (int32).
      finite: whether the last step's gradient was finite (it was applied) (bool).
      skipped: total number of skipped steps (int32).
      inner_state: the wrapped optimizer's state.
    """

    scale: jax.Array
    good_steps: jax.Array
    finite: jax.Array
    skipped: jax.Array
    inner_state: Any


def all_finite(tree: Any) -> jax.Array:
    """``True`` iff every element of every array in ``tree`` is finite (a bool scalar)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def dynamic_loss_scale(
    inner: optax.GradientTransformation,
    initial_scale: float = 2.0**15,
    period: int = 2000,
    factor: float = 2.0,
    min_scale: float = 1.0,
) -> optax.GradientTransformation:
    """Wrap ``inner`` so that it receives unscaled gradients and skips non-finite steps.

    The train step multiplies the loss by ``S = state.scale`` (it finds the state with
    :func:`current_loss_scale`) and passes ``d(S L)/d theta`` here. The update is::

        g = grads / S
        if all(isfinite(g)):   u, inner_state = inner.update(g, inner_state, params)
                               good_steps += 1;  S *= factor and good_steps = 0 if good_steps == period
        else:                  u = 0 (parameters untouched), inner_state unchanged
                               S = max(S / factor, min_scale);  good_steps = 0

    Both branches are computed and one is selected with ``jnp.where`` (no host round trip).

    Args:
      inner: the optimizer that sees true gradients.
      initial_scale: ``S`` at step 0 (``2**15``, as PyTorch's ``GradScaler`` uses ``2**16``: a
        large start, halved quickly by the first overflows).
      period: finite steps between increases (2000, as PyTorch's ``growth_interval``).
      factor: growth and back-off factor (> 1).
      min_scale: ``S`` never falls below this.
    """
    if not initial_scale > 0:
        raise ValueError(f"initial_scale must be > 0, got {initial_scale!r}")
    if not isinstance(period, int) or period < 1:
        raise ValueError(f"period must be a positive int, got {period!r}")
    if not factor > 1:
        raise ValueError(f"factor must be > 1, got {factor!r}")
    if not 0 < min_scale <= initial_scale:
        raise ValueError(f"min_scale must be in (0, initial_scale], got {min_scale!r}")

    def init_fn(params):
        return LossScaleState(
            scale=jnp.asarray(initial_scale, jnp.float32),
            good_steps=jnp.zeros((), jnp.int32),
            finite=jnp.asarray(True),
            skipped=jnp.zeros((), jnp.int32),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra):
        grads = jax.tree.map(lambda g: g / state.scale.astype(g.dtype), updates)
        finite = all_finite(grads)
        new_updates, new_inner = inner.update(grads, state.inner_state, params, **extra)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        inner_state = jax.tree.map(keep, new_inner, state.inner_state)
        updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), new_updates)
        good = jnp.where(finite, state.good_steps + 1, 0)
        grow = good >= period
        scale = jnp.where(
            finite,
            jnp.where(grow, state.scale * factor, state.scale),
            jnp.maximum(state.scale / factor, min_scale),
        )
        return updates, LossScaleState(
            scale=scale.astype(jnp.float32),
            good_steps=jnp.where(grow, 0, good).astype(jnp.int32),
            finite=finite,
            skipped=state.skipped + (~finite).astype(jnp.int32),
            inner_state=inner_state,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _loss_scale_states(opt_state: Any) -> list[LossScaleState]:
    found: list[LossScaleState] = []
    is_ls = lambda x: isinstance(x, LossScaleState)  # noqa: E731
    for node in jax.tree.leaves(opt_state, is_leaf=is_ls):
        if is_ls(node):
            found.append(node)
    return found


def current_loss_scale(opt_state: Any) -> LossScaleState | None:
    """The :class:`LossScaleState` inside ``opt_state``, or ``None`` if the optimizer does no loss
    scaling. Which one is a static fact of the state's structure, so a jitted step may branch on
    it in Python."""
    states = _loss_scale_states(opt_state)
    if len(states) > 1:
        raise ValueError(
            "opt_state holds more than one dynamic_loss_scale; wrap the optimizer once"
        )
    return states[0] if states else None
