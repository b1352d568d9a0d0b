"""``fit`` and ``evaluate``: epochs, validation, progress, callbacks, exact resume."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxdl import optim
from jaxdl.data.batching import iterate_batches, num_batches, prefetch_to_device
from jaxdl.optim.transforms import ScaleByLearningRateState
from jaxdl.train import parallel
from jaxdl.train import precision as mixed
from jaxdl.train.callbacks import Callback
from jaxdl.train.checkpoint import Checkpointer
from jaxdl.train.state import TrainState, create_train_state
from jaxdl.train.step import LossFn, make_eval_step, make_train_step


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def default_optimizer(learning_rate: float = 1e-3) -> optax.GradientTransformation:
    """The course's recipe: Adam (:func:`jaxdl.optim.adam`) with learning rate 1e-3."""
    return optim.adam(learning_rate)


def _holds_learning_rate_state(opt_state: Any) -> bool:
    is_lr = lambda n: isinstance(n, ScaleByLearningRateState)  # noqa: E731
    return any(is_lr(n) for n in jax.tree.leaves(opt_state, is_leaf=is_lr))


def _injected_learning_rate(opt_state: Any) -> float | None:
    """The rate of an ``optax.inject_hyperparams`` optimizer, if that is what we were given."""
    has_hp = lambda n: hasattr(n, "hyperparams")  # noqa: E731
    for node in jax.tree.leaves(opt_state, is_leaf=has_hp):
        if has_hp(node) and "learning_rate" in node.hyperparams:
            return float(node.hyperparams["learning_rate"])
    return None


def with_learning_rate_state(
    optimizer: optax.GradientTransformation, params: Any
) -> tuple[optax.GradientTransformation, bool]:
    """Make sure the optimizer's state carries a learning-rate ``scale`` callbacks can change.

    jaxdl's aliases end in :func:`jaxdl.optim.scale_by_learning_rate`, whose state holds the rate
    and a ``scale``: they are returned as they are (``native=True``). Any other optax optimizer is
    followed by ``scale_by_learning_rate(1.0, flip_sign=False)``, a pure multiplier on its final
    update -- which, for an update linear in the learning rate (all of optax's), is the same as
    multiplying the learning rate.

    Returns:
      ``(optimizer, native)``.
    """
    if _holds_learning_rate_state(jax.eval_shape(optimizer.init, params)):
        return optimizer, True
    return optax.chain(optimizer, optim.scale_by_learning_rate(1.0, flip_sign=False)), False


class History:
    """What ``fit`` returns, as Keras's ``History``: ``history[name]`` is a per-epoch list."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.state: TrainState | None = None

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": list(self.epoch), "history": {k: list(v) for k, v in self.history.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        h = cls()
        h.epoch = list(d["epoch"])
        h.history = {k: list(v) for k, v in d["history"].items()}
        return h


class Trainer:
    """The running fit as callbacks see it: the state, the stop flag, the learning rate."""

    def __init__(self, state: TrainState, workdir: str | None, native_learning_rate: bool = True):
        self.state = state
        self.workdir = workdir
        self.stop_training = False
        self._native = native_learning_rate
        self._injected = None if native_learning_rate else _injected_learning_rate(state.opt_state)

    @property
    def lr_scale(self) -> float:
        """The multiplier callbacks have applied to the learning rate (1.0 at the start)."""
        return optim.get_learning_rate_scale(self.state.opt_state)

    @lr_scale.setter
    def lr_scale(self, value: float) -> None:
        factor = value / self.lr_scale
        self.state = self.state.replace(
            opt_state=optim.scale_learning_rate(self.state.opt_state, factor)
        )

    @property
    def learning_rate(self) -> float | None:
        """The rate the next step uses, or ``None`` when the optimizer does not reveal it."""
        if self._native:
            return optim.get_learning_rate(self.state.opt_state)
        return None if self._injected is None else self._injected * self.lr_scale


def _check_pair(data: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError(f"{name} must be a pair (x, y) of arrays, got {type(data).__name__}")
    x, y = data
    if len(x) != len(y):
        raise ValueError(f"{name}: x and y must have the same length, got {len(x)} and {len(y)}")
    if len(x) == 0:
        raise ValueError(f"{name} is empty")
    return x, y


def _class_weight_vector(class_weight: dict[int, float], y: np.ndarray) -> jax.Array:
    """Keras's ``class_weight`` dict as a ``(K,)`` vector; classes not named weigh 1."""
    if not np.issubdtype(np.asarray(y).dtype, np.integer):
        raise ValueError("class_weight needs integer labels")
    k = int(max(np.max(y), *class_weight.keys())) + 1
    w = np.ones((k,), np.float32)
    for c, v in class_weight.items():
        if not isinstance(c, int | np.integer) or c < 0:
            raise ValueError(f"class_weight keys must be class indices >= 0, got {c!r}")
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"class_weight[{c}] must be a finite weight >= 0, got {v}")
        w[c] = v
    return jnp.asarray(w)


