"""jaxdl: the deep-learning essentials, derived and written once in JAX.

Subpackages: :mod:`jaxdl.nn` (layers and cells), :mod:`jaxdl.models`, :mod:`jaxdl.optim`
(optimizers as optax transforms), :mod:`jaxdl.losses`, :mod:`jaxdl.data`, :mod:`jaxdl.train`.
"""

from jaxdl import data, losses, models, nn, optim, train

__version__ = "0.1.0"
__all__ = ["data", "losses", "models", "nn", "optim", "train", "__version__"]
