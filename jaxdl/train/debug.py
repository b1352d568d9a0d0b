r"""A debugging toolkit for training runs: the checks to run when a network will not learn.

* :func:`overfit_one_batch` -- can the model, loss and optimizer drive the loss on *one* small
  batch to ~0? If not, the bug is in the model or the training step, not in the data or the
  regularisation (Karpathy's "overfit a single batch" recipe).
* :func:`layer_stats` and the :class:`LayerStatsLogger` callback -- per-layer activation mean/std,
  the fraction of dead ReLU units, gradient and parameter norms, and the update-to-parameter ratio,
  on a fixed probe batch. Vanishing/exploding gradients and dying ReLUs show here first.
* :func:`nonfinite_paths` / :func:`find_first_nonfinite` -- NaN/Inf detection that names the step
  and the parameter path (and the layer whose activations) where it first appears.
* :func:`lr_range_test` and :func:`plot_lr_range_test` -- the learning-rate range test of
  Smith (2017, "Cyclical learning rates for training neural networks", sec. 3.3): raise the rate
  exponentially over a short run, record the loss, pick a rate below the point of divergence.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdl import losses
from jaxdl.data.batching import iterate_batches
from jaxdl.train.callbacks import Callback
from jaxdl.train.state import TrainState, create_train_state, path_str
from jaxdl.train.step import LossFn, make_eval_step, make_train_step


def _flat(tree: Any) -> list[tuple[str, Any]]:
    return [(path_str(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _variables(state: TrainState) -> dict[str, Any]:
    if jax.tree.leaves(state.batch_stats):
        return {"params": state.params, "batch_stats": state.batch_stats}
    return {"params": state.params}


def _batch(data: tuple[Any, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError(f"{name} must be a pair (x, y) of arrays, got {type(data).__name__}")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"{name}: x and y must be non-empty with equal length, got {len(x)}, {len(y)}"
        )
    return x, y


# --- overfit one batch ---


@dataclasses.dataclass
class OverfitResult:
    """What :func:`overfit_one_batch` measured.

    Attributes:
      passed: the final inference-mode loss on the batch fell below ``loss_tol`` (and, for
        classifiers, every example of the batch is classified correctly).
      losses: the training loss at every step.
      final_loss, final_accuracy: inference mode (no dropout), after the last step.
      steps: steps taken (stops early once passed).
    """

    passed: bool
    losses: list[float]
    final_loss: float
    final_accuracy: float | None
    steps: int


def overfit_one_batch(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    batch: tuple[Any, Any],
    *,
    steps: int = 200,
    loss_fn: LossFn | None = None,
    loss_tol: float = 0.05,
    check_every: int = 10,
    seed: int = 0,
) -> OverfitResult:
    """Train on one fixed batch and report whether the loss reaches ~0.

    A network with enough parameters can memorise a handful of examples; failing to do so points at
    a bug in the forward pass, the loss or the update (a missing activation, the wrong label
    format, a sign error, a learning rate far off), before any time is spent on full runs.

    Args:
      model: a flax module ``model(x, train=...)``.
      optimizer: an optax transformation.
      batch: ``(x, y)``, e.g. 8-32 examples.
      steps: the most steps to take.
      loss_fn: as in :func:`jaxdl.train.fit` (default cross-entropy).
      loss_tol: the inference-mode loss that counts as memorised.
      check_every: evaluate (inference mode) every this many steps, stopping once passed.
      seed: initialisation seed.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if loss_tol <= 0:
        raise ValueError(f"loss_tol must be positive, got {loss_tol}")
    x, y = _batch(batch, "batch")
    state = create_train_state(model, optimizer, x[:1], seed)
    train_step = make_train_step(model, optimizer, loss_fn=loss_fn)
    eval_step = make_eval_step(model, loss_fn=loss_fn)
    ones = np.ones((len(x),), np.float32)

    def evaluate(state):
        m = jax.device_get(eval_step(state, x, y, ones))
        acc = float(m["correct"]) / len(x) if "correct" in m else None
        return float(m["loss_sum"]) / len(x), acc

    history: list[float] = []
    final_loss, final_acc = evaluate(state)
    passed = False
    for t in range(1, steps + 1):
        state, m = train_step(state, x, y)
        history.append(float(m["loss_sum"]) / float(m["count"]))
        if not math.isfinite(history[-1]):
            break
        if t % check_every == 0 or t == steps:
            final_loss, final_acc = evaluate(state)
            passed = final_loss < loss_tol and (final_acc is None or final_acc == 1.0)
            if passed:
                break
    return OverfitResult(passed, history, final_loss, final_acc, len(history))


