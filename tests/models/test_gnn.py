"""GNN models: shapes, parameter layout, residual paths, pooling behaviour on copied graphs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import models, nn


def ring(n, f=3, seed=0):
    s = np.arange(n, dtype=np.int32)
    r = (s + 1) % n
    x = np.random.default_rng(seed).normal(size=(n, f)).astype(np.float32)
    return x, np.concatenate([s, r]), np.concatenate([r, s])


def test_gcn_shapes_params_and_dropout():
    x, s, r = ring(6)
    model = models.GCN(num_classes=4, hidden_features=8, num_layers=3)
    v = model.init(jax.random.key(0), x, s, r)
    assert set(v["params"]) == {"conv_0", "conv_1", "conv_2"}
    chex.assert_shape(v["params"]["conv_1"]["kernel"], (8, 8))
    y = model.apply(v, x, s, r)
    chex.assert_shape(y, (6, 4))
    y_t = model.apply(v, x, s, r, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(y, y_t)
    _, inter = model.apply(v, x, s, r, mutable=["intermediates"])
    chex.assert_shape(inter["intermediates"]["embedding"][0], (6, 8))


def test_gcn_residual_adds_layer_input():
    x, s, r = ring(5)
    plain = models.GCN(num_classes=2, hidden_features=4, num_layers=3, dropout_rate=0.0)
    res = plain.clone(residual=True)
    v = plain.init(jax.random.key(0), x, s, r)
    _, a = plain.apply(v, x, s, r, mutable=["intermediates"])
    _, b = res.apply(v, x, s, r, mutable=["intermediates"])
    h0 = a["intermediates"]["hidden_0"][0]  # first layer: widths differ (3 -> 4), no skip
    chex.assert_trees_all_close(b["intermediates"]["hidden_0"][0], h0)
    conv1 = nn.GCNConv(4).apply({"params": v["params"]["conv_1"]}, h0, s, r)
    chex.assert_trees_all_close(
        b["intermediates"]["hidden_1"][0], h0 + jax.nn.relu(conv1), atol=1e-6
    )
    with pytest.raises(ValueError, match="num_layers - 1"):
        models.GCN(num_classes=2, hidden_features=(4, 4), num_layers=2).init(
            jax.random.key(0), x, s, r
        )


def test_gat_shapes():
    x, s, r = ring(7)
    model = models.GAT(num_classes=3, hidden_features=4, num_heads=2, dropout_rate=0.1)
    v = model.init(jax.random.key(0), x, s, r)
    chex.assert_shape(v["params"]["conv_0"]["kernel"], (3, 2, 4))
    chex.assert_shape(v["params"]["conv_1"]["kernel"], (8, 1, 3))
    chex.assert_shape(model.apply(v, x, s, r), (7, 3))


@pytest.mark.parametrize("conv", ["gin", "gcn"])
def test_graph_classifier_mean_pooling_cannot_count_copies(conv):
    # Two disjoint copies of a graph: every node sees the same neighbourhood as in one copy, so mean
    # (and max) pooling give identical outputs, while sum pooling doubles the pooled features.
    x, s, r = ring(5, f=2)
    two = (np.concatenate([x, x]), np.concatenate([s, s + 5]), np.concatenate([r, r + 5]))
    batch = jax.tree.map(
        jnp.asarray, nn.batch_graphs([(x, s, r), two], num_nodes=16, num_edges=48, num_graphs=3)
    )
    out = {}
    for pooling in ("mean", "max", "sum"):
        model = models.GraphClassifier(
            num_classes=3, hidden_features=8, num_layers=2, conv=conv, pooling=pooling
        )
        v = model.init(jax.random.key(0), batch)
        out[pooling] = model.apply(v, batch)
        chex.assert_shape(out[pooling], (3, 3))
    chex.assert_trees_all_close(out["mean"][0], out["mean"][1], atol=1e-5)
    chex.assert_trees_all_close(out["max"][0], out["max"][1], atol=1e-5)
    assert not np.allclose(out["sum"][0], out["sum"][1], atol=1e-3)


def test_graph_classifier_bad_names():
    x, s, r = ring(4)
    batch = nn.batch_graphs([(x, s, r)])
    with pytest.raises(ValueError, match="pooling"):
        models.GraphClassifier(num_classes=2, pooling="median").init(jax.random.key(0), batch)
    with pytest.raises(ValueError, match="conv"):
        models.GraphClassifier(num_classes=2, conv="sage").init(jax.random.key(0), batch)
