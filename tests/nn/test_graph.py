"""Graph layers against dense NumPy formulas; equivariance, padding, jit, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import nn
from jaxdl.nn import graph as g


def random_graph(rng, n=7, e=15, f=5, self_loop=False):
    s = rng.integers(0, n, e)
    r = rng.integers(0, n, e)
    s = np.concatenate([s, s[:3]])  # duplicate edges count twice
    r = np.concatenate([r, r[:3]])
    if self_loop:
        s, r = np.append(s, 2), np.append(r, 2)
    x = rng.normal(size=(n, f)).astype(np.float32)
    # node n - 1 is isolated: drop its edges
    keep = (s != n - 1) & (r != n - 1)
    return x, s[keep].astype(np.int32), r[keep].astype(np.int32)


def dense_adjacency(n, s, r):
    a = np.zeros((n, n))
    for si, ri in zip(s, r, strict=True):
        a[ri, si] += 1.0  # A[r, s] = number of edges s -> r
    return a


def gcn_dense(x, s, r, kernel, bias):
    n = x.shape[0]
    a_hat = dense_adjacency(n, s, r) + np.eye(n)
    d = a_hat.sum(1)
    norm = a_hat / np.sqrt(d[:, None] * d[None, :])
    return norm @ x.astype(np.float64) @ np.asarray(kernel, np.float64) + np.asarray(bias)


def gat_dense(x, s, r, params, concat, slope=0.2):
    kernel = np.asarray(params["kernel"], np.float64)  # (F, H, C)
    a_src = np.asarray(params["att_src"], np.float64)
    a_dst = np.asarray(params["att_dst"], np.float64)
    n = x.shape[0]
    mask = np.eye(n, dtype=bool)
    mask[r, s] = True  # j -> i allowed (graphs in the GAT test have no duplicate edges)
    h = np.einsum("nf,fhc->nhc", x.astype(np.float64), kernel)
    outs = []
    for k in range(kernel.shape[1]):
        e = (h[:, k] @ a_dst[k])[:, None] + (h[:, k] @ a_src[k])[None, :]  # e[i, j]
        e = np.where(e > 0, e, slope * e)
        e = np.where(mask, e, -np.inf)
        alpha = np.exp(e - e.max(1, keepdims=True))
        alpha /= alpha.sum(1, keepdims=True)
        outs.append(alpha @ h[:, k])
    y = np.concatenate(outs, axis=1) if concat else np.mean(outs, axis=0)
    return y + np.asarray(params["bias"])


class GCNTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_dense_formula(self):
        rng = np.random.default_rng(0)
        for self_loop in (False, True):
            x, s, r = random_graph(rng, self_loop=self_loop)
            layer = nn.GCNConv(4, bias_init=jax.nn.initializers.normal(1.0))
            params = layer.init(jax.random.key(0), x, s, r)["params"]
            chex.assert_shape(params["kernel"], (5, 4))
            chex.assert_shape(params["bias"], (4,))
            apply = self.variant(lambda p, x, s, r: layer.apply({"params": p}, x, s, r))
            y = apply(params, x, s, r)
            ref = gcn_dense(x, s, r, params["kernel"], params["bias"])
            chex.assert_trees_all_close(y, ref.astype(np.float32), atol=1e-5)
            # the isolated node keeps x W + b
            iso = x[-1] @ np.asarray(params["kernel"]) + np.asarray(params["bias"])
            chex.assert_trees_all_close(y[-1], iso, atol=1e-5)

    def test_permutation_equivariance(self):
        rng = np.random.default_rng(1)
        x, s, r = random_graph(rng, n=9, e=25)
        layer = nn.GCNConv(3)
        params = layer.init(jax.random.key(1), x, s, r)
        y = layer.apply(params, x, s, r)
        perm = rng.permutation(9)
        inv = np.argsort(perm)
        edge_perm = rng.permutation(len(s))
        y_p = layer.apply(params, x[perm], inv[s][edge_perm], inv[r][edge_perm])
        chex.assert_trees_all_close(y_p, y[perm], atol=1e-5)

    def test_no_self_loops_variant(self):
        rng = np.random.default_rng(2)
        x, s, r = random_graph(rng)
        layer = nn.GCNConv(3, add_self_loops=False, use_bias=False)
        p = layer.init(jax.random.key(0), x, s, r)["params"]
        a = dense_adjacency(x.shape[0], s, r)
        d = np.maximum(a.sum(1), 1)
        ref = (a / np.sqrt(d[:, None] * d[None, :])) @ x @ np.asarray(p["kernel"])
        chex.assert_trees_all_close(
            layer.apply({"params": p}, x, s, r), ref.astype(np.float32), atol=1e-5
        )


class GATTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_dense_masked_softmax(self):
        rng = np.random.default_rng(3)
        n = 8
        pairs = {(int(a), int(b)) for a, b in rng.integers(0, n - 1, (30, 2)) if a != b}
        s, r = (np.asarray(v, np.int32) for v in zip(*sorted(pairs), strict=True))
        x = rng.normal(size=(n, 6)).astype(np.float32)
        for heads, concat in ((3, True), (2, False)):
            layer = nn.GATConv(
                4, num_heads=heads, concat=concat, bias_init=jax.nn.initializers.normal(1.0)
            )
            params = layer.init(jax.random.key(heads), x, s, r)["params"]
            y = self.variant(lambda p, x, s, r, layer=layer: layer.apply({"params": p}, x, s, r))(
                params, x, s, r
            )
            chex.assert_shape(y, (n, heads * 4 if concat else 4))
            ref = gat_dense(x, s, r, params, concat)
            chex.assert_trees_all_close(y, ref.astype(np.float32), atol=1e-5)

    def test_stable_for_huge_scores_and_permutation_equivariant(self):
        rng = np.random.default_rng(4)
        x, s, r = random_graph(rng, n=9, e=20)
        layer = nn.GATConv(3, num_heads=2)
        p = layer.init(jax.random.key(0), x, s, r)
        big = jax.tree.map(
            lambda a: a * 1e3, p
        )  # scores ~1e6: exp would overflow without the max shift
        y = layer.apply(big, x * 100, s, r)
        assert np.all(np.isfinite(y))
        perm = rng.permutation(9)
        inv = np.argsort(perm)
        chex.assert_trees_all_close(
            layer.apply(p, x[perm], inv[s], inv[r]), layer.apply(p, x, s, r)[perm], atol=1e-5
        )
        grad = jax.grad(lambda x: jnp.sum(layer.apply(big, x, s, r) ** 2))(x)
        assert np.all(np.isfinite(grad))

    def test_attention_dropout_uses_rng(self):
        rng = np.random.default_rng(5)
        x, s, r = random_graph(rng)
        layer = nn.GATConv(3, dropout_rate=0.5)
        p = layer.init(jax.random.key(0), x, s, r)
        y0 = layer.apply(p, x, s, r, train=True, rngs={"dropout": jax.random.key(1)})
        y1 = layer.apply(p, x, s, r, train=True, rngs={"dropout": jax.random.key(2)})
        assert not np.allclose(y0, y1)
        chex.assert_trees_all_close(layer.apply(p, x, s, r), layer.apply(p, x, s, r, train=False))


class GINTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_dense_formula(self):
        rng = np.random.default_rng(6)
        x, s, r = random_graph(rng)
        layer = nn.GINConv(4, hidden_features=6, eps_init=0.3)
        p = layer.init(jax.random.key(0), x, s, r)["params"]
        assert float(p["eps"]) == pytest.approx(0.3)
        y = self.variant(lambda p, x: layer.apply({"params": p}, x, s, r))(p, x)
        z = 1.3 * x + dense_adjacency(x.shape[0], s, r) @ x
        d0, d1 = jax.tree.map(np.asarray, (p["dense_0"], p["dense_1"]))
        ref = np.maximum(z @ d0["kernel"] + d0["bias"], 0) @ d1["kernel"] + d1["bias"]
        chex.assert_trees_all_close(y, ref.astype(np.float32), atol=1e-4)

    def test_fixed_eps_has_no_param(self):
        x, s, r = random_graph(np.random.default_rng(7))
        p = nn.GINConv(4, learn_eps=False).init(jax.random.key(0), x, s, r)["params"]
        assert "eps" not in p


@pytest.mark.parametrize(
    "layer",
    [nn.GCNConv(3), nn.GATConv(2, num_heads=2), nn.GINConv(3)],
    ids=["gcn", "gat", "gin"],
)
def test_padded_batch_equals_separate_graphs(layer):
    rng = np.random.default_rng(8)
    graphs = [random_graph(rng, n=n, e=e, f=4) for n, e in ((5, 8), (7, 12), (4, 3))]
    batch = nn.batch_graphs(graphs, num_nodes=24, num_edges=40, num_graphs=5)
    chex.assert_shape(batch.nodes, (24, 4))
    chex.assert_shape([batch.senders, batch.edge_mask], (40,))
    assert batch.graph_mask.tolist() == [True, True, True, False, False]
    params = layer.init(jax.random.key(0), *graphs[0])

    @jax.jit
    def run(b):
        return layer.apply(
            params, b.nodes, b.senders, b.receivers, edge_mask=b.edge_mask, node_mask=b.node_mask
        )

    y = run(jax.tree.map(jnp.asarray, batch))
    start = 0
    for x, s, r in graphs:
        chex.assert_trees_all_close(
            y[start : start + len(x)], layer.apply(params, x, s, r), atol=1e-5
        )
        start += len(x)
    np.testing.assert_array_equal(np.asarray(y[start:]), 0.0)
    # the same padded shapes with different graphs reuse the compiled function
    other = nn.batch_graphs(graphs[::-1], num_nodes=24, num_edges=40, num_graphs=5)
    run(jax.tree.map(jnp.asarray, other))
    assert run._cache_size() == 1


def test_pooling_matches_numpy():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    ids = np.asarray([0, 0, 1, 1, 1, 3, 3, 3, 3, 0], np.int32)  # segment 2 empty
    for fn, ref in ((nn.segment_sum, np.sum), (nn.segment_mean, np.mean), (nn.segment_max, np.max)):
        out = np.asarray(fn(x, ids, 4))
        for k in range(4):
            want = ref(x[ids == k], axis=0) if np.any(ids == k) else np.zeros(3)
            np.testing.assert_allclose(out[k], want, rtol=1e-5, atol=1e-6)


def test_pool_graphs_masks_padding():
    rng = np.random.default_rng(10)
    graphs = [random_graph(rng, n=n, f=2) for n in (3, 6)]
    batch = nn.batch_graphs(graphs, num_nodes=12, num_edges=64, num_graphs=3)
    out = nn.pool_graphs(jnp.ones((12, 2)), batch, "sum")
    np.testing.assert_allclose(out[:, 0], [3, 6, 0])
    with pytest.raises(ValueError, match="reduction"):
        nn.pool_graphs(jnp.ones((12, 2)), batch, "median")


def test_segment_softmax_sums_to_one_and_ignores_masked():
    scores = jnp.asarray([1.0, 2.0, 3.0, 1e4, -5.0])
    ids = jnp.asarray([0, 0, 1, 1, 2])
    mask = jnp.asarray([True, True, True, False, True])
    a = g.segment_softmax(scores, ids, 4, mask)
    np.testing.assert_allclose(a, [1 / (1 + np.e), np.e / (1 + np.e), 1.0, 0.0, 1.0], rtol=1e-6)


def test_unbatch_and_graphs_tuple_round_trip():
    rng = np.random.default_rng(11)
    graphs = [random_graph(rng, n=n, f=2) for n in (4, 5)]
    batch = nn.batch_graphs(graphs, num_nodes=16, num_edges=40, num_graphs=3)
    for (x, s, r), (x2, s2, r2) in zip(graphs, g.unbatch_graphs(batch), strict=True):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(s, s2)
        np.testing.assert_array_equal(r, r2)
    gt = g.to_graphs_tuple(batch)
    assert gt._fields == ("nodes", "edges", "receivers", "senders", "globals", "n_node", "n_edge")
    back = g.from_graphs_tuple(gt, num_padding_graphs=1)
    for a, b in zip(back, batch, strict=True):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    # a one-graph GraphsTuple is accepted by batch_graphs (duck typing)
    one = g.GraphsTuple(graphs[0][0], None, graphs[0][2], graphs[0][1], None, np.asarray([4]), None)
    np.testing.assert_array_equal(nn.batch_graphs([one]).senders, graphs[0][1])


def test_padded_size():
    assert g.padded_size(10) == 64
    assert g.padded_size(64) == 128
    assert g.padded_size(5, multiple=4) == 8


def test_bad_inputs():
    x = jnp.zeros((4, 3))
    s = jnp.asarray([0, 1, 2])
    layer = nn.GCNConv(2)
    with pytest.raises(ValueError, match="same shape"):
        layer.init(jax.random.key(0), x, s, jnp.asarray([1, 2]))
    with pytest.raises(ValueError, match=r"receivers must index nodes in \[0, 4\)"):
        layer.init(jax.random.key(0), x, s, jnp.asarray([1, 2, 4]))
    with pytest.raises(ValueError, match="senders must index"):
        nn.GATConv(2).init(jax.random.key(0), x, jnp.asarray([-1, 0, 0]), s)
    with pytest.raises(ValueError, match="x must have rank 2"):
        layer.init(jax.random.key(0), jnp.zeros((4,)), s, s)
    with pytest.raises(ValueError, match="senders must have rank 1"):
        layer.init(jax.random.key(0), x, s[None], s[None])
    with pytest.raises(TypeError, match="integer"):
        layer.init(jax.random.key(0), x, s.astype(float), s)
    with pytest.raises(ValueError, match="edge_mask"):
        layer.init(jax.random.key(0), x, s, s, edge_mask=jnp.ones(2, bool))
    with pytest.raises(ValueError, match="features must be positive"):
        nn.GCNConv(0).init(jax.random.key(0), x, s, s)
    with pytest.raises(ValueError, match="num_segments"):
        nn.segment_mean(x, jnp.zeros(4, int), 0)
    with pytest.raises(ValueError, match="segment_ids"):
        nn.segment_sum(x, jnp.zeros(3, int), 2)
    with pytest.raises(ValueError, match="smaller"):
        nn.batch_graphs([(x, s, s)], num_nodes=2)
    with pytest.raises(ValueError, match="padding node"):
        nn.batch_graphs([(x, s, s)], num_nodes=4, num_edges=5, num_graphs=2)
    with pytest.raises(TypeError, match="each graph"):
        nn.batch_graphs([x])
