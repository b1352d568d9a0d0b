"""Message passing on graphs: GCN, GAT and GIN layers, pooling, and padded graph batches.

A graph is node features ``x (N, F)`` and an edge list ``senders, receivers (E,)`` of int node
indices; edge ``e`` carries a message from node ``senders[e]`` to node ``receivers[e]``. An
undirected graph lists each edge in both directions. Layers gather ``x[senders]`` and scatter-add
into ``receivers`` with :func:`jax.ops.segment_sum` (and :func:`jax.ops.segment_max` for GAT's
stable softmax): the work is ``O(E F)`` and no dense ``N x N`` adjacency is ever built.

Fixed shapes for ``jax.jit``: several graphs are packed into one disconnected graph by
:func:`batch_graphs` and padded to fixed sizes (``num_nodes``, ``num_edges``, ``num_graphs``), as
jraph's ``pad_with_graphs`` does: padding nodes form one extra *padding graph*, padding edges join
the first padding node to itself, and :class:`GraphBatch` carries ``node_mask``, ``edge_mask``
and ``graph_mask`` (True = real). Pass the masks to the layers (``edge_mask=``, ``node_mask=``):
a masked edge carries no message and counts in no degree, a masked node's output row is zero.
jraph's ``GraphsTuple`` converts both ways by duck typing (:func:`from_graphs_tuple`,
:func:`to_graphs_tuple`); jraph is not a dependency.

The maths of each layer is derived in ``docs/derivations/graphs.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "GATConv",
    "GCNConv",
    "GINConv",
    "GraphBatch",
    "GraphsTuple",
    "batch_graphs",
    "check_graph",
    "from_graphs_tuple",
    "gcn_norm",
    "pad_graph_batch",
    "padded_size",
    "pool_graphs",
    "propagate",
    "segment_max",
    "segment_mean",
    "segment_softmax",
    "segment_sum",
    "to_graphs_tuple",
    "unbatch_graphs",
]

Array = jax.Array


# --------------------------------------------------------------------------- validation


def _is_concrete(a: Any) -> bool:
    return not isinstance(a, jax.core.Tracer)


def check_graph(
    x: Any,
    senders: Any,
    receivers: Any,
    edge_mask: Any = None,
    node_mask: Any = None,
    where: str = "graph layer",
) -> None:
    """Validate a graph's arrays; raise ``ValueError``/``TypeError`` naming the argument.

    ``x`` must be ``(N, F)``, ``senders`` and ``receivers`` the same ``(E,)`` shape of an integer
    dtype, masks ``(E,)`` and ``(N,)``. When the indices are concrete (not traced under
    ``jit``) they must lie in ``[0, N)``: out-of-range indices would otherwise be silently dropped
    by the scatter and clamped by the gather.
    """
    x, senders, receivers, edge_mask, node_mask = (
        np.asarray(a) if isinstance(a, list | tuple) else a
        for a in (x, senders, receivers, edge_mask, node_mask)
    )
    if jnp.ndim(x) != 2:
        raise ValueError(
            f"{where}: x must have rank 2 (num_nodes, features), got shape {jnp.shape(x)}"
        )
    for name, a in (("senders", senders), ("receivers", receivers)):
        if jnp.ndim(a) != 1:
            raise ValueError(
                f"{where}: {name} must have rank 1 (num_edges,), got shape {jnp.shape(a)}"
            )
        if not jnp.issubdtype(jnp.result_type(a), jnp.integer):
            raise TypeError(
                f"{where}: {name} must be integer node indices, got dtype {jnp.result_type(a)}"
            )
    if jnp.shape(senders) != jnp.shape(receivers):
        raise ValueError(
            f"{where}: senders and receivers must have the same shape (num_edges,), got "
            f"{jnp.shape(senders)} and {jnp.shape(receivers)}"
        )
    n = jnp.shape(x)[0]
    if edge_mask is not None and jnp.shape(edge_mask) != jnp.shape(senders):
        raise ValueError(
            f"{where}: edge_mask must have shape {jnp.shape(senders)}, got {jnp.shape(edge_mask)}"
        )
    if node_mask is not None and jnp.shape(node_mask) != (n,):
        raise ValueError(f"{where}: node_mask must have shape {(n,)}, got {jnp.shape(node_mask)}")
    for name, a in (("senders", senders), ("receivers", receivers)):
        if _is_concrete(a) and np.size(a):
            a_np = np.asarray(a)
            lo, hi = int(a_np.min()), int(a_np.max())
            if lo < 0 or hi >= n:
                raise ValueError(
                    f"{where}: {name} must index nodes in [0, {n}) (x has {n} rows), got values in [{lo}, {hi}]"
                )


def _checked_inputs(x, senders, receivers, edge_mask, node_mask, where):
    """:func:`check_graph`, then the edge arrays as JAX arrays (a layer's shared prologue)."""
    check_graph(x, senders, receivers, edge_mask, node_mask, where)

    # Lists and NumPy arrays are accepted; JAX indexing needs arrays, and int32 halves index traffic.
    def mask(m):
        return None if m is None else jnp.asarray(m, bool)

    return (
        jnp.asarray(senders, jnp.int32),
        jnp.asarray(receivers, jnp.int32),
        mask(edge_mask),
        mask(node_mask),
    )


def _edge_weights(senders: Array, edge_mask: Array | None, dtype) -> Array:
    if edge_mask is None:
        return jnp.ones(senders.shape, dtype)
    return edge_mask.astype(dtype)


def _zero_masked_nodes(y: Array, node_mask: Array | None) -> Array:
    if node_mask is None:
        return y
    return jnp.where(node_mask[:, None], y, jnp.zeros((), y.dtype))


# --------------------------------------------------------------------------- pooling


def segment_sum(x: Array, segment_ids: Array, num_segments: int) -> Array:
    """``out[g] = sum_{i: segment_ids[i] = g} x[i]``: ``x (N, ...)`` -> ``(num_segments, ...)``.

    ``num_segments`` must be a Python int (it is the output's static shape). Ids outside
    ``[0, num_segments)`` are dropped, as :func:`jax.ops.segment_sum` does.
    """
    _check_segments(x, segment_ids, num_segments, "segment_sum")
    return jax.ops.segment_sum(x, segment_ids, num_segments)


def segment_mean(x: Array, segment_ids: Array, num_segments: int) -> Array:
    """Mean of the rows of ``x (N, ...)`` in each segment: ``(num_segments, ...)``.

    ``out[g] = (1 / n_g) sum_{i in g} x[i]`` with ``n_g`` the segment's size; an empty segment
    (e.g. an unused padding graph) gives 0, not NaN.
    """
    _check_segments(x, segment_ids, num_segments, "segment_mean")
    total = jax.ops.segment_sum(x, segment_ids, num_segments)
    count = jax.ops.segment_sum(jnp.ones(x.shape[:1], x.dtype), segment_ids, num_segments)
    count = jnp.maximum(count, 1).reshape((num_segments,) + (1,) * (x.ndim - 1))
    return total / count


def segment_max(x: Array, segment_ids: Array, num_segments: int) -> Array:
    """Element-wise max of the rows of ``x (N, ...)`` in each segment; 0 for an empty segment
    (:func:`jax.ops.segment_max` would give ``-inf`` there, which poisons a later layer)."""
    _check_segments(x, segment_ids, num_segments, "segment_max")
    out = jax.ops.segment_max(x, segment_ids, num_segments)
    return jnp.where(jnp.isneginf(out), jnp.zeros((), out.dtype), out)


def _check_segments(x, segment_ids, num_segments, where):
    if not isinstance(num_segments, int | np.integer) or num_segments <= 0:
        raise ValueError(
            f"{where}: num_segments must be a positive Python int, got {num_segments!r}"
        )
    if jnp.ndim(segment_ids) != 1 or jnp.shape(segment_ids)[0] != jnp.shape(x)[0]:
        raise ValueError(
            f"{where}: segment_ids must have shape ({jnp.shape(x)[0]},) to match x's first axis, got "
            f"{jnp.shape(segment_ids)}"
        )
    if not jnp.issubdtype(jnp.result_type(segment_ids), jnp.integer):
        raise TypeError(
            f"{where}: segment_ids must be integers, got {jnp.result_type(segment_ids)}"
        )


def segment_softmax(
    scores: Array, segment_ids: Array, num_segments: int, mask: Array | None = None
) -> Array:
    """Softmax of ``scores (E, ...)`` over the entries sharing a segment id (a node's incoming edges).

    ``alpha_e = exp(s_e - m_g) / sum_{e' in g} exp(s_e' - m_g)`` with ``m_g = max_{e in g} s_e``
    from :func:`jax.ops.segment_max`: subtracting the segment's max keeps every exponent
    ``<= 0``, so nothing overflows (the softmax is unchanged by the shift, so ``m_g`` is held out
    of the gradient). Masked entries (``mask`` False) get weight exactly 0.
    """
    neg_inf = jnp.asarray(-jnp.inf, scores.dtype)
    if mask is not None:
        mask = mask.reshape(mask.shape + (1,) * (scores.ndim - 1))
        scores = jnp.where(mask, scores, neg_inf)
    m = jax.ops.segment_max(scores, segment_ids, num_segments)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, jnp.zeros((), m.dtype)))
    z = jnp.exp(scores - m[segment_ids])  # (E, ...), masked entries exp(-inf) = 0
    denom = jax.ops.segment_sum(z, segment_ids, num_segments)
    return z / jnp.maximum(denom[segment_ids], jnp.finfo(z.dtype).tiny)


