"""Graph datasets: karate club, stochastic block models, a graph-counting task, Cora/PubMed online.

Offline (no network, deterministic given ``seed``):

* :func:`karate_club`: Zachary's karate club (34 members, 78 friendships) as networkx ships it;
  the label is the club each member joined after the split (``'Mr. Hi'`` = 0, ``'Officer'`` = 1).
* :func:`stochastic_block_model`: ``num_classes`` communities with an exact expected *edge
  homophily* ``h`` (the fraction of edges joining same-class nodes) and Gaussian class features,
  so the graph's usefulness can be dialled from helpful (``h`` near 1) to misleading.
* :func:`graph_copies_dataset`: graph classification where the label is how many disjoint copies of
  a random connected graph a sample holds; mean and max pooling provably cannot solve it.

Online: :func:`load_planetoid` (``"cora"``, ``"pubmed"``) downloads the LINQS text releases
(``https://linqs-data.soe.ucsc.edu/public/...``), caches them under ``data_dir``, and raises
:class:`~jaxdl.data.DatasetUnavailableError` naming the offline alternatives when the network is
unreachable. Node graphs are returned as :class:`NodeDataset`; every undirected edge is listed in
both directions.
"""

from __future__ import annotations

import os
import tarfile
import urllib.request
from typing import NamedTuple

import numpy as np

from jaxdl.data.sources import DatasetUnavailableError

__all__ = [
    "NodeDataset",
    "edge_homophily",
    "graph_copies_dataset",
    "karate_club",
    "load_planetoid",
    "split_nodes",
    "stochastic_block_model",
    "to_undirected",
]


class NodeDataset(NamedTuple):
    """One graph for node classification: ``x (N, F)`` float32, ``y (N,)`` int32, ``senders`` and
    ``receivers (E,)`` int32, boolean ``train_mask``/``val_mask``/``test_mask (N,)``."""

    x: np.ndarray
    y: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    train_mask: np.ndarray
    val_mask: np.ndarray
    test_mask: np.ndarray
    num_classes: int

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.senders.shape[0])