# --- per-layer statistics ---


def _capture(model: nn.Module, variables: dict[str, Any], x: jax.Array) -> dict[str, jax.Array]:
    """Every submodule's output (Dense, Conv, BatchNorm...), keyed by module path in call order,
    inference mode. The model's own output (the last layer's, again) is left out."""
    _, state = model.apply(
        variables, x, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    out: dict[str, jax.Array] = {}

    def walk(tree, prefix: str) -> None:
        # Flax keeps submodules in the order they were called; each output is a 1-tuple under
        # '__call__'. Walking the dicts (not tree_flatten, which sorts keys) keeps that order.
        for key, sub in tree.items():
            if key == "__call__":
                if prefix:
                    out[prefix] = sub[0]
            else:
                walk(sub, f"{prefix}/{key}" if prefix else key)

    walk(state["intermediates"], "")
    return out


def activation_stats(
    model: nn.Module, variables: dict[str, Any], x: Any
) -> dict[str, dict[str, float]]:
    """Statistics of each layer's output on ``x`` (inference mode).

    For each submodule output ``a`` (a Dense or Conv *pre-activation*): ``mean``, ``std``,
    ``frac_nonpositive`` (the share of entries ``<= 0``: the share a following ReLU zeroes) and
    ``dead_fraction``: the share of units -- features of a dense layer, channels of a conv -- that
    are ``<= 0`` for every example and position of the batch. A ReLU after such a unit outputs 0
    and passes back a zero gradient whatever the input: it is dead. (The statistic is meaningful
    for layers followed by a ReLU; for the others it is reported all the same.)
    """
    acts = _capture(model, variables, jnp.asarray(x))
    out = {}
    for name, a in acts.items():
        a = jnp.asarray(a, jnp.float32)
        units = a.reshape(-1, a.shape[-1])  # (examples * positions, units)
        out[name] = {
            "mean": float(jnp.mean(a)),
            "std": float(jnp.std(a)),
            "frac_nonpositive": float(jnp.mean(a <= 0)),
            "dead_fraction": float(jnp.mean(jnp.all(units <= 0, axis=0))),
        }
    return out


def gradient_stats(
    model: nn.Module,
    variables: dict[str, Any],
    x: Any,
    y: Any,
    loss_fn: LossFn | None = None,
) -> dict[str, dict[str, float]]:
    """Per-parameter gradient and weight statistics of the mean loss on ``(x, y)``.

    Returns, keyed by parameter path (``'Dense_0/kernel'``): ``grad_norm`` ``||g||_2``,
    ``grad_rms`` ``||g|| / sqrt(n)``, ``param_norm`` ``||w||_2`` and ``grad_to_param``
    ``||g|| / ||w||`` -- times the learning rate, the relative size of an SGD step, which
    Karpathy suggests keeping near 1e-3. Inference mode (no dropout), so that it is deterministic.
    """
    loss_fn = loss_fn or losses.cross_entropy
    x, y = jnp.asarray(x), jnp.asarray(y)

    def mean_loss(params):
        out = model.apply({**variables, "params": params}, x, train=False)
        return jnp.mean(loss_fn(out, y, reduction="none"))

    grads = jax.grad(mean_loss)(variables["params"])
    out = {}
    params = dict(_flat(variables["params"]))
    for name, g in _flat(grads):
        g_norm = float(jnp.linalg.norm(g.ravel()))
        w_norm = float(jnp.linalg.norm(params[name].ravel()))
        out[name] = {
            "grad_norm": g_norm,
            "grad_rms": g_norm / math.sqrt(max(g.size, 1)),
            "param_norm": w_norm,
            "grad_to_param": g_norm / w_norm if w_norm > 0 else math.inf,
        }
    return out


def layer_stats(
    model: nn.Module, state: TrainState, batch: tuple[Any, Any], loss_fn: LossFn | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """``{"activations": activation_stats(...), "gradients": gradient_stats(...)}`` of ``state``."""
    x, y = _batch(batch, "batch")
    variables = _variables(state)
    return {
        "activations": activation_stats(model, variables, x),
        "gradients": gradient_stats(model, variables, x, y, loss_fn),
    }


class LayerStatsLogger(Callback):
    """A :mod:`jaxdl.train` callback: per-layer statistics on a fixed probe batch every epoch.

    ``records`` gets one ``{"epoch": e, **layer_stats(...)}`` per logged epoch; the epoch's
    ``logs`` (and so the history) gain ``dead_relu_fraction`` (the mean dead fraction over the
    ``relu_layers``) and ``grad_norm`` (the global gradient norm on the probe batch).

    Args:
      model: the model being trained.
      probe: a fixed ``(x, y)`` batch (e.g. 256 training examples).
      relu_layers: names of the layers followed by a ReLU (default: every captured layer but the
        last, which usually gives the logits).
      every: log every this many epochs.
      loss_fn: the loss used by ``fit``.
    """

    def __init__(
        self,
        model: nn.Module,
        probe: tuple[Any, Any],
        relu_layers: tuple[str, ...] | None = None,
        every: int = 1,
        loss_fn: LossFn | None = None,
    ):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.model, self.probe, self.every, self.loss_fn = (
            model,
            _batch(probe, "probe"),
            every,
            loss_fn,
        )
        self.relu_layers = relu_layers
        self.records: list[dict[str, Any]] = []

    def on_train_begin(self, trainer) -> None:
        self.records = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float], trainer) -> None:
        if epoch % self.every:
            return
        stats = layer_stats(self.model, trainer.state, self.probe, self.loss_fn)
        self.records.append({"epoch": epoch, **stats})
        acts = stats["activations"]
        names = self.relu_layers or tuple(acts)[:-1]
        missing = [n for n in names if n not in acts]
        if missing:
            raise ValueError(f"relu_layers {missing} not among the captured layers {sorted(acts)}")
        logs["dead_relu_fraction"] = float(np.mean([acts[n]["dead_fraction"] for n in names]))
        logs["grad_norm"] = math.sqrt(sum(s["grad_norm"] ** 2 for s in stats["gradients"].values()))