EDGE_CHUNK = 4096


def propagate(
    h: Array, senders: Array, receivers: Array, weights: Array | None, num_nodes: int
) -> Array:
    """``out[r] = sum_{e: receivers[e] = r} weights[e] * h[senders[e]]``: ``(N, C)`` from ``h (N, C)``.

    The product ``A_w h`` with the weighted adjacency, as a gather and a scatter-add. Above
    :data:`EDGE_CHUNK` edges it loops over chunks of that many edges (``lax.fori_loop``), so the
    ``(E, C)`` message array is never materialised: on XLA:CPU a fresh 50 MB buffer per call (the
    200,000-edge, 64-feature benchmark) cost more in page faults and memory traffic than the
    arithmetic, and the chunked loop ran the forward 5x and forward + backward 2.3x faster
    (``docs/experiments/gnn_benchmark.md``). Reverse-mode autodiff goes through the loop.
    """
    e = senders.shape[0]
    if e <= EDGE_CHUNK:
        msg = h.at[senders].get(mode="promise_in_bounds")
        if weights is not None:
            msg = msg * weights[:, None].astype(h.dtype)
        return jax.ops.segment_sum(msg, receivers, num_nodes)
    nb = -(-e // EDGE_CHUNK)
    pad = nb * EDGE_CHUNK - e
    w = jnp.ones((e,), h.dtype) if weights is None else weights.astype(h.dtype)
    # Padding edges carry weight 0 from node 0 to node 0: they add exact zeros.
    sp = jnp.concatenate([senders, jnp.zeros((pad,), senders.dtype)]).reshape(nb, EDGE_CHUNK)
    rp = jnp.concatenate([receivers, jnp.zeros((pad,), receivers.dtype)]).reshape(nb, EDGE_CHUNK)
    wp = jnp.concatenate([w, jnp.zeros((pad,), w.dtype)]).reshape(nb, EDGE_CHUNK)

    def body(i, acc):
        msg = h.at[sp[i]].get(mode="promise_in_bounds") * wp[i][:, None]  # (chunk, C)
        return acc.at[rp[i]].add(msg, mode="promise_in_bounds")

    return jax.lax.fori_loop(0, nb, body, jnp.zeros((num_nodes,) + h.shape[1:], h.dtype))


def gcn_norm(
    senders: Array,
    receivers: Array,
    num_nodes: int,
    edge_mask: Array | None = None,
    dtype=jnp.float32,
) -> tuple[Array, Array]:
    """Edge and self-loop weights of Kipf & Welling's symmetric normalisation.

    With ``A[r, s]`` the number of (unmasked) edges ``s -> r`` and ``d_r = 1 + sum_s A[r, s]``
    the degree of ``A + I``, returns ``w_e = 1 / sqrt(d_{r_e} d_{s_e})`` for each edge ``(E,)``
    and ``1 / d_i`` for each node's self loop ``(N,)``, so that
    ``D^-1/2 (A + I) D^-1/2 h = segment_sum(w * h[senders], receivers) + h / d``.
    """
    ones = _edge_weights(senders, edge_mask, dtype)
    deg = 1.0 + jax.ops.segment_sum(ones, receivers, num_nodes)  # (N,) >= 1: no division by zero
    inv_sqrt = jax.lax.rsqrt(deg)
    return ones * inv_sqrt[senders] * inv_sqrt[receivers], 1.0 / deg


# --------------------------------------------------------------------------- layers


class GCNConv(nn.Module):
    """Graph convolution of Kipf & Welling (2017), "Semi-supervised classification with GCNs".

    .. math::
        X' = \\hat D^{-1/2} (A + I) \\hat D^{-1/2} X W + b, \\qquad
        A_{rs} = \\#\\{e : s_e = s, r_e = r\\}, \\quad \\hat D_{rr} = 1 + \\sum_s A_{rs}

    Duplicate edges count with their multiplicity; an isolated node keeps ``x W + b`` (its only
    neighbour is its self loop). ``X W`` is computed first (``features`` is usually smaller than
    ``F``), then propagated over the edges by :func:`propagate` (gather, scatter-add).

    Attributes:
        features: output width.
        use_bias: add ``b``.
        add_self_loops: use ``A + I`` (True, the paper) or ``A`` alone with degrees clipped to 1.

    ``__call__(x (N, F), senders (E,), receivers (E,), *, edge_mask=None, node_mask=None)``
    returns ``(N, features)``. Params: ``kernel (F, features)``, ``bias (features,)``.
    """

    features: int
    use_bias: bool = True
    add_self_loops: bool = True
    kernel_init: Callable = nn.initializers.glorot_uniform()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(
        self,
        x: Array,
        senders: Array,
        receivers: Array,
        *,
        edge_mask: Array | None = None,
        node_mask: Array | None = None,
    ) -> Array:
        if self.features <= 0:
            raise ValueError(f"GCNConv: features must be positive, got {self.features}")
        senders, receivers, edge_mask, node_mask = _checked_inputs(
            x, senders, receivers, edge_mask, node_mask, "GCNConv"
        )
        n = jnp.shape(x)[0]
        kernel = self.param(
            "kernel", self.kernel_init, (jnp.shape(x)[1], self.features), jnp.float32
        )
        h = jnp.asarray(x, kernel.dtype) @ kernel  # (N, C)
        if self.add_self_loops:
            w, self_w = gcn_norm(senders, receivers, n, edge_mask, h.dtype)
        else:
            ones = _edge_weights(senders, edge_mask, h.dtype)
            deg = jnp.maximum(jax.ops.segment_sum(ones, receivers, n), 1.0)
            inv_sqrt = jax.lax.rsqrt(deg)
            w, self_w = ones * inv_sqrt[senders] * inv_sqrt[receivers], None
        y = propagate(h, senders, receivers, w, n)  # (N, C): sum over edges s -> r of S_rs h_s
        if self_w is not None:
            y = y + h * self_w[:, None]
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32)[None, :]
        return _zero_masked_nodes(y, node_mask)


