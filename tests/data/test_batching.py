import jax
import numpy as np
import pytest

from jaxdl import data


def _epoch(n=10, batch=4, **kw):
    x = np.arange(n)
    return list(data.iterate_batches((x, x * 10), batch, **kw))


def test_one_epoch_covers_every_example_once_and_pairs_stay_aligned():
    batches = _epoch(n=10, batch=4, seed=3, epoch=0)
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    seen = np.concatenate([b[0] for b in batches])
    np.testing.assert_array_equal(np.sort(seen), np.arange(10))
    for xb, yb in batches:
        np.testing.assert_array_equal(yb, xb * 10)


def test_permutation_depends_only_on_seed_and_epoch():
    a = np.concatenate([b[0] for b in _epoch(seed=1, epoch=2)])
    b = np.concatenate([b[0] for b in _epoch(seed=1, epoch=2)])
    c = np.concatenate([b[0] for b in _epoch(seed=1, epoch=3)])
    d = np.concatenate([b[0] for b in _epoch(seed=2, epoch=2)])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_drop_remainder_and_no_shuffle():
    batches = _epoch(n=10, batch=4, drop_remainder=True, shuffle=False)
    assert len(batches) == 2 == data.num_batches(10, 4, True)
    np.testing.assert_array_equal(batches[0][0], [0, 1, 2, 3])
    assert data.num_batches(10, 4, False) == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        _epoch(batch=0)
    with pytest.raises(ValueError, match="first axis"):
        list(data.iterate_batches((np.zeros(3), np.zeros(4)), 2))


def test_prefetch_to_device_yields_the_same_batches_on_device():
    batches = _epoch(n=10, batch=3, seed=0)
    moved = list(data.prefetch_to_device(iter(batches), size=2))
    assert len(moved) == len(batches)
    for (x, y), (xd, yd) in zip(batches, moved, strict=True):
        assert isinstance(xd, jax.Array)
        np.testing.assert_array_equal(np.asarray(xd), x)
        np.testing.assert_array_equal(np.asarray(yd), y)
