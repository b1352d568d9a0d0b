"""One process of the 2-process x 4-device test in test_parallel.py (run by jaxdl.train.launch).

Usage: python tests/train/mp_worker.py OUT.npz. Every process trains the same small problem with
fit on the global 8-device mesh; process 0 writes the final parameters and history to OUT.npz.
"""

import sys

from jaxdl.train import parallel

parallel.initialize_distributed()  # before anything touches the devices

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tests.train.parallel_cases import fit_case  # noqa: E402


def main(out: str) -> None:
    assert jax.process_count() == 2 and jax.device_count() == 8, (
        jax.process_count(),
        jax.devices(),
    )
    assert jax.local_device_count() == 4
    history = fit_case(num_devices=None)  # all 8 devices of both processes, transparently
    params = parallel.gather(history.state.params)
    if jax.process_index() == 0:
        flat = {
            jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree.leaves_with_path(params)
        }
        np.savez(out, **flat, **{f"history/{k}": np.asarray(v) for k, v in history.history.items()})


if __name__ == "__main__":
    main(sys.argv[1])
