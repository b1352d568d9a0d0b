r"""Many trials in one program: train ``K`` configurations of one model with ``jax.vmap``.

Hyper-parameters that enter the computation only as numbers -- learning rate, weight decay, the
random seed -- can be **arrays** rather than Python constants. Then one training run is a pure
function ``train(hparams, seed) -> results`` of arrays, and

.. math::

    \mathrm{vmap}(\mathrm{train})\big(\{\eta_k, \lambda_k\}_{k=1}^K, \{s_k\}_{k=1}^K\big)
    = \big(\mathrm{train}(\eta_k, \lambda_k, s_k)\big)_{k=1}^K

trains all ``K`` in one compiled program: each weight matrix gains a leading ``K`` axis, each
matmul becomes a batched matmul, and the device sees ``K`` times the work per kernel launch --
the small-model regime's fix for an underused accelerator. Hyper-parameters that change shapes
(batch size, widths) or Python control flow (dropout's rate in Flax) cannot be vmapped: group the
trials by them and vmap within each group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdl import losses

__all__ = ["make_train_fn", "vmap_trials"]


def make_train_fn(
    model: nn.Module,
    make_optimizer: Callable[[dict[str, jax.Array]], optax.GradientTransformation],
    train_data: tuple[Any, Any],
    num_steps: int,
    batch_size: int,
    eval_data: tuple[Any, Any] | None = None,
    loss_fn: Callable[..., jax.Array] = losses.cross_entropy,
) -> Callable[[dict[str, jax.Array], jax.Array], dict[str, Any]]:
    """A pure ``train(hparams, seed) -> results`` for :func:`vmap_trials` (or ``jax.jit`` alone).

    The run: ``params = model.init(key(seed))``, then ``num_steps`` steps of
    ``make_optimizer(hparams)`` on minibatches of ``batch_size`` drawn with replacement from
    ``train_data`` by the seed's key (one ``lax.scan``), dropout keyed by the seed too.

    Args:
      model: a Flax module ``model(x, train=...)`` with only a ``params`` collection.
      make_optimizer: ``hparams -> optax transform``; ``hparams`` holds scalar arrays, e.g.
        ``lambda h: optim.adamw(h["learning_rate"], weight_decay=h["weight_decay"])``.
      train_data, eval_data: ``(x, y)`` arrays (kept on device, closed over as constants).
      num_steps, batch_size: positive ints.
      loss_fn: ``loss_fn(logits, labels)`` -> scalar.

    Returns:
      ``train(hparams, seed)`` returning ``{"params", "loss" (num_steps,)}`` and, with
      ``eval_data``, ``"eval_loss"`` and ``"eval_accuracy"``.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    x, y = (jnp.asarray(a) for a in train_data)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"train_data x and y differ in length: {x.shape[0]} vs {y.shape[0]}")
    n = x.shape[0]

    def train(hparams: dict[str, jax.Array], seed: jax.Array) -> dict[str, Any]:
        key = jax.random.key(seed)
        k_init, k_steps = jax.random.split(key)
        params = model.init(k_init, x[:1])["params"]
        opt = make_optimizer(hparams)
        opt_state = opt.init(params)

        def step(carry, k):
            params, opt_state = carry
            k_batch, k_drop = jax.random.split(k)
            idx = jax.random.randint(k_batch, (batch_size,), 0, n)

            def loss_of(p):
                logits = model.apply({"params": p}, x[idx], train=True, rngs={"dropout": k_drop})
                return loss_fn(logits, y[idx])

            loss, grads = jax.value_and_grad(loss_of)(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), loss_curve = jax.lax.scan(
            step, (params, opt_state), jax.random.split(k_steps, num_steps)
        )
        out: dict[str, Any] = {"params": params, "loss": loss_curve}
        if eval_data is not None:
            xe, ye = (jnp.asarray(a) for a in eval_data)
            logits = model.apply({"params": params}, xe, train=False)
            out["eval_loss"] = loss_fn(logits, ye)
            out["eval_accuracy"] = jnp.mean(jnp.argmax(logits, -1) == ye)
        return out

    return train


def vmap_trials(
    train_fn: Callable[[dict[str, jax.Array], jax.Array], Any],
    hparams: dict[str, Any],
    seeds: Any,
) -> Any:
    """Run ``train_fn(hparams_k, seeds[k])`` for ``k = 0..K-1`` as one jitted, vmapped program.

    Args:
      train_fn: a pure function of ``(dict of scalar arrays, int seed)``, e.g. from
        :func:`make_train_fn`.
      hparams: ``{name: (K,) array}``, one value per trial.
      seeds: ``(K,)`` integer seeds.

    Returns:
      ``train_fn``'s results with a leading ``K`` axis on every leaf; result ``k`` equals
      ``jax.jit(train_fn)(hparams_k, seeds[k])`` up to float rounding (batched kernels may sum in
      a different order).
    """
    seeds = jnp.asarray(seeds)
    if seeds.ndim != 1 or not jnp.issubdtype(seeds.dtype, jnp.integer):
        raise ValueError(f"seeds must be a 1-D integer array (K,), got {seeds.dtype} {seeds.shape}")
    k = seeds.shape[0]
    hp = {}
    for name, v in hparams.items():
        v = jnp.asarray(v, jnp.float32)
        if v.shape != (k,):
            raise ValueError(f"hparams[{name!r}] must have shape ({k},) like seeds, got {v.shape}")
        hp[name] = v
    return _vmapped(train_fn)(hp, seeds)


_CACHE: dict[Any, Callable] = {}


def _vmapped(train_fn):
    # one compiled program per train_fn (jit's own cache is keyed on the function object)
    if train_fn not in _CACHE:
        _CACHE[train_fn] = jax.jit(jax.vmap(train_fn))
    return _CACHE[train_fn]
