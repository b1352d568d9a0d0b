"""Layers and cells."""

from jaxdl.nn.pooling import max_pool

__all__ = ["max_pool"]

from jaxdl.nn import initializers  # noqa: E402

__all__ += ["initializers"]
