"""Bidirectional vs unidirectional LSTMs on a task whose labels depend on later tokens.

Offline task (default): tag every position of a random token sequence with the parity of the
token ``k`` steps *later*, ``y_t = x_{min(t + k, L - 1)} mod 2``, on right-padded batches of
variable length ``L`` (``seq_lengths`` masking, padded positions excluded from loss and
accuracy). A left-to-right LSTM has not read ``x_{t+k}`` when it must answer at ``t``, so it
can only guess (the majority class, odd: 5/9 = 0.556 with tokens 1..9) except on the last ``k``
positions; the backward half of a bidirectional
LSTM has read it, so a BiLSTM can be exact.

IMDB (needs the network, or a prepared ``imdb_reviews`` in ``TFDS_DATA_DIR``)::

    python -m experiments.bidirectional --workdir runs/bidirectional_imdb --imdb true

trains :class:`jaxdl.models.SequenceClassifier` (Embedding(20k, 64) -> BiLSTM(64) -> Dense(2),
reviews truncated to 200 words) for 3 epochs; a BiLSTM of this size usually reaches about 85%
test accuracy (the figure commonly reported for Keras's IMDB BiLSTM example), a unidirectional
LSTM a point or two less.

Run: ``python -m experiments.bidirectional --workdir runs/bidirectional``.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import models, nn, optim


@dataclasses.dataclass
class Config:
    vocab: int = 10
    max_len: int = 24
    min_len: int = 12
    lookahead: int = 3
    hidden: int = 32
    embed: int = 16
    train_size: int = 4096
    test_size: int = 1024
    batch: int = 64
    steps: int = 600
    learning_rate: float = 3e-3
    eval_every: int = 50
    seed: int = 0
    imdb: bool = False
    imdb_vocab: int = 20_000
    imdb_len: int = 200
    imdb_epochs: int = 3


def get_config() -> Config:
    return Config()


def lookahead_task(n: int, c: Config, seed: int):
    """``tokens (n, T)`` in ``1..vocab-1`` (0 pads), ``lengths (n,)``, ``labels (n, T)``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(c.min_len, c.max_len + 1, size=n)
    tokens = rng.integers(1, c.vocab, size=(n, c.max_len))
    t = np.arange(c.max_len)[None, :]
    tokens = np.where(t < lengths[:, None], tokens, 0)
    src = np.minimum(t + c.lookahead, lengths[:, None] - 1)  # (n, T)
    labels = np.take_along_axis(tokens, src, axis=1) % 2
    return tokens.astype(np.int32), lengths.astype(np.int32), labels.astype(np.int32)


class Tagger(fnn.Module):
    """Embedding -> (Bi)LSTM -> Dense(2) at every step."""

    vocab: int
    embed: int
    hidden: int
    bidirectional: bool

    @fnn.compact
    def __call__(self, tokens, seq_lengths):
        x = fnn.Embed(self.vocab, self.embed)(tokens)
        fwd = nn.RNN(nn.LSTMCell(self.hidden, parent=None), parent=None)
        if self.bidirectional:
            bwd = nn.RNN(nn.LSTMCell(self.hidden, parent=None), parent=None)
            h = nn.Bidirectional(fwd, bwd)(x, seq_lengths=seq_lengths)  # (B, T, 2H)
        else:
            h = nn.RNN(nn.LSTMCell(self.hidden, parent=None))(x, seq_lengths=seq_lengths)
        return fnn.Dense(2)(h)  # (B, T, 2)


