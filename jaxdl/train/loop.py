"""``fit``, ``evaluate`` and ``predict``: epochs, validation, progress, callbacks, exact resume.

``fit`` reads as the story of a run, each chapter a small function here or a module of its own:
:func:`_setup` (inputs checked once, precision policy, mesh, optimizer, state, compiled step),
:class:`~jaxdl.train.resume.ResumeCheckpoint` (save and restore of the run's progress),
:func:`_train_epoch` (one pass over the batches), :func:`_evaluate` (validation), and the
callbacks (:mod:`jaxdl.train.callbacks`).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxdl import optim
from jaxdl.data.batching import prefetch_to_device
from jaxdl.train import inputs, parallel
from jaxdl.train import precision as mixed
from jaxdl.train.callbacks import Callback, RunContext
from jaxdl.train.history import History
from jaxdl.train.optimizer import RunOptimizer, prepare_optimizer
from jaxdl.train.resume import ResumeCheckpoint
from jaxdl.train.state import TrainState, apply_model, create_train_state
from jaxdl.train.step import LossFn, jit_inference, make_eval_step, make_train_step


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def default_optimizer(learning_rate: float = 1e-3) -> optax.GradientTransformation:
    """The course's recipe: Adam (:func:`jaxdl.optim.adam`) with learning rate 1e-3."""
    return optim.adam(learning_rate)


# ----------------------------------------------------------------------------------------------
# Small shared pieces


def _variables(state_or_variables: Any) -> dict[str, Any]:
    if isinstance(state_or_variables, TrainState):
        out = {"params": state_or_variables.params}
        if jax.tree.leaves(state_or_variables.batch_stats):
            out["batch_stats"] = state_or_variables.batch_stats
        return out
    if isinstance(state_or_variables, dict) and "params" in state_or_variables:
        return state_or_variables
    raise TypeError(
        "state must be a TrainState or a variables dict {'params': ..., 'batch_stats': ...}, "
        f"got {type(state_or_variables).__name__}"
    )


def num_classes(model: nn.Module, variables: dict, x_sample: Any) -> int | None:
    """The output width ``K`` of a classifier (outputs ``(N, K)``, ``K >= 2``), else ``None``."""
    out = jax.eval_shape(lambda v, x: apply_model(model, v, x, False), variables, x_sample)
    if isinstance(out, jax.ShapeDtypeStruct) and out.ndim == 2 and out.shape[-1] >= 2:
        return int(out.shape[-1])
    return None


def _summarise(sums: dict[str, Any], prefix: str = "") -> dict[str, float]:
    sums = jax.device_get(sums)
    count = max(float(sums["count"]), 1e-12)
    logs = {f"{prefix}loss": float(sums["loss_sum"]) / count}
    if "correct" in sums:
        logs[f"{prefix}accuracy"] = float(sums["correct"]) / count
    return logs


def _verbosity(verbose: bool | int | str) -> int:
    """Keras's levels: 0 silent, 1 progress bar and a line per epoch, 2 a line per epoch only;
    ``"auto"`` (and ``True``) is 1 on a terminal and 2 otherwise, so logs are not flooded."""
    if verbose in ("auto", True):
        return 1 if sys.stderr.isatty() else 2
    if verbose in (0, 1, 2):
        return int(verbose)
    raise ValueError(f"verbose must be 'auto', 0, 1, 2 or a bool, got {verbose!r}")


@functools.lru_cache(maxsize=64)
def _eval_step(model: nn.Module, loss_fn: LossFn | None):
    """One compiled eval step per (model, loss): a second ``evaluate`` costs no compile."""
    return make_eval_step(model, loss_fn=loss_fn)


@functools.lru_cache(maxsize=64)
def _predict_step(model: nn.Module):
    return jit_inference(lambda v, x: mixed.cast_outputs(apply_model(model, v, x, False)), model)


def _cached(factory, model, *args):
    try:
        return factory(model, *args)
    except TypeError:  # an unhashable model or loss: compile for this call only
        return factory.__wrapped__(model, *args)


def _padded_indices(n: int, batch_size: int) -> Iterable[tuple[np.ndarray, np.ndarray, int]]:
    """In-order row indices of ``n`` examples in batches of ``min(batch_size, n)``, the last
    padded by repeating its final row (one compiled shape): ``(idx, mask, real rows)``."""
    b = min(batch_size, n)
    for start in range(0, n, b):
        idx = np.arange(start, min(start + b, n))
        real = len(idx)
        mask = (np.arange(b) < real).astype(np.float32)
        yield np.concatenate([idx, np.full(b - real, idx[-1])]), mask, real