class GATConv(nn.Module):
    """Graph attention of Velickovic et al. (2018), "Graph attention networks".

    For head ``k`` with ``h_i = x_i W_k`` and each node's neighbourhood ``N(i)`` = the senders of
    its incoming edges plus ``i`` itself (a self loop per node, as in the paper):

    .. math::
        e_{ij} = \\mathrm{LeakyReLU}_{0.2}(a_{\\mathrm{src}} \\cdot h_j + a_{\\mathrm{dst}} \\cdot h_i),
        \\quad \\alpha_{ij} = \\operatorname{softmax}_{j \\in N(i)} e_{ij},
        \\quad h'_i = \\sum_{j \\in N(i)} \\alpha_{ij} h_j

    (``a = [a_dst; a_src]`` split in two is the paper's ``a^T [W h_i || W h_j]``). The softmax over
    each node's incoming edges is :func:`segment_softmax` (max-subtracted, so stable for any scores).
    Heads are concatenated to ``(N, num_heads * features)`` when ``concat`` (the paper's hidden
    layers) or averaged to ``(N, features)`` (its output layer); then ``+ bias``. A duplicate edge
    is a separate term of the softmax. Attention dropout (``dropout_rate``, drawn from the
    ``'dropout'`` rng stream when ``train=True``) drops coefficients, as the paper does.

    Params: ``kernel (F, num_heads, features)``, ``att_src`` and ``att_dst (num_heads, features)``,
    ``bias``.
    """

    features: int
    num_heads: int = 1
    concat: bool = True
    negative_slope: float = 0.2
    add_self_loops: bool = True
    dropout_rate: float = 0.0
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.glorot_uniform()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(
        self,
        x: Array,
        senders: Array,
        receivers: Array,
        *,
        edge_mask: Array | None = None,
        node_mask: Array | None = None,
        train: bool = False,
    ) -> Array:
        if self.features <= 0 or self.num_heads <= 0:
            raise ValueError(
                f"GATConv: features and num_heads must be positive, got {self.features}, {self.num_heads}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"GATConv: dropout_rate must be in [0, 1), got {self.dropout_rate}")
        senders, receivers, edge_mask, node_mask = _checked_inputs(
            x, senders, receivers, edge_mask, node_mask, "GATConv"
        )
        n, f = jnp.shape(x)
        H, C = self.num_heads, self.features
        kernel = self.param("kernel", self.kernel_init, (f, H, C), jnp.float32)
        att_init = nn.initializers.glorot_uniform(in_axis=-1, out_axis=-2)
        att_src = self.param("att_src", att_init, (H, C), jnp.float32)
        att_dst = self.param("att_dst", att_init, (H, C), jnp.float32)
        h = jnp.einsum("nf,fhc->nhc", jnp.asarray(x, kernel.dtype), kernel)  # (N, H, C)
        if self.add_self_loops:
            loops = jnp.arange(n, dtype=jnp.int32)
            senders = jnp.concatenate([senders, loops])
            receivers = jnp.concatenate([receivers, loops])
            if edge_mask is not None:
                edge_mask = jnp.concatenate([edge_mask, jnp.ones((n,), bool)])
        s_src = jnp.sum(h * att_src[None], axis=-1)  # (N, H): a_src . h_j
        s_dst = jnp.sum(h * att_dst[None], axis=-1)  # (N, H): a_dst . h_i
        e = nn.leaky_relu(s_src[senders] + s_dst[receivers], self.negative_slope)  # (E', H)
        alpha = segment_softmax(e, receivers, n, edge_mask)  # (E', H), sums to 1 per receiver
        if train and self.dropout_rate > 0.0:
            keep = jax.random.bernoulli(
                self.make_rng("dropout"), 1.0 - self.dropout_rate, alpha.shape
            )
            alpha = jnp.where(keep, alpha / (1.0 - self.dropout_rate), 0.0)
        y = jax.ops.segment_sum(h[senders] * alpha[..., None], receivers, n)  # (N, H, C)
        y = y.reshape(n, H * C) if self.concat else jnp.mean(y, axis=1)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (y.shape[-1],), jnp.float32)[None, :]
        return _zero_masked_nodes(y, node_mask)


