"""Keras-style callbacks: ``EarlyStopping``, ``ModelCheckpoint``, ``ReduceLROnPlateau``.

The decisions follow Keras 3's rules step for step (which epoch stops, which epoch saves, which
epoch reduces), so the course's callback list behaves here as it does there. A callback sees the
running :class:`~jaxdl.train.loop.Trainer` (its ``state``, ``stop_training``, ``lr_scale``) and
the epoch's ``logs``. Each exposes its counters through ``get_state``/``set_state`` so that a
resumed ``fit`` continues them exactly.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from jaxdl.train.checkpoint import Checkpointer

if TYPE_CHECKING:
    from jaxdl.train.loop import Trainer


def _resolve_mode(mode: str, monitor: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if ("acc" in monitor or "auc" in monitor) else "min"
    return mode


def _monitor_value(logs: dict, monitor: str, who: str) -> float:
    if monitor not in logs:
        raise ValueError(
            f"{who}: monitor={monitor!r} is not among the epoch's metrics {sorted(logs)}; "
            "validation metrics need fit(..., val_data=...)"
        )
    return float(logs[monitor])


class Callback:
    """Base class: override the hooks you need."""

    def on_train_begin(self, trainer: Trainer) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, float], trainer: Trainer) -> None:
        pass

    def on_train_end(self, trainer: Trainer) -> None:
        pass

    # Resume support: JSON-able counters, and arrays (a pytree) when the callback holds any.
    def get_state(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        pass

    def array_target(self, trainer: Trainer) -> Any:
        """A pytree shaped like the arrays this callback must checkpoint (``{}`` if none)."""
        return {}

    def get_arrays(self) -> Any:
        return {}

    def set_arrays(self, arrays: Any) -> None:
        pass


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    Improvement (mode ``min``): ``current < best - min_delta``; (``max``): ``current > best +
    min_delta``; the first epoch always improves. Each epoch ``wait += 1``; an improvement resets it
    to 0; training stops at the end of the first epoch with ``wait >= patience`` (never at epoch 0).
    ``restore_best_weights`` puts back the parameters of the best epoch when training stops early.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        mode: str = "auto",
        restore_best_weights: bool = False,
        baseline: float | None = None,
        start_from_epoch: int = 0,
    ):
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.monitor = monitor
        self.mode = _resolve_mode(mode, monitor)
        self.min_delta = abs(min_delta)
        self.patience = patience
        self.restore_best_weights = restore_best_weights
        self.baseline = baseline
        self.start_from_epoch = start_from_epoch
        self.wait = 0
        self.best: float | None = None
        self.best_epoch = 0
        self.stopped_epoch = 0
        self.best_weights: Any = None

    def _improves(self, value: float, reference: float | None) -> bool:
        if reference is None:
            return True
        if self.mode == "min":
            return value + self.min_delta < reference
        return value - self.min_delta > reference

    def on_epoch_end(self, epoch, logs, trainer):
        current = _monitor_value(logs, self.monitor, "EarlyStopping")
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = jax.device_get(trainer.state.params)
        self.wait += 1
        if self._improves(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                # A host copy: the device buffers are donated to the next train step.
                self.best_weights = jax.device_get(trainer.state.params)
            if self.baseline is None or self._improves(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            trainer.stop_training = True

    def on_train_end(self, trainer):
        if self.stopped_epoch > 0 and self.restore_best_weights and self.best_weights is not None:
            params = jax.tree.map(jax.numpy.asarray, self.best_weights)
            trainer.state = trainer.state.replace(params=params)

    def get_state(self):
        return {
            "wait": self.wait,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
            "has_best_weights": self.best_weights is not None,
        }

    def set_state(self, state):
        self.wait, self.best = state["wait"], state["best"]
        self.best_epoch, self.stopped_epoch = state["best_epoch"], state["stopped_epoch"]

    def array_target(self, trainer):
        return trainer.state.params if self.restore_best_weights else {}

    def get_arrays(self):
        return (
            self.best_weights
            if (self.restore_best_weights and self.best_weights is not None)
            else {}
        )

    def set_arrays(self, arrays):
        if self.restore_best_weights:
            self.best_weights = jax.device_get(arrays)


class ModelCheckpoint(Callback):
    """Save the train state at the end of an epoch with orbax (atomic writes).

    With ``save_best_only`` a checkpoint is written only when ``monitor`` improves on the best so
    far (``<`` in mode ``min``, ``>`` in mode ``max``, no ``min_delta``, as Keras); otherwise every
    epoch. The ``max_to_keep`` most recent checkpoints are kept, so with ``save_best_only`` they are
    the best ones. Checkpoint numbers are epoch numbers (1-based, as Keras names its files).

    Args:
      directory: where to write; default ``<workdir>/checkpoints``.
    """

    def __init__(
        self,
        directory: str | None = None,
        monitor: str = "val_loss",
        save_best_only: bool = False,
        mode: str = "auto",
        max_to_keep: int | None = 1,
    ):
        self.directory = directory
        self.monitor = monitor
        self.mode = _resolve_mode(mode, monitor)
        self.save_best_only = save_best_only
        self.max_to_keep = max_to_keep
        self.best = math.inf if self.mode == "min" else -math.inf
        self.saved_epochs: list[int] = []
        self._checkpointer: Checkpointer | None = None

    def on_train_begin(self, trainer):
        if self.directory is None:
            if trainer.workdir is None:
                raise ValueError("ModelCheckpoint needs a directory, or fit(..., workdir=...)")
            self.directory = os.path.join(trainer.workdir, "checkpoints")
        self._checkpointer = Checkpointer(self.directory, max_to_keep=self.max_to_keep)

    @property
    def checkpointer(self) -> Checkpointer:
        if self._checkpointer is None:
            raise RuntimeError("ModelCheckpoint is not attached to a running fit yet")
        return self._checkpointer

    def on_epoch_end(self, epoch, logs, trainer):
        if self.save_best_only:
            current = _monitor_value(logs, self.monitor, "ModelCheckpoint")
            better = current < self.best if self.mode == "min" else current > self.best
            if not better:
                return
            self.best = current
        self.checkpointer.save(epoch + 1, trainer.state, {"epoch": epoch + 1, "logs": logs})
        self.saved_epochs.append(epoch + 1)

    def get_state(self):
        return {"best": self.best, "saved_epochs": self.saved_epochs}

    def set_state(self, state):
        self.best, self.saved_epochs = state["best"], list(state["saved_epochs"])


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` stops improving.

    Keras's rule: improvement is ``current < best - min_delta`` (mode ``min``) or ``current > best +
    min_delta`` (``max``), with absolute ``min_delta`` -- so negative losses are handled like any
    others. While in cooldown, ``wait`` stays 0. Otherwise a non-improving epoch increments
    ``wait``; at ``wait >= patience`` the rate becomes ``max(lr * factor, min_lr)`` (if it is above
    ``min_lr``), cooldown starts and ``wait`` resets.

    The rate lives in the optimizer state as a multiplier (see :func:`jaxdl.train.loop.with_learning_rate_state`), so the change
    takes effect at the next step without recompiling. ``min_lr`` is absolute and needs the rate:
    every :mod:`jaxdl.optim` optimizer and ``optax.inject_hyperparams`` reveal it; with another
    optimizer leave ``min_lr=0``.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if patience < 0 or cooldown < 0 or min_lr < 0:
            raise ValueError(
                f"patience, cooldown and min_lr must be >= 0, got {patience}, {cooldown}, {min_lr}"
            )
        self.monitor = monitor
        self.factor = factor
        self.patience = patience
        self.mode = _resolve_mode(mode, monitor)
        self.min_delta = min_delta
        self.cooldown = cooldown
        self.min_lr = min_lr
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def on_train_begin(self, trainer):
        if self.min_lr > 0 and trainer.learning_rate is None:
            raise ValueError(
                "ReduceLROnPlateau(min_lr>0) needs to know the learning rate, but this optimizer "
                "does not keep it in its state; use a jaxdl.optim optimizer, "
                "optax.inject_hyperparams, or min_lr=0"
            )

    def _improves(self, current: float) -> bool:
        if self.mode == "min":
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs, trainer):
        current = _monitor_value(logs, self.monitor, "ReduceLROnPlateau")
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improves(current):
            self.best = current
            self.wait = 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                lr = trainer.learning_rate
                if lr is None:  # rate unknown (then min_lr == 0): scale it directly
                    trainer.lr_scale = trainer.lr_scale * self.factor
                elif np.float32(lr) > np.float32(self.min_lr):
                    new_lr = max(lr * self.factor, self.min_lr)
                    trainer.lr_scale = trainer.lr_scale * new_lr / lr
                else:
                    return
                self.cooldown_counter = self.cooldown
                self.wait = 0

    def get_state(self):
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def set_state(self, state):
        self.best, self.wait = state["best"], state["wait"]
        self.cooldown_counter = state["cooldown_counter"]
