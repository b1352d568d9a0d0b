"""Data: packaged offline datasets, TFDS datasets, batch iteration."""

from jaxdl.data.batching import iterate_batches, num_batches, prefetch_to_device
from jaxdl.data.sources import OFFLINE, TFDS, DatasetUnavailableError, load

__all__ = [
    "OFFLINE",
    "TFDS",
    "DatasetUnavailableError",
    "iterate_batches",
    "load",
    "num_batches",
    "prefetch_to_device",
]

from jaxdl.data import augment  # noqa: E402

__all__ += ["augment"]

# Time series (issue 5): statsmodels' sunspots, sliding windows, chronological splits.
from jaxdl.data.timeseries import load_sunspots, make_windows, split_series  # noqa: E402

__all__ += ["load_sunspots", "make_windows", "split_series"]
