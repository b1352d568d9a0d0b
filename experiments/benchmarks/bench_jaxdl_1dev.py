"""jaxdl on one CPU device: :mod:`.bench_jaxdl` with ``jax_num_cpu_devices=1``, so the LSTM train
step is :func:`jaxdl.train.make_train_step` and the cores are left to XLA's threads within each
operation. Reported next to ``jaxdl`` to show what the per-core devices buy.

Run by :mod:`experiments.benchmarks.run` (the LSTM train step only).
"""

from __future__ import annotations

import functools

from experiments.benchmarks._harness import main
from experiments.benchmarks.bench_jaxdl import build, configure, versions

if __name__ == "__main__":
    main("jaxdl_1dev", build, versions, functools.partial(configure, cpu_devices=1))