def to_undirected(senders, receivers, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Both directions of every edge, duplicates and self loops removed, sorted by receiver."""
    s, r = np.asarray(senders, np.int64), np.asarray(receivers, np.int64)
    s, r = np.concatenate([s, r]), np.concatenate([r, s])
    keep = s != r
    key = np.unique(r[keep] * num_nodes + s[keep])  # sorted by receiver, then sender
    return (key % num_nodes).astype(np.int32), (key // num_nodes).astype(np.int32)


def edge_homophily(y, senders, receivers) -> float:
    """Fraction of edges whose two ends share a label (Zhu et al. 2020's edge homophily)."""
    y = np.asarray(y)
    return float(np.mean(y[np.asarray(senders)] == y[np.asarray(receivers)]))


def split_nodes(
    y: np.ndarray,
    train_per_class: int,
    num_val: int,
    num_test: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Planetoid-style split: ``train_per_class`` random labelled nodes of every class, then
    ``num_val`` validation and ``num_test`` test nodes (default: all the rest) from the others."""
    rng = np.random.default_rng(seed)
    n = len(y)
    train = np.zeros(n, bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < train_per_class:
            raise ValueError(
                f"split_nodes: class {c} has {len(idx)} nodes < train_per_class={train_per_class}"
            )
        train[rng.choice(idx, train_per_class, replace=False)] = True
    rest = rng.permutation(np.flatnonzero(~train))
    if num_val > len(rest):
        raise ValueError(f"split_nodes: num_val={num_val} exceeds the {len(rest)} unlabelled nodes")
    val, test = np.zeros(n, bool), np.zeros(n, bool)
    val[rest[:num_val]] = True
    test[rest[num_val : None if num_test is None else num_val + num_test]] = True
    return train, val, test


def karate_club(features: str = "identity") -> NodeDataset:
    """Zachary's karate club from networkx, with one labelled node per community.

    ``x``: the identity ``(34, 34)`` (``features="identity"``, as Kipf & Welling's karate demo: the
    model sees only the graph) or the degree ``(34, 1)`` (``"degree"``). ``train_mask`` marks the
    two leaders, node 0 (Mr. Hi, the instructor) and node 33 (the officer); every other node is in
    ``test_mask`` (``val_mask`` is empty).
    """
    import networkx as nx

    if features not in ("identity", "degree"):
        raise ValueError(f"karate_club: features must be 'identity' or 'degree', got {features!r}")
    g = nx.karate_club_graph()
    n = g.number_of_nodes()
    y = np.asarray([0 if g.nodes[i]["club"] == "Mr. Hi" else 1 for i in range(n)], np.int32)
    edges = np.asarray(list(g.edges()), np.int64)
    s, r = to_undirected(edges[:, 0], edges[:, 1], n)
    if features == "identity":
        x = np.eye(n, dtype=np.float32)
    else:
        x = np.bincount(r, minlength=n).astype(np.float32)[:, None]
    train = np.zeros(n, bool)
    train[[0, 33]] = True
    return NodeDataset(x, y, s, r, train, np.zeros(n, bool), ~train, 2)


def stochastic_block_model(
    num_nodes: int = 1000,
    num_classes: int = 5,
    avg_degree: float = 10.0,
    homophily: float = 0.8,
    feature_dim: int = 16,
    feature_signal: float = 0.5,
    train_per_class: int = 20,
    num_val: int = 500,
    seed: int = 0,
) -> NodeDataset:
    """A planted-partition graph with edge homophily ``homophily`` in expectation.

    Labels are balanced (``y_i = i mod K``, shuffled). Each of ``num_nodes * avg_degree / 2``
    undirected edges picks a uniform random node ``u``; with probability ``homophily`` its other
    end is a uniform node of ``u``'s class, otherwise of a uniform *other* class (so ``h = 1/K`` is
    an Erdos-Renyi-like graph that carries no label information, ``h < 1/K`` is heterophilous).
    Self loops and duplicates are then dropped, which changes the degree slightly, not ``h``.

    Features: ``x_i = feature_signal * mu_{y_i} + eps_i`` with class centres ``mu_k ~ N(0, I)`` and
    noise ``eps_i ~ N(0, I)`` in ``feature_dim`` dimensions, so an MLP on ``x`` alone is better than
    chance but far from perfect. Split: :func:`split_nodes` (``train_per_class`` per class,
    ``num_val`` validation, the rest test).
    """
    if not 0.0 <= homophily <= 1.0:
        raise ValueError(f"stochastic_block_model: homophily must be in [0, 1], got {homophily}")
    if num_classes < 2 or num_nodes < num_classes or avg_degree <= 0:
        raise ValueError(
            "stochastic_block_model: need num_classes >= 2, num_nodes >= num_classes and avg_degree > 0, "
            f"got {num_classes}, {num_nodes}, {avg_degree}"
        )
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(num_nodes) % num_classes).astype(np.int32)
    members = [np.flatnonzero(y == k) for k in range(num_classes)]
    sizes = np.asarray([len(m) for m in members])
    m = int(round(num_nodes * avg_degree / 2))
    u = rng.integers(0, num_nodes, m)
    same = rng.random(m) < homophily
    cls = np.where(same, y[u], (y[u] + rng.integers(1, num_classes, m)) % num_classes)
    pick = (rng.random(m) * sizes[cls]).astype(np.int64)  # uniform position within the class
    order = np.concatenate(members)
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    v = order[start[cls] + pick]
    s, r = to_undirected(u, v, num_nodes)
    centres = rng.normal(size=(num_classes, feature_dim))
    x = (feature_signal * centres[y] + rng.normal(size=(num_nodes, feature_dim))).astype(np.float32)
    train, val, test = split_nodes(y, train_per_class, num_val, seed=seed + 1)
    return NodeDataset(x, y, s, r, train, val, test, num_classes)


def _random_connected_graph(rng: np.random.Generator, n: int, extra_edge_prob: float):
    # A uniform random recursive tree (node i joins a random earlier node) plus random chords.
    parents = np.asarray([rng.integers(0, i) for i in range(1, n)], np.int64)
    s, r = [np.arange(1, n)], [parents]
    iu, ju = np.triu_indices(n, 1)
    chords = rng.random(len(iu)) < extra_edge_prob
    s.append(iu[chords])
    r.append(ju[chords])
    return to_undirected(np.concatenate(s), np.concatenate(r), n)


def graph_copies_dataset(
    num_graphs: int = 600,
    max_copies: int = 3,
    min_nodes: int = 4,
    max_nodes: int = 8,
    extra_edge_prob: float = 0.2,
    seed: int = 0,
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], np.ndarray]:
    """Graph classification that mean pooling cannot solve: count the copies.

    Sample ``k`` is ``y_k + 1`` disjoint copies (``y_k`` uniform in ``0 .. max_copies - 1``) of one
    random connected graph with ``min_nodes .. max_nodes`` nodes (a random tree plus chords with
    probability ``extra_edge_prob``); every node has the constant feature 1. In ``c`` copies each
    node has exactly the neighbourhood it has in one copy, so any message-passing network computes
    the same node features, and their mean (or max) over the graph is *identical* for 1, 2 or 3
    copies: mean/max pooling are at chance (``1 / max_copies``) whatever the model. Sum pooling
    multiplies by ``c``, and the base size's range makes node counts overlap between classes
    (e.g. 8 nodes: one 8-node graph or two 4-node copies), so counting nodes is not enough either.

    Returns ``(graphs, labels)``: a list of ``(x (n, 1), senders, receivers)`` and ``(num_graphs,)``.
    """
    if max_copies < 2 or not 1 <= min_nodes <= max_nodes:
        raise ValueError(
            f"graph_copies_dataset: need max_copies >= 2 and 1 <= min_nodes <= max_nodes, got "
            f"{max_copies}, {min_nodes}, {max_nodes}"
        )
    rng = np.random.default_rng(seed)
    graphs, labels = [], rng.integers(0, max_copies, num_graphs).astype(np.int32)
    for c in labels + 1:
        n = int(rng.integers(min_nodes, max_nodes + 1))
        s, r = _random_connected_graph(rng, n, extra_edge_prob)
        offsets = np.repeat(np.arange(c) * n, len(s))
        graphs.append(
            (
                np.ones((c * n, 1), np.float32),
                (np.tile(s, c) + offsets).astype(np.int32),
                (np.tile(r, c) + offsets).astype(np.int32),
            )
        )
    return graphs, labels


# --------------------------------------------------------------------------- Cora / PubMed (online)

PLANETOID_URLS = {
    "cora": "https://linqs-data.soe.ucsc.edu/public/lbc/cora.tgz",
    "pubmed": "https://linqs-data.soe.ucsc.edu/public/Pubmed-Diabetes.tgz",
}
_PLANETOID_FILES = {
    "cora": ("cora/cora.content", "cora/cora.cites"),
    "pubmed": (
        "Pubmed-Diabetes/data/Pubmed-Diabetes.NODE.paper.tab",
        "Pubmed-Diabetes/data/Pubmed-Diabetes.DIRECTED.cites.tab",
    ),
}


def _default_data_dir() -> str:
    return os.environ.get(
        "JAXDL_DATA_DIR", os.path.join(os.path.expanduser("~"), ".cache", "jaxdl")
    )


def _download(name: str, data_dir: str) -> None:
    url = PLANETOID_URLS[name]
    os.makedirs(data_dir, exist_ok=True)
    archive = os.path.join(data_dir, os.path.basename(url))
    try:
        tmp = archive + ".part"
        with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, "wb") as f:
            f.write(resp.read())
        os.replace(tmp, archive)
    except OSError as err:  # URLError, timeouts, DNS failures are all OSErrors
        raise DatasetUnavailableError(
            f"load_planetoid: {name!r} is not in {data_dir} and could not be downloaded from {url} "
            f"({err}). Offline, use karate_club(), stochastic_block_model() or graph_copies_dataset() "
            f"from jaxdl.data.graphs, or place the extracted archive under {data_dir}."
        ) from err
    with tarfile.open(archive) as tar:
        tar.extractall(data_dir, filter="data")  # "data" refuses absolute paths and links outside


def _read_cora(content: str, cites: str):
    ids, feats, labels = [], [], []
    with open(content) as f:
        for line in f:
            parts = line.split()
            if parts:
                ids.append(parts[0])
                feats.append(np.asarray(parts[1:-1], np.float32))
                labels.append(parts[-1])
    pairs = []
    with open(cites) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                pairs.append(
                    (parts[1], parts[0])
                )  # "cited citing": the citing paper points at the cited one
    return ids, np.stack(feats), labels, pairs


def _read_pubmed(content: str, cites: str):
    ids, rows, labels, vocab = [], [], [], {}
    with open(content) as f:
        lines = f.read().splitlines()
    for field in lines[1].split("\t"):  # "numeric:w-rec:0.0" declares word feature w-rec
        kind, _, rest = field.partition(":")
        if kind == "numeric":
            vocab[rest.split(":")[0]] = len(vocab)
    for line in lines[2:]:
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        ids.append(parts[0])
        labels.append(parts[1].split("=")[1])
        row = {}
        for p in parts[2:]:
            key, _, val = p.partition("=")
            if key in vocab:
                row[vocab[key]] = float(val)
        rows.append(row)
    x = np.zeros((len(ids), len(vocab)), np.float32)
    for i, row in enumerate(rows):
        for j, val in row.items():
            x[i, j] = val
    pairs = []
    with open(cites) as f:
        for line in f.read().splitlines()[2:]:
            parts = line.split("\t")
            if len(parts) == 4:
                pairs.append((parts[1].removeprefix("paper:"), parts[3].removeprefix("paper:")))
    return ids, x, labels, pairs


def load_planetoid(
    name: str,
    data_dir: str | None = None,
    train_per_class: int = 20,
    num_val: int = 500,
    num_test: int = 1000,
    seed: int = 0,
    download: bool = True,
) -> NodeDataset:
    """Cora (2,708 papers, 7 classes, 1,433 binary word features) or PubMed (19,717 papers, 3
    classes, 500 TF-IDF features) as a :class:`NodeDataset`, from the LINQS releases.

    The files are downloaded once into ``data_dir`` (default ``$JAXDL_DATA_DIR`` or
    ``~/.cache/jaxdl``) from :data:`PLANETOID_URLS`; nothing is unpickled. Citations become
    undirected edges. The split has Planetoid's sizes (Yang et al. 2016: 20 labelled nodes per
    class, 500 validation, 1,000 test) drawn with ``seed``; it is not Planetoid's fixed index list,
    which ships only as pickles. Offline with no local copy: :class:`DatasetUnavailableError`.
    """
    name = name.lower()
    if name not in PLANETOID_URLS:
        raise ValueError(
            f"load_planetoid: name must be one of {sorted(PLANETOID_URLS)}, got {name!r}"
        )
    data_dir = data_dir or _default_data_dir()
    content, cites = (os.path.join(data_dir, p) for p in _PLANETOID_FILES[name])
    if not (os.path.exists(content) and os.path.exists(cites)):
        if not download:
            raise DatasetUnavailableError(
                f"load_planetoid: {name!r} is not in {data_dir} and download=False. Offline, use "
                "karate_club(), stochastic_block_model() or graph_copies_dataset()."
            )
        _download(name, data_dir)
    ids, x, label_names, pairs = (_read_cora if name == "cora" else _read_pubmed)(content, cites)
    index = {pid: i for i, pid in enumerate(ids)}
    classes = sorted(set(label_names))
    y = np.asarray([classes.index(c) for c in label_names], np.int32)
    edges = np.asarray(
        [(index[a], index[b]) for a, b in pairs if a in index and b in index], np.int64
    )
    s, r = to_undirected(edges[:, 0], edges[:, 1], len(ids))
    train, val, test = split_nodes(y, train_per_class, num_val, num_test, seed=seed)
    return NodeDataset(x, y, s, r, train, val, test, len(classes))
