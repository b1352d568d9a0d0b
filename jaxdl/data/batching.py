"""Batch iteration: seeded per-epoch shuffling, and prefetching onto the device."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator

import jax
import numpy as np


def num_batches(n: int, batch_size: int, drop_remainder: bool) -> int:
    """How many batches one epoch of ``n`` examples gives."""
    return n // batch_size if drop_remainder else -(-n // batch_size)


def iterate_batches(
    arrays: tuple[np.ndarray, ...],
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    drop_remainder: bool = False,
) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield one epoch of batches from arrays that share their first axis.

    The permutation of epoch ``e`` is drawn from ``np.random.default_rng((seed, e))``: it depends
    only on ``(seed, epoch)``, so a run resumed at epoch ``e`` sees exactly the batches an
    uninterrupted run would.

    Args:
      arrays: e.g. ``(x, y)``; all with the same length along axis 0.
      batch_size: examples per batch (> 0).
      shuffle: permute the examples each epoch.
      seed, epoch: select the permutation.
      drop_remainder: drop the last, smaller batch (keeps shapes static under ``jit``).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not arrays:
        raise ValueError("arrays must hold at least one array")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(
            f"arrays must share their first axis, got lengths {[len(a) for a in arrays]}"
        )
    order = np.random.default_rng((seed, epoch)).permutation(n) if shuffle else np.arange(n)
    for b in range(num_batches(n, batch_size, drop_remainder)):
        idx = order[b * batch_size : (b + 1) * batch_size]
        yield tuple(a[idx] for a in arrays)


def prefetch_to_device(
    iterator: Iterable, size: int = 2, sharding: jax.sharding.Sharding | None = None
) -> Iterator:
    """Keep ``size`` batches in flight on the device while the current one is being used.

    ``jax.device_put`` is asynchronous, so copying batch ``k+1`` overlaps the step on batch ``k``.
    ``sharding`` (e.g. a ``NamedSharding`` over a data axis) places each batch across devices.
    """
    queue: collections.deque = collections.deque()
    it = iter(iterator)

    def put(batch):
        return jax.tree.map(lambda a: jax.device_put(a, sharding), batch)

    for batch in itertools.islice(it, size):
        queue.append(put(batch))
    while queue:
        yield queue.popleft()
        for batch in itertools.islice(it, 1):
            queue.append(put(batch))
