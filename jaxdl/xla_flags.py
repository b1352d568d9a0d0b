"""XLA:CPU settings that make jaxdl's training steps faster: one process-wide flag, set when jaxdl
is imported, and one compiler option for the train step alone.

Measured on the course's CNN train step, 2-core CPU, jaxlib 0.10.2 (``docs/performance.md``):

- :func:`train_step_compiler_options`, per ``jax.jit`` (used by
  :func:`jaxdl.train.make_train_step`):
  ``xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`` hands only matrix
  multiplies to the YNNPACK library, not convolutions. At the train step's batch of 128 the
  library's convolution ran on one core (4.8 ms for the CNN's second layer on 1 or 2 cores, and
  22 ms for its kernel gradient) where XLA's own takes 1.8 and 4.6 ms on two. At an inference
  batch of 1000 the library's convolution is the faster one (it parallelises across the batch),
  so inference keeps the default.
- :func:`inference_compiler_options`: the same option for an inference pass (used by
  :func:`jaxdl.train.jit_inference`, ``make_eval_step``, ``evaluate`` and ``predict``). At batch
  128 the zoo's convolutions at 8x8 to 32x32 with 16 to 64 channels run 1.3-1.6x faster in XLA's
  own kernels; a model whose inference is faster under the default (the course's ``MnistCNN``,
  whose convolution, ReLU and pool YNNPACK fuses) says so with ``cpu_inference_kernels =
  "library"``.
- :data:`CPU_FLAGS`, process-wide: ``xla_cpu_enable_concurrency_optimized_scheduler=false``. The
  default schedule orders a step's operations so that independent ones can run at the same time
  on the runtime's threads; when the operations are themselves multi-threaded (GEMMs,
  convolutions, large fused loops) that only splits the cores between them. XLA reads this flag
  from ``XLA_FLAGS`` once, when the first computation starts the backend (a per-``jit`` compiler
  option of the same name measured no effect), so it is added at ``import jaxdl`` (:func:`apply`).

``MnistCNN``'s train step: 41.8 ms with XLA's defaults, 17.9 with the compiler option, 14.9 with
both (the flag alone: 41.3). A train step jitted by hand gets the flag but not the option: pass
``compiler_options=jaxdl.xla_flags.train_step_compiler_options()`` to ``jax.jit`` for the same
speed. Neither setting changes what is computed, only the schedule and which kernel runs, and
both concern the CPU backend only. They are applied

- only when the installed jaxlib is a version they were measured with (:data:`TESTED_JAXLIB`),
  since XLA aborts the process on a flag it does not know;
- only for flags the user has not set in ``XLA_FLAGS`` (the user's value wins);
- unless the environment variable ``JAXDL_XLA_FLAGS=0`` opts out (of both).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from typing import Any

__all__ = [
    "CPU_FLAGS",
    "TESTED_JAXLIB",
    "TRAIN_STEP_OPTIONS",
    "apply",
    "backend_started",
    "check_differentiated",
    "inference_compiler_options",
    "opted_out",
    "train_step_compiler_options",
    "tuned_step",
]

CPU_FLAGS: dict[str, str] = {"xla_cpu_enable_concurrency_optimized_scheduler": "false"}
TRAIN_STEP_OPTIONS: dict[str, Any] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
}

# (major, minor) jaxlib releases with these flags, where they were measured.
TESTED_JAXLIB: tuple[tuple[int, int], ...] = ((0, 10),)

OPT_OUT_ENV = "JAXDL_XLA_FLAGS"


def _jaxlib_version() -> tuple[int, int] | None:
    try:
        from jaxlib import version
    except ImportError:
        return None
    parts = version.__version__.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def opted_out(env, variable: str) -> bool:
    """Whether the environment variable ``variable`` is set to ``0``, ``false``, ``no`` or
    ``off``: how jaxdl's import-time settings are switched off."""
    return env.get(variable, "1").strip().lower() in ("0", "false", "no", "off")


def _enabled(env) -> bool:
    if opted_out(env, OPT_OUT_ENV):
        return False
    return _jaxlib_version() in TESTED_JAXLIB


def _user_flags(env) -> set[str]:
    return {tok.lstrip("-").split("=", 1)[0] for tok in env.get("XLA_FLAGS", "").split()}


def backend_started() -> bool:
    """Whether JAX has already started a backend (after which ``XLA_FLAGS`` is not read again)."""
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - layout of a future jax
        return False
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started()) if started is not None else False


def _default_backend() -> str:
    import jax

    return jax.default_backend()