def _evaluate(eval_step, state: TrainState, x, y, batch_size: int, prefix: str = ""):
    sums = None
    for idx, mask, _ in _padded_indices(len(y), batch_size):
        m = eval_step(state, inputs.take(x, idx), y[idx], mask)
        sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
    return _summarise(sums, prefix)


# ----------------------------------------------------------------------------------------------
# evaluate and predict


def evaluate(
    model: nn.Module,
    state: TrainState,
    data: tuple[Any, np.ndarray],
    batch_size: int = 1000,
    loss_fn: LossFn | None = None,
) -> dict[str, float]:
    """Mean loss (and accuracy, for classifiers) of ``state`` on ``data = (x, y)`` in inference
    mode. ``x`` may be an array, a tuple or a dict of arrays (see :func:`fit`). The compiled step
    is cached per ``(model, loss_fn)``: a second call costs no compile.

    Raises:
      ValueError: malformed data, or labels outside the model's classes.
    """
    x, y = inputs.check_pair(data, "data")
    inputs.check_labels(y, num_classes(model, _variables(state), inputs.take(x, [0])), "data")
    return _evaluate(_cached(_eval_step, model, loss_fn), state, x, y, batch_size)


def predict(
    model: nn.Module, state: TrainState | dict[str, Any], x: Any, batch_size: int = 1000
) -> Any:
    """The model's outputs on ``x`` in inference mode (no dropout, BatchNorm's running
    statistics), as NumPy arrays, batch by batch.

    Args:
      model: the flax module.
      state: a :class:`TrainState` (e.g. ``history.state``) or a variables dict
        ``{"params", "batch_stats"}`` (e.g. from :func:`jaxdl.train.load_variables`).
      x: an array, a tuple of arrays (positional inputs) or a dict (keyword inputs).
      batch_size: rows per call; the last batch is padded, so one program is compiled (and
        cached per model: later calls compile nothing).

    Returns:
      ``(N, ...)`` outputs (float32 for half-precision models); a pytree if the model returns one.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    x = inputs.check_x(x)
    variables = _variables(state)
    step = _cached(_predict_step, model)
    pieces = []
    for idx, _, real in _padded_indices(inputs.num_rows(x), batch_size):
        out = jax.device_get(step(variables, inputs.take(x, idx)))
        pieces.append(jax.tree.map(lambda a, r=real: np.asarray(a)[:r], out))
    return jax.tree.map(lambda *a: np.concatenate(a), *pieces)


# ----------------------------------------------------------------------------------------------
# fit


@dataclasses.dataclass
class _Run:
    """Everything ``fit`` sets up before the first epoch."""

    model: nn.Module
    optimizer: RunOptimizer
    state: TrainState
    train_step: Callable
    eval_step: Callable
    mesh: jax.sharding.Mesh | None
    shardings: Any
    batches: Callable[[int], Iterable]  # epoch -> iterable of (x, y, mask)
    steps: int | None
    validation: tuple[Any, np.ndarray] | None


def _setup(
    model,
    optimizer,
    train_data,
    val_data,
    batch_size,
    seed,
    *,
    loss_fn,
    class_weight,
    augment,
    shuffle,
    drop_remainder,
    mesh,
    num_devices,
    shard_params,
    precision,
    steps_per_epoch,
    workers,
    parallel_step,
) -> _Run:
    """Check the inputs once, then build the model, optimizer, state, steps and batches."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    policy = mixed.get_policy(precision)
    model = mixed.apply_policy(model, policy)
    mesh = parallel.resolve_mesh(mesh, num_devices, batch_size)

    # The data: in memory, a random-access source, or an iterable of batches.
    if train_data is None:
        raise ValueError("fit needs train_data=(x, y), a random-access source or batches")
    stream = None
    if inputs.is_random_access(train_data):
        x_sample, y_all = inputs._record_pair(train_data[0])
        x_sample = jax.tree.map(lambda a: np.asarray(a)[None], x_sample)
        y_all = None

        def batches(epoch):
            return inputs.source_batches(
                train_data, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                drop_remainder=drop_remainder, worker_count=workers,
            )  # fmt: skip

        steps = len(train_data) // batch_size + (
            0 if drop_remainder else bool(len(train_data) % batch_size)
        )
    elif inputs.is_batch_iterable(train_data):
        stream = iter(train_data) if steps_per_epoch is not None else None
        peek = next(iter(train_data)) if stream is None else None
        if stream is not None:
            peek = next(stream)
            stream = _chain_first(peek, stream)
        x_sample = jax.tree.map(lambda a: np.asarray(a)[:1], inputs._as_arrays(peek[0]))
        y_all = None

        def batches(epoch):
            source = stream if stream is not None else iter(train_data)
            return inputs.iterable_batches(source, steps_per_epoch, None)

        steps = steps_per_epoch
    else:
        x, y = inputs.check_pair(train_data, "train_data")
        x_sample, y_all = inputs.take(x, [0]), y

        def batches(epoch):
            return inputs.array_batches(
                x, y, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                drop_remainder=drop_remainder,
            )  # fmt: skip

        steps = inputs.steps_per_epoch_of(len(y), batch_size, drop_remainder)
        if steps == 0:
            raise ValueError(
                f"an epoch produces no batch: {len(y)} examples with batch_size={batch_size} "
                "and drop_remainder=True"
            )
    validation = inputs.check_pair(val_data, "val_data") if val_data is not None else None

    # The model's classes: labels checked once per dataset, here on the host.
    shapes = jax.eval_shape(lambda: create_train_state(model, optax.identity(), x_sample, seed))
    k = num_classes(model, {"params": shapes.params, "batch_stats": shapes.batch_stats}, x_sample)
    if y_all is not None:
        inputs.check_labels(y_all, k, "train_data")
    if validation is not None:
        inputs.check_labels(validation[1], k, "val_data")
    weights = None
    if class_weight:
        if y_all is None:
            raise ValueError("class_weight needs in-memory train_data=(x, y)")
        weights = _class_weight_vector(class_weight, y_all)

    run_opt = prepare_optimizer(
        optimizer if optimizer is not None else default_optimizer(),
        shapes.params,
        loss_scaling=policy.needs_loss_scaling,
    )
    state = create_train_state(model, run_opt.tx, x_sample, seed)
    step_kwargs = {"loss_fn": loss_fn, "class_weights": weights, "augment": augment}
    shardings = None
    if mesh is None:
        train_step = make_train_step(model, run_opt.tx, **step_kwargs)
    else:
        shardings = parallel.state_shardings(state, mesh, shard_params)
        state = parallel.put_global(state, shardings)
        has_stats = bool(jax.tree.leaves(state.batch_stats))
        kind = _choose_parallel_step(parallel_step, model, mesh, shard_params, has_stats, x_sample)
        if kind == "shard_map":
            train_step = parallel.make_shard_map_train_step(model, run_opt.tx, mesh, **step_kwargs)
        else:
            train_step = parallel.make_sharded_train_step(
                model, run_opt.tx, mesh, shardings, **step_kwargs
            )
    return _Run(
        model=model,
        optimizer=run_opt,
        state=state,
        train_step=train_step,
        eval_step=_cached(_eval_step, model, loss_fn),
        mesh=mesh,
        shardings=shardings,
        batches=batches,
        steps=steps,
        validation=validation,
    )


