"""Keep XLA:CPU's per-step scratch memory mapped between steps (glibc ``malloc`` settings).

On the CPU, every execution of a compiled step allocates one scratch buffer for all of its
intermediate values (a GPT train step of ``experiments/benchmarks/gpt_step.py``: 837 MB) and frees
it at the end. XLA allocates it through ``malloc`` on one of its runtime threads. glibc serves a
request that large from a fresh ``mmap`` and returns it to the kernel on ``free``; on a thread
other than the main one it does so even with ``mmap`` switched off, because such a thread's
arena cannot grow past 64 MB. The kernel then hands the buffer back as zeroed 4 KiB pages, one
page fault each, on the next step's first touch: 235,000 faults (960 MB) per GPT step, about 17%
of the step (1,351 ms against 1,118 ms with transparent huge pages switched on system-wide,
30 November, ``docs/performance.md``).

:func:`apply` asks glibc, through ``mallopt``, for the behaviour a training loop wants instead:

- ``M_ARENA_MAX = 1``: every thread allocates from the main arena, which grows with ``brk``;
- ``M_MMAP_MAX = 0``: no request is served by ``mmap``;
- ``M_TRIM_THRESHOLD = -1``: the heap is never trimmed, so freed memory stays mapped (a bound
  of 2 GB still let a GPT step's two in-flight scratch buffers be trimmed and faulted back).

The scratch buffer is then the same already-mapped memory every step. The cost is that memory
freed by the process is kept for reuse rather than returned to the system, and that threads
share one allocator lock (XLA's threads allocate a few large buffers per step, not many small
ones). Nothing computed changes.

:func:`apply` runs at ``import jaxdl``. It acts only on Linux with glibc, and only before JAX's
backend has started (its threads would already own arenas). ``JAXDL_CPU_MALLOC=0`` opts out.
"""

from __future__ import annotations

import ctypes
import os
import platform

from jaxdl.xla_flags import opted_out

__all__ = ["OPT_OUT_ENV", "SETTINGS", "apply"]

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
SETTINGS: dict[str, int] = {"M_ARENA_MAX": 1, "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": -1}
_PARAMS = {"M_ARENA_MAX": _M_ARENA_MAX, "M_MMAP_MAX": _M_MMAP_MAX,
           "M_TRIM_THRESHOLD": _M_TRIM_THRESHOLD}  # fmt: skip
OPT_OUT_ENV = "JAXDL_CPU_MALLOC"

_applied: dict[str, int] = {}


def _is_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def apply(
    environ: dict[str, str] | None = None, *, backend_started: bool = False
) -> dict[str, int]:
    """Set :data:`SETTINGS` with glibc's ``mallopt`` (module docstring); returns what was set
    (empty when opted out, not glibc, or too late because the backend has started)."""
    env = os.environ if environ is None else environ
    if opted_out(env, OPT_OUT_ENV):
        return {}
    if backend_started or not _is_glibc():
        return {}
    if _applied:
        return dict(_applied)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return {}
    for name, value in SETTINGS.items():
        if libc.mallopt(_PARAMS[name], value) == 1:  # mallopt returns 1 on success
            _applied[name] = value
    return dict(_applied)