class GINConv(nn.Module):
    """Graph isomorphism network layer of Xu et al. (2019), "How powerful are GNNs?".

    .. math::
        h'_i = \\mathrm{MLP}\\Big((1 + \\epsilon) h_i + \\sum_{j \\to i} h_j\\Big)

    The neighbour *sum* (not mean or max) and the MLP make the update injective on multisets of
    neighbour features, so GIN is as discriminative as the 1-WL test. ``epsilon`` is a learned
    scalar (param ``eps``, initialised to ``eps_init``) when ``learn_eps``, else fixed. The default
    MLP is ``Dense(hidden) -> ReLU -> Dense(features)`` (``hidden`` defaults to ``features``); pass
    ``mlp`` (any module or callable ``(N, F) -> (N, F')``) to replace it. Masked edges carry nothing,
    masked nodes output 0.
    """

    features: int
    hidden_features: int | None = None
    learn_eps: bool = True
    eps_init: float = 0.0
    mlp: Callable[[Array], Array] | None = None

    @nn.compact
    def __call__(
        self,
        x: Array,
        senders: Array,
        receivers: Array,
        *,
        edge_mask: Array | None = None,
        node_mask: Array | None = None,
    ) -> Array:
        if self.features <= 0:
            raise ValueError(f"GINConv: features must be positive, got {self.features}")
        senders, receivers, edge_mask, node_mask = _checked_inputs(
            x, senders, receivers, edge_mask, node_mask, "GINConv"
        )
        x = jnp.asarray(x, jnp.float32)
        agg = propagate(x, senders, receivers, edge_mask, x.shape[0])  # (N, F): sum over j -> i
        if self.learn_eps:
            eps = self.param("eps", nn.initializers.constant(self.eps_init), (), jnp.float32)
        else:
            eps = jnp.asarray(self.eps_init, x.dtype)
        z = (1.0 + eps) * x + agg
        if self.mlp is not None:
            y = self.mlp(z)
        else:
            z = nn.Dense(self.hidden_features or self.features, name="dense_0")(z)
            y = nn.Dense(self.features, name="dense_1")(nn.relu(z))
        return _zero_masked_nodes(y, node_mask)


