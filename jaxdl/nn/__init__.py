"""Layers and cells."""

from jaxdl.nn.pooling import max_pool

__all__ = ["max_pool"]