def run_tagger(bidirectional: bool, c: Config) -> dict:
    xtr, ltr, ytr = lookahead_task(c.train_size, c, c.seed)
    xte, lte, yte = lookahead_task(c.test_size, c, c.seed + 1)
    model = Tagger(c.vocab, c.embed, c.hidden, bidirectional)
    params = model.init(jax.random.key(c.seed), xtr[:2], ltr[:2])["params"]
    tx = optim.adam(c.learning_rate)
    opt_state = tx.init(params)

    def metrics(p, x, lengths, y):
        logits = model.apply({"params": p}, x, lengths)
        mask = (jnp.arange(x.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        loss = jnp.sum(ce * mask) / jnp.sum(mask)
        acc = jnp.sum((logits.argmax(-1) == y) * mask) / jnp.sum(mask)
        # accuracy on the positions whose label token lies strictly after t and before L - 1
        t = jnp.arange(x.shape[1])[None, :]
        future = (t + c.lookahead < lengths[:, None] - 1).astype(jnp.float32) * mask
        acc_future = jnp.sum((logits.argmax(-1) == y) * future) / jnp.sum(future)
        return loss, (acc, acc_future)

    @jax.jit
    def step(p, s, x, lengths, y):
        (loss, _), g = jax.value_and_grad(metrics, has_aux=True)(p, x, lengths, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    evaluate = jax.jit(metrics)
    curve = {"step": [], "test_loss": [], "test_accuracy": [], "test_accuracy_future": []}
    rng = np.random.default_rng(c.seed)
    name = "BiLSTM" if bidirectional else "LSTM"
    for k in tqdm(range(1, c.steps + 1), desc=name, leave=False):
        idx = rng.integers(0, c.train_size, size=c.batch)
        params, opt_state, _ = step(params, opt_state, xtr[idx], ltr[idx], ytr[idx])
        if k % c.eval_every == 0:
            loss, (acc, acc_f) = evaluate(params, xte, lte, yte)
            curve["step"].append(k)
            curve["test_loss"].append(float(loss))
            curve["test_accuracy"].append(float(acc))
            curve["test_accuracy_future"].append(float(acc_f))
    return curve


# ------------------------------------------------------------------ IMDB (network / prepared data)


def _words(text: bytes | str) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "ignore")
    return re.findall(r"[a-z0-9']+", text.lower().replace("<br />", " "))


def load_imdb(c: Config):
    """Word ids (index 0 pads, 1 is out-of-vocabulary) from TFDS's ``imdb_reviews``."""
    import tensorflow_datasets as tfds

    splits = {}
    for split in ("train", "test"):
        source = tfds.data_source("imdb_reviews", split=split)
        splits[split] = [(_words(ex["text"]), int(ex["label"])) for ex in source]
    counts = collections.Counter(w for words, _ in splits["train"] for w in words)
    vocab = {w: i + 2 for i, (w, _) in enumerate(counts.most_common(c.imdb_vocab - 2))}
    out = {}
    for split, rows in splits.items():
        x = np.zeros((len(rows), c.imdb_len), np.int32)
        lengths = np.zeros(len(rows), np.int32)
        for n, (words, _) in enumerate(rows):
            ids = [vocab.get(w, 1) for w in words[: c.imdb_len]]
            x[n, : len(ids)] = ids
            lengths[n] = max(len(ids), 1)
        out[split] = (x, lengths, np.array([label for _, label in rows], np.int32))
    return out


def run_imdb(c: Config, bidirectional: bool, data) -> dict:
    model = models.SequenceClassifier(
        vocab_size=c.imdb_vocab, embed_dim=64, hidden=64, bidirectional=bidirectional
    )
    xtr, ltr, ytr = data["train"]
    xte, lte, yte = data["test"]
    params = model.init(jax.random.key(c.seed), xtr[:2], ltr[:2])["params"]
    tx = optim.adam(1e-3)
    opt_state = tx.init(params)

    def loss_fn(p, x, lengths, y):
        logits = model.apply({"params": p}, x, lengths)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s, x, lengths, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, lengths, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    predict = jax.jit(lambda p, x, lengths: model.apply({"params": p}, x, lengths).argmax(-1))
    rng = np.random.default_rng(c.seed)
    accs = []
    for epoch in range(c.imdb_epochs):
        perm = rng.permutation(len(ytr))
        for b in tqdm(range(0, len(perm) - 63, 64), desc=f"IMDB epoch {epoch + 1}", leave=False):
            i = perm[b : b + 64]
            params, opt_state, _ = step(params, opt_state, xtr[i], ltr[i], ytr[i])
        hits = sum(
            int(np.sum(np.asarray(predict(params, xte[b : b + 500], lte[b : b + 500]))
                       == yte[b : b + 500]))
            for b in range(0, len(yte), 500)
        )  # fmt: skip
        accs.append(hits / len(yte))
        print(f"{'BiLSTM' if bidirectional else 'LSTM'} epoch {epoch + 1}: test acc {accs[-1]:.4f}")
    return {"test_accuracy": accs}


def train_and_evaluate(config: Config, workdir: str) -> dict:
    c = config
    os.makedirs(workdir, exist_ok=True)
    if c.imdb:
        data = load_imdb(c)
        out = {name: run_imdb(c, bi, data) for name, bi in [("lstm", False), ("bilstm", True)]}
        save_json({"config": c, "imdb": out}, os.path.join(workdir, "metrics.json"))
        return out
    curves = {name: run_tagger(bi, c) for name, bi in [("lstm", False), ("bilstm", True)]}
    summary = {
        name: {
            "final_test_accuracy": cv["test_accuracy"][-1],
            "final_test_accuracy_future_positions": cv["test_accuracy_future"][-1],
        }
        for name, cv in curves.items()
    }
    chance = ((c.vocab - 1 + 1) // 2) / (c.vocab - 1)  # majority class: odd tokens among 1..V-1
    save_json(
        {"config": c, "majority_class": chance, "summary": summary, "curves": curves},
        f"{workdir}/metrics.json",
    )
    fig, ax = new_figure(figsize=(6, 3.8))
    for name, cv in curves.items():
        ax.plot(cv["step"], cv["test_accuracy_future"], label=f"{name} (labels from later tokens)")
    ax.axhline(chance, color="gray", ls="--", label=f"majority class ({chance:.3f})")
    ax.set(xlabel="training step", ylabel="test accuracy", ylim=(0.4, 1.02))
    ax.set_title(f"tag y_t = parity of x_(t+{c.lookahead})")
    ax.legend(fontsize=8)
    save_figure(fig, os.path.join(workdir, "bidirectional.png"))
    for name, s in summary.items():
        print(
            f"{name:7s} test accuracy {s['final_test_accuracy']:.4f}  on positions whose label "
            f"token is still ahead {s['final_test_accuracy_future_positions']:.4f}"
        )
    return summary


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
