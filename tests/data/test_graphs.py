"""Graph datasets: karate club, SBM homophily, the copies task, the LINQS parsers (offline files)."""

import io
import os
import tarfile

import numpy as np
import pytest

from jaxdl.data import graphs as gd
from jaxdl.data.sources import DatasetUnavailableError


def test_karate_club():
    d = gd.karate_club()
    assert d.x.shape == (34, 34) and d.num_edges == 2 * 78
    assert d.y[0] == 0 and d.y[33] == 1 and d.y.sum() == 17
    assert d.train_mask.sum() == 2 and (d.train_mask ^ d.test_mask).all()
    # undirected, no self loops, no duplicates
    pairs = set(zip(d.senders.tolist(), d.receivers.tolist(), strict=True))
    assert len(pairs) == d.num_edges and all((r, s) in pairs for s, r in pairs)
    assert gd.karate_club("degree").x[0, 0] == 16


@pytest.mark.parametrize("h", [0.1, 0.5, 0.9])
def test_sbm_hits_requested_homophily(h):
    d = gd.stochastic_block_model(num_nodes=2000, num_classes=4, avg_degree=8, homophily=h, seed=1)
    assert abs(gd.edge_homophily(d.y, d.senders, d.receivers) - h) < 0.03
    assert 7.0 < d.num_edges / d.num_nodes < 8.1
    assert np.bincount(d.y).tolist() == [500] * 4
    assert d.train_mask.sum() == 80 and d.val_mask.sum() == 500
    assert not (d.train_mask & d.val_mask).any() and not (d.val_mask & d.test_mask).any()
    assert (d.train_mask | d.val_mask | d.test_mask).all()
    with pytest.raises(ValueError, match="homophily"):
        gd.stochastic_block_model(homophily=1.5)


def test_graph_copies_dataset():
    graphs, labels = gd.graph_copies_dataset(num_graphs=30, seed=0)
    assert set(labels.tolist()) == {0, 1, 2}
    for (x, s, r), y in zip(graphs, labels, strict=True):
        n = len(x) // (y + 1)
        assert len(x) == n * (y + 1) and 4 <= n <= 8
        # each copy is the first shifted by its offset; no edge crosses copies
        e = len(s) // (y + 1)
        for c in range(y + 1):
            np.testing.assert_array_equal(s[c * e : (c + 1) * e], s[:e] + c * n)
        assert np.all(s // n == r // n)


def _tar(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_load_planetoid_parses_cached_cora(tmp_path):
    content = "".join(
        f"p{i} {' '.join('1' if j == i % 3 else '0' for j in range(5))} c{i % 2}\n"
        for i in range(30)
    )
    cites = "p0 p1\np1 p2\np2 p0\np5 p5\np3 p4\nunknown p4\n"
    os.makedirs(tmp_path / "cora")
    (tmp_path / "cora" / "cora.content").write_text(content)
    (tmp_path / "cora" / "cora.cites").write_text(cites)
    d = gd.load_planetoid(
        "cora", data_dir=str(tmp_path), train_per_class=2, num_val=5, num_test=10, download=False
    )
    assert d.x.shape == (30, 5) and d.num_classes == 2
    assert d.num_edges == 2 * 4  # self citation and unknown id dropped, both directions kept
    assert d.train_mask.sum() == 4 and d.val_mask.sum() == 5 and d.test_mask.sum() == 10


def test_load_planetoid_parses_pubmed_tab_files(tmp_path):
    head = "NODE\tpaper\ncat=1,2,3:label\tnumeric:w-a:0.0\tnumeric:w-b:0.0\tstring:summary\n"
    rows = "".join(f"{100 + i}\tlabel={i % 3 + 1}\tw-a=0.5\tsummary=w-a\n" for i in range(12))
    cites = "DIRECTED\tcites\nNO_FEATURES\n1\tpaper:100\t|\tpaper:101\n2\tpaper:102\t|\tpaper:100\n"
    base = tmp_path / "Pubmed-Diabetes" / "data"
    os.makedirs(base)
    (base / "Pubmed-Diabetes.NODE.paper.tab").write_text(head + rows)
    (base / "Pubmed-Diabetes.DIRECTED.cites.tab").write_text(cites)
    d = gd.load_planetoid(
        "pubmed", data_dir=str(tmp_path), train_per_class=1, num_val=2, num_test=3
    )
    assert d.x.shape == (12, 2) and d.num_classes == 3
    np.testing.assert_array_equal(d.x[:, 0], 0.5)
    np.testing.assert_array_equal(d.y[:3], [0, 1, 2])
    assert d.num_edges == 4


def test_load_planetoid_offline_error(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(gd.urllib.request, "urlopen", no_network)
    with pytest.raises(DatasetUnavailableError, match="karate_club"):
        gd.load_planetoid("cora", data_dir=str(tmp_path))
    with pytest.raises(DatasetUnavailableError, match="download=False"):
        gd.load_planetoid("pubmed", data_dir=str(tmp_path), download=False)
    with pytest.raises(ValueError, match="name must be one of"):
        gd.load_planetoid("citeseer")


def test_download_extracts_archive(tmp_path, monkeypatch):
    archive = tmp_path / "src.tgz"
    content = "".join(f"p{i} 1 0 c{i % 2}\n" for i in range(6))
    _tar(archive, {"cora/cora.content": content, "cora/cora.cites": "p0 p1\n"})

    def fake_urlopen(url, timeout):
        assert url == gd.PLANETOID_URLS["cora"]
        return open(archive, "rb")

    monkeypatch.setattr(gd.urllib.request, "urlopen", fake_urlopen)
    d = gd.load_planetoid("cora", data_dir=str(tmp_path / "cache"), train_per_class=1, num_val=1)
    assert d.x.shape == (6, 2) and d.num_edges == 2
