"""Model compression: integer quantisation (post-training and quantisation-aware), magnitude
pruning (one-shot and gradual, Zhu & Gupta 2017), and int8 inference.

Knowledge distillation's loss is :func:`jaxdl.losses.distillation_loss`. Derivations:
docs/derivations/compression.md.
"""

from jaxdl.compress.prune import (
    PruningState,
    apply_mask,
    gradual_pruning,
    kernel_sparsity,
    magnitude_mask,
    polynomial_sparsity,
    sparse_size_bytes,
)
from jaxdl.compress.qat import fake_quant, fake_quant_params, weight_scale
from jaxdl.compress.quantize import (
    QuantizedArray,
    calibrate,
    dequantize,
    int8_apply,
    quantize,
    quantize_array,
    size_bytes,
)

__all__ = [
    "PruningState",
    "QuantizedArray",
    "apply_mask",
    "calibrate",
    "dequantize",
    "fake_quant",
    "fake_quant_params",
    "gradual_pruning",
    "int8_apply",
    "kernel_sparsity",
    "magnitude_mask",
    "polynomial_sparsity",
    "quantize",
    "quantize_array",
    "size_bytes",
    "sparse_size_bytes",
    "weight_scale",
]
