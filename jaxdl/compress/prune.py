r"""Magnitude pruning: masks, one-shot pruning, and gradual pruning as an optax transform.

Magnitude pruning (Han et al. 2015, "Learning both weights and connections for efficient neural
networks") removes the kernel entries of smallest ``|w|``: the first-order change of the loss
when a weight is zeroed is ``-g w``, and with small gradients near a minimum ``|w|`` is the cheap
proxy for it. Only kernels are pruned (biases and norm parameters are few and each feeds every
output of its unit).

Gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune") raises the sparsity from
``s_i`` to ``s_f`` over ``n`` pruning steps of ``dt`` training steps each, starting at ``t_0``:

.. math::

    s_t = s_f + (s_i - s_f) \Big(1 - \frac{t - t_0}{n\,\Delta t}\Big)^3,
    \qquad t \in \{t_0, t_0 + \Delta t, \dots, t_0 + n \Delta t\},

fast at first, when many redundant weights can go, and slowly near the end, leaving the network
training steps to recover. :func:`gradual_pruning` wraps any optimizer: its state holds the mask,
recomputed on that schedule, and its updates keep every pruned weight exactly zero, so training
through ``jaxdl.train.fit`` needs no change.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdl.compress._tree import is_kernel

__all__ = [
    "PruningState",
    "apply_mask",
    "gradual_pruning",
    "kernel_sparsity",
    "magnitude_mask",
    "polynomial_sparsity",
    "sparse_size_bytes",
]

_SCOPES = ("global", "layer")


def _check_sparsity(sparsity: Any, name: str = "sparsity") -> None:
    if isinstance(sparsity, jax.core.Tracer):
        return
    s = float(sparsity)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {sparsity}")


def _keep_top(abs_flat: jax.Array, num_keep: jax.Array) -> jax.Array:
    """``True`` for the ``num_keep`` largest entries of the 1-D ``abs_flat``; ties go to the entry
    that comes first (a stable sort), so exactly ``num_keep`` entries are kept."""
    order = jnp.argsort(-abs_flat, stable=True)  # largest first, ties in index order
    rank = jnp.empty_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))
    return rank < num_keep


def _num_pruned(sparsity: Any, n: int) -> jax.Array:
    # round(s * n), half up; a float64-exact value when s is a Python float.
    if isinstance(sparsity, jax.core.Tracer):
        return jnp.floor(sparsity * n + 0.5).astype(jnp.int32)
    return jnp.asarray(int(np.floor(float(sparsity) * n + 0.5)), jnp.int32)


def magnitude_mask(params: Any, sparsity: float, scope: str = "global") -> Any:
    r"""Keep the largest-magnitude kernel weights; ``True`` = kept.

    ``scope="global"`` ranks all kernels' ``|w|`` together and prunes ``round(sparsity * N)`` of
    them (``N`` = all kernel entries), so layers with many small weights lose more;
    ``scope="layer"`` prunes ``round(sparsity * N_l)`` in each kernel separately. Ties are broken
    by position (the earlier entry in the flattened, tree-ordered kernels is kept), so the count
    is exact. Non-kernel leaves (biases, norm parameters) get all-``True`` masks.

    Args:
      params: a parameter pytree.
      sparsity: fraction of kernel entries to prune, in ``[0, 1]`` (may be traced under ``jit``).
      scope: ``"global"`` or ``"layer"``.

    Returns:
      A pytree of boolean arrays shaped like ``params``.
    """
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    _check_sparsity(sparsity)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    kernel_ids = [i for i, (p, x) in enumerate(leaves_with_path) if is_kernel(p, x)]
    masks = [jnp.ones(jnp.shape(x), bool) for _, x in leaves_with_path]
    if kernel_ids:
        kernels = [jnp.abs(leaves_with_path[i][1]) for i in kernel_ids]
        if scope == "global":
            flat = jnp.concatenate([k.ravel() for k in kernels])
            keep = _keep_top(flat, flat.size - _num_pruned(sparsity, flat.size))
            offsets = np.cumsum([0] + [k.size for k in kernels])
            for j, i in enumerate(kernel_ids):
                masks[i] = keep[offsets[j] : offsets[j + 1]].reshape(kernels[j].shape)
        else:
            for j, i in enumerate(kernel_ids):
                k = kernels[j]
                keep = _keep_top(k.ravel(), k.size - _num_pruned(sparsity, k.size))
                masks[i] = keep.reshape(k.shape)
    return jax.tree_util.tree_unflatten(treedef, masks)


def apply_mask(params: Any, mask: Any) -> Any:
    """``params`` with the entries where ``mask`` is ``False`` set to exactly zero."""
    try:
        return jax.tree.map(lambda w, m: jnp.where(m, w, jnp.zeros_like(w)), params, mask)
    except ValueError as e:
        raise ValueError(f"mask must have the structure of params: {e}") from None


def kernel_sparsity(params: Any) -> float:
    """The fraction of kernel entries that are exactly zero."""
    zeros = total = 0
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        if is_kernel(path, x):
            zeros += int(jnp.sum(x == 0))
            total += int(np.size(x))
    return zeros / max(total, 1)


def sparse_size_bytes(params: Any) -> int:
    """Bytes to store ``params`` with each kernel as a bitmap of its non-zeros (one bit per entry)
    plus the non-zero values; other leaves dense. Quantised kernels
    (:class:`jaxdl.compress.QuantizedArray`) count one byte per non-zero plus their scales. An
    estimate of a sparse format's storage, not a format jaxdl writes."""
    from jaxdl.compress.quantize import QuantizedArray

    is_q = lambda x: isinstance(x, QuantizedArray)  # noqa: E731
    total = 0
    for path, x in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_q)[0]:
        if is_q(x):
            v = np.asarray(x.values)
            total += int(np.count_nonzero(v)) + (v.size + 7) // 8 + int(x.scale.nbytes)
            continue
        x = np.asarray(x)
        if is_kernel(path, x):
            total += int(np.count_nonzero(x)) * x.dtype.itemsize + (x.size + 7) // 8
        else:
            total += x.nbytes
    return total