def apply(environ: dict[str, str] | None = None) -> list[str]:
    """Add :data:`CPU_FLAGS` to ``XLA_FLAGS`` in ``environ`` (default ``os.environ``).

    Returns the flags added (``--name=value``), empty when opted out, when jaxlib is not a
    :data:`TESTED_JAXLIB` version, or when every flag is already set by the user. Warns when
    called on ``os.environ`` after the CPU backend has started (the flags then come too late).
    """
    env = os.environ if environ is None else environ
    if not _enabled(env):
        return []
    present = _user_flags(env)
    added = [f"--{name}={value}" for name, value in CPU_FLAGS.items() if name not in present]
    if added:
        env["XLA_FLAGS"] = " ".join([*env.get("XLA_FLAGS", "").split(), *added])
        if environ is None and backend_started() and _default_backend() == "cpu":
            warnings.warn(
                "jaxdl.xla_flags: JAX's backend started before `import jaxdl`, so the XLA:CPU "
                f"flags {added} are not in effect (CPU training runs slower); import jaxdl "
                "before the first JAX computation, or put them in XLA_FLAGS yourself",
                stacklevel=3,
            )
    return added


def train_step_compiler_options(environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """``compiler_options`` for a train step's ``jax.jit``: :data:`TRAIN_STEP_OPTIONS` on the CPU
    backend of a tested jaxlib, less those the user set in ``XLA_FLAGS``; ``None`` otherwise."""
    env = os.environ if environ is None else environ
    if not _enabled(env) or _default_backend() != "cpu":
        return None
    present = _user_flags(env)
    options = {k: v for k, v in TRAIN_STEP_OPTIONS.items() if k not in present}
    return options or None


# The value of a model's ``cpu_inference_kernels`` (class attribute) that keeps XLA's defaults.
LIBRARY_KERNELS = "library"


def inference_compiler_options(
    model: Any = None, environ: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """``compiler_options`` for an inference pass of ``model``: the same option as
    :func:`train_step_compiler_options` (convolutions in XLA's own kernels, not YNNPACK's),
    unless ``model`` declares ``cpu_inference_kernels = "library"``; ``None`` off the CPU.

    Measured on the zoo's inference pass (2-core CPU, 30 November; ``docs/performance.md``),
    ms per batch with XLA's default against the option: ResNet-20 at batch 128 110 -> 82, at
    batch 32 28.2 -> 21.3, at batch 1000 909 -> 649; ResNet-56 406 -> 266; DenseNet-BC-100
    1,469 -> 912; EfficientNet-B0 46 -> 28; a small ViT 9.2 -> 8.7. The course's ``MnistCNN`` is
    the exception (4.1 against 4.4 ms at batch 128 with its best lowering under the option): its
    convolutions, ReLUs and ``reduce_window`` pools run as fused YNNPACK subgraphs, so it declares
    ``cpu_inference_kernels = "library"``.
    """
    if getattr(model, "cpu_inference_kernels", None) == LIBRARY_KERNELS:
        return None
    return train_step_compiler_options(environ)


# ---- the one-time warning for a train step compiled without the option -------------------------

_tuned_depth = contextvars.ContextVar("jaxdl_tuned_step", default=0)
_warned = False


@contextlib.contextmanager
def tuned_step():
    """Mark the code traced inside as a train step compiled with
    :func:`train_step_compiler_options` (:func:`jaxdl.train.jit_train_step` enters it while JAX
    traces the step), so :func:`check_differentiated` stays quiet."""
    token = _tuned_depth.set(_tuned_depth.get() + 1)
    try:
        yield
    finally:
        _tuned_depth.reset(token)


def _is_differentiated(x: Any) -> bool:
    # A parameter seen through jax.grad/jax.vjp/jax.linearize is a JVP or linearize tracer.
    return type(x).__name__ in ("JVPTracer", "LinearizeTracer")


def check_differentiated(param: Any, layer: str) -> None:
    """Warn once per process when ``param`` (a layer's weight) is being differentiated outside a
    :func:`tuned_step`, on the CPU backend where :func:`train_step_compiler_options` applies.

    Called by :class:`jaxdl.nn.Conv`: a convolutional train step jitted by hand without the option
    runs its convolutions through the YNNPACK library's kernels, 1.5-2.5x slower on the course's
    CNN (``docs/performance.md``). The warning names the one-line fix.
    """
    global _warned
    if _warned or _tuned_depth.get() or not _is_differentiated(param):
        return
    if not train_step_compiler_options():
        return
    _warned = True
    warnings.warn(
        f"jaxdl: a train step through {layer} is being compiled without jaxdl's train-step "
        "compiler option, so on CPU its convolutions run through kernels that measured 1.5-2.5x "
        "slower (docs/performance.md). Compile your step with "
        "`jaxdl.train.jit_train_step(step_fn)` (jax.jit with the state donated and the option), "
        "or pass `compiler_options=jaxdl.xla_flags.train_step_compiler_options()` to jax.jit "
        "and wrap the step's body in `jaxdl.xla_flags.tuned_step()` to silence this.",
        RuntimeWarning,
        stacklevel=3,
    )