# --- NaN / Inf detection ---


def nonfinite_paths(tree: Any) -> list[str]:
    """Paths of the leaves of ``tree`` holding a NaN or an infinity (``[]`` if none)."""
    flags = jax.device_get(jax.tree.map(lambda a: ~jnp.all(jnp.isfinite(a)), tree))
    return [name for name, bad in _flat(flags) if bool(bad)]


class NonFiniteError(FloatingPointError):
    """A NaN or Inf appeared; ``step`` and ``paths`` say where."""

    def __init__(self, message: str, step: int, paths: list[str]):
        super().__init__(message)
        self.step, self.paths = step, paths


def assert_finite(tree: Any, *, step: int, what: str = "params") -> None:
    """Raise :class:`NonFiniteError` naming ``step`` and every non-finite leaf path of ``tree``."""
    bad = nonfinite_paths(tree)
    if bad:
        raise NonFiniteError(f"non-finite {what} at step {step}: {', '.join(bad)}", step, bad)


@dataclasses.dataclass
class NonFiniteReport:
    """Where a run first produced a NaN or Inf (see :func:`find_first_nonfinite`).

    Attributes:
      step: the optimizer step (0-based) whose loss or gradients were first non-finite.
      loss: that step's loss.
      grad_paths: parameter paths whose gradient was non-finite at that step.
      param_paths: parameter paths non-finite *after* that step's update.
      activation_paths: layers whose outputs were non-finite on that step's batch, before the
        update, in call order -- the first one is where the forward pass broke.
      message: a one-line summary.
    """

    step: int
    loss: float
    grad_paths: list[str]
    param_paths: list[str]
    activation_paths: list[str]
    message: str