# --------------------------------------------------------------------------- batching


class GraphBatch(NamedTuple):
    """Several graphs packed into one disconnected graph (a pytree; every field a fixed-shape array).

    Node ``i`` belongs to graph ``node_graph[i]``; edge indices are global node indices. When padded
    (:func:`pad_graph_batch`), the masks are False on padding rows and the padding nodes form the
    last, masked, graph(s).

    Fields: ``nodes (N, F)``, ``senders (E,)``, ``receivers (E,)``, ``node_graph (N,)``,
    ``n_node (G,)``, ``n_edge (G,)``, ``node_mask (N,)``, ``edge_mask (E,)``, ``graph_mask (G,)``,
    ``edges (E, D) or None``, ``globals (G, ...) or None``.
    """

    nodes: Any
    senders: Any
    receivers: Any
    node_graph: Any
    n_node: Any
    n_edge: Any
    node_mask: Any
    edge_mask: Any
    graph_mask: Any
    edges: Any = None
    globals: Any = None

    @property
    def num_graphs(self) -> int:
        """``G``, padding graphs included (static: the pooling's output size)."""
        return int(np.shape(self.n_node)[0])


def _as_graph(g: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any, Any]:
    if isinstance(g, dict):
        get = g.get
        return (g["nodes"], g["senders"], g["receivers"], get("edges"), get("globals"))
    if hasattr(g, "nodes") and hasattr(g, "senders"):
        return (
            g.nodes,
            g.senders,
            g.receivers,
            getattr(g, "edges", None),
            getattr(g, "globals", None),
        )
    if isinstance(g, tuple | list) and len(g) == 3:
        return g[0], g[1], g[2], None, None
    raise TypeError(
        "batch_graphs: each graph must be a tuple (x, senders, receivers), a dict with keys "
        f"'nodes', 'senders', 'receivers', or an object with those attributes; got {type(g).__name__}"
    )


