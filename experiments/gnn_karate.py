"""Zachary's karate club with one labelled node per community: semi-supervised GCN.

Only node 0 (Mr. Hi) and node 33 (the officer) are labelled; the other 32 members' clubs are
predicted from the friendship graph alone (features are the identity, as in Kipf & Welling's
karate demo, so nothing but the graph links an unlabelled node to a label). A 3-layer GCN
(34 -> 16 -> 2 -> 2, tanh) is trained for ``epochs`` full-batch AdamW steps; the 2-D hidden layer
is the embedding plotted. The edge-blind MLP on the same identity features is the control: it can
fit the two labelled nodes but has nothing to generalise from.

Default (well under a minute on 2 CPU cores):
``python -m experiments.gnn_karate --workdir runs/gnn_karate`` (10 seeds, 200 epochs).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from experiments.gnn_common import MLP, train_node_classifier
from jaxdl import models
from jaxdl.data.graphs import karate_club


@dataclasses.dataclass
class Config:
    seeds: tuple[int, ...] = tuple(range(10))
    epochs: int = 200
    learning_rate: float = 0.01
    weight_decay: float = 5e-4
    hidden: int = 16
    dropout: float = 0.0


def get_config() -> Config:
    return Config()


def train_and_evaluate(config: Config, workdir: str) -> dict:
    c = config
    os.makedirs(workdir, exist_ok=True)
    data = karate_club()
    gcn = models.GCN(num_classes=2, hidden_features=(c.hidden, 2), num_layers=3,
                     dropout_rate=c.dropout, activation=jax.numpy.tanh)  # fmt: skip
    mlp = MLP(num_classes=2, hidden_features=c.hidden, dropout_rate=c.dropout)
    kw = dict(epochs=c.epochs, learning_rate=c.learning_rate, weight_decay=c.weight_decay)
    acc = {"gcn": [], "mlp": []}
    first = None
    for seed in tqdm(c.seeds, desc="seeds"):
        r = train_node_classifier(gcn, data, seed=seed, **kw)
        acc["gcn"].append(r["test_acc"])
        acc["mlp"].append(train_node_classifier(mlp, data, seed=seed, **kw)["test_acc"])
        if first is None:
            first = r
    _, inter = gcn.apply({"params": first["params"]}, data.x, data.senders, data.receivers,
                         mutable=["intermediates"])  # fmt: skip
    emb = np.asarray(inter["intermediates"]["embedding"][0])  # (34, 2)
    summary = {
        name: {"mean": float(np.mean(a)), "std": float(np.std(a)), "min": float(np.min(a)),
               "max": float(np.max(a)), "per_seed": a}
        for name, a in acc.items()
    }  # fmt: skip
    save_json({"config": c, "num_test_nodes": int(data.test_mask.sum()), "accuracy": summary,
               "embedding_seed0": emb, "labels": data.y}, os.path.join(workdir, "metrics.json"))  # fmt: skip

    fig, (ax, ax2) = new_figure(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for s, t in zip(data.senders, data.receivers, strict=True):
        if s < t:
            ax.plot(emb[[s, t], 0], emb[[s, t], 1], color="0.85", lw=0.6, zorder=0)
    colors = np.where(data.y == 0, "tab:blue", "tab:orange")
    ax.scatter(emb[:, 0], emb[:, 1], c=colors, s=40, edgecolor="k", lw=0.4)
    for i in (0, 33):
        ax.scatter(emb[i, 0], emb[i, 1], marker="*", s=300, c=colors[i], edgecolor="k", zorder=3)
    ax.set(title=f"GCN 2-D embedding (seed {c.seeds[0]}); stars = the 2 labelled nodes",
           xlabel="h1", ylabel="h2")  # fmt: skip
    for k, a in enumerate(acc.values()):
        ax2.scatter(np.full(len(a), k) + np.linspace(-0.15, 0.15, len(a)), a, s=25)
        ax2.hlines(np.mean(a), k - 0.3, k + 0.3, color="k")
    ax2.axhline(0.5, color="gray", ls="--", lw=0.8)
    ax2.set(xticks=[0, 1], xticklabels=["GCN", "MLP (no edges)"], ylim=(0, 1.02),
            ylabel="accuracy on the 32 unlabelled members", title=f"{len(c.seeds)} seeds")  # fmt: skip
    save_figure(fig, os.path.join(workdir, "gnn_karate.png"))
    for name, s in summary.items():
        print(
            f"{name}: accuracy {s['mean']:.3f} +- {s['std']:.3f} (min {s['min']:.3f}, max {s['max']:.3f})"
        )
    return summary


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
