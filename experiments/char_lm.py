"""Character-level language modelling on real text: GPT vs LSTM vs GRU at (about) equal parameter
count and equal training wall-clock.

Corpus: the source text (code, comments and docstrings) of 16 fixed modules of the running
interpreter's standard library (``CORPUS_FILES``), concatenated in that order as UTF-8 bytes; every
machine with Python has it offline. Its size and SHA-256 are printed and saved, so a run on another
Python version (whose files differ) is recognisable. Tokens are bytes (vocabulary 256); the last 10%
of the corpus is held out. Bits per character = mean cross-entropy in nats / ln 2 over held-out
windows (the corpus is ASCII, so a byte is a character).

Models (each about ``params`` parameters; the script prints the exact counts):

* ``gpt``: :class:`jaxdl.models.GPT` (pre-LN, learned positions, tied output), block size ``seq_len``.
* ``lstm`` / ``gru``: byte embedding -> one recurrent layer (:class:`jaxdl.nn.RNN`) -> Dense(256),
  the hidden width chosen so the parameter count matches the GPT's.

Each model trains for the same wall-clock budget (``seconds``, evaluation time excluded) on random
windows of ``seq_len + 1`` bytes, Adam with a short warm-up and gradient clipping. Learning curves
are recorded against both wall-clock and step. Samples: 240 characters after a fixed prompt
(GPT through :func:`jaxdl.models.generate`'s KV cache; the RNNs by re-running the prefix).

Default (about 5 minutes on 2 CPU cores)::

    python -m experiments.char_lm --workdir runs/char_lm
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import sys
import sysconfig
import time

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import models, nn, optim
from jaxdl.models.sequence import make_cell

# Fixed selection (paths relative to the stdlib directory); 1,271,383 bytes on CPython 3.11.7.
CORPUS_FILES = (
    "argparse.py",
    "ast.py",
    "collections/__init__.py",
    "dataclasses.py",
    "difflib.py",
    "enum.py",
    "functools.py",
    "inspect.py",
    "logging/__init__.py",
    "pydoc.py",
    "subprocess.py",
    "tarfile.py",
    "textwrap.py",
    "threading.py",
    "typing.py",
    "zipfile.py",
)


@dataclasses.dataclass
class Config:
    models: tuple[str, ...] = ("gpt", "lstm", "gru")
    seconds: float = 90.0  # training wall-clock per model (evaluation excluded)
    seq_len: int = 128
    batch: int = 16
    # GPT shape; the RNN widths are solved to match its parameter count.
    num_layers: int = 3
    num_heads: int = 4
    embed_dim: int = 64
    rnn_embed: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    clip_norm: float = 1.0
    eval_every_s: float = 10.0
    eval_windows: int = 256
    sample_prompt: str = "def __init__(self, "
    sample_chars: int = 108  # GPT block 128 = prompt (19) + 108 + 1 spare
    sample_temperature: float = 0.8
    seed: int = 0


def get_config() -> Config:
    return Config()


def load_corpus() -> tuple[np.ndarray, dict]:
    """The corpus as a uint8 array and its record (files, size, sha256, Python version)."""
    root = sysconfig.get_paths()["stdlib"]
    parts = []
    for name in CORPUS_FILES:
        with open(os.path.join(root, name), "rb") as f:
            parts.append(f.read())
    data = b"".join(parts)
    info = {
        "stdlib": root,
        "python": sys.version.split()[0],
        "files": list(CORPUS_FILES),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return np.frombuffer(data, np.uint8), info


class CharRNN(fnn.Module):
    """Byte embedding -> one LSTM/GRU layer -> Dense(256): logits ``(B, T, 256)``."""

    cell: str
    hidden: int
    embed_dim: int = 64

    @fnn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        x = fnn.Embed(256, self.embed_dim)(tokens)  # (B, T, E)
        h = nn.RNN(make_cell(self.cell, self.hidden))(x)  # (B, T, H)
        return fnn.Dense(256)(h)


def _count(model, x) -> int:
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))


def rnn_hidden_for(cell: str, target: int, embed_dim: int) -> int:
    """The hidden width whose CharRNN has the parameter count closest to ``target``."""
    gates = {"lstm": 4, "gru": 3}[cell]

    def n(h):  # embedding + cell + readout (GRU has two bias vectors)
        cell_params = gates * h * (embed_dim + h) + gates * h * (2 if cell == "gru" else 1)
        return 256 * embed_dim + cell_params + h * 256 + 256

    return min(range(8, 2048), key=lambda h: abs(n(h) - target))


def make_model(name: str, c: Config, target: int | None = None):
    if name == "gpt":
        return models.GPT(256, c.seq_len, c.num_layers, c.num_heads, c.embed_dim)
    return CharRNN(name, rnn_hidden_for(name, target, c.rnn_embed), c.rnn_embed)


def next_byte_loss(model, params, batch: jax.Array) -> jax.Array:
    """Mean next-byte cross-entropy (nats) of ``model`` on windows ``batch (B, T + 1)``."""
    logits = model.apply({"params": params}, batch[:, :-1])  # (B, T, 256)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


def make_train_step(model, tx, train_bytes: np.ndarray, batch: int, seq_len: int):
    """``step(params, opt_state, key) -> (params, opt_state, loss, grad_norm)``, jitted: ``batch``
    random windows of ``seq_len + 1`` bytes cut on device from the training text (drawn with
    ``key``), one update of ``tx``; ``grad_norm`` is the global norm of the loss gradient."""
    train_dev = jnp.asarray(train_bytes, jnp.int32)

    @jax.jit
    def step(p, s, k):
        starts = jax.random.randint(k, (batch,), 0, train_dev.shape[0] - seq_len - 1)
        windows = jax.vmap(lambda i: jax.lax.dynamic_slice(train_dev, (i,), (seq_len + 1,)))(
            starts
        )  # (B, T + 1)
        loss, g = jax.value_and_grad(lambda q: next_byte_loss(model, q, windows))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss, optim.global_norm(g)

    return step


def make_heldout_bpc(model, val_bytes: np.ndarray, seq_len: int, windows: int):
    """``bpc(params) -> float``: held-out bits per character on ``windows`` fixed windows evenly
    spaced through the validation text (mean cross-entropy in nats / ln 2)."""
    idx = np.linspace(0, len(val_bytes) - seq_len - 2, windows).astype(int)
    val = jnp.asarray(np.stack([val_bytes[i : i + seq_len + 1] for i in idx]), jnp.int32)
    eval_loss = jax.jit(functools.partial(next_byte_loss, model))

    def bpc(p) -> float:
        losses = [eval_loss(p, val[i : i + 64]) for i in range(0, len(val), 64)]
        return float(np.mean(losses)) / math.log(2)

    return bpc


def train_one(name: str, c: Config, train_bytes, val_bytes, target: int) -> dict:
    model = make_model(name, c, target)
    key = jax.random.key(c.seed)
    x0 = jnp.zeros((1, c.seq_len), jnp.int32)
    params = model.init(key, x0)["params"]
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    schedule = optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps)
    tx = optim.chain(optim.clip_by_global_norm(c.clip_norm), optim.adam(schedule))
    opt_state = tx.init(params)
    step = make_train_step(model, tx, train_bytes, c.batch, c.seq_len)
    bpc = make_heldout_bpc(model, val_bytes, c.seq_len, c.eval_windows)
    curve = {"seconds": [0.0], "step": [0], "val_bpc": [bpc(params)]}
    # Compile outside the budget.
    t_compile = time.perf_counter()
    params, opt_state, loss, _ = step(params, opt_state, jax.random.fold_in(key, 0))
    loss.block_until_ready()
    compile_s = time.perf_counter() - t_compile
    trained, steps, next_eval = 0.0, 1, c.eval_every_s
    bar = tqdm(total=int(c.seconds), desc=f"{name} ({n_params:,} params)", leave=False)
    while trained < c.seconds:
        t0 = time.perf_counter()
        params, opt_state, loss, _ = step(params, opt_state, jax.random.fold_in(key, steps))
        loss.block_until_ready()
        dt = time.perf_counter() - t0
        trained += dt
        steps += 1
        bar.update(int(trained) - bar.n)
        if trained >= next_eval or trained >= c.seconds:
            curve["seconds"].append(trained)
            curve["step"].append(steps)
            curve["val_bpc"].append(bpc(params))
            next_eval += c.eval_every_s
    bar.close()
    return {
        "model": name,
        "params": n_params,
        "hidden": getattr(model, "hidden", None),
        "steps": steps,
        "compile_s": compile_s,
        "final_val_bpc": curve["val_bpc"][-1],
        **curve,
        "_params": params,
        "_model": model,
    }


def sample(result: dict, c: Config) -> str:
    model, params = result["_model"], result["_params"]
    prompt = jnp.asarray(np.frombuffer(c.sample_prompt.encode(), np.uint8), jnp.int32)[None]
    key = jax.random.key(c.seed + 1)
    if result["model"] == "gpt":
        out = models.generate(model, params, prompt, c.sample_chars, key,
                              temperature=c.sample_temperature)  # fmt: skip
    else:  # an RNN is causal too: re-run the padded buffer, read the last known position
        total = prompt.shape[1] + c.sample_chars
        buf = jnp.zeros((1, total), jnp.int32).at[:, : prompt.shape[1]].set(prompt)

        @jax.jit
        def run(buf):
            def body(buf, inp):
                t, k = inp
                logits = model.apply({"params": params}, buf)
                last = jax.lax.dynamic_index_in_dim(logits, t - 1, 1, keepdims=False)
                nxt = jax.random.categorical(k, last / c.sample_temperature, axis=-1)
                return jax.lax.dynamic_update_slice(
                    buf, nxt[:, None].astype(buf.dtype), (0, t)
                ), None

            keys = jax.random.split(key, c.sample_chars)
            return jax.lax.scan(body, buf, (jnp.arange(prompt.shape[1], total), keys))[0]

        out = run(buf)
    return bytes(np.asarray(out[0], np.uint8)).decode("utf-8", errors="replace")


def train_and_evaluate(config: Config, workdir: str) -> dict:
    c = config
    os.makedirs(workdir, exist_ok=True)
    corpus, info = load_corpus()
    split = int(0.9 * len(corpus))
    train_bytes, val_bytes = corpus[:split], corpus[split:]
    print(f"corpus: {info['bytes']:,} bytes from {len(info['files'])} stdlib files "
          f"(Python {info['python']}), sha256 {info['sha256']}")  # fmt: skip
    target = _count(make_model("gpt", c), jnp.zeros((1, c.seq_len), jnp.int32))
    results, samples, trained = {}, {}, {}
    for name in c.models:
        r = train_one(name, c, train_bytes, val_bytes, target)
        trained[name] = r
        samples[name] = sample(r, c)
        results[name] = {k: v for k, v in r.items() if not k.startswith("_")}
        print(f"{name:5s} params {r['params']:>8,}  steps {r['steps']:>5d} in {c.seconds:.0f} s  "
              f"held-out {r['final_val_bpc']:.3f} bits/char")  # fmt: skip
    for name, text in samples.items():
        print(f"--- {name} sample ---\n{text}\n")
    summary = {
        n: {k: r[k] for k in ("params", "steps", "final_val_bpc")} for n, r in results.items()
    }
    save_json(
        {"config": c, "corpus": info, "summary": summary, "curves": results, "samples": samples},
        os.path.join(workdir, "metrics.json"),
    )
    fig, axes = new_figure(1, 2, figsize=(11, 4))
    for name, r in results.items():
        label = f"{name} ({r['params'] / 1e3:.0f}k)"
        axes[0].plot(r["seconds"], r["val_bpc"], marker=".", label=label)
        axes[1].plot(r["step"], r["val_bpc"], marker=".", label=label)
    for ax, xl in zip(axes, ("training wall-clock (s)", "training step"), strict=True):
        ax.set(xlabel=xl, ylabel="held-out bits per character", ylim=(None, 5.0))
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("equal wall-clock budget")
    axes[1].set_title(f"batch {c.batch} x {c.seq_len} characters per step")
    save_figure(fig, os.path.join(workdir, "char_lm.png"))
    if "gpt" in trained:
        attention_figure(trained["gpt"], val_bytes, os.path.join(workdir, "char_lm_attention.png"))
    return summary


def attention_figure(result: dict, text: np.ndarray, path: str, length: int = 48) -> None:
    """Every head of the GPT's last layer on a held-out snippet: row = query character, column =
    key character it attends to (the causal mask blanks the upper triangle)."""
    model, params = result["_model"], result["_params"]
    start = int(np.flatnonzero(text[: len(text) // 2] == ord("\n"))[40]) + 1  # a line start
    snippet = jnp.asarray(text[start : start + length], jnp.int32)[None]
    _, inter = model.apply({"params": params}, snippet, mutable="intermediates")
    last = inter["intermediates"][f"h_{model.num_layers - 1}"]["attn"]["attention_weights"][0]
    w = np.asarray(last[0])  # (heads, T, T)
    chars = [repr(chr(b))[1:-1] for b in np.asarray(snippet[0])]
    fig, axes = new_figure(1, w.shape[0], figsize=(4.2 * w.shape[0], 4.6))
    for h, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(w[h], cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(length), chars, fontsize=5, rotation=90)
        ax.set_yticks(range(length), chars, fontsize=5)
        ax.set(title=f"layer {model.num_layers}, head {h + 1}", xlabel="key (attended)",
               ylabel="query (predicting the next char)")  # fmt: skip
    save_figure(fig, path)


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