PARALLEL_STEPS = ("auto", "sharding", "shard_map")


def _recurrent(model: nn.Module, x_sample: Any) -> bool:
    """Whether ``model`` runs a recurrent layer (:class:`jaxdl.nn.RNN` or flax's ``nn.RNN``)."""
    from jaxdl.nn.recurrent import RNN

    found = []

    def spy(next_fun, args, kwargs, context):
        if isinstance(context.module, RNN | nn.RNN):
            found.append(True)
        return next_fun(*args, **kwargs)

    def init(x):
        with nn.intercept_methods(spy):
            return create_train_state(model, optax.identity(), x, 0)

    jax.eval_shape(init, x_sample)
    return bool(found)


def _choose_parallel_step(choice, model, mesh, shard_params, has_batch_stats, x_sample) -> str:
    """``"auto"``: the per-device step (:func:`jaxdl.train.parallel.make_shard_map_train_step`)
    on CPU for a model with recurrent layers and no BatchNorm, with replicated parameters -- where
    it was measured 1.5x faster than the partitioned step (``docs/performance.md``, one CPU device
    per core: the devices' sequential loops run on different cores); the partitioned step
    otherwise. Both give the single-device result up to float32 rounding, except that dropout
    masks differ per device under the per-device step."""
    if choice not in PARALLEL_STEPS:
        raise ValueError(f"parallel_step must be one of {PARALLEL_STEPS}, got {choice!r}")
    if choice == "shard_map" and shard_params:
        raise ValueError("parallel_step='shard_map' keeps parameters replicated: no shard_params")
    if choice != "auto":
        return choice
    cpu = mesh.devices.flat[0].platform == "cpu"
    if cpu and not shard_params and not has_batch_stats and _recurrent(model, x_sample):
        return "shard_map"
    return "sharding"


