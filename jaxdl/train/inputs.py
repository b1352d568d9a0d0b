"""What ``fit``, ``evaluate`` and ``predict`` accept as data, checked once, and how it becomes
fixed-shape batches.

Three forms of training data:

- **Arrays in memory**: ``(x, y)`` where ``x`` is an array, a tuple of arrays (a model with
  several positional inputs) or a dict of arrays (keyword inputs), all with the same first
  dimension as ``y``. Labels are checked once against the model's output width.
- **A random-access source** (``len`` and integer indexing, records ``(x, y)`` or dicts): read
  through `grain <https://github.com/google/grain>`_ with a per-epoch shuffle that depends only
  on ``(seed, epoch)``, batching and optional worker processes -- data that does not fit in
  memory, e.g. ``tfds.data_source(...)`` or a ``grain.MapDataset``.
- **An iterable of ``(x, y)`` batches** (a generator, a ``tf.data``/grain iterator, a list):
  re-iterated every epoch, or with ``steps_per_epoch`` read as one continuing stream.

Every batch comes out padded to the full batch size with a 0/1 ``mask`` (padded rows are other
real examples of the epoch, masked out of loss, gradient and metrics), so one train step program
serves the whole run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np

Batch = tuple[Any, np.ndarray, np.ndarray]  # (x, y, mask)


def num_rows(x: Any) -> int:
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise ValueError("x holds no array")
    return len(leaves[0])


def take(x: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of every array of ``x`` (array, tuple or dict)."""
    return jax.tree.map(lambda a: a[idx], x)


def _as_arrays(x: Any) -> Any:
    if isinstance(x, tuple | list):
        return tuple(np.asarray(a) for a in x)
    if isinstance(x, dict):
        return {k: np.asarray(v) for k, v in x.items()}
    return np.asarray(x)


def check_pair(data: Any, name: str) -> tuple[Any, np.ndarray]:
    """Validate in-memory ``(x, y)``; return them as NumPy arrays (tuples/dicts kept)."""
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError(f"{name} must be a pair (x, y) of arrays, got {type(data).__name__}")
    x, y = _as_arrays(data[0]), np.asarray(data[1])
    lengths = [len(a) for a in jax.tree.leaves(x)]
    if not lengths:
        raise ValueError(f"{name}: x holds no array")
    if len(set(lengths)) > 1:
        raise ValueError(f"{name}: the arrays of x must share their first dimension, got {lengths}")
    if lengths[0] != len(y):
        raise ValueError(
            f"{name}: x and y must have the same length, got {lengths[0]} and {len(y)}"
        )
    if len(y) == 0:
        raise ValueError(f"{name} is empty")
    return x, y


def check_x(x: Any, name: str = "x") -> Any:
    x = _as_arrays(x)
    lengths = [len(a) for a in jax.tree.leaves(x)]
    if not lengths or lengths[0] == 0:
        raise ValueError(f"{name} is empty")
    if len(set(lengths)) > 1:
        raise ValueError(f"{name}: the arrays of x must share their first dimension, got {lengths}")
    return x


def check_labels(y: np.ndarray, num_classes: int | None, name: str) -> None:
    """Integer labels must lie in ``[0, num_classes)``; one-hot/soft labels must have
    ``num_classes`` columns. ``num_classes=None`` (not a classifier) checks nothing.

    Raises:
      ValueError: naming the first bad label, its index and the class count.
    """
    if num_classes is None:
        return
    y = np.asarray(y)
    if np.issubdtype(y.dtype, np.integer) and y.ndim == 1:
        bad = np.flatnonzero((y < 0) | (y >= num_classes))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{name}: label {int(y[i])} at index {i} is outside the model's {num_classes} "
                f"classes (expected 0 ... {num_classes - 1}); {bad.size} labels are out of range"
            )
    elif y.ndim == 2 and y.shape[-1] != num_classes:
        raise ValueError(
            f"{name}: one-hot labels have {y.shape[-1]} columns but the model outputs "
            f"{num_classes} classes"
        )


def is_random_access(data: Any) -> bool:
    """A random-access source: ``len`` and ``__getitem__``, and not an ``(x, y)`` pair."""
    if isinstance(data, tuple | list | np.ndarray | dict):
        return False
    return hasattr(data, "__len__") and hasattr(data, "__getitem__")