def _summarise(sums: dict[str, jax.Array], prefix: str = "") -> dict[str, float]:
    sums = jax.device_get(sums)
    count = float(sums["count"])
    logs = {f"{prefix}loss": float(sums["loss_sum"]) / count}
    if "correct" in sums:
        logs[f"{prefix}accuracy"] = float(sums["correct"]) / count
    return logs


def _evaluate(eval_step, state: TrainState, x, y, batch_size: int, prefix: str = ""):
    n = len(x)
    b = min(batch_size, n)
    sums = None
    for start in range(0, n, b):
        xb, yb = x[start : start + b], y[start : start + b]
        mask = np.ones((b,), np.float32)
        if len(xb) < b:  # pad the last batch: one compiled shape for the whole evaluation
            pad = b - len(xb)
            mask[len(xb) :] = 0.0
            xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
            yb = np.concatenate([yb, np.repeat(yb[-1:], pad, axis=0)])
        m = eval_step(state, xb, yb, mask)
        sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
    return _summarise(sums, prefix)


def evaluate(
    model: nn.Module,
    state: TrainState,
    data: tuple[np.ndarray, np.ndarray],
    batch_size: int = 1000,
    loss_fn: LossFn | None = None,
) -> dict[str, float]:
    """Mean loss (and accuracy, for classifiers) of ``state`` on ``data`` in inference mode."""
    x, y = _check_pair(data, "data")
    return _evaluate(make_eval_step(model, loss_fn=loss_fn), state, x, y, batch_size)


def _run_epoch(train_step, state, batches, steps: int, desc: str, verbose: bool):
    """One pass over ``batches``; returns the new state and the epoch's metric sums.

    The loss of step ``t`` is read on the host only after step ``t + 1`` has been dispatched, so
    the device never waits for the NaN check or the progress bar; the error still names step ``t``.
    """
    bar = tqdm(total=steps, desc=desc, disable=not verbose, unit="batch")
    sums: dict[str, jax.Array] | None = None
    pending: tuple[int, dict[str, jax.Array]] | None = None
    start, seen = time.perf_counter(), 0

    def check(step: int, metrics: dict[str, jax.Array]) -> None:
        loss = float(metrics["loss_sum"]) / float(metrics["count"])
        if not np.isfinite(loss):
            bar.close()
            raise NonFiniteLossError(
                f"training loss is {loss} at step {step} ({desc}); stopping. Common causes: a "
                "learning rate too large, log of 0, bad input values."
            )
        postfix = {k: f"{v:.4f}" for k, v in _summarise(sums).items()}
        postfix["ex/s"] = f"{seen / max(time.perf_counter() - start, 1e-9):.0f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)

    step = int(state.step)
    for xb, yb in batches:
        state, metrics = train_step(state, xb, yb)
        seen += len(xb)
        sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
        if pending is not None:
            check(*pending)
        pending = (step, metrics)
        step += 1
    if pending is None:
        raise ValueError(
            "an epoch produced no batch: is batch_size larger than the data "
            "with drop_remainder=True?"
        )
    check(*pending)
    bar.close()
    return state, sums