def _chain_first(first, rest):
    yield first
    yield from rest


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


def _train_epoch(run: _Run, ctx: RunContext, epoch: int, desc: str, verbosity: int, callbacks):
    """One pass over the epoch's batches; returns the epoch's training logs.

    The loss of step ``t`` is read on the host only after step ``t + 1`` has been dispatched, so
    the device never waits for the NaN check or the progress bar; the error still names step ``t``.
    """
    seen = [0.0]  # real rows handed to the device so far (counted on the host: no sync)

    def counted(it):
        for xb, yb, mask in it:
            seen[0] += float(np.sum(mask))
            yield xb, yb, mask

    batches = counted(run.batches(epoch))
    if run.mesh is None:
        batches = prefetch_to_device(batches)
    else:  # rows split over the devices (every batch is full-size: padded and masked)
        batches = parallel.prefetch_sharded(batches, run.mesh)
    bar = tqdm(total=run.steps, desc=desc, disable=verbosity != 1, unit="batch")
    batch_hooks = [
        cb for cb in callbacks if type(cb).on_train_batch_end is not Callback.on_train_batch_end
    ]
    sums: dict[str, jax.Array] | None = None
    pending: tuple[int, dict[str, jax.Array]] | None = None
    start = time.perf_counter()

    def check(step: int, metrics: dict[str, jax.Array]) -> None:
        loss = float(metrics["loss_sum"]) / max(float(metrics["count"]), 1e-12)
        if not np.isfinite(loss):
            bar.close()
            raise NonFiniteLossError(
                f"training loss is {loss} at step {step} ({desc}); stopping. Common causes: a "
                "learning rate too large, log of 0, bad input values."
            )
        if verbosity == 1:
            postfix = {k: f"{v:.4f}" for k, v in _summarise(sums).items()}
            postfix["ex/s"] = f"{seen[0] / max(time.perf_counter() - start, 1e-9):.0f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)

    step = int(ctx.state.step)
    for xb, yb, mask in batches:
        ctx.state, metrics = run.train_step(ctx.state, xb, yb, mask)
        sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
        for cb in batch_hooks:
            cb.on_train_batch_end(step, metrics, ctx)
        if pending is not None:
            check(*pending)
        pending = (step, metrics)
        step += 1
    if pending is None:
        raise ValueError("an epoch produced no batch: is the data (or steps_per_epoch) empty?")
    check(*pending)
    bar.close()
    return _summarise(sums)


