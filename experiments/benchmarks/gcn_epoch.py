"""One GCN training epoch on a 20,000-node, ~200,000-edge SBM graph: jaxdl vs PyTorch (vs PyG).

The model is Kipf & Welling's 2-layer GCN, ``F=128 -> 64 -> 8`` with ReLU and dropout 0.5 on both
layers' inputs, softmax cross-entropy on 10% labelled nodes, Adam (lr 0.01). One epoch = one
full-graph forward, backward and Adam update. Peers, each in its own process, one after another,
on the same graph (written once to an ``.npz`` by the driver):

* ``jaxdl``: :class:`jaxdl.models.GCN` (gather + ``segment_sum`` per layer, normalisation
  recomputed every step from the edge list), one ``jax.jit`` step with donated buffers;
* ``torch_csr`` / ``torch_coo``: the same model in PyTorch, ``torch.sparse.mm(A_hat, X W)`` with the
  normalised ``A_hat = D^-1/2 (A + I) D^-1/2`` precomputed once as a CSR / COO sparse tensor;
* ``pyg``: ``torch_geometric.nn.GCNConv(cached=True)`` when PyTorch Geometric imports;
* ``torch_csr_1t`` / ``pyg_1t``: the same with ``torch.set_num_threads(1)``. On a machine shared
  with other jobs, PyTorch's OpenMP threads can wait on each other far longer than they compute
  (measured here: 12x slower with 2 threads than with 1 on a 2,000-node graph at load average 24),
  so both thread settings are reported.

Each peer runs ``warmup`` epochs (compilation / allocation excluded), then ``repeats`` timed
blocks of ``epochs`` epochs; we report the median seconds per epoch and its ratio to jaxdl.

``python -m experiments.benchmarks.gcn_epoch --workdir runs/bench_gcn`` writes
``gcn_epoch.json`` and ``gcn_epoch.png``; ``--framework NAME --data FILE`` runs one peer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

PEERS = ("jaxdl", "torch_csr", "torch_coo", "pyg", "torch_csr_1t", "pyg_1t")
FEATURES, HIDDEN, CLASSES = 128, 64, 8


def make_data(path: str, num_nodes: int, avg_degree: float, seed: int) -> dict:
    from jaxdl.data.graphs import stochastic_block_model

    d = stochastic_block_model(num_nodes=num_nodes, num_classes=CLASSES, avg_degree=avg_degree,
                               homophily=0.7, feature_dim=FEATURES, train_per_class=num_nodes // 80,
                               num_val=0, seed=seed)  # fmt: skip
    np.savez(path, x=d.x, y=d.y, senders=d.senders, receivers=d.receivers, train_mask=d.train_mask)
    return {
        "num_nodes": d.num_nodes,
        "num_edges": d.num_edges,
        "train_nodes": int(d.train_mask.sum()),
    }


def _time(step, warmup: int, repeats: int, epochs: int, sync) -> dict:
    t0 = time.perf_counter()
    for _ in range(warmup):
        sync(step())
    first = time.perf_counter() - t0
    blocks = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(epochs):
            out = step()
        sync(out)
        blocks.append((time.perf_counter() - t0) / epochs)
    return {
        "warmup_s": first,
        "sec_per_epoch": blocks,
        "median_sec_per_epoch": statistics.median(blocks),
    }


def run_jaxdl(data, args) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from jaxdl import losses, models, optim, xla_flags

    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    s, r, mask = (
        jnp.asarray(data["senders"]),
        jnp.asarray(data["receivers"]),
        jnp.asarray(data["train_mask"]),
    )
    model = models.GCN(num_classes=CLASSES, hidden_features=HIDDEN, dropout_rate=0.5)
    params = model.init(jax.random.key(0), x, s, r)["params"]
    tx = optim.adam(0.01)
    state = (params, tx.init(params), jax.random.key(1))

    def loss_fn(p, key):
        logits = model.apply({"params": p}, x, s, r, train=True, rngs={"dropout": key})
        return losses.cross_entropy(logits, y, mask=mask)

    def train_step(st):
        p, o, key = st
        key, sub = jax.random.split(key)
        loss, g = jax.value_and_grad(loss_fn)(p, sub)
        u, o = tx.update(g, o, p)
        return (optax.apply_updates(p, u), o, key), loss

    # The compiler option jaxdl's own train steps use (jaxdl.xla_flags), as the README asks of hand-jitted steps.
    opts = xla_flags.train_step_compiler_options()
    step_fn = jax.jit(train_step, donate_argnums=0, compiler_options=opts)
    holder = [state]

    def step():
        holder[0], loss = step_fn(holder[0])
        return loss

    res = _time(step, args.warmup, args.repeats, args.epochs, lambda v: v.block_until_ready())
    res["version"] = f"jax {jax.__version__}"
    return res


def _torch_setup(data, threads: int | None = None):
    import warnings

    import torch

    warnings.filterwarnings(
        "ignore", category=UserWarning
    )  # beta-CSR and scalar-conversion notices
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.from_numpy(data["x"])
    y = torch.from_numpy(data["y"]).long()
    mask = torch.from_numpy(data["train_mask"])
    return torch, x, y, mask


def run_torch(data, args, layout: str, threads: int | None = None) -> dict:
    torch, x, y, mask = _torch_setup(data, threads)
    n = x.shape[0]
    s = np.concatenate([data["senders"], np.arange(n)])
    r = np.concatenate([data["receivers"], np.arange(n)])
    deg = np.bincount(r, minlength=n).astype(np.float32)  # 1 + in-degree
    w = (1.0 / np.sqrt(deg[r] * deg[s])).astype(np.float32)
    a = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([r, s])).long(), torch.from_numpy(w), (n, n)
    ).coalesce()
    if layout == "csr":
        a = a.to_sparse_csr()

    class GCN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin1 = torch.nn.Linear(FEATURES, HIDDEN)
            self.lin2 = torch.nn.Linear(HIDDEN, CLASSES)
            for lin in (self.lin1, self.lin2):
                torch.nn.init.xavier_uniform_(lin.weight)
                torch.nn.init.zeros_(lin.bias)

        def forward(self, h):
            h = torch.nn.functional.dropout(h, 0.5, self.training)
            h = torch.sparse.mm(a, h @ self.lin1.weight.T) + self.lin1.bias
            h = torch.nn.functional.dropout(torch.relu(h), 0.5, self.training)
            return torch.sparse.mm(a, h @ self.lin2.weight.T) + self.lin2.bias

    return _torch_train(
        torch, GCN(), lambda m: m(x), y, mask, args, f"torch {torch.__version__}, sparse {layout}"
    )


def run_pyg(data, args, threads: int | None = None) -> dict:
    torch, x, y, mask = _torch_setup(data, threads)
    import torch_geometric
    from torch_geometric.nn import GCNConv

    edge_index = torch.from_numpy(np.stack([data["senders"], data["receivers"]])).long()

    class GCN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = GCNConv(FEATURES, HIDDEN, cached=True)
            self.c2 = GCNConv(HIDDEN, CLASSES, cached=True)

        def forward(self, h):
            h = torch.nn.functional.dropout(h, 0.5, self.training)
            h = torch.relu(self.c1(h, edge_index))
            h = torch.nn.functional.dropout(h, 0.5, self.training)
            return self.c2(h, edge_index)

    version = f"torch {torch.__version__}, torch_geometric {torch_geometric.__version__}"
    return _torch_train(torch, GCN(), lambda m: m(x), y, mask, args, version)


def _torch_train(torch, model, forward, y, mask, args, version) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(model)[mask], y[mask])
        loss.backward()
        opt.step()
        return loss

    res = _time(step, args.warmup, args.repeats, args.epochs, lambda v: float(v))
    res["version"] = version
    res["threads"] = torch.get_num_threads()
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", default="runs/bench_gcn")
    p.add_argument("--framework", choices=PEERS)
    p.add_argument("--data")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--num_nodes", type=int, default=20_000)
    p.add_argument("--avg_degree", type=float, default=10.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.framework:  # one peer, in this process
        data = dict(np.load(args.data))
        threads = (
            1 if args.framework.endswith("_1t") else None
        )  # None: torch's default (one per core)
        if args.framework == "jaxdl":
            res = run_jaxdl(data, args)
        elif args.framework.startswith("pyg"):
            res = run_pyg(data, args, threads)
        else:
            res = run_torch(data, args, args.framework.split("_")[1], threads)
        print("RESULT " + json.dumps(res))
        return
    os.makedirs(args.workdir, exist_ok=True)
    path = os.path.join(args.workdir, "graph.npz")
    graph = make_data(path, args.num_nodes, args.avg_degree, args.seed)
    print(f"graph: {graph}")
    results = {}
    for peer in args.peers.split(","):
        cmd = [sys.executable, "-m", "experiments.benchmarks.gcn_epoch", "--framework", peer, "--data", path,
               "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--epochs", str(args.epochs)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            results[peer] = {"error": (out.stderr or out.stdout)[-800:]}
            print(f"{peer}: failed\n{results[peer]['error']}")
            continue
        results[peer] = json.loads(line[0][len("RESULT ") :])
        print(
            f"{peer:10s} {1e3 * results[peer]['median_sec_per_epoch']:8.2f} ms/epoch  ({results[peer]['version']})"
        )
    base = results.get("jaxdl", {}).get("median_sec_per_epoch")
    for res in results.values():
        if base and "median_sec_per_epoch" in res:
            res["ratio_to_jaxdl"] = res["median_sec_per_epoch"] / base  # > 1: the peer is slower
    summary = {"graph": graph, "model": f"GCN {FEATURES}-{HIDDEN}-{CLASSES}, dropout 0.5, Adam",
               "cpu_count": os.cpu_count(), "load_avg_at_end": os.getloadavg(), "args": vars(args),
               "results": results}  # fmt: skip
    with open(os.path.join(args.workdir, "gcn_epoch.json"), "w") as f:
        json.dump(summary, f, indent=2)
    os.remove(path)
    ok = [(k, v) for k, v in results.items() if "median_sec_per_epoch" in v]
    if ok:
        from experiments.common import new_figure, save_figure

        fig, ax = new_figure(figsize=(6, 3.5))
        ax.bar([k for k, _ in ok], [1e3 * v["median_sec_per_epoch"] for _, v in ok])
        ax.set(
            ylabel="ms per epoch (median)",
            title=f"GCN epoch, {graph['num_nodes']} nodes, {graph['num_edges']} edges",
        )
        save_figure(fig, os.path.join(args.workdir, "gcn_epoch.png"))


if __name__ == "__main__":
    main()
