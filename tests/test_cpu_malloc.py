"""jaxdl.cpu_malloc: XLA's per-step scratch buffer stays mapped, so a step stops page-faulting it
in again (counted with getrusage in fresh processes, with and without the opt-out)."""

import os
import subprocess
import sys
import textwrap

import pytest

from jaxdl import cpu_malloc

_SCRIPT = textwrap.dedent(
    """
    import resource
    import jaxdl  # applies jaxdl.cpu_malloc before the backend starts
    import jax, jax.numpy as jnp
    n = 3072  # an (n, n) float32 intermediate: 37.7 MB, above glibc's largest mmap threshold
    @jax.jit
    def f(u, v):
        h = jnp.tanh(u @ v)  # stored in XLA's scratch buffer
        return (h @ u).sum() + (v @ h).sum()
    u, v = jnp.ones((n, 8)) / n, jnp.ones((8, n))
    for _ in range(12):  # the heap's layout settles over the first steps
        f(u, v).block_until_ready()
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        f(u, v).block_until_ready()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 8 * resource.getpagesize())
    """
)


def _faulted_bytes_per_step(opt_in: str) -> float:
    env = {**os.environ, cpu_malloc.OPT_OUT_ENV: opt_in, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not cpu_malloc._is_glibc(), reason="mallopt is glibc's (Linux)")
def test_scratch_buffer_is_not_faulted_in_every_step():
    scratch = 3072 * 3072 * 4
    default = _faulted_bytes_per_step("0")
    ours = _faulted_bytes_per_step("1")
    assert default > 0.8 * scratch  # glibc's default: the buffer comes back as fresh pages
    assert ours < 0.05 * scratch


def test_opt_out_and_too_late_do_nothing():
    assert cpu_malloc.apply({cpu_malloc.OPT_OUT_ENV: "0"}) == {}
    assert cpu_malloc.apply({}, backend_started=True) == {}
    if cpu_malloc._is_glibc():  # this process imported jaxdl before starting JAX's backend
        assert cpu_malloc.apply({}) == cpu_malloc.SETTINGS