def polynomial_sparsity(
    step: Any,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    initial_sparsity: float = 0.0,
    power: float = 3.0,
) -> jax.Array:
    r"""Zhu & Gupta's schedule ``s_f + (s_i - s_f)(1 - p)^3``, ``p = clip((t - t_0)/(t_end - t_0),
    0, 1)``: ``s_i`` up to ``begin_step``, ``s_f`` from ``end_step`` on."""
    step = jnp.asarray(step, jnp.float32)
    span = max(end_step - begin_step, 1)
    # at and after end_step the target holds (also when begin_step == end_step: one-shot)
    p = jnp.where(step >= end_step, 1.0, jnp.clip((step - begin_step) / span, 0.0, 1.0))
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - p) ** power


class PruningState(NamedTuple):
    """``count``: updates applied so far; ``mask``: ``True`` = kept (like the params);
    ``inner_state``: the wrapped optimizer's state."""

    count: jax.Array
    mask: Any
    inner_state: Any


def gradual_pruning(
    inner: optax.GradientTransformation,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    frequency: int = 100,
    initial_sparsity: float = 0.0,
    scope: str = "global",
) -> optax.GradientTransformationExtraArgs:
    r"""Wrap ``inner`` so that training prunes on Zhu & Gupta's (2017) cubic schedule.

    At update ``t`` (counting from 0), if ``begin_step <= t <= end_step`` and ``(t - begin_step)``
    is a multiple of ``frequency`` (and always at ``end_step``), the mask is recomputed by
    :func:`magnitude_mask` at sparsity :func:`polynomial_sparsity` ``(t)`` from the weights this
    update produces, ``|theta + u|``. The update returned is

    .. math::

        u'_i = u_i \ \text{if}\ m_i, \qquad u'_i = -\theta_i \ \text{otherwise},

    so ``theta + u'`` is ``theta + u`` on kept weights and exactly ``0`` on pruned ones
    (``x + (-x) = 0`` in IEEE arithmetic). Between recomputations the mask is fixed; a pruned
    weight can return only if it is among the largest at a later recomputation.

    Args:
      inner: the optimizer (any optax ``GradientTransformation``).
      final_sparsity: ``s_f`` in ``[0, 1)``.
      begin_step, end_step: ``t_0`` and ``t_0 + n dt`` in optimizer updates; ``end_step >=
        begin_step >= 0``. ``begin_step == end_step`` prunes to ``final_sparsity`` once, at that
        update, and then holds the mask: one-shot pruning followed by masked fine-tuning.
      frequency: ``dt``, updates between mask recomputations (``>= 1``).
      initial_sparsity: ``s_i`` (``<= s_f``).
      scope: ``"global"`` or ``"layer"`` as in :func:`magnitude_mask`.

    Returns:
      An optax transformation; ``update(updates, state, params)`` requires ``params``.
    """
    _check_sparsity(final_sparsity, "final_sparsity")
    _check_sparsity(initial_sparsity, "initial_sparsity")
    if initial_sparsity > final_sparsity:
        raise ValueError(
            f"initial_sparsity ({initial_sparsity}) must not exceed final_sparsity ({final_sparsity})"
        )
    if not (
        isinstance(begin_step, int) and isinstance(end_step, int) and 0 <= begin_step <= end_step
    ):
        raise ValueError(f"need 0 <= begin_step <= end_step (ints), got {begin_step}, {end_step}")
    if not isinstance(frequency, int) or frequency < 1:
        raise ValueError(f"frequency must be a positive int, got {frequency!r}")
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        mask = jax.tree.map(lambda x: jnp.ones(jnp.shape(x), bool), params)
        return PruningState(jnp.zeros((), jnp.int32), mask, inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("gradual_pruning needs params: call update(updates, state, params)")
        updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        t = state.count
        in_window = (t >= begin_step) & (t <= end_step)
        on_beat = ((t - begin_step) % frequency == 0) | (t == end_step)
        candidate = optax.apply_updates(params, updates)
        sparsity = polynomial_sparsity(t, final_sparsity, begin_step, end_step, initial_sparsity)
        mask = jax.lax.cond(
            in_window & on_beat,
            lambda: magnitude_mask(candidate, sparsity, scope),
            lambda: state.mask,
        )
        updates = jax.tree.map(
            lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype), updates, params, mask
        )
        return updates, PruningState(t + 1, mask, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
