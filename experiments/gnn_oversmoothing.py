"""Over-smoothing: GCN accuracy and feature variance against depth, with and without residuals.

Each GCN layer multiplies by the normalised adjacency ``S = D^-1/2 (A + I) D^-1/2``, a low-pass
filter; ``S^k X`` converges, as ``k`` grows, to a matrix whose rows differ only by the factor
``sqrt(d_i)``: every node's features become the same up to scale, and the labels are no longer
separable (Li et al. 2018; Oono & Suzuki 2020). We measure

* ``relative variance`` of node features ``H (N, C)`` after normalising each row by ``sqrt(d_i)``
  to undo that factor: ``mean_c Var_i(H_ic) / mean_c mean_i(H_ic^2)``, 1 for features uncorrelated
  with the mean and 0 when all rows are equal. Measured for plain propagation ``S^k X`` (no
  weights), and for the last hidden layer of GCNs at initialisation and after training;
* test accuracy of GCNs with ``depth`` = 2 ... 32 layers (hidden width ``hidden``), plain
  (``h <- relu(conv(h))``) and residual (``h <- h + relu(conv(h))``, the ResNet remedy).

Data: an SBM (1,000 nodes, 5 classes, degree 10, homophily ``homophily``), 20 labels per class,
best-validation-epoch test accuracy. Default (several minutes on 2 CPU cores: each depth compiles once):
``python -m experiments.gnn_oversmoothing --workdir runs/gnn_oversmoothing``.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from experiments.gnn_common import train_node_classifier
from jaxdl import models
from jaxdl.data.graphs import stochastic_block_model
from jaxdl.nn.graph import gcn_norm


@dataclasses.dataclass
class Config:
    depths: tuple[int, ...] = (2, 4, 8, 16, 32)
    seeds: tuple[int, ...] = (0, 1)
    hidden: int = 32
    homophily: float = 0.8
    feature_signal: float = 0.5
    epochs: int = 200
    learning_rate: float = 0.01
    weight_decay: float = 5e-4
    dropout: float = 0.0
    max_power: int = 64


def get_config() -> Config:
    return Config()


def relative_variance(h: np.ndarray, deg: np.ndarray) -> float:
    """``mean_c Var_i(h_ic / sqrt(d_i)) / mean_c mean_i((h_ic / sqrt(d_i))^2)``."""
    z = np.asarray(h, np.float64) / np.sqrt(deg)[:, None]
    return float(np.mean(z.var(0)) / max(np.mean(z**2), 1e-30))


def train_and_evaluate(config: Config, workdir: str) -> dict:
    c = config
    os.makedirs(workdir, exist_ok=True)
    data = stochastic_block_model(homophily=c.homophily, feature_signal=c.feature_signal, seed=0)
    n = data.num_nodes
    deg = 1.0 + np.bincount(data.receivers, minlength=n)
    # Plain propagation S^k X: the filter alone, no weights or nonlinearity.
    w, self_w = gcn_norm(jnp.asarray(data.senders), jnp.asarray(data.receivers), n)
    s, r = jnp.asarray(data.senders), jnp.asarray(data.receivers)

    @jax.jit
    def propagate(h):
        return jax.ops.segment_sum(h[s] * w[:, None], r, n) + h * self_w[:, None]

    h, power_var = jnp.asarray(data.x), []
    for _ in range(c.max_power + 1):
        power_var.append(relative_variance(np.asarray(h), deg))
        h = propagate(h)

    results = {}
    runs = [(d, res) for d in c.depths for res in (False, True)]
    for depth, residual in tqdm(runs, desc="depth x residual"):
        model = models.GCN(num_classes=data.num_classes, hidden_features=c.hidden, num_layers=depth,
                           dropout_rate=c.dropout, residual=residual)  # fmt: skip
        accs, var_init, var_trained = [], [], []
        init_fn = jax.jit(lambda k, m=model: m.init(k, data.x, data.senders, data.receivers))
        embed = jax.jit(lambda p, m=model: m.apply({"params": p}, data.x, data.senders, data.receivers,
                                                   mutable=["intermediates"])[1])  # fmt: skip
        for seed in c.seeds:
            out = train_node_classifier(model, data, epochs=c.epochs, learning_rate=c.learning_rate,
                                        weight_decay=c.weight_decay, seed=seed)  # fmt: skip
            accs.append(out["test_acc"])
            init = init_fn(jax.random.split(jax.random.key(seed))[0])
            for params, sink in ((init["params"], var_init), (out["params"], var_trained)):
                inter = embed(params)
                sink.append(
                    relative_variance(np.asarray(inter["intermediates"]["embedding"][0]), deg)
                )
        results[f"{'residual' if residual else 'plain'}/{depth}"] = {
            "test_acc": accs, "test_acc_mean": float(np.mean(accs)),
            "rel_var_init": float(np.mean(var_init)), "rel_var_trained": float(np.mean(var_trained)),
        }  # fmt: skip
    save_json({"config": c, "propagation_rel_var": power_var, "gcn": results},
              os.path.join(workdir, "metrics.json"))  # fmt: skip

    fig, axes = new_figure(1, 3, figsize=(14, 4))
    axes[0].semilogy(range(c.max_power + 1), np.maximum(power_var, 1e-16))
    axes[0].set(
        xlabel="k", ylabel="relative variance of S^k X", title="propagation alone (no weights)"
    )
    for kind, style in (("plain", "o-"), ("residual", "s--")):
        accs = [results[f"{kind}/{d}"]["test_acc_mean"] for d in c.depths]
        axes[1].plot(c.depths, accs, style, label=kind)
        for key, ls in (("rel_var_init", ":"), ("rel_var_trained", "-")):
            v = [max(results[f"{kind}/{d}"][key], 1e-16) for d in c.depths]
            axes[2].semilogy(c.depths, v, style[0] + ls, label=f"{kind}, {key.split('_')[-1]}")
    axes[1].axhline(1 / data.num_classes, color="gray", ls="--", lw=0.8)
    axes[1].set(xscale="log", xticks=c.depths, xticklabels=c.depths, xlabel="GCN layers",
                ylabel="test accuracy", title="accuracy vs depth", ylim=(0, 1.02))  # fmt: skip
    axes[2].set(xscale="log", xticks=c.depths, xticklabels=c.depths, xlabel="GCN layers",
                ylabel="relative variance, last hidden layer", title="feature variance vs depth")  # fmt: skip
    axes[1].legend()
    axes[2].legend(fontsize=8)
    save_figure(fig, os.path.join(workdir, "gnn_oversmoothing.png"))
    print("S^k X relative variance: " + ", ".join(f"k={k}: {power_var[k]:.2e}" for k in (0, 2, 8, 32, c.max_power)
                                                  if k <= c.max_power))  # fmt: skip
    for name, rr in results.items():
        print(f"{name:12s} acc {rr['test_acc_mean']:.3f}  rel var init {rr['rel_var_init']:.2e}  "
              f"trained {rr['rel_var_trained']:.2e}")  # fmt: skip
    return results


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
