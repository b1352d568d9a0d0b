"""Hyper-parameter tuning: grid, random and Bayesian (Optuna TPE) search with pruning
(:mod:`jaxdl.tune.search`), and ``K`` trials trained in one jitted, vmapped program
(:mod:`jaxdl.tune.parallel`). Derivations: docs/derivations/compression.md (tuning section)."""

from jaxdl.tune.parallel import make_train_fn, vmap_trials
from jaxdl.tune.search import (
    Choice,
    LogUniform,
    Study,
    Trial,
    TrialPruned,
    Uniform,
    choice,
    grid_points,
    loguniform,
    search,
    uniform,
)

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
    "make_train_fn",
    "search",
    "uniform",
    "vmap_trials",
]
