"""Long-range dependencies: the adding problem and the copy task at T = 50/100/200, a Transformer
against the LSTM and GRU of the recurrent experiments.

``--task adding`` (the default) and ``--task copy`` (below) are two experiments of one script.

Task and protocol are those of ``experiments/adding_problem.py`` (its batch generator, its test
sets ``jax.random.key(10_000 + T)``, batch 64 of fresh sequences per step, Adam 3e-3 after clipping
by global norm 1.0, evaluation every 100 steps, "solved" = test MSE < 0.01, predicting the mean
scores 1/6). The recurrent models are ``models.Forecaster(hidden=32, cell=...)``, as there.

The Transformer: each step's two features -> Dense(D), a class token, learned positions, ``layers``
pre-LN encoder blocks (:class:`jaxdl.models.transformer.EncoderBlock`: attention + GELU MLP), final
LayerNorm, Dense(1) on the class token. Every position is one attention step away from the class
token, whatever ``T`` is; an RNN's gradient to the first marker crosses ~3T/4 Jacobians.

Default (a few minutes on 2 CPU cores): the Transformer at T = 50, 100, 200 and the LSTM and GRU
at T = 50; the recurrent rows at T = 100 and 200 are in ``docs/experiments/adding_problem.md``
(same protocol), or run them here with ``--rnn_lengths 50,100,200 --steps 6000``.

Copy task (``--task copy``; :func:`jaxdl.data.synthetic_sequences.copy_task`, Arjovsky et al.
2016's layout): 10 symbols from an alphabet of 8, ``T - 1`` blanks, a cue, 10 blanks; the targets
are blank except the last 10 steps, which must repeat the symbols. Every symbol must be carried
``T + 10`` steps and the memory load (10 symbols, 30 bits) does not grow with ``T``, so ``T`` only
lengthens the path (a reverse task would also grow the load with the length). Per-step logits:

* Transformer: :class:`jaxdl.models.GPT` (causal, learned positions, tied output) on the tokens,
  2 layers, 4 heads, width 32. GPT-2's ``normal(0.02)`` init is scaled for width 768; at width 32
  it leaves the attention logits q.k ~80x smaller (a bilinear saddle: q and k each scale the
  other's gradient) and the model sits at the memoryless baseline
  (``--gpt_init gpt2`` shows it), so by default every kernel/embedding is rescaled to std
  ``1/sqrt(width)`` (``--gpt_init fan_in``; the residual projections keep GPT-2's
  ``1/sqrt(2 L)`` factor).
* LSTM / GRU: :class:`jaxdl.models.Forecaster` with ``return_sequences=True`` on one-hot tokens
  (a dense read-out at every step), hidden 74 / 85 so the counts match the GPT's 25,792
  parameters outside its position table.

Same optimiser and batch as the adding problem; evaluation on 1,000 held-out sequences every
``copy_eval_every`` steps; "solved" = recall accuracy (the 10 recalled symbols) >= 99%. The
memoryless baseline scores ``10 log 8 / (T + 20)`` nats per step and 1/8 recall accuracy.
Runs are saved one file each under ``<workdir>/copy_runs`` (the curve so far after every
evaluation, ``"complete": true`` once finished); ``--reuse true`` skips the complete ones (so
several processes can split the grid and a last one assembles the figure);
``--assemble_only true`` trains nothing and writes metrics and figure from the files so far,
reporting runs that were cut short with ``"complete": false`` and the step they reached.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments.adding_problem import adding_batch
from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import losses, models, optim
from jaxdl.data.synthetic_sequences import copy_baseline, copy_task, copy_vocab_size
from jaxdl.models.transformer import EncoderBlock


@dataclasses.dataclass
class Config:
    task: str = "adding"  # "adding" or "copy"
    lengths: tuple[int, ...] = (50, 100, 200)
    rnn_lengths: tuple[int, ...] = (50,)
    rnn_cells: tuple[str, ...] = ("lstm", "gru")
    hidden: int = 32  # RNN width, as in adding_problem
    embed_dim: int = 32
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 64
    batch: int = 64
    steps: int = 1500
    rnn_steps: int = 2000
    learning_rate: float = 3e-3
    clip_norm: float = 1.0
    eval_every: int = 100
    test_size: int = 1000
    solved_mse: float = 0.01
    stop_when_solved: bool = False
    seed: int = 0
    # copy task (--task copy); `lengths`, `batch`, `learning_rate`, `clip_norm`, `test_size`,
    # `stop_when_solved` and `seed` are shared with the adding problem
    copy_models: tuple[str, ...] = ("transformer", "lstm", "gru")
    num_symbols: int = 10
    alphabet: int = 8
    copy_steps: int = 3000  # the budget of every model at every T
    copy_eval_every: int = 50
    lstm_hidden: int = 74  # 25,910 params, GRU 85: 25,595; GPT 25,792 + position table
    gru_hidden: int = 85
    gpt_init: str = "fan_in"  # "fan_in": std 1/sqrt(embed_dim); "gpt2": GPT-2's 0.02
    solved_accuracy: float = 0.99
    reuse: bool = False
    assemble_only: bool = False  # no training: metrics and figure from the run files so far


def get_config() -> Config:
    return Config()


class AddingTransformer(fnn.Module):
    """``(B, T, 2) -> (B, 1)``: embed, class token, learned positions, pre-LN encoder, read-out."""

    max_len: int
    embed_dim: int = 32
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 64

    @fnn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b = x.shape[0]
        h = fnn.Dense(self.embed_dim, name="embed")(x)  # (B, T, D)
        cls = self.param("class_token", fnn.initializers.normal(0.02), (1, 1, self.embed_dim))
        h = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.embed_dim)), h], axis=1)
        pos = self.param("pos_embedding", fnn.initializers.normal(0.02),
                         (1, self.max_len + 1, self.embed_dim))  # fmt: skip
        h = h + pos[:, : h.shape[1]]
        for i in range(self.num_layers):
            h = EncoderBlock(self.num_heads, self.mlp_dim, name=f"block_{i}")(h, train)
        h = fnn.LayerNorm(epsilon=1e-6, name="ln")(h)
        return fnn.Dense(1, name="head")(h[:, 0])  # (B, 1)


def train_one(kind: str, T: int, steps: int, c: Config) -> dict:
    if kind == "transformer":
        model = AddingTransformer(T, c.embed_dim, c.num_layers, c.num_heads, c.mlp_dim)
    else:
        model = models.Forecaster(hidden=c.hidden, cell=kind)
    key = jax.random.key(c.seed)
    x_test, y_test = adding_batch(jax.random.key(10_000 + T), c.test_size, T)
    params = model.init(key, x_test[:1])["params"]
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    tx = optim.chain(optim.clip_by_global_norm(c.clip_norm), optim.adam(c.learning_rate))
    opt_state = tx.init(params)

    def loss_fn(p, x, y):
        return jnp.mean((model.apply({"params": p}, x) - y) ** 2)

    @jax.jit
    def step(p, s, k):
        x, y = adding_batch(k, c.batch, T)
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    test_mse = jax.jit(loss_fn)
    curve = {"step": [0], "test_mse": [float(test_mse(params, x_test, y_test))]}
    t0 = time.perf_counter()
    for k in tqdm(range(1, steps + 1), desc=f"{kind} T={T}", leave=False):
        params, opt_state, _ = step(params, opt_state, jax.random.fold_in(key, k))
        if k % c.eval_every == 0:
            curve["step"].append(k)
            curve["test_mse"].append(float(test_mse(params, x_test, y_test)))
            if c.stop_when_solved and curve["test_mse"][-1] < c.solved_mse:
                break
    solved_at = next((s for s, m in zip(curve["step"], curve["test_mse"], strict=True)
                      if m < c.solved_mse), None)  # fmt: skip
    return {
        **curve,
        "params": n_params,
        "final_test_mse": curve["test_mse"][-1],
        "best_test_mse": min(curve["test_mse"]),
        "solved_at_step": solved_at,
        "seconds": time.perf_counter() - t0,
    }


def train_and_evaluate(config: Config, workdir: str) -> dict:
    if config.task == "copy":
        return train_and_evaluate_copy(config, workdir)
    if config.task != "adding":
        raise ValueError(f"task must be 'adding' or 'copy', got {config.task!r}")
    c = config
    os.makedirs(workdir, exist_ok=True)
    results: dict[int, dict[str, dict]] = {}
    for T in sorted(set(c.lengths) | set(c.rnn_lengths)):
        results[T] = {}
        if T in c.lengths:
            results[T]["transformer"] = train_one("transformer", T, c.steps, c)
        if T in c.rnn_lengths:
            for cell in c.rnn_cells:
                results[T][cell] = train_one(cell, T, c.rnn_steps, c)
    summary = {
        f"T={T}/{kind}": {
            k: r[k]
            for k in ("params", "final_test_mse", "best_test_mse", "solved_at_step", "seconds")
        }  # fmt: skip
        for T, per in results.items()
        for kind, r in per.items()
    }
    save_json(
        {"config": c, "baseline_mse": 1 / 6, "summary": summary, "curves": results},
        os.path.join(workdir, "metrics.json"),
    )
    n = len(results)
    fig, axes = new_figure(1, n, figsize=(5 * n, 3.8), squeeze=False)
    for ax, (T, per) in zip(axes[0], results.items(), strict=True):
        for kind, r in per.items():
            ax.semilogy(r["step"], r["test_mse"], marker=".", label=kind)
        ax.axhline(1 / 6, color="gray", ls="--", label="predict 1.0")
        ax.axhline(c.solved_mse, color="gray", ls=":", label="solved")
        ax.set(xlabel="training step", ylabel="test MSE", title=f"adding problem, T = {T}")
        ax.legend()
    save_figure(fig, os.path.join(workdir, "transformer_long_range.png"))
    for name, s in summary.items():
        print(f"{name:18s} params {s['params']:>6,}  final MSE {s['final_test_mse']:.4f}  "
              f"best {s['best_test_mse']:.4f}  solved at {s['solved_at_step']}  "
              f"({s['seconds']:.0f} s)")  # fmt: skip
    return summary


# ----------------------------------------------------------------------------------- copy task


def param_count(params) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))


def build_copy_model(kind: str, T: int, c: Config):
    """``kind`` -> ``(model, prepare)``: ``model.apply({"params": p}, prepare(tokens))`` maps
    tokens ``(B, T + 2n)`` to per-step logits ``(B, T + 2n, alphabet + 2)``."""
    vocab = copy_vocab_size(c.alphabet)
    if kind == "transformer":
        length = T + 2 * c.num_symbols
        return models.GPT(vocab, length, c.num_layers, c.num_heads, c.embed_dim), lambda x: x
    if kind in ("lstm", "gru"):
        hidden = c.lstm_hidden if kind == "lstm" else c.gru_hidden
        model = models.Forecaster(hidden=hidden, cell=kind, out_features=vocab,
                                  return_sequences=True)  # fmt: skip
        return model, lambda x: jax.nn.one_hot(x, vocab)  # (B, L, V)
    raise ValueError(f"copy_models: unknown model {kind!r}, expected transformer, lstm or gru")


def init_copy_params(kind: str, model, prepare, T: int, c: Config, key: jax.Array):
    x, _ = copy_task(jax.random.key(0), 1, T, c.num_symbols, c.alphabet)
    params = model.init(key, prepare(x))["params"]
    if kind == "transformer" and c.gpt_init == "fan_in":
        # GPT-2 draws every kernel and embedding from normal(0.02) (0.02 / sqrt(2 L) for the
        # residual projections): about 0.55 / sqrt(768) at its width. At width D = 32 the
        # attention logits q.k are products of two maps ~9x smaller than at std 1/sqrt(D), so
        # they start ~80x smaller and each scales the other's gradient (a bilinear saddle).
        # Rescale to std 1 / sqrt(D).
        factor = 1.0 / (math.sqrt(c.embed_dim) * 0.02)
        names = ("kernel", "embedding", "wpe")
        params = jax.tree_util.tree_map_with_path(
            lambda path, a: a * factor if getattr(path[-1], "key", None) in names else a, params
        )
    elif kind == "transformer" and c.gpt_init != "gpt2":
        raise ValueError(f"gpt_init must be 'fan_in' or 'gpt2', got {c.gpt_init!r}")
    return params


def train_one_copy(kind: str, T: int, c: Config, partial_path: str | None = None) -> dict:
    model, prepare = build_copy_model(kind, T, c)
    n = c.num_symbols
    key = jax.random.key(c.seed)
    params = init_copy_params(kind, model, prepare, T, c, key)
    x_test, y_test = copy_task(jax.random.key(20_000 + T), c.test_size, T, n, c.alphabet)
    tx = optim.chain(optim.clip_by_global_norm(c.clip_norm), optim.adam(c.learning_rate))
    opt_state = tx.init(params)

    def loss_fn(p, x, y):  # mean cross-entropy over every step (Arjovsky et al. 2016)
        return losses.cross_entropy(model.apply({"params": p}, prepare(x)), y)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, s, k):
        x, y = copy_task(k, c.batch, T, n, c.alphabet)
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    @jax.jit
    def evaluate(p):
        logits = model.apply({"params": p}, prepare(x_test))  # (N, T + 2n, V)
        recall, target = logits[:, -n:], y_test[:, -n:]
        return {
            "loss_all_steps": losses.cross_entropy(logits, y_test),
            "loss_recall": losses.cross_entropy(recall, target),
            "accuracy_recall": jnp.mean(jnp.argmax(recall, -1) == target),
        }

    curve: dict[str, list] = {"step": [0]}
    for name, v in evaluate(params).items():
        curve[name] = [float(v)]
    t0, cpu0 = time.perf_counter(), time.process_time()
    for k in tqdm(range(1, c.copy_steps + 1), desc=f"copy {kind} T={T}", leave=False):
        params, opt_state, _ = step(params, opt_state, jax.random.fold_in(key, k))
        if k % c.copy_eval_every == 0:
            curve["step"].append(k)
            for name, v in evaluate(params).items():
                curve[name].append(float(v))
            if partial_path:  # the curve so far, in case the run is cut short
                save_json({**curve, "complete": False}, partial_path)
            if c.stop_when_solved and curve["accuracy_recall"][-1] >= c.solved_accuracy:
                break
    return {
        **curve,
        **copy_run_summary(curve, c),
        "params": param_count(params),
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,
        "complete": True,
    }


def copy_run_summary(curve: dict, c: Config) -> dict:
    """Steps to solve (first evaluation with recall accuracy >= ``solved_accuracy``) and the
    final and best scores of one run's curve."""
    solved_at = next((s for s, a in zip(curve["step"], curve["accuracy_recall"], strict=True)
                      if a >= c.solved_accuracy), None)  # fmt: skip
    return {
        "steps_run": curve["step"][-1],
        "final_accuracy_recall": curve["accuracy_recall"][-1],
        "best_accuracy_recall": max(curve["accuracy_recall"]),
        "final_loss_all_steps": curve["loss_all_steps"][-1],
        "solved_at_step": solved_at,
    }


