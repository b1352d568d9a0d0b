"""Validation of hyper-parameters, shared by the optimizer factories.

Checks run only on concrete Python/NumPy numbers: inside ``optax.inject_hyperparams`` or a
``jit`` the factories are called with traced arrays, which cannot be compared in Python, and the
caller is then responsible for the values.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def _concrete(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray | np.generic) and np.ndim(value) == 0:
        return float(value)
    return None


def check_non_negative(name: str, value: Any) -> None:
    v = _concrete(value)
    if v is not None and not v >= 0.0:  # `not >=` also rejects NaN
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")


def check_positive(name: str, value: Any) -> None:
    v = _concrete(value)
    if v is not None and not v > 0.0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_unit_interval(name: str, value: Any) -> None:
    """Decay rates live in [0, 1): beta = 1 never forgets and breaks the bias correction."""
    v = _concrete(value)
    if v is not None and not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")


def check_learning_rate(value: Any) -> None:
    """A learning rate is a non-negative number or a schedule (a callable of the step)."""
    if callable(value):
        return
    if _concrete(value) is None and not hasattr(value, "shape"):
        raise ValueError(
            f"learning_rate must be a number or a schedule (step -> value), got {value!r}"
        )
    check_non_negative("learning_rate", value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