def _cycle_batches(x, y, batch_size: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    epoch = 0
    while True:
        yield from iterate_batches(
            (x, y),
            batch_size,
            shuffle=True,
            seed=seed,
            epoch=epoch,
            drop_remainder=len(x) >= batch_size,
        )
        epoch += 1


def find_first_nonfinite(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    train_data: tuple[Any, Any],
    *,
    steps: int = 500,
    batch_size: int = 128,
    loss_fn: LossFn | None = None,
    seed: int = 0,
) -> NonFiniteReport | None:
    """Train step by step, checking the loss, every gradient and every parameter after each step;
    return where the first NaN/Inf appeared, or ``None`` if ``steps`` steps stay finite.

    The finiteness flags are computed inside the jitted step (one boolean per leaf), so the check
    costs a few bytes of transfer per step. At the first bad step the layer outputs on that batch
    are captured too, naming the layer where the forward pass first went non-finite.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    x, y = _batch(train_data, "train_data")
    loss_fn = loss_fn or losses.cross_entropy
    state = create_train_state(model, optimizer, x[:1], seed)

    @jax.jit
    def step(state: TrainState, xb, yb):
        k_dropout = jax.random.fold_in(state.rng, state.step)
        mutable = ["batch_stats"] if jax.tree.leaves(state.batch_stats) else False

        def objective(params):
            out = model.apply(
                {**_variables(state), "params": params},
                xb,
                train=True,
                rngs={"dropout": k_dropout},
                mutable=mutable,
            )
            logits, new_vars = out if mutable else (out, {})
            loss = jnp.mean(loss_fn(logits, yb, reduction="none"))
            return loss, new_vars.get("batch_stats", state.batch_stats)

        (loss, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = lambda t: jax.tree.map(lambda a: jnp.all(jnp.isfinite(a)), t)  # noqa: E731
        new = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new, loss, finite(grads), finite(params)

    batches = _cycle_batches(x, y, batch_size, seed)
    for t in range(steps):
        xb, yb = next(batches)
        before = state
        state, loss, g_ok, p_ok = step(state, xb, yb)
        loss = float(loss)
        g_bad = [n for n, ok in _flat(jax.device_get(g_ok)) if not ok]
        p_bad = [n for n, ok in _flat(jax.device_get(p_ok)) if not ok]
        if math.isfinite(loss) and not g_bad and not p_bad:
            continue
        acts = _capture(model, _variables(before), jnp.asarray(xb))
        a_bad = [n for n, a in acts.items() if not bool(jnp.all(jnp.isfinite(a)))]
        where = g_bad[:1] or p_bad[:1] or a_bad[:1] or ["the loss"]
        msg = (
            f"first non-finite value at step {t}: loss={loss}; gradients of {g_bad or 'none'}; "
            f"parameters after the update {p_bad or 'none'}; activations {a_bad or 'none'} "
            f"(look first at {where[0]})"
        )
        return NonFiniteReport(t, loss, g_bad, p_bad, a_bad, msg)
    return None


# --- learning-rate range test ---


@dataclasses.dataclass
class LRRangeResult:
    """The curve of :func:`lr_range_test`.

    Attributes:
      learning_rates: the rate at each step.
      losses: the raw training loss at each step.
      smoothed: the bias-corrected exponential moving average of the loss.
      suggestion: a tenth of ``min_loss_lr``: a rate where the loss still falls, an order of
        magnitude below where it stops falling (the usual reading of the plot).
      min_loss_lr: the rate at the minimum of the smoothed loss.
      steepest_lr: the rate of the steepest descent of the smoothed loss in ``log lr`` (before
        the minimum) -- a second, noisier reading.
      diverged_at: the rate at which the smoothed loss exceeded ``divergence * best`` (``None`` if
        it never did).
    """

    learning_rates: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    min_loss_lr: float
    steepest_lr: float
    diverged_at: float | None


def lr_range_test(
    model: nn.Module,
    optimizer_fn: Callable[[Any], optax.GradientTransformation],
    train_data: tuple[Any, Any],
    *,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    num_steps: int = 100,
    batch_size: int = 128,
    loss_fn: LossFn | None = None,
    smoothing: float = 0.9,
    divergence: float = 4.0,
    seed: int = 0,
) -> LRRangeResult:
    r"""Smith's (2017) learning-rate range test.

    Train from a fresh initialisation for ``num_steps`` steps with the rate rising exponentially,
    ``lr_t = min_lr * (max_lr / min_lr)^(t / (T - 1))``, recording the loss; stop early when the
    smoothed loss exceeds ``divergence`` times its minimum. The loss first stays flat (rate too
    small), then falls (useful rates), then explodes. Smoothing: ``s_t = b s_{t-1} + (1 - b)
    l_t``, reported as ``s_t / (1 - b^{t+1})`` (Adam-style bias correction).

    Args:
      model: a flax module.
      optimizer_fn: ``schedule -> optimizer``, e.g. ``lambda lr: optax.adam(lr)`` or
        ``jaxdl.optim.sgd``; it receives the exponential schedule as its learning rate.
      train_data: ``(x, y)``; cycled through as needed.
      min_lr, max_lr: the range (``0 < min_lr < max_lr``).
      num_steps: steps (``>= 2``).
      batch_size: examples per step.
      loss_fn: as in :func:`jaxdl.train.fit`.
      smoothing: ``b`` in ``[0, 1)``.
      divergence: stop once the smoothed loss exceeds this multiple of its best value (``> 1``).
      seed: initialisation and shuffling seed.
    """
    if not 0 < min_lr < max_lr:
        raise ValueError(f"need 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if divergence <= 1:
        raise ValueError(f"divergence must be > 1, got {divergence}")
    x, y = _batch(train_data, "train_data")
    ratio = max_lr / min_lr

    def schedule(count):
        return min_lr * ratio ** (jnp.minimum(count, num_steps - 1) / (num_steps - 1))

    optimizer = optimizer_fn(schedule)
    state = create_train_state(model, optimizer, x[:1], seed)
    train_step = make_train_step(model, optimizer, loss_fn=loss_fn)
    batches = _cycle_batches(x, y, batch_size, seed)
    lrs, raw, smoothed = [], [], []
    avg, best, diverged = 0.0, math.inf, None
    for t in range(num_steps):
        lr = float(schedule(t))
        xb, yb = next(batches)
        state, m = train_step(state, xb, yb)
        loss = float(m["loss_sum"]) / float(m["count"])
        avg = smoothing * avg + (1 - smoothing) * (loss if math.isfinite(loss) else 1e30)
        s = avg / (1 - smoothing ** (t + 1))
        lrs.append(lr)
        raw.append(loss)
        smoothed.append(s)
        best = min(best, s)
        if not math.isfinite(loss) or s > divergence * best:
            diverged = lr
            break
    sm = np.asarray(smoothed)
    i_min = int(np.argmin(sm))
    steepest = lrs[0]
    if i_min >= 2:
        slope = np.gradient(sm[: i_min + 1], np.log(lrs[: i_min + 1]))
        steepest = lrs[int(np.argmin(slope))]
    return LRRangeResult(lrs, raw, smoothed, lrs[i_min] / 10, lrs[i_min], steepest, diverged)


def plot_lr_range_test(result: LRRangeResult, path: str | None = None, ax=None):
    """Loss against learning rate (log axis), with the suggestion and the minimum marked.

    Draws into ``ax`` if given, else a new figure, saved to ``path`` when given. Returns the axes.
    """
    import matplotlib

    if ax is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.learning_rates, result.losses, alpha=0.3, label="loss")
    ax.plot(result.learning_rates, result.smoothed, label="smoothed loss")
    ax.axvline(result.suggestion, color="g", ls="--", label=f"suggested {result.suggestion:.2g}")
    ax.axvline(result.min_loss_lr, color="r", ls=":", label=f"min loss {result.min_loss_lr:.2g}")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 4 * min(finite)) * 1.1)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test (Smith 2017)")
    ax.legend()
    if fig is not None and path is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return ax