def fit(
    model: nn.Module,
    optimizer: optax.GradientTransformation | None = None,
    train_data: Any = None,
    val_data: tuple[Any, np.ndarray] | None = None,
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
    verbose: bool | int | str = "auto",
    mesh: jax.sharding.Mesh | None = None,
    num_devices: int | None = None,
    shard_params: bool = False,
    precision: str | mixed.Policy = "float32",
    steps_per_epoch: int | None = None,
    workers: int = 0,
    parallel_step: str = "auto",
) -> History:
    """Train ``model`` for ``epochs`` epochs, Keras-style; return the :class:`History`.

    Each epoch: shuffled batches (the permutation depends only on ``(seed, epoch)``) through the
    jitted, state-donating train step; then validation on ``val_data``; then the callbacks.
    Every batch has ``batch_size`` rows -- a short last batch is padded and masked, so one train
    step is compiled per run. Progress: a tqdm bar (loss, accuracy, examples/s) on a terminal, one
    line per epoch otherwise (``verbose``, as Keras).

    With ``workdir``, the run's progress is checkpointed after every epoch in
    ``<workdir>/resume`` (:class:`~jaxdl.train.resume.ResumeCheckpoint`: atomic, verified, the
    last two kept) and a later ``fit`` with the same ``workdir`` continues after the last
    completed epoch: an interrupted and resumed run ends with the same parameters and optimizer
    state, bit for bit, as an uninterrupted one.

    Args:
      model: a flax.linen module; its training flag is found by
        :func:`jaxdl.train.state.train_kwargs` (``train=``, ``training=`` or ``deterministic=``).
      optimizer: an optax ``GradientTransformation`` (default: :func:`jaxdl.optim.adam` at 1e-3).
        Checkpoints store its state exactly as ``optimizer.init`` builds it
        (see :mod:`jaxdl.train.optimizer` for how ``ReduceLROnPlateau`` changes its rate).
      train_data: ``(x, y)`` in memory -- ``x`` an array, a tuple of arrays (positional model
        inputs) or a dict (keyword inputs), labels checked against the model's classes -- or a
        random-access source read through grain, or an iterable of ``(x, y)`` batches
        (:mod:`jaxdl.train.inputs`).
      val_data: ``(x, y)`` in memory.
      epochs, batch_size: as Keras.
      callbacks: e.g. ``[EarlyStopping(patience=5), ModelCheckpoint(save_best_only=True),
        ReduceLROnPlateau(factor=0.5, patience=3), CSVLogger(path), TensorBoard()]``.
      seed: initialisation, shuffling, dropout and augmentation all follow from it.
      workdir: directory for resume checkpoints (and the callbacks' default locations).
      loss_fn: ``loss_fn(outputs, labels, reduction="none")`` (default
        :func:`jaxdl.losses.cross_entropy`).
      class_weight: Keras's ``{class: weight}``; weighs each training example's loss.
      augment: ``augment(key, x) -> x``, or a label-mixing ``(key, x, y) -> (x, y_soft)``
        declared with :func:`jaxdl.data.augment.label_mixing` (mixup is); run inside the step.
      mesh, num_devices: data-parallel training (:mod:`jaxdl.train.parallel`): each batch split
        over the mesh's ``"data"`` axis, the state replicated. With neither, every device is used
        when there are several and ``batch_size`` divides among them.
      shard_params: with a mesh, split parameters and optimizer state over the devices (FSDP).
      parallel_step: with a mesh, ``"sharding"`` (one program for the global batch, partitioned
        by XLA), ``"shard_map"`` (each device runs the one-device step on its rows) or
        ``"auto"``, which picks the measured faster one (:func:`_choose_parallel_step`).
      precision: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (:mod:`jaxdl.train.precision`).
      steps_per_epoch: with an iterable of batches, read it as one stream, this many per epoch.
      workers: worker processes for a random-access source (grain); 0 reads in this process.

    Raises:
      ValueError: malformed data or labels outside the model's classes (naming the first).
      NonFiniteLossError: when a training loss is NaN or infinite, naming the step.
      CorruptCheckpointError: every resume checkpoint in ``workdir`` is damaged.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    verbosity = _verbosity(verbose) if jax.process_index() == 0 else 0
    run = _setup(
        model, optimizer, train_data, val_data, batch_size, seed,
        loss_fn=loss_fn, class_weight=class_weight, augment=augment, shuffle=shuffle,
        drop_remainder=drop_remainder, mesh=mesh, num_devices=num_devices,
        shard_params=shard_params, precision=precision, steps_per_epoch=steps_per_epoch,
        workers=workers, parallel_step=parallel_step,
    )  # fmt: skip
    ctx = RunContext(run.state, workdir, run.optimizer)
    callbacks = list(callbacks)
    for cb in callbacks:
        cb.on_train_begin(ctx)

    history, start_epoch = History(), 0
    resume = ResumeCheckpoint(workdir) if workdir else None
    if resume is not None:
        restored = resume.restore(ctx, callbacks, run.shardings)
        if restored is not None:
            start_epoch, history = restored
            if verbosity:
                print(f"resuming from {resume.directory} after epoch {start_epoch}")

    for epoch in range(start_epoch, epochs):
        if ctx.stop_training:
            break
        desc = f"epoch {epoch + 1}/{epochs}"
        logs = _train_epoch(run, ctx, epoch, desc, verbosity, callbacks)
        if run.validation is not None:
            xv, yv = run.validation
            logs.update(_evaluate(run.eval_step, ctx.state, xv, yv, eval_batch_size, "val_"))
        lr = ctx.learning_rate
        if lr is not None:
            logs["lr"] = lr
        logs["lr_scale"] = ctx.lr_scale
        if run.optimizer.loss_scaled:  # float16: where the dynamic loss scale is, what it skipped
            scaling = mixed.current_loss_scale(ctx.state.opt_state)
            logs["loss_scale"], logs["skipped_steps"] = float(scaling.scale), int(scaling.skipped)
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs, ctx)
        history.append(epoch, logs)
        if verbosity:
            print(f"{desc}: " + ", ".join(f"{k}={v:.4g}" for k, v in logs.items()), flush=True)
        if resume is not None:
            resume.save(epoch, ctx, callbacks, history)

    for cb in callbacks:
        cb.on_train_end(ctx)
    history.state = ctx.user_state()
    return history
