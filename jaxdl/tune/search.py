r"""Hyper-parameter search: grid, random and Bayesian (Optuna's TPE), with pruning of bad trials.

A search space maps names to distributions::

    space = {"learning_rate": tune.loguniform(1e-4, 1e-1),
             "dropout": tune.uniform(0.0, 0.6),
             "batch_size": tune.choice([32, 64, 128])}

and :func:`search` minimises ``objective(params) -> float`` over it. The three methods:

- **grid**: every combination of a fixed set of values per dimension (``choice`` values as given,
  ``uniform`` evenly spaced from ``low`` to ``high``, ``loguniform`` evenly spaced in ``log``),
  the number of points per dimension chosen so the product fits ``num_trials``.
- **random**: independent draws -- ``uniform`` on ``[low, high]``, ``loguniform`` as
  ``exp(U(log low, log high))``, ``choice`` uniformly. Bergstra & Bengio (2012) showed that when few
  dimensions matter, ``n`` random trials try ``n`` distinct values of each dimension, a grid only
  ``n^{1/d}``.
- **bayesian**: the Tree-structured Parzen Estimator (Bergstra et al. 2011) through Optuna
  (Akiba et al. 2019). After a few random start-up trials it splits the trials so far into the
  best fraction ``gamma`` and the rest, fits a density ``l(x)`` to the good ones and ``g(x)`` to
  the others, and proposes the candidate maximising ``l(x) / g(x)`` -- which is maximising the
  expected improvement under that model.

**Pruning.** An objective with a second required positional parameter gets a ``report(step, value)`` callable:
it records an intermediate value (e.g. the validation loss after each epoch) and raises
:class:`TrialPruned` when the pruner judges the trial hopeless -- by default Optuna's median rule:
stop if the value at ``step`` is worse than the median of earlier trials at the same step. The
search catches it, records the trial as pruned, and moves on. Pruning works with all three methods
(all run through one Optuna study: grid by enqueuing its points, random with ``RandomSampler``).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Choice",
    "LogUniform",
    "Study",
    "Trial",
    "TrialPruned",
    "Uniform",
    "choice",
    "grid_points",
    "loguniform",
    "search",
    "uniform",
]

METHODS = ("grid", "random", "bayesian")


# --- search spaces ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Uniform:
    """``U(low, high)``."""

    low: float
    high: float

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"uniform needs finite low < high, got ({self.low}, {self.high})")

    def grid(self, n: int) -> list[float]:
        # the centres of n equal cells: never the extreme ends, where a range's edge values are
        # usually the worst (dropout 0.6); n = 1 is the midpoint
        return (self.low + (np.arange(n) + 0.5) * (self.high - self.low) / n).tolist()


@dataclasses.dataclass(frozen=True)
class LogUniform:
    """``exp(U(log low, log high))``: equal probability per factor of ten."""

    low: float
    high: float

    def __post_init__(self):
        if not (0 < self.low < self.high and math.isfinite(self.high)):
            raise ValueError(f"loguniform needs 0 < low < high, got ({self.low}, {self.high})")

    def grid(self, n: int) -> list[float]:
        # cell centres in log space; n = 1 is the geometric mean
        lo, hi = math.log(self.low), math.log(self.high)
        return np.exp(lo + (np.arange(n) + 0.5) * (hi - lo) / n).tolist()


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of ``values`` (any hashable Python values), uniformly."""

    values: tuple

    def __post_init__(self):
        if len(self.values) == 0:
            raise ValueError("choice needs at least one value")

    def grid(self, n: int) -> list[Any]:
        return list(self.values[:n]) if n < len(self.values) else list(self.values)


def uniform(low: float, high: float) -> Uniform:
    """A float uniform on ``[low, high]``."""
    return Uniform(float(low), float(high))


def loguniform(low: float, high: float) -> LogUniform:
    """A float whose log is uniform on ``[log low, log high]`` (learning rates, weight decay)."""
    return LogUniform(float(low), float(high))


def choice(values: Sequence[Any]) -> Choice:
    """One of ``values`` (e.g. batch sizes)."""
    return Choice(tuple(values))


Distribution = Uniform | LogUniform | Choice


def _check_space(space: dict[str, Any]) -> dict[str, Distribution]:
    if not isinstance(space, dict) or not space:
        raise ValueError(f"space must be a non-empty dict name -> distribution, got {space!r}")
    out = {}
    for name, dist in space.items():
        if isinstance(dist, list | tuple):
            dist = Choice(tuple(dist))  # a plain list is a choice
        if not isinstance(dist, Uniform | LogUniform | Choice):
            raise TypeError(
                f"space[{name!r}] must be tune.uniform/loguniform/choice or a list, got {dist!r}"
            )
        out[name] = dist
    return out


