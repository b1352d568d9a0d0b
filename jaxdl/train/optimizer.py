"""The user's optimizer as ``fit`` runs it: a learning rate callbacks can change, loss scaling,
and checkpoints in the user's own optimizer-state structure.

``fit`` needs two things the user's ``GradientTransformation`` may not have: a learning rate that
``ReduceLROnPlateau`` can lower between epochs without recompiling, and (for float16) dynamic
loss scaling. :func:`prepare_optimizer` adds what is missing and returns a
:class:`RunOptimizer` that knows how it wrapped the optimizer, so that

- checkpoints hold the optimizer state exactly as ``optimizer.init(params)`` builds it (they
  restore into ``create_train_state(model, optimizer, x)``), with the learning-rate multiplier and
  the loss-scale counters kept beside it (:meth:`RunOptimizer.split` / :meth:`RunOptimizer.join`);
- the learning rate is read and changed through :mod:`jaxdl.optim`'s functions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from jaxdl import optim
from jaxdl.train import precision as mixed


@dataclasses.dataclass(frozen=True)
class RunOptimizer:
    """How ``fit`` wrapped the user's optimizer.

    Attributes:
      tx: the transformation the train step runs.
      native: the user's optimizer keeps its own :class:`~jaxdl.optim.ScaleByLearningRateState`
        (every jaxdl alias); otherwise ``tx`` appends ``scale_by_learning_rate(1, flip_sign=False)``,
        a multiplier on the final update -- for an update linear in the learning rate (all of
        optax's) the same as multiplying the learning rate.
      loss_scaled: ``tx`` is wrapped in :func:`jaxdl.train.precision.dynamic_loss_scale`.
    """

    tx: optax.GradientTransformation
    native: bool
    loss_scaled: bool

    def split(self, opt_state: Any) -> tuple[Any, dict[str, Any]]:
        """``(the user's optimizer state, what fit added)``."""
        extra: dict[str, Any] = {}
        if self.loss_scaled:
            extra["loss_scale"] = opt_state._replace(inner_state=())
            opt_state = opt_state.inner_state
        if not self.native:
            opt_state, extra["lr_control"] = opt_state
        return opt_state, extra

    def join(self, user_state: Any, extra: dict[str, Any]) -> Any:
        """The inverse of :meth:`split`."""
        state = user_state if self.native else (user_state, extra["lr_control"])
        if self.loss_scaled:
            state = extra["loss_scale"]._replace(inner_state=state)
        return state

    def learning_rate(self, opt_state: Any) -> float | None:
        """The rate the next update uses, or ``None`` when the optimizer does not reveal it."""
        if self.native:
            return optim.get_learning_rate(opt_state)
        injected = optim.injected_learning_rate(opt_state)
        return None if injected is None else injected * self.lr_scale(opt_state)

    def lr_scale(self, opt_state: Any) -> float:
        """The multiplier callbacks have applied to the learning rate (1.0 at the start)."""
        return optim.get_learning_rate_scale(opt_state)

    def scale_learning_rate(self, opt_state: Any, factor: float) -> Any:
        return optim.scale_learning_rate(opt_state, factor)


def prepare_optimizer(
    optimizer: optax.GradientTransformation, params: Any, loss_scaling: bool = False
) -> RunOptimizer:
    """Wrap ``optimizer`` for ``fit``; ``params`` may be arrays or ``jax.ShapeDtypeStruct``
    leaves."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    native = optim.has_learning_rate_state(jax.eval_shape(optimizer.init, params))
    tx = optimizer if native else optax.chain(optimizer, optim.scale_by_learning_rate(1.0, False))
    if loss_scaling:
        tx = mixed.dynamic_loss_scale(tx)
    return RunOptimizer(tx=tx, native=native, loss_scaled=loss_scaling)