def fit(
    model: nn.Module,
    optimizer: optax.GradientTransformation | None = None,
    train_data: tuple[np.ndarray, np.ndarray] | None = None,
    val_data: tuple[np.ndarray, np.ndarray] | None = None,
    epochs: int = 1,
    batch_size: int = 128,
    callbacks: Sequence[Callback] = (),
    seed: int = 0,
    workdir: str | None = None,
    *,
    loss_fn: LossFn | None = None,
    class_weight: dict[int, float] | None = None,
    augment: Callable[..., Any] | None = None,
    shuffle: bool = True,
    drop_remainder: bool = False,
    eval_batch_size: int = 1000,
    verbose: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    num_devices: int | None = None,
    shard_params: bool = False,
    precision: str | mixed.Policy = "float32",
) -> History:
    """Train ``model`` for ``epochs`` epochs, Keras-style; return the :class:`History`.

    Each epoch: shuffled batches (the permutation depends only on ``(seed, epoch)``) through the
    jitted, state-donating train step; then validation on ``val_data``; then the callbacks.
    A tqdm bar shows the running loss, accuracy and examples/s.

    With ``workdir``, the state, history and callback counters are checkpointed (orbax, atomic)
    after every epoch in ``<workdir>/resume``, and a later ``fit`` with the same ``workdir``
    continues after the last completed epoch: an interrupted and resumed run ends with the same
    parameters and optimizer state, bit for bit, as an uninterrupted one.

    Args:
      model: a flax.linen module, ``model(x, train=...)``.
      optimizer: an optax ``GradientTransformation`` (default: :func:`jaxdl.optim.adam` at 1e-3).
        See :func:`with_learning_rate_state` for how ``ReduceLROnPlateau`` changes its rate.
      train_data, val_data: ``(x, y)`` NumPy arrays.
      epochs, batch_size: as Keras.
      callbacks: e.g. ``[EarlyStopping(patience=5), ModelCheckpoint(save_best_only=True),
        ReduceLROnPlateau(factor=0.5, patience=3)]``.
      seed: initialisation, shuffling, dropout and augmentation all follow from it.
      workdir: directory for resume checkpoints (and ModelCheckpoint's default location).
      loss_fn: ``loss_fn(outputs, labels, reduction="none")`` (default
        :func:`jaxdl.losses.cross_entropy`).
      class_weight: Keras's ``{class: weight}``; weighs each training example's loss (not the
        validation loss).
      augment: ``augment(key, x) -> x``, or ``augment(key, x, y) -> (x, y_soft)`` for label-mixing
        transforms such as mixup; run on device inside the jitted step.
      mesh, num_devices: data-parallel training (:mod:`jaxdl.train.parallel`): each batch split
        over the mesh's ``"data"`` axis, the state replicated. With neither, every device is used
        when there are several and ``batch_size`` divides among them; a short final batch is
        replicated. Results equal single-device training up to float32 rounding.
      shard_params: with a mesh, split parameters and optimizer state over the devices (FSDP).
      precision: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (:mod:`jaxdl.train.precision`):
        the model computes in that dtype through its ``dtype`` attribute, parameters stay float32;
        float16 adds dynamic loss scaling.

    Raises:
      NonFiniteLossError: when a training loss is NaN or infinite, naming the step.
    """
    if train_data is None:
        raise ValueError("fit needs train_data=(x, y)")
    x, y = _check_pair(train_data, "train_data")
    if val_data is not None:
        xv, yv = _check_pair(val_data, "val_data")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    weights = _class_weight_vector(class_weight, y) if class_weight else None
    policy = mixed.get_policy(precision)
    model = mixed.apply_policy(model, policy)
    mesh = parallel.resolve_mesh(mesh, num_devices, batch_size)
    verbose = verbose and jax.process_index() == 0

    optimizer = optimizer if optimizer is not None else default_optimizer()
    param_shapes = jax.eval_shape(
        lambda: create_train_state(model, optax.identity(), x[:1], seed).params
    )
    tx, native = with_learning_rate_state(optimizer, param_shapes)
    if policy.needs_loss_scaling:
        tx = mixed.dynamic_loss_scale(tx)
    state = create_train_state(model, tx, x[:1], seed)
    if mesh is not None:
        shardings = parallel.state_shardings(state, mesh, shard_params)
        state = parallel.put_global(state, shardings)
    history = History()
    start_epoch = 0
    resume = Checkpointer(os.path.join(workdir, "resume"), max_to_keep=1) if workdir else None
    trainer = Trainer(state, workdir, native)
    callbacks = list(callbacks)
    for cb in callbacks:
        cb.on_train_begin(trainer)

    def resume_target():
        return {"train": trainer.state, "callbacks": [cb.array_target(trainer) for cb in callbacks]}

    if resume is not None and resume.latest_step() is not None:
        restored, meta = resume.restore(resume_target())
        trainer.state = restored["train"]
        if mesh is not None:
            trainer.state = jax.device_put(trainer.state, shardings)
        for cb, cb_state, cb_arrays in zip(
            callbacks, meta["callbacks"], restored["callbacks"], strict=True
        ):
            cb.set_state(cb_state)
            cb.set_arrays(cb_arrays)
        history = History.from_dict(meta["history"])
        start_epoch = meta["epoch"] + 1
        trainer.stop_training = meta["stop_training"]
        if verbose:
            print(f"resuming from {resume.directory} after epoch {start_epoch}")

    step_kwargs = {"loss_fn": loss_fn, "class_weights": weights, "augment": augment}
    if mesh is None:
        train_step = make_train_step(model, tx, **step_kwargs)
    else:
        train_step = parallel.make_sharded_train_step(model, tx, mesh, shardings, **step_kwargs)
    eval_step = make_eval_step(model, loss_fn=loss_fn)
    steps = num_batches(len(x), batch_size, drop_remainder)

    for epoch in range(start_epoch, epochs):
        if trainer.stop_training:
            break
        batches = iterate_batches(
            (x, y),
            batch_size,
            shuffle=shuffle,
            seed=seed,
            epoch=epoch,
            drop_remainder=drop_remainder,
        )
        if mesh is None:
            batches = prefetch_to_device(batches)
        else:  # rows split over the devices (a short last batch: replicated)
            batches = parallel.prefetch_sharded(batches, mesh)
        desc = f"epoch {epoch + 1}/{epochs}"
        trainer.state, sums = _run_epoch(train_step, trainer.state, batches, steps, desc, verbose)
        logs = _summarise(sums)
        if val_data is not None:
            logs.update(_evaluate(eval_step, trainer.state, xv, yv, eval_batch_size, prefix="val_"))
        lr = trainer.learning_rate
        if lr is not None:
            logs["lr"] = lr
        logs["lr_scale"] = trainer.lr_scale
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs, trainer)
        history.append(epoch, logs)
        if verbose:
            print(
                f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k}={v:.4g}" for k, v in logs.items())
            )
        if resume is not None:
            meta = {
                "epoch": epoch,
                "history": history.to_dict(),
                "callbacks": [cb.get_state() for cb in callbacks],
                "stop_training": trainer.stop_training,
            }
            arrays = {"train": trainer.state, "callbacks": [cb.get_arrays() for cb in callbacks]}
            resume.save(epoch, arrays, meta)

    for cb in callbacks:
        cb.on_train_end(trainer)
    history.state = trainer.state
    return history