def _load_partial_copy_run(kind: str, T: int, c: Config, path: str) -> dict | None:
    """A run file as saved so far (``--assemble_only``): its curve, summary and parameter count
    (from shapes only); ``None`` if absent."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        run = json.load(f)
    if run.get("complete"):
        return run
    model, prepare = build_copy_model(kind, T, c)
    x = jnp.zeros((1, T + 2 * c.num_symbols), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), prepare(x)))
    return {**run, **copy_run_summary(run, c), "params": param_count(shapes["params"]),
            "seconds": None, "cpu_seconds": None}  # fmt: skip


def train_and_evaluate_copy(config: Config, workdir: str) -> dict:
    c = config
    runs_dir = os.path.join(workdir, "copy_runs")
    os.makedirs(runs_dir, exist_ok=True)
    results: dict[int, dict[str, dict]] = {}
    for T in c.lengths:
        results[T] = {}
        for kind in c.copy_models:
            path = os.path.join(runs_dir, f"{kind}_T{T}.json")
            if c.assemble_only:
                run = _load_partial_copy_run(kind, T, c, path)
                if run is not None:
                    results[T][kind] = run
                continue
            if c.reuse and os.path.exists(path):
                with open(path) as f:
                    saved = json.load(f)
                if saved.get("complete"):
                    results[T][kind] = saved
                    continue
            results[T][kind] = train_one_copy(kind, T, c, partial_path=path)
            save_json(results[T][kind], path)
    keys = ("params", "solved_at_step", "steps_run", "final_accuracy_recall",
            "best_accuracy_recall", "final_loss_all_steps", "seconds", "cpu_seconds")  # fmt: skip
    keys += ("complete",)
    summary = {f"T={T}/{kind}": {k: r[k] for k in keys}
               for T, per in results.items() for kind, r in per.items()}  # fmt: skip
    baselines = {T: copy_baseline(T, c.num_symbols, c.alphabet) for T in c.lengths}
    save_json(
        {"config": c, "task": "copy", "baselines": baselines, "summary": summary,
         "curves": results},
        os.path.join(workdir, "metrics.json"),
    )  # fmt: skip
    n = len(results)
    fig, axes = new_figure(1, n, figsize=(5 * n, 3.8), squeeze=False)
    for ax, (T, per) in zip(axes[0], results.items(), strict=True):
        for kind, r in per.items():
            err = np.maximum(1.0 - np.asarray(r["accuracy_recall"]), 1e-4)  # log axis: floor
            colour = {"transformer": "C0", "lstm": "C1", "gru": "C2"}.get(kind)
            ax.semilogy(r["step"], err, marker=".", color=colour, label=kind)
        ax.axhline(1 - baselines[T]["accuracy_recall"], color="gray", ls="--", label="memoryless")
        ax.axhline(1 - c.solved_accuracy, color="gray", ls=":", label="solved")
        ax.set(xlabel="training step", ylabel="recall error rate (test)",
               title=f"copy task, T = {T}")  # fmt: skip
        ax.legend()
    save_figure(fig, os.path.join(workdir, "transformer_long_range_copy.png"))
    for name, s in summary.items():
        cost = ("cut short" if not s["complete"] else
                f"{s['seconds']:.0f} s, {s['cpu_seconds']:.0f} CPU s")  # fmt: skip
        print(f"{name:18s} params {s['params']:>6,}  solved at {s['solved_at_step']}  "
              f"recall acc {s['final_accuracy_recall']:.4f} (best {s['best_accuracy_recall']:.4f}) "
              f"after {s['steps_run']} steps  ({cost})")  # fmt: skip
    return summary


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