def batch_graphs(
    graphs: Sequence[Any],
    num_nodes: int | None = None,
    num_edges: int | None = None,
    num_graphs: int | None = None,
) -> GraphBatch:
    """Pack ``graphs`` into one :class:`GraphBatch` (NumPy arrays), padded when sizes are given.

    Each graph is ``(x (n, F), senders (e,), receivers (e,))``, a dict with ``nodes``/``senders``/
    ``receivers`` (optional ``edges``, ``globals``), or an object with those attributes (a jraph
    ``GraphsTuple`` of one graph). Graph ``k``'s node indices are shifted by the number of nodes
    before it. With ``num_nodes``/``num_edges``/``num_graphs`` the result is padded to those totals
    by :func:`pad_graph_batch`, so every batch of a dataset has the same shapes and a jitted step
    compiles once.
    """
    if len(graphs) == 0:
        raise ValueError("batch_graphs: graphs must hold at least one graph")
    xs, ss, rs, es, gs, nn_, ne = [], [], [], [], [], [], []
    offset = 0
    for k, g in enumerate(graphs):
        x, s, r, e, glob = _as_graph(g)
        x, s, r = np.asarray(x), np.asarray(s), np.asarray(r)
        check_graph(x, s, r, where=f"batch_graphs (graph {k})")
        xs.append(x)
        ss.append(s.astype(np.int32) + offset)
        rs.append(r.astype(np.int32) + offset)
        es.append(None if e is None else np.asarray(e))
        gs.append(None if glob is None else np.asarray(glob))
        nn_.append(x.shape[0])
        ne.append(s.shape[0])
        offset += x.shape[0]
    if len({x.shape[1] for x in xs}) != 1:
        raise ValueError(
            f"batch_graphs: every graph needs the same feature width, got {[x.shape[1] for x in xs]}"
        )
    edges = None if any(e is None for e in es) else np.concatenate(es)
    glob = None if any(g is None for g in gs) else np.stack(gs)
    n_node = np.asarray(nn_, np.int32)
    batch = GraphBatch(
        nodes=np.concatenate(xs),
        senders=np.concatenate(ss),
        receivers=np.concatenate(rs),
        node_graph=np.repeat(np.arange(len(graphs), dtype=np.int32), n_node),
        n_node=n_node,
        n_edge=np.asarray(ne, np.int32),
        node_mask=np.ones(offset, bool),
        edge_mask=np.ones(int(sum(ne)), bool),
        graph_mask=np.ones(len(graphs), bool),
        edges=edges,
        globals=glob,
    )
    if num_nodes is None and num_edges is None and num_graphs is None:
        return batch
    return pad_graph_batch(
        batch,
        num_nodes if num_nodes is not None else offset + 1,
        num_edges if num_edges is not None else int(sum(ne)),
        num_graphs if num_graphs is not None else len(graphs) + 1,
    )