def grid_points(space: dict[str, Any], num_trials: int) -> dict[str, list[Any]]:
    """Values per dimension for a grid of at most ``num_trials`` points.

    Adds points one at a time to the float dimension with the fewest
    while the product stays within ``num_trials``; every value of a ``choice`` is taken first
    (as far as the budget allows). 16 trials over a 3-way choice and two floats give
    3 x 2 x 2 = 12 points (3 x 3 x 2 = 18 would not fit); 32 give 3 x 3 x 3 = 27.
    """
    space = _check_space(space)
    counts = dict.fromkeys(space, 1)
    # every value of each choice first (a grid that skips a category never tries it), while the
    # budget allows; then the float dimensions share what is left, one point at a time
    for k, d in space.items():
        if isinstance(d, Choice):
            counts[k] = max(1, min(len(d.values), num_trials // math.prod(counts.values())))
    floats = [k for k, d in space.items() if not isinstance(d, Choice)]
    while floats:
        k = min(floats, key=lambda k: counts[k])  # the float dimension with the fewest points
        if math.prod(counts.values()) // counts[k] * (counts[k] + 1) > num_trials:
            break
        counts[k] += 1
    return {k: d.grid(counts[k]) for k, d in space.items()}


# --- studies ---------------------------------------------------------------------------------


class TrialPruned(Exception):  # noqa: N818 (Optuna's name)
    """Raised by ``report`` when the pruner stops a trial; the search catches it."""


@dataclasses.dataclass
class Trial:
    """One evaluation: ``params``, its ``value`` (the last reported value if pruned), ``state``
    (``"complete"``, ``"pruned"`` or ``"failed"``) and the values it reported, ``{step: value}``."""

    number: int
    params: dict[str, Any]
    value: float | None
    state: str = "complete"
    intermediate: dict[int, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Study:
    """The result of :func:`search`: every trial in order, and the best completed one."""

    method: str
    trials: list[Trial]
    optuna_study: Any = None

    @property
    def completed(self) -> list[Trial]:
        return [t for t in self.trials if t.state == "complete" and t.value is not None]

    @property
    def best_trial(self) -> Trial:
        done = self.completed
        if not done:
            raise ValueError("no trial completed")
        return min(done, key=lambda t: t.value)

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best_trial.params)

    @property
    def best_value(self) -> float:
        return float(self.best_trial.value)

    def best_so_far(self) -> np.ndarray:
        """The best completed value after each trial (``inf`` before the first), for plots of
        best value against trials spent."""
        best, out = math.inf, []
        for t in self.trials:
            if t.state == "complete" and t.value is not None:
                best = min(best, t.value)
            out.append(best)
        return np.asarray(out)


def _wants_report(objective: Callable[..., float]) -> bool:
    try:
        sig = inspect.signature(objective)
    except (TypeError, ValueError):
        return False
    # a second *required* positional parameter (defaulted ones are the objective's own business)
    params = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def search(
    objective: Callable[..., float],
    space: dict[str, Any],
    method: str = "random",
    num_trials: int = 20,
    seed: int = 0,
    *,
    pruner: Any = "median",
    n_startup_trials: int | None = None,
    catch: tuple[type[BaseException], ...] = (),
) -> Study:
    """Minimise ``objective`` over ``space`` with ``num_trials`` evaluations.

    Args:
      objective: ``objective(params) -> float`` to minimise (return ``-accuracy`` to maximise), or
        ``objective(params, report)`` to report intermediate values: ``report(step, value)``
        raises :class:`TrialPruned` when the pruner stops the trial (let it propagate).
      space: ``{name: tune.uniform(a, b) | tune.loguniform(a, b) | tune.choice([...])}``.
      method: ``"grid"``, ``"random"`` or ``"bayesian"`` (Optuna TPE).
      num_trials: evaluations; ``grid`` runs at most this many (see :func:`grid_points`).
      seed: makes the proposals reproducible (the objective's own randomness is its business).
      pruner: ``"median"`` (Optuna's ``MedianPruner``, 3 start-up trials), ``None`` (never prune)
        or any ``optuna.pruners`` object.
      n_startup_trials: random trials before TPE models the results (``bayesian`` only; default
        ``min(10, max(3, num_trials // 4))``: Optuna's 10 would leave few guided trials at 16).
      catch: exception types that mark a trial ``"failed"`` instead of stopping the search.

    Returns:
      A :class:`Study` (``.trials``, ``.best_params``, ``.best_value``, ``.optuna_study``).
    """
    import optuna

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(num_trials, int) or num_trials < 1:
        raise ValueError(f"num_trials must be a positive int, got {num_trials!r}")
    space = _check_space(space)

    if method == "grid":
        values = grid_points(space, num_trials)
        grid = [
            dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())
        ]
        num_trials = len(grid)
        sampler = optuna.samplers.RandomSampler(
            seed=seed
        )  # never consulted: every trial is enqueued
    elif method == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        startup = (
            n_startup_trials if n_startup_trials is not None else min(10, max(3, num_trials // 4))
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate TPE is flagged experimental
            sampler = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=startup, multivariate=True
            )
    if pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    elif pruner is None:
        pruner = optuna.pruners.NopPruner()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)
    if method == "grid":
        for point in grid:  # product order: the first dimension varies slowest
            study.enqueue_trial(point)
    wants_report = _wants_report(objective)
    trials: list[Trial] = []

    for number in range(num_trials):
        ot = study.ask()
        params = {}
        for name, dist in space.items():
            if isinstance(dist, Choice):
                params[name] = _native(ot.suggest_categorical(name, list(dist.values)))
            else:
                params[name] = ot.suggest_float(
                    name, dist.low, dist.high, log=isinstance(dist, LogUniform)
                )
        record = Trial(number, params, None)

        def report(step: int, value: float, ot=ot, record=record) -> None:
            value = float(value)
            record.intermediate[int(step)] = value
            ot.report(value, int(step))
            if ot.should_prune():
                raise TrialPruned(f"trial {ot.number} pruned at step {step}")

        try:
            value = objective(params, report) if wants_report else objective(params)
        except (TrialPruned, optuna.TrialPruned):
            record.state = "pruned"
            record.value = (
                record.intermediate[max(record.intermediate)] if record.intermediate else None
            )
            study.tell(ot, state=optuna.trial.TrialState.PRUNED)
        except catch:
            record.state = "failed"
            study.tell(ot, state=optuna.trial.TrialState.FAIL)
        else:
            value = float(value)
            if not math.isfinite(value):
                record.state, record.value = "failed", value
                study.tell(ot, state=optuna.trial.TrialState.FAIL)
            else:
                record.value = value
                study.tell(ot, value)
        trials.append(record)
    return Study(method, trials, study)
