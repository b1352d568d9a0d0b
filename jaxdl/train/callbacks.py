"""Keras-style callbacks: ``EarlyStopping``, ``ModelCheckpoint``, ``ReduceLROnPlateau``,
``CSVLogger`` and ``TensorBoard``, and the :class:`RunContext` they see.

The decisions follow Keras 3's rules step for step (which epoch stops, which epoch saves, which
epoch reduces, which weights ``restore_best_weights`` puts back), so the course's callback list
behaves here as it does there. Every "did it improve" test is :func:`jaxdl.optim.is_improvement`.
Each callback exposes its counters through ``get_state``/``set_state`` (and arrays through
``get_arrays``/``set_arrays``) so that a resumed ``fit`` continues them exactly.

Dependencies run one way: ``loop.py`` (``fit``) imports this module, never the reverse.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any

import jax
import numpy as np

from jaxdl.optim.plateau import is_improvement
from jaxdl.train.checkpoint import Checkpointer
from jaxdl.train.optimizer import RunOptimizer
from jaxdl.train.state import TrainState


class RunContext:
    """A running ``fit`` as callbacks see it.

    Attributes:
      state: the current :class:`~jaxdl.train.TrainState` (a callback may replace it).
      workdir: the run's directory, or ``None``.
      stop_training: set it to ``True`` to end training after this epoch.
    """

    def __init__(
        self, state: TrainState, workdir: str | None = None, optimizer: RunOptimizer | None = None
    ):
        self.state = state
        self.workdir = workdir
        self.stop_training = False
        self.optimizer = optimizer or RunOptimizer(tx=None, native=True, loss_scaled=False)

    @property
    def learning_rate(self) -> float | None:
        """The rate the next step uses, or ``None`` when the optimizer does not reveal it."""
        return self.optimizer.learning_rate(self.state.opt_state)

    @property
    def lr_scale(self) -> float:
        """The multiplier callbacks have applied to the learning rate (1.0 at the start)."""
        return self.optimizer.lr_scale(self.state.opt_state)

    @lr_scale.setter
    def lr_scale(self, value: float) -> None:
        factor = value / self.lr_scale
        opt_state = self.optimizer.scale_learning_rate(self.state.opt_state, factor)
        self.state = self.state.replace(opt_state=opt_state)

    def user_state(self) -> TrainState:
        """The state with the optimizer state exactly as the user's optimizer builds it: what
        checkpoints store, so they restore into ``create_train_state(model, optimizer, x)``."""
        return self.state.replace(opt_state=self.optimizer.split(self.state.opt_state)[0])


def _variables_of(state: TrainState) -> dict[str, Any]:
    out = {"params": state.params}
    if jax.tree.leaves(state.batch_stats):
        out["batch_stats"] = state.batch_stats
    return out


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

    def on_train_begin(self, ctx: RunContext) -> None:
        pass

    def on_train_batch_end(self, step: int, metrics: dict[str, Any], ctx: RunContext) -> None:
        """After each train step. ``metrics`` are device arrays of sums (``loss_sum``, ``count``,
        ``correct``): reading them waits for the step, so read them only every few steps."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float], ctx: RunContext) -> None:
        pass

    def on_train_end(self, ctx: RunContext) -> None:
        pass

    # Resume support: JSON-able counters, and arrays (a pytree) when the callback holds any.
    def get_state(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        pass

    def array_target(self, ctx: RunContext) -> Any:
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
    ``restore_best_weights`` puts back the weights (parameters and BatchNorm statistics) of the
    best epoch at the end of training, whether or not it stopped early -- Keras 3's rule.
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
        return is_improvement(value, reference, self.mode, atol=self.min_delta)

    def on_epoch_end(self, epoch, logs, ctx):
        current = _monitor_value(logs, self.monitor, "EarlyStopping")
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = jax.device_get(_variables_of(ctx.state))
            self.best_epoch = epoch
        self.wait += 1
        if self._improves(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                # A host copy: the device buffers are donated to the next train step.
                self.best_weights = jax.device_get(_variables_of(ctx.state))
            if self.baseline is None or self._improves(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            ctx.stop_training = True

    def on_train_end(self, ctx):
        if self.restore_best_weights and self.best_weights is not None:
            best = jax.tree.map(jax.numpy.asarray, self.best_weights)
            ctx.state = ctx.state.replace(**best)

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

    def array_target(self, ctx):
        return _variables_of(ctx.state) if self.restore_best_weights else {}

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

    def on_train_begin(self, ctx):
        if self.directory is None:
            if ctx.workdir is None:
                raise ValueError("ModelCheckpoint needs a directory, or fit(..., workdir=...)")
            self.directory = os.path.join(ctx.workdir, "checkpoints")
        self._checkpointer = Checkpointer(self.directory, max_to_keep=self.max_to_keep)

    @property
    def checkpointer(self) -> Checkpointer:
        if self._checkpointer is None:
            raise RuntimeError("ModelCheckpoint is not attached to a running fit yet")
        return self._checkpointer

    def on_epoch_end(self, epoch, logs, ctx):
        if self.save_best_only:
            current = _monitor_value(logs, self.monitor, "ModelCheckpoint")
            if not is_improvement(current, self.best, self.mode):
                return
            self.best = current
        self.checkpointer.save(epoch + 1, ctx.user_state(), {"epoch": epoch + 1, "logs": logs})
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

    The rate lives in the optimizer state as a multiplier (see :mod:`jaxdl.train.optimizer`), so the change
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

    def on_train_begin(self, ctx):
        if self.min_lr > 0 and ctx.learning_rate is None:
            raise ValueError(
                "ReduceLROnPlateau(min_lr>0) needs to know the learning rate, but this optimizer "
                "does not keep it in its state; use a jaxdl.optim optimizer, "
                "optax.inject_hyperparams, or min_lr=0"
            )

    def _improves(self, current: float) -> bool:
        return is_improvement(current, self.best, self.mode, atol=abs(self.min_delta))

    def on_epoch_end(self, epoch, logs, ctx):
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
                lr = ctx.learning_rate
                if lr is None:  # rate unknown (then min_lr == 0): scale it directly
                    ctx.lr_scale = ctx.lr_scale * self.factor
                elif np.float32(lr) > np.float32(self.min_lr):
                    new_lr = max(lr * self.factor, self.min_lr)
                    ctx.lr_scale = ctx.lr_scale * new_lr / lr
                else:
                    return
                self.cooldown_counter = self.cooldown
                self.wait = 0

    def get_state(self):
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def set_state(self, state):
        self.best, self.wait = state["best"], state["wait"]
        self.cooldown_counter = state["cooldown_counter"]


class CSVLogger(Callback):
    """Write each epoch's logs as a row of a CSV file, as Keras's ``CSVLogger``.

    Columns: ``epoch`` then the log names in sorted order (header written once); a value missing
    from an epoch is written ``NA``. ``append=True`` continues an existing file without a second
    header. A resumed ``fit`` appends to the file of the interrupted run.
    """

    def __init__(self, filename: str, separator: str = ",", append: bool = False):
        self.filename = filename
        self.separator = separator
        self.append = append
        self.keys: list[str] | None = None

    def on_epoch_end(self, epoch, logs, ctx):
        if self.keys is None:
            self.keys = sorted(logs)
        exists = os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
        mode = "a" if (self.append and exists) else "w"
        os.makedirs(os.path.dirname(os.path.abspath(self.filename)), exist_ok=True)
        with open(self.filename, mode, newline="") as f:
            writer = csv.writer(f, delimiter=self.separator)
            if mode == "w":
                writer.writerow(["epoch", *self.keys])
            writer.writerow([epoch, *(logs.get(k, "NA") for k in self.keys)])
        self.append = True  # later epochs (and a resumed run) add rows

    def get_state(self):
        return {"keys": self.keys, "append": self.append}

    def set_state(self, state):
        self.keys, self.append = state["keys"], state["append"]


class TensorBoard(Callback):
    """Scalars for TensorBoard, written with ``tensorboardX`` (a maintained event-file writer).

    Per epoch, as Keras: training logs under ``<log_dir>/train`` and ``val_*`` logs (without the
    prefix) under ``<log_dir>/validation``, tagged ``epoch_<name>`` (``epoch_loss``,
    ``epoch_accuracy``, ``epoch_learning_rate``). With ``update_freq=N`` also the loss of every
    ``N``-th training batch, tagged ``batch_loss`` at the global step.

    Args:
      log_dir: default ``<workdir>/tensorboard``.
      update_freq: ``"epoch"`` or a number of steps.
    """

    def __init__(self, log_dir: str | None = None, update_freq: str | int = "epoch"):
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq > 0):
            raise ValueError(f"update_freq must be 'epoch' or a positive int, got {update_freq!r}")
        self.log_dir = log_dir
        self.update_freq = update_freq
        self._writers: dict[str, Any] = {}

    def on_train_begin(self, ctx):
        if self.log_dir is None:
            if ctx.workdir is None:
                raise ValueError("TensorBoard needs a log_dir, or fit(..., workdir=...)")
            self.log_dir = os.path.join(ctx.workdir, "tensorboard")
        from tensorboardX import SummaryWriter

        for split in ("train", "validation"):
            self._writers[split] = SummaryWriter(os.path.join(self.log_dir, split))

    def on_train_batch_end(self, step, metrics, ctx):
        if self.update_freq == "epoch" or (step + 1) % self.update_freq:
            return
        loss = float(metrics["loss_sum"]) / max(float(metrics["count"]), 1.0)
        self._writers["train"].add_scalar("batch_loss", loss, step + 1)

    def on_epoch_end(self, epoch, logs, ctx):
        for name, value in logs.items():
            split, tag = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
            tag = "learning_rate" if tag == "lr" else tag
            self._writers[split].add_scalar(f"epoch_{tag}", float(value), epoch)
        for w in self._writers.values():
            w.flush()

    def on_train_end(self, ctx):
        for w in self._writers.values():
            w.close()
        self._writers = {}
