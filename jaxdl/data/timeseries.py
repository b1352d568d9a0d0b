"""Time series: the yearly sunspot numbers shipped with statsmodels, and supervised windows.

``load_sunspots()`` reads ``statsmodels.datasets.sunspots`` (Wolf/Zurich yearly mean sunspot
activity, 1700-2008, 309 values; public domain, from the statsmodels wheel, nothing downloaded).

A forecasting problem is made of sliding windows: input ``series[t : t + window]``, target
``series[t + window + horizon - 1]`` (``horizon=1``: the next value). :func:`split_series` splits
chronologically so that validation and test lie strictly after the training period, as a forecast
must.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def _read_sunspots() -> tuple[np.ndarray, np.ndarray]:
    from statsmodels.datasets import sunspots

    frame = sunspots.load_pandas().data
    years = frame["YEAR"].to_numpy().astype(np.int32)
    values = frame["SUNACTIVITY"].to_numpy().astype(np.float32)
    years.setflags(write=False)
    values.setflags(write=False)
    return years, values


def load_sunspots() -> tuple[np.ndarray, np.ndarray]:
    """``(years int32 (309,), activity float32 (309,))`` for 1700..2008 from statsmodels."""
    return _read_sunspots()


def make_windows(
    series: np.ndarray, window: int, horizon: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows ``x[k] = series[k : k + window]``, ``y[k] = series[k + window + horizon - 1]``.

    Args:
      series: ``(N,)`` or ``(N, features)``; a 1-D series becomes one feature.
      window: number of past steps in each input, ``>= 1``.
      horizon: how far ahead the target lies, ``>= 1``.

    Returns:
      ``x (N - window - horizon + 1, window, features)`` and ``y (same count, features)``.
    """
    series = np.asarray(series, np.float32)
    if series.ndim == 1:
        series = series[:, None]
    if series.ndim != 2:
        raise ValueError(f"make_windows: series must be (N,) or (N, features), got {series.shape}")
    if window < 1 or horizon < 1:
        raise ValueError(f"make_windows: window and horizon must be >= 1, got {window}, {horizon}")
    count = len(series) - window - horizon + 1
    if count < 1:
        raise ValueError(
            f"make_windows: series of length {len(series)} is too short for window={window} "
            f"and horizon={horizon}"
        )
    idx = np.arange(count)[:, None] + np.arange(window)[None, :]  # (count, window)
    return series[idx], series[np.arange(count) + window + horizon - 1]


def split_series(
    n: int, validation: float = 0.15, test: float = 0.15
) -> tuple[slice, slice, slice]:
    """Chronological ``(train, validation, test)`` slices of ``range(n)``: test last."""
    if not (0.0 <= validation < 1.0 and 0.0 < test < 1.0 and validation + test < 1.0):
        raise ValueError(
            f"split_series: need 0 <= validation, 0 < test and validation + test < 1, "
            f"got {validation}, {test}"
        )
    n_test = int(round(test * n))
    n_val = int(round(validation * n))
    n_train = n - n_val - n_test
    return slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n)
