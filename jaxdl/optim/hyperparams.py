"""Reading and changing a running optimizer's learning rate from outside ``jit``.

Every jaxdl alias ends in :func:`~jaxdl.optim.scale_by_learning_rate`, whose state carries the
schedule's current value and a float32 ``scale`` (1 at the start). The functions here find those
states anywhere inside an optimizer state (chains, ``optax.masked``, ``optax.MultiSteps``, ...)
and return a new state: arrays keep their dtype and shape, so a jitted step does not recompile.
A Keras-style ``ReduceLROnPlateau`` callback between epochs is then::

    state = state.replace(opt_state=optim.scale_learning_rate(state.opt_state, 0.5))
    optim.get_learning_rate(state.opt_state)   # -> the rate the next update will use
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.optim.plateau import ReduceOnPlateauState
from jaxdl.optim.transforms import ScaleByLearningRateState


def _find(opt_state: Any, cls: type) -> list:
    found = []

    def visit(x):
        if isinstance(x, cls):
            found.append(x)
        return x

    jax.tree.map(visit, opt_state, is_leaf=lambda x: isinstance(x, cls))
    return found


def _replace(opt_state: Any, fn) -> Any:
    states = _find(opt_state, ScaleByLearningRateState)
    if not states:
        raise ValueError(
            "opt_state holds no ScaleByLearningRateState: build the optimizer with a jaxdl.optim "
            "alias or scale_by_learning_rate"
        )
    is_lr = lambda x: isinstance(x, ScaleByLearningRateState)  # noqa: E731
    return jax.tree.map(lambda x: fn(x) if is_lr(x) else x, opt_state, is_leaf=is_lr)


def has_learning_rate_state(opt_state: Any) -> bool:
    """Whether ``opt_state`` holds a :class:`ScaleByLearningRateState` (every jaxdl alias does)."""
    return bool(_find(opt_state, ScaleByLearningRateState))


def injected_learning_rate(opt_state: Any) -> float | None:
    """The ``learning_rate`` of an ``optax.inject_hyperparams`` state inside ``opt_state``, or
    ``None``. A numeric injected rate is the one the next update uses (it is what a user edits);
    an injected *schedule* is stored as the value of the last update."""
    has_hp = lambda n: hasattr(n, "hyperparams") and isinstance(n.hyperparams, dict)  # noqa: E731
    for node in jax.tree.leaves(opt_state, is_leaf=has_hp):
        if has_hp(node) and "learning_rate" in node.hyperparams:
            return float(np.asarray(node.hyperparams["learning_rate"]))
    return None


def get_learning_rate(opt_state: Any) -> float:
    """The learning rate the next update will use.

    For jaxdl's optimizers: the schedule's value times the state's ``scale``; under
    ``optax.inject_hyperparams`` the injected ``learning_rate`` (what the next update reads) times
    any ``scale``; in both cases times the ``scale`` of any :func:`~jaxdl.optim.reduce_on_plateau`
    in the chain.

    Raises:
      ValueError: the state reveals no learning rate.
    """
    states = _find(opt_state, ScaleByLearningRateState)
    injected = injected_learning_rate(opt_state)
    if not states and injected is None:
        raise ValueError(
            "opt_state reveals no learning rate: build the optimizer with a jaxdl.optim alias, "
            "scale_by_learning_rate, or optax.inject_hyperparams"
        )
    if injected is not None:  # the inner states' rates lag behind an edited injected value
        lr = injected * float(np.prod([np.asarray(s.scale) for s in states]))
    else:
        lr = 1.0
        for s in states:
            lr *= float(np.asarray(s.learning_rate)) * float(np.asarray(s.scale))
    for s in _find(opt_state, ReduceOnPlateauState):
        lr *= float(np.asarray(s.scale))
    return lr


def get_learning_rate_scale(opt_state: Any) -> float:
    """The product of the ``scale`` fields of the learning-rate states (1.0 if never changed)."""
    states = _find(opt_state, ScaleByLearningRateState)
    if not states:
        raise ValueError("opt_state holds no ScaleByLearningRateState")
    return float(np.prod([np.asarray(s.scale) for s in states]))


def scale_learning_rate(opt_state: Any, factor: float) -> Any:
    """Return ``opt_state`` with the learning rate multiplied by ``factor`` (>= 0) from now on.

    Under a schedule the schedule goes on and is multiplied: rate(t) = schedule(t) * scale.
    """
    if not factor >= 0:
        raise ValueError(f"factor must be a non-negative number, got {factor!r}")
    return _replace(
        opt_state, lambda s: s._replace(scale=jnp.asarray(s.scale * factor, jnp.float32))
    )


def set_learning_rate(opt_state: Any, value: float) -> Any:
    """Return ``opt_state`` whose next update uses learning rate ``value`` (>= 0).

    Sets the scale to ``value / schedule(current step)``; the schedule keeps running afterwards.
    """
    if not value >= 0:
        raise ValueError(f"value must be a non-negative number, got {value!r}")
    current = get_learning_rate(opt_state)
    if current == 0.0:
        raise ValueError("cannot set the learning rate by rescaling: the current rate is 0")
    return scale_learning_rate(opt_state, value / current)