def is_batch_iterable(data: Any) -> bool:
    if isinstance(data, tuple) and len(data) == 2:
        return False
    return isinstance(data, Iterable) and not is_random_access(data)


# ----------------------------------------------------------------------------------------------
# Batches


def _pad(x: Any, y: np.ndarray, batch_size: int, fill: tuple[Any, np.ndarray] | None) -> Batch:
    """Pad a short batch to ``batch_size`` rows with rows of ``fill`` (or its own rows, wrapped)."""
    n = len(y)
    mask = np.zeros((batch_size,), np.float32)
    mask[:n] = 1.0
    if n == batch_size:
        return x, y, mask
    if n > batch_size:
        raise ValueError(f"a batch of {n} rows is larger than the first batch's {batch_size}")
    fx, fy = fill if fill is not None else (x, y)
    extra = np.arange(batch_size - n) % len(fy)
    x = jax.tree.map(lambda a, f: np.concatenate([a, f[extra]]), x, fx)
    return x, np.concatenate([y, fy[extra]]), mask


def array_batches(
    x: Any,
    y: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_remainder: bool = False,
) -> Iterator[Batch]:
    """One epoch of in-memory batches; the permutation depends only on ``(seed, epoch)``, so a
    resumed run sees exactly the batches an uninterrupted one would. A short last batch is padded
    with the epoch's first examples (real rows, masked out)."""
    n = len(y)
    b = min(batch_size, n) if not drop_remainder else batch_size
    order = np.random.default_rng((seed, epoch)).permutation(n) if shuffle else np.arange(n)
    stop = n - n % b if drop_remainder else n
    for start in range(0, stop, b):
        idx = order[start : start + b]
        if len(idx) < b:
            idx = np.concatenate([idx, order[: b - len(idx)]])
            mask = (np.arange(b) < (stop - start)).astype(np.float32)
            yield take(x, idx), y[idx], mask
        else:
            yield take(x, idx), y[idx], np.ones((b,), np.float32)


def steps_per_epoch_of(n: int, batch_size: int, drop_remainder: bool) -> int:
    b = min(batch_size, n) if not drop_remainder else batch_size
    return n // b if drop_remainder else -(-n // b)


def _record_pair(record: Any) -> tuple[Any, Any]:
    if isinstance(record, tuple | list) and len(record) == 2:
        return record[0], record[1]
    if isinstance(record, dict):
        for xk, yk in (("image", "label"), ("x", "y"), ("features", "label")):
            if xk in record and yk in record:
                return record[xk], record[yk]
    raise ValueError(
        "records of a random-access source must be (x, y) pairs or dicts with keys "
        f"('image', 'label') or ('x', 'y'); got {type(record).__name__}"
        + (f" with keys {sorted(record)}" if isinstance(record, dict) else "")
    )


def source_batches(
    source: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_remainder: bool = False,
    worker_count: int = 0,
) -> Iterator[Batch]:
    """One epoch of a random-access source read through grain: shuffled by a seed derived from
    ``(seed, epoch)``, records turned into ``(x, y)``, batched, read by ``worker_count`` worker
    processes when > 0; the last short batch is padded and masked."""
    import grain

    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=int(np.random.default_rng((seed, epoch)).integers(2**31)))
    ds = ds.map(lambda r: tuple(np.asarray(v) for v in _record_pair(r)))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    it: Iterable = ds
    if worker_count > 0:
        it = ds.to_iter_dataset().mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count)
        )
    first = None
    for xb, yb in it:
        if first is None:
            first = (xb, yb)
        yield _pad(xb, yb, batch_size, first)


def iterable_batches(
    stream: Iterator, steps: int | None, batch_size: int | None
) -> Iterator[Batch]:
    """Batches ``(x, y)`` from an iterator (``steps`` of them, or until it ends), padded to the
    size of the first batch (or ``batch_size``) and masked."""
    first = None
    for item in itertools.islice(stream, steps) if steps is not None else stream:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ValueError(
                f"an iterable of batches must yield (x, y) pairs, got {type(item).__name__}"
            )
        xb, yb = _as_arrays(item[0]), np.asarray(item[1])
        if first is None:
            first = (xb, yb)
            batch_size = batch_size or len(yb)
        yield _pad(xb, yb, batch_size, first)