def pad_graph_batch(
    batch: GraphBatch, num_nodes: int, num_edges: int, num_graphs: int
) -> GraphBatch:
    """Pad a NumPy :class:`GraphBatch` to exactly ``num_nodes``, ``num_edges`` and ``num_graphs``.

    jraph's convention: all padding nodes form graph number ``G_real`` (the first padding graph;
    any further padding graphs are empty), every padding edge joins the first padding node to
    itself, and padding features are 0. So ``num_nodes > N_real`` and ``num_graphs > G_real`` are
    needed whenever anything is padded; masks mark the real rows.
    """
    n, e, g = batch.nodes.shape[0], batch.senders.shape[0], batch.n_node.shape[0]
    for name, want, have in (
        ("num_nodes", num_nodes, n),
        ("num_edges", num_edges, e),
        ("num_graphs", num_graphs, g),
    ):
        if want < have:
            raise ValueError(f"pad_graph_batch: {name}={want} is smaller than the batch's {have}")
    pad_n, pad_e, pad_g = num_nodes - n, num_edges - e, num_graphs - g
    if (pad_n or pad_e) and (pad_n < 1 or pad_g < 1):
        raise ValueError(
            "pad_graph_batch: padding needs at least one padding node and one padding graph "
            f"(num_nodes > {n} and num_graphs > {g}), got num_nodes={num_nodes}, num_graphs={num_graphs}"
        )
    if pad_n == pad_e == pad_g == 0:
        return batch

    def pad(a, k, value=0):
        if a is None:
            return None
        a = np.asarray(a)
        return np.concatenate([a, np.full((k,) + a.shape[1:], value, a.dtype)])

    n_node = pad(batch.n_node, pad_g)
    n_edge = pad(batch.n_edge, pad_g)
    if pad_g:
        n_node[g] = pad_n
        n_edge[g] = pad_e
    return GraphBatch(
        nodes=pad(batch.nodes, pad_n),
        senders=pad(batch.senders, pad_e, n),
        receivers=pad(batch.receivers, pad_e, n),
        node_graph=pad(batch.node_graph, pad_n, g),
        n_node=n_node,
        n_edge=n_edge,
        node_mask=pad(batch.node_mask, pad_n, False),
        edge_mask=pad(batch.edge_mask, pad_e, False),
        graph_mask=pad(batch.graph_mask, pad_g, False),
        edges=pad(batch.edges, pad_e),
        globals=pad(batch.globals, pad_g),
    )


def padded_size(n: int, multiple: int = 64) -> int:
    """The smallest of ``multiple * 2^k`` at least ``n + 1`` (room for one padding row): a few
    bucket sizes keep the number of compiled shapes small when graph sizes vary."""
    size = multiple
    while size < n + 1:
        size *= 2
    return size


