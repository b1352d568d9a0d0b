"""jaxdl: the deep-learning essentials, derived and written once in JAX.

Subpackages: :mod:`jaxdl.nn` (layers and cells), :mod:`jaxdl.models`, :mod:`jaxdl.optim`
(optimizers as optax transforms), :mod:`jaxdl.losses`, :mod:`jaxdl.data`, :mod:`jaxdl.train`.
Importing jaxdl adds an XLA:CPU scheduling flag to ``XLA_FLAGS`` (:mod:`jaxdl.xla_flags`, which
also holds the compiler option jaxdl's train steps use; ``JAXDL_XLA_FLAGS=0`` opts out of both),
and on Linux asks glibc to keep XLA's per-step scratch memory mapped between steps
(:mod:`jaxdl.cpu_malloc`; ``JAXDL_CPU_MALLOC=0`` opts out).
"""

# First, before anything can start JAX's backend: XLA reads XLA_FLAGS only then.
from jaxdl import xla_flags

xla_flags.apply()

from jaxdl import cpu_malloc  # noqa: E402

cpu_malloc.apply(backend_started=xla_flags.backend_started())

from jaxdl import data, losses, models, nn, optim, train  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "data",
    "losses",
    "models",
    "nn",
    "optim",
    "train",
    "xla_flags",
    "cpu_malloc",
    "__version__",
]

# Reinforcement learning on the device (environments, agents, saved policies).
from jaxdl import rl  # noqa: E402

__all__ += ["rl"]

# Compression (quantisation, pruning) and hyper-parameter tuning.
from jaxdl import compress, tune  # noqa: E402

__all__ += ["compress", "tune"]

# Diffusion models (issue 19): schedules, q_sample, DDPM/DDIM samplers, guidance.
from jaxdl import diffusion  # noqa: E402

__all__ += ["diffusion"]
