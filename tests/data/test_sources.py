import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdl import data
from jaxdl.data import sources


@pytest.mark.parametrize(
    "name, n_train, n_test, hw", [("mnist_5k", 4000, 1000, 28), ("digits", 1437, 360, 8)]
)
def test_offline_split_sizes_dtypes_ranges(name, n_train, n_test, hw):
    x, y = data.load(name, "train")
    xt, yt = data.load(name, "test")
    assert x.shape == (n_train, hw, hw, 1) and xt.shape == (n_test, hw, hw, 1)
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
    assert set(np.unique(y)) == set(range(10))


def test_mnist_5k_split_is_disjoint_stratified_and_deterministic():
    x, y = data.load("mnist_5k", "train")
    xt, yt = data.load("mnist_5k", "test")
    # Disjoint: no test image appears in train.
    train_rows = {row.tobytes() for row in x.reshape(len(x), -1)}
    assert not any(row.tobytes() in train_rows for row in xt.reshape(len(xt), -1))
    # Stratified: every class keeps its share of the full set within one example.
    full = np.concatenate([y, yt])
    np.testing.assert_allclose(np.bincount(yt), np.bincount(full) * 0.2, atol=1)
    # Deterministic: a second load returns identical arrays (cache cleared, file re-read).
    sources._read_offline.cache_clear()
    x2, y2 = data.load("mnist_5k", "train")
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_validation_split_comes_out_of_train_only():
    x_all, _ = data.load("mnist_5k", "train")
    xtr, ytr = data.load("mnist_5k", "train", validation_split=0.1)
    xv, yv = data.load("mnist_5k", "validation", validation_split=0.1)
    xt, _ = data.load("mnist_5k", "test", validation_split=0.1)
    assert len(xtr) + len(xv) == len(x_all) and len(xv) == 400
    assert len(xt) == 1000
    np.testing.assert_allclose(np.bincount(yv), np.bincount(ytr) / 9, atol=1.5)
    rows = {r.tobytes() for r in xtr.reshape(len(xtr), -1)}
    assert not any(r.tobytes() in rows for r in xv.reshape(len(xv), -1))


def test_changing_a_returned_array_does_not_change_the_next_load():
    x, _ = data.load("mnist_5k", "test")
    x[:] = -1.0
    x2, _ = data.load("mnist_5k", "test")
    assert x2.min() == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="imagenet", split="train"), "unknown dataset 'imagenet'.*mnist_5k"),
        (dict(name="mnist_5k", split="training"), "split must be one of"),
        (dict(name="mnist_5k", split="train", source="web"), "source must be"),
        (dict(name="mnist_5k", split="train", validation_split=1.0), r"validation_split.*\[0, 1\)"),
        (dict(name="mnist_5k", split="validation"), "validation_split > 0"),
        (dict(name="mnist", split="train", source="packaged"), "not packaged"),
        (dict(name="digits", split="train", source="tfds"), "packaged dataset"),
    ],
)
def test_bad_arguments_name_what_is_allowed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load(**kwargs)


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_path_with_mock_data(name, shape):
    with tfds.testing.mock_data(num_examples=12):
        x, y = data.load(name, "train")
    assert x.shape == (12, *shape) and x.dtype == np.float32 and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_tfds_name_offline_fails_fast_naming_offline_alternatives(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_network_available", lambda *a, **k: False)
    start = time.perf_counter()
    with pytest.raises(data.DatasetUnavailableError, match="mnist_5k, digits"):
        data.load("fashion_mnist", "test", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 30


def test_offline_splits_are_stored_shuffled_so_a_leading_slice_has_every_class():
    """mnist_5k's source file is sorted by class; the stored split order must not be."""
    for name in ("mnist_5k", "digits"):
        for split in ("train", "test"):
            x, y = data.load(name, split)
            head = y[: len(y) // 5]
            assert set(np.unique(head)) == set(range(10)), (name, split)
            # and stratified membership is unchanged: every class within one of its share
            counts = np.bincount(y, minlength=10)
            assert counts.max() - counts.min() < len(y) // 10
