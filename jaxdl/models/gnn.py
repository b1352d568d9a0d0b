"""Graph neural networks: node classifiers (GCN, GAT) and a graph classifier (GIN or GCN + pooling).

Node classifiers take one graph ``x (N, F), senders (E,), receivers (E,)`` and return per-node
logits ``(N, num_classes)``; the graph classifier takes a :class:`jaxdl.nn.GraphBatch` and
returns per-graph logits ``(G, num_classes)``. Dropout (``train=True``) draws from the
``'dropout'`` rng stream. Each model sows its last hidden representation into the
``'intermediates'`` collection under ``'embedding'`` (``apply(..., mutable=['intermediates'])``):
the karate-club plot and the over-smoothing measurements read it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.nn.graph import GATConv, GCNConv, GINConv, GraphBatch, pool_graphs

__all__ = ["GAT", "GCN", "GraphClassifier"]

Array = jax.Array


def _widths(hidden_features: int | Sequence[int], num_layers: int, where: str) -> tuple[int, ...]:
    if num_layers < 1:
        raise ValueError(f"{where}: num_layers must be >= 1, got {num_layers}")
    if isinstance(hidden_features, int):
        widths = (hidden_features,) * (num_layers - 1)
    else:
        widths = tuple(hidden_features)
        if len(widths) != num_layers - 1:
            raise ValueError(
                f"{where}: hidden_features {widths} must list num_layers - 1 = {num_layers - 1} widths"
            )
    if any(w <= 0 for w in widths):
        raise ValueError(f"{where}: hidden widths must be positive, got {widths}")
    return widths


class GCN(nn.Module):
    """Kipf & Welling's node classifier: ``num_layers`` :class:`~jaxdl.nn.GCNConv` layers.

    ``conv -> activation -> dropout`` for each hidden layer, then a last ``conv`` to
    ``num_classes`` logits (dropout also on the input, as in the paper). ``residual=True`` adds
    the layer's input to its output, ``h <- h + act(conv(h))``, on every hidden layer whose input
    and output widths match (all but the first when the widths are equal): the ResNet remedy for
    depth, which keeps each node's own signal from being averaged away (over-smoothing).

    ``hidden_features`` is one width for every hidden layer or a sequence of ``num_layers - 1``.
    """

    num_classes: int
    hidden_features: int | Sequence[int] = 16
    num_layers: int = 2
    dropout_rate: float = 0.5
    residual: bool = False
    activation: Callable[[Array], Array] = nn.relu

    @nn.compact
    def __call__(
        self,
        x: Array,
        senders: Array,
        receivers: Array,
        *,
        train: bool = False,
        edge_mask: Array | None = None,
        node_mask: Array | None = None,
    ) -> Array:
        widths = _widths(self.hidden_features, self.num_layers, "GCN")
        masks = dict(edge_mask=edge_mask, node_mask=node_mask)
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        for i, w in enumerate(widths):
            out = self.activation(GCNConv(w, name=f"conv_{i}")(h, senders, receivers, **masks))
            h = h + out if self.residual and h.shape[-1] == w else out
            self.sow("intermediates", f"hidden_{i}", h)
            h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        self.sow("intermediates", "embedding", h)
        return GCNConv(self.num_classes, name=f"conv_{len(widths)}")(h, senders, receivers, **masks)


class GAT(nn.Module):
    """Velickovic et al.'s node classifier: :class:`~jaxdl.nn.GATConv` hidden layers with
    ``num_heads`` concatenated heads and ELU, dropout ``dropout_rate`` on inputs and on attention
    coefficients, then an output layer with ``output_heads`` heads averaged. ``residual=True`` adds
    the input of a hidden layer to its output where the widths match."""

    num_classes: int
    hidden_features: int = 8
    num_heads: int = 8
    num_layers: int = 2
    output_heads: int = 1
    dropout_rate: float = 0.6
    residual: bool = False

    @nn.compact
    def __call__(
        self,
        x: Array,
        senders: Array,
        receivers: Array,
        *,
        train: bool = False,
        edge_mask: Array | None = None,
        node_mask: Array | None = None,
    ) -> Array:
        _widths(self.hidden_features, self.num_layers, "GAT")
        masks = dict(edge_mask=edge_mask, node_mask=node_mask, train=train)
        h = x
        for i in range(self.num_layers - 1):
            h_in = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
            conv = GATConv(
                self.hidden_features,
                self.num_heads,
                dropout_rate=self.dropout_rate,
                name=f"conv_{i}",
            )
            out = nn.elu(conv(h_in, senders, receivers, **masks))
            h = h + out if self.residual and h.shape[-1] == out.shape[-1] else out
        self.sow("intermediates", "embedding", h)
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        conv = GATConv(
            self.num_classes,
            self.output_heads,
            concat=False,
            dropout_rate=self.dropout_rate,
            name=f"conv_{self.num_layers - 1}",
        )
        return conv(h, senders, receivers, **masks)


class GraphClassifier(nn.Module):
    """Graph classification: ``num_layers`` message-passing layers, a pooling readout, an MLP head.

    ``conv``: ``"gin"`` (:class:`~jaxdl.nn.GINConv`, Xu et al. 2019) or ``"gcn"``;
    ``pooling``: ``"sum"``, ``"mean"`` or ``"max"`` over each graph's nodes
    (:func:`~jaxdl.nn.pool_graphs`). Following Xu et al., the readout pools *every* layer's node
    features (and the input's) and sums the per-layer logits, so shallow, local features reach
    the classifier directly. ``__call__(graphs: GraphBatch, train=False) -> (G, num_classes)``;
    padding graphs' rows are the head's bias only and are meant to be masked by the loss.
    """

    num_classes: int
    hidden_features: int = 32
    num_layers: int = 3
    conv: str = "gin"
    pooling: str = "sum"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, graphs: GraphBatch, *, train: bool = False) -> Array:
        if self.conv not in ("gin", "gcn"):
            raise ValueError(f"GraphClassifier: conv must be 'gin' or 'gcn', got {self.conv!r}")
        if self.pooling not in ("sum", "mean", "max"):
            raise ValueError(
                f"GraphClassifier: pooling must be 'sum', 'mean' or 'max', got {self.pooling!r}"
            )
        _widths(self.hidden_features, self.num_layers + 1, "GraphClassifier")
        masks = dict(
            edge_mask=jnp.asarray(graphs.edge_mask), node_mask=jnp.asarray(graphs.node_mask)
        )
        s, r = jnp.asarray(graphs.senders), jnp.asarray(graphs.receivers)
        h = jnp.asarray(graphs.nodes, jnp.float32)
        logits = nn.Dense(self.num_classes, name="readout_0")(pool_graphs(h, graphs, self.pooling))
        for i in range(self.num_layers):
            if self.conv == "gin":
                h = GINConv(self.hidden_features, name=f"conv_{i}")(h, s, r, **masks)
            else:
                h = GCNConv(self.hidden_features, name=f"conv_{i}")(h, s, r, **masks)
            h = nn.relu(h)
            pooled = pool_graphs(h, graphs, self.pooling)  # (G, hidden)
            pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
            logits = logits + nn.Dense(self.num_classes, name=f"readout_{i + 1}")(pooled)
        self.sow("intermediates", "embedding", h)
        return logits
