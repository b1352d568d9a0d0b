"""The sunspot loader (statsmodels' copy) and window/split helpers against direct indexing."""

import numpy as np
import pytest

from jaxdl import data


def test_sunspots_is_the_statsmodels_yearly_series():
    years, values = data.load_sunspots()
    assert years.shape == values.shape == (309,)
    assert years[0] == 1700 and years[-1] == 2008 and np.all(np.diff(years) == 1)
    assert values.dtype == np.float32 and values.min() >= 0
    # published yearly means: 1700 -> 5.0, 1957 (the record maximum of the series) -> 190.2
    assert values[0] == 5.0 and years[np.argmax(values)] == 1957
    np.testing.assert_allclose(values.max(), 190.2, rtol=1e-6)


def test_make_windows_matches_direct_indexing():
    s = np.arange(10, dtype=np.float32)
    x, y = data.make_windows(s, window=3, horizon=2)
    assert x.shape == (6, 3, 1) and y.shape == (6, 1)
    for k in range(6):
        np.testing.assert_array_equal(x[k, :, 0], s[k : k + 3])
        assert y[k, 0] == s[k + 3 + 2 - 1]
    with pytest.raises(ValueError, match="too short"):
        data.make_windows(s, window=10)
    with pytest.raises(ValueError, match="window and horizon must be >= 1"):
        data.make_windows(s, window=0)


def test_split_series_is_chronological_and_covers_everything():
    tr, va, te = data.split_series(309, validation=0.15, test=0.15)
    idx = np.arange(309)
    parts = [idx[tr], idx[va], idx[te]]
    np.testing.assert_array_equal(np.concatenate(parts), idx)
    assert len(parts[2]) == 46 and len(parts[1]) == 46
    with pytest.raises(ValueError, match="validation"):
        data.split_series(10, validation=0.6, test=0.5)
