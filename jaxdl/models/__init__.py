"""Models: flax.linen modules. Images are NHWC; BatchNorm state lives in 'batch_stats'."""

from jaxdl.models.cnn import MnistCNN

__all__ = ["MnistCNN"]
