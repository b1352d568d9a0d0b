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

from jaxdl.nn.conv import (  # noqa: E402
    conv_general_dilated,
    conv_patches,
    depthwise_conv,
    patches_conv,
    pointwise_conv,
)

__all__ += [
    "conv_general_dilated",
    "conv_patches",
    "depthwise_conv",
    "patches_conv",
    "pointwise_conv",
]

from jaxdl.nn.conv import Conv  # noqa: E402

__all__ += ["Conv"]

# Graph neural networks (issue 18): message-passing layers, pooling, padded graph batches.
from jaxdl.nn.graph import (  # noqa: E402
    GATConv,
    GCNConv,
    GINConv,
    GraphBatch,
    batch_graphs,
    pad_graph_batch,
    pool_graphs,
    segment_max,
    segment_mean,
    segment_softmax,
    segment_sum,
)

__all__ += [
    "GATConv",
    "GCNConv",
    "GINConv",
    "GraphBatch",
    "batch_graphs",
    "pad_graph_batch",
    "pool_graphs",
    "segment_max",
    "segment_mean",
    "segment_softmax",
    "segment_sum",
]

from jaxdl.nn.feedback_alignment import (  # noqa: E402
    FeedbackAlignmentDense,
    feedback_alignment_dense,
)

__all__ += ["FeedbackAlignmentDense", "feedback_alignment_dense"]

# Attention (issue 17).
from jaxdl.nn.attention import (  # noqa: E402
    MultiHeadAttention,
    attention_weights,
    causal_dot_product_attention,
    causal_mask,
    dot_product_attention,
)

__all__ += [
    "MultiHeadAttention",
    "attention_weights",
    "causal_dot_product_attention",
    "causal_mask",
    "dot_product_attention",
]

from jaxdl.nn.normalization import BatchNorm, LayerNorm, batch_norm, layer_norm  # noqa: E402

__all__ += ["BatchNorm", "LayerNorm", "batch_norm", "layer_norm"]

from jaxdl.nn.linear import Dense, flat_matmul  # noqa: E402

__all__ += ["Dense", "flat_matmul"]

from jaxdl.nn.materialize import materialize  # noqa: E402

__all__ += ["materialize"]

from jaxdl.nn.recurrent import gru_layer  # noqa: E402

__all__ += ["gru_layer"]
