"""Layers and cells."""

from jaxdl.nn.bias import bias_add, column_sum
from jaxdl.nn.pooling import max_pool

__all__ = ["bias_add", "column_sum", "max_pool"]

from jaxdl.nn.recurrent import (  # noqa: E402
    RNN,
    Bidirectional,
    ElmanCell,
    GRUCell,
    LSTMCell,
    StackedRNN,
    flip_sequences,
    lstm_layer,
)

__all__ += [
    "Bidirectional",
    "ElmanCell",
    "GRUCell",
    "LSTMCell",
    "RNN",
    "StackedRNN",
    "flip_sequences",
    "lstm_layer",
]

from jaxdl.nn import initializers  # noqa: E402

__all__ += ["initializers"]

from jaxdl.nn.conv import conv_general_dilated, conv_patches, patches_conv  # noqa: E402

__all__ += ["conv_general_dilated", "conv_patches", "patches_conv"]

# Attention (issue 17).
from jaxdl.nn.attention import (  # noqa: E402
    MultiHeadAttention,
    attention_weights,
    causal_mask,
    dot_product_attention,
)

__all__ += ["MultiHeadAttention", "attention_weights", "causal_mask", "dot_product_attention"]