def unbatch_graphs(batch: GraphBatch) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The real graphs of a batch as ``(x, senders, receivers)`` with local node indices."""
    n_node, n_edge = np.asarray(batch.n_node), np.asarray(batch.n_edge)
    mask = np.asarray(batch.graph_mask)
    x, s, r = np.asarray(batch.nodes), np.asarray(batch.senders), np.asarray(batch.receivers)
    node_start = np.concatenate([[0], np.cumsum(n_node)])
    edge_start = np.concatenate([[0], np.cumsum(n_edge)])
    out = []
    for k in range(len(n_node)):
        if not mask[k]:
            continue
        a, b = node_start[k], node_start[k + 1]
        c, d = edge_start[k], edge_start[k + 1]
        out.append((x[a:b], s[c:d] - a, r[c:d] - a))
    return out


def pool_graphs(x: Array, batch: GraphBatch, reduction: str = "mean") -> Array:
    """Graph-level readout: pool node rows ``x (N, F)`` per graph of ``batch`` -> ``(G, F)``.

    ``reduction`` is ``"sum"``, ``"mean"`` or ``"max"``; padding graphs' rows are 0.
    """
    fns = {"sum": segment_sum, "mean": segment_mean, "max": segment_max}
    if reduction not in fns:
        raise ValueError(f"pool_graphs: reduction must be one of {sorted(fns)}, got {reduction!r}")
    g = batch.num_graphs
    out = fns[reduction](x, jnp.asarray(batch.node_graph), g)
    return jnp.where(jnp.asarray(batch.graph_mask)[:, None], out, jnp.zeros((), out.dtype))


# --------------------------------------------------------------------------- jraph interop


class GraphsTuple(NamedTuple):
    """Field-for-field stand-in for ``jraph.GraphsTuple`` (used when jraph is not installed)."""

    nodes: Any
    edges: Any
    receivers: Any
    senders: Any
    globals: Any
    n_node: Any
    n_edge: Any


def to_graphs_tuple(batch: GraphBatch, cls: Any = None) -> Any:
    """A jraph-style ``GraphsTuple`` of ``batch`` (``cls`` defaults to ``jraph.GraphsTuple`` if jraph
    imports, else :class:`GraphsTuple`). The masks are dropped: jraph recovers them from its
    padding convention, which :func:`pad_graph_batch` follows."""
    if cls is None:
        try:
            import jraph  # type: ignore[import-not-found]

            cls = jraph.GraphsTuple
        except ImportError:
            cls = GraphsTuple
    return cls(
        nodes=batch.nodes,
        edges=batch.edges,
        receivers=batch.receivers,
        senders=batch.senders,
        globals=batch.globals,
        n_node=batch.n_node,
        n_edge=batch.n_edge,
    )


def from_graphs_tuple(graph: Any, num_padding_graphs: int = 0) -> GraphBatch:
    """A :class:`GraphBatch` from any object with jraph's fields (``nodes``, ``senders``,
    ``receivers``, ``n_node``, ``n_edge``, optional ``edges``/``globals``).

    ``num_padding_graphs``: how many trailing graphs are padding (1 after ``jraph.pad_with_graphs``);
    their nodes and edges are masked.
    """
    n_node = np.asarray(graph.n_node)
    n_edge = np.asarray(graph.n_edge)
    num_g = n_node.shape[0]
    if not 0 <= num_padding_graphs <= num_g:
        raise ValueError(
            f"from_graphs_tuple: num_padding_graphs must be in [0, {num_g}], got {num_padding_graphs}"
        )
    graph_mask = np.arange(num_g) < num_g - num_padding_graphs
    node_graph = np.repeat(np.arange(num_g, dtype=np.int32), n_node)
    edge_graph = np.repeat(np.arange(num_g, dtype=np.int32), n_edge)
    return GraphBatch(
        nodes=graph.nodes,
        senders=graph.senders,
        receivers=graph.receivers,
        node_graph=node_graph,
        n_node=n_node,
        n_edge=n_edge,
        node_mask=graph_mask[node_graph],
        edge_mask=graph_mask[edge_graph],
        graph_mask=graph_mask,
        edges=getattr(graph, "edges", None),
        globals=getattr(graph, "globals", None),
    )
