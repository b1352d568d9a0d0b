"""The hand-written train step of :mod:`.bench_jaxdl_hand` compiled with
:func:`jaxdl.train.jit_train_step` instead of plain ``jax.jit``: the one-line recipe.

Run by :mod:`experiments.benchmarks.run` (the train-step workloads).
"""

from __future__ import annotations

import functools

from experiments.benchmarks._harness import main
from experiments.benchmarks.bench_jaxdl import configure, versions
from experiments.benchmarks.bench_jaxdl_hand import build

if __name__ == "__main__":
    main(
        "jaxdl_hand_jts",
        functools.partial(build, tuned=True),
        versions,
        functools.partial(configure, cpu_devices=1),
    )
