"""Graph classification that mean pooling cannot solve: GIN vs GCN, sum vs mean (vs max) readout.

Task (:func:`jaxdl.data.graphs.graph_copies_dataset`): a sample is 1, 2 or 3 disjoint copies of
one random connected graph with 4 to 8 nodes, all node features equal to 1; the label is the
number of copies. A node in any copy has exactly the neighbourhood it would have in one copy, so
every message-passing layer gives it the same features, and the mean or max over the graph is the
same for 1, 2 and 3 copies: those readouts are at chance (1/3) by construction, whatever the
layers (Xu et al. 2019, section 5.2: mean captures the distribution of a multiset, max its set,
sum the multiset itself). Sum pooling scales with the number of copies; as node counts overlap
between classes (8 nodes: one 8-node graph or two 4-node copies), it must also read structure.

Training: mini-batches of ``batch_size`` graphs packed by :func:`jaxdl.nn.batch_graphs` and
padded to one fixed size (so the jitted step compiles once per model), AdamW, ``epochs`` epochs;
test accuracy on held-out graphs at the last epoch. Default (a few minutes on 2 CPU cores):
``python -m experiments.gnn_graph_classification --workdir runs/gnn_graph_classification``.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import losses, models, nn, optim
from jaxdl.data.graphs import graph_copies_dataset


@dataclasses.dataclass
class Config:
    convs: tuple[str, ...] = ("gin", "gcn")
    poolings: tuple[str, ...] = ("sum", "mean", "max")
    seeds: tuple[int, ...] = (0, 1, 2)
    num_graphs: int = 600
    num_test: int = 200
    batch_size: int = 32
    epochs: int = 60
    hidden: int = 32
    num_layers: int = 3
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4


def get_config() -> Config:
    return Config()


def make_batches(graphs, labels, batch_size, rng=None):
    """Padded batches of fixed shape: ``(GraphBatch, labels (G,))`` with G = batch_size + 1."""
    max_nodes = 3 * 8 * batch_size + 1
    max_edges = max(len(g[1]) for g in graphs) * batch_size
    order = np.arange(len(graphs)) if rng is None else rng.permutation(len(graphs))
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        b = nn.batch_graphs([graphs[i] for i in idx], num_nodes=max_nodes, num_edges=max_edges,
                            num_graphs=batch_size + 1)  # fmt: skip
        y = np.zeros(batch_size + 1, np.int32)
        y[: len(idx)] = labels[idx]
        out.append((jax.tree.map(jnp.asarray, b), jnp.asarray(y)))
    return out


def train_one(conv, pooling, seed, c, train_set, test_batches):
    model = models.GraphClassifier(num_classes=3, hidden_features=c.hidden, num_layers=c.num_layers,
                                   conv=conv, pooling=pooling)  # fmt: skip
    tx = optim.adamw(c.learning_rate, weight_decay=c.weight_decay)
    params = model.init(jax.random.key(seed), test_batches[0][0])["params"]
    opt_state = tx.init(params)

    def loss_fn(p, b, y):
        return losses.cross_entropy(model.apply({"params": p}, b), y, mask=b.graph_mask)

    @jax.jit
    def step(p, s, b, y):
        loss, g = jax.value_and_grad(loss_fn)(p, b, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    @jax.jit
    def hits(p, b, y):
        pred = jnp.argmax(model.apply({"params": p}, b), -1)
        return jnp.sum((pred == y) & b.graph_mask)

    rng = np.random.default_rng(seed)
    curve = []
    for _ in range(c.epochs):
        for b, y in make_batches(*train_set, c.batch_size, rng):
            params, opt_state, loss = step(params, opt_state, b, y)
        curve.append(float(loss))

    def accuracy(batches):
        return float(
            sum(int(hits(params, b, y)) for b, y in batches)
            / sum(int(b.graph_mask.sum()) for b, _ in batches)
        )

    return {"train_acc": accuracy(make_batches(*train_set, c.batch_size)), "test_acc": accuracy(test_batches),
            "loss_curve": curve}  # fmt: skip


def train_and_evaluate(config: Config, workdir: str) -> dict:
    c = config
    os.makedirs(workdir, exist_ok=True)
    graphs, labels = graph_copies_dataset(c.num_graphs, seed=1234)
    n_train = c.num_graphs - c.num_test
    train_set = (graphs[:n_train], labels[:n_train])
    test_batches = make_batches(graphs[n_train:], labels[n_train:], c.batch_size)
    results = {}
    runs = [(cv, pl, s) for cv in c.convs for pl in c.poolings for s in c.seeds]
    for conv, pooling, seed in tqdm(runs, desc="conv x pooling x seed"):
        results.setdefault(f"{conv}/{pooling}", []).append(
            train_one(conv, pooling, seed, c, train_set, test_batches)
        )
    summary = {
        k: {"test_acc_mean": float(np.mean([r["test_acc"] for r in v])),
            "test_acc_std": float(np.std([r["test_acc"] for r in v])),
            "train_acc_mean": float(np.mean([r["train_acc"] for r in v])),
            "test_acc": [r["test_acc"] for r in v]}
        for k, v in results.items()
    }  # fmt: skip
    save_json(
        {"config": c, "summary": summary, "runs": results}, os.path.join(workdir, "metrics.json")
    )
    fig, ax = new_figure(figsize=(6.5, 4))
    width = 0.8 / len(c.poolings)
    for j, pl in enumerate(c.poolings):
        m = [summary[f"{cv}/{pl}"]["test_acc_mean"] for cv in c.convs]
        sd = [summary[f"{cv}/{pl}"]["test_acc_std"] for cv in c.convs]
        ax.bar(np.arange(len(c.convs)) + (j - (len(c.poolings) - 1) / 2) * width, m, width, yerr=sd,
               capsize=3, label=f"{pl} pooling")  # fmt: skip
    ax.axhline(1 / 3, color="gray", ls="--", lw=0.8, label="chance")
    ax.set(xticks=range(len(c.convs)), xticklabels=[cv.upper() for cv in c.convs], ylim=(0, 1.05),
           ylabel="test accuracy", title="how many copies? (1, 2 or 3 disjoint copies of a graph)")  # fmt: skip
    ax.legend()
    save_figure(fig, os.path.join(workdir, "gnn_graph_classification.png"))
    for k, s in summary.items():
        print(
            f"{k:10s} test {s['test_acc_mean']:.3f} +- {s['test_acc_std']:.3f}  train {s['train_acc_mean']:.3f}"
        )
    return summary


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
