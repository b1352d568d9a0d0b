"""GPT train-step throughput: jaxdl vs PyTorch (``F.scaled_dot_product_attention``) vs Keras 3, each
framework in its own process, one after another, same model, batch and machine.

The model (issue 17): 6 layers, 8 heads, width 256, context T = 128, batch 32, vocabulary 256
(bytes), pre-LN GPT-2 blocks (LayerNorm, causal multi-head attention with biases, GELU-tanh MLP of
width 1024), learned positions, output tied to the token embedding; next-token cross-entropy, Adam
(lr 3e-4), dropout off; 4,784,128 parameters in matmuls. Data: one fixed random batch, resident in memory.

Method (:func:`experiments.benchmarks._harness.time_steps`): the first call (compilation) is timed
alone, ``warmup`` further steps are discarded, then ``repeats`` blocks of ``steps`` steps; the median
block's sequences/s and tokens/s, the spread, achieved GFLOP/s against the analytic count, and the
ratio jaxdl / peer of the medians. FLOPs per sequence (forward + backward = 3x forward):
``3 * (2 * T * N_matmul + 4 * L * T^2 * D)`` with ``N_matmul`` the parameters used in matmuls
(attention and MLP kernels plus the tied output matrix), the usual count (Kaplan et al. 2020;
PaLM's MFU appendix), the causal half of ``Q K^T`` counted as if computed.

Run (the peers come from the ``bench`` extra)::

    python -m experiments.benchmarks.gpt_step --workdir runs/gpt_step

Writes ``results.json`` (every process's output), ``table.md`` and ``gpt_step.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from experiments.benchmarks._harness import time_steps

FRAMEWORKS = ("jaxdl", "torch", "keras")


@dataclasses.dataclass(frozen=True)
class Config:
    frameworks: tuple[str, ...] = FRAMEWORKS
    vocab: int = 256
    block: int = 128
    layers: int = 6
    heads: int = 8
    width: int = 256
    batch: int = 32
    learning_rate: float = 3e-4
    steps: int = 5
    repeats: int = 5
    # the heap under XLA:CPU's scratch buffer settles by step ~20 (docs/experiments/gpt_step.md)
    warmup: int = 25
    threads: int = 0  # 0: os.cpu_count()
    seed: int = 0
    timeout_s: int = 900


def matmul_params(cfg: dict) -> int:
    d, L = cfg["width"], cfg["layers"]
    return L * (4 * d * d + 8 * d * d) + cfg["vocab"] * d


def train_flops_per_sequence(cfg: dict) -> float:
    T, d, L = cfg["block"], cfg["width"], cfg["layers"]
    forward = 2 * T * matmul_params(cfg) + 4 * L * T * T * d
    return 3.0 * forward


def make_data(cfg: dict) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(cfg["seed"])
    tokens = rng.integers(0, cfg["vocab"], (cfg["batch"], cfg["block"] + 1)).astype(np.int32)
    return {"x": tokens[:, :-1], "y": tokens[:, 1:]}


# ---- the three frameworks -----------------------------------------------------------------------


def build_jaxdl(cfg: dict, data: dict):
    import jax
    import jax.numpy as jnp
    import optax

    import jaxdl
    from jaxdl import models, optim

    model = models.GPT(cfg["vocab"], cfg["block"], cfg["layers"], cfg["heads"], cfg["width"])
    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    params = model.init(jax.random.key(cfg["seed"]), x[:1])["params"]
    tx = optim.adam(cfg["learning_rate"])
    opt_state = tx.init(params)

    def loss_fn(p):
        logits = model.apply({"params": p}, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def train_step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    step_fn = (
        jax.jit(train_step, donate_argnums=(0, 1))
        .lower(params, opt_state)
        .compile(jaxdl.xla_flags.train_step_compiler_options())
    )
    state = [params, opt_state]

    def step():
        state[0], state[1], loss = step_fn(state[0], state[1])
        return loss

    versions = {"jax": jax.__version__, "jaxdl": jaxdl.__version__}
    return step, lambda out: out.block_until_ready(), versions


def build_torch(cfg: dict, data: dict):
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    d, h = cfg["width"], cfg["heads"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln_1(x)).split(d, dim=2)
            q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))  # (B, H, T, d)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
            return x + self.proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg["vocab"], d)
            self.wpe = nn.Parameter(0.02 * torch.randn(cfg["block"], d))
            self.blocks = nn.ModuleList(Block() for _ in range(cfg["layers"]))
            self.ln_f = nn.LayerNorm(d)

        def forward(self, idx):
            x = self.wte(idx) + self.wpe[: idx.shape[1]]
            for blk in self.blocks:
                x = blk(x)
            return self.ln_f(x) @ self.wte.weight.T  # tied output

    model = GPT()
    opt = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"])
    x = torch.from_numpy(data["x"]).long()
    y = torch.from_numpy(data["y"]).long()

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, cfg["vocab"]), y.view(-1))
        loss.backward()
        opt.step()
        return loss

    return step, lambda out: out.item(), {"torch": torch.__version__}


def build_keras(cfg: dict, data: dict):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cfg["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(cfg["threads"])
    import keras
    from keras import layers

    keras.utils.set_random_seed(cfg["seed"])
    d, h, T = cfg["width"], cfg["heads"], cfg["block"]

    class TiedLogits(layers.Layer):
        def __init__(self, embedding, **kw):
            super().__init__(**kw)
            self.embedding = embedding

        def call(self, x):
            return keras.ops.matmul(x, keras.ops.transpose(self.embedding.embeddings))

    class Positions(layers.Layer):
        def build(self, shape):
            self.wpe = self.add_weight(shape=(T, d), initializer="random_normal", name="wpe")

        def call(self, x):
            return x + self.wpe[None]

    tokens = keras.Input((T,), dtype="int32")
    emb = layers.Embedding(cfg["vocab"], d)
    x = Positions()(emb(tokens))
    for _ in range(cfg["layers"]):
        a = layers.LayerNormalization(epsilon=1e-5)(x)
        a = layers.MultiHeadAttention(h, d // h)(a, a, use_causal_mask=True)
        x = x + a
        m = layers.LayerNormalization(epsilon=1e-5)(x)
        m = layers.Dense(4 * d, activation=lambda z: keras.activations.gelu(z, approximate=True))(m)
        x = x + layers.Dense(d)(m)
    x = layers.LayerNormalization(epsilon=1e-5)(x)
    model = keras.Model(tokens, TiedLogits(emb)(x))
    model.compile(
        optimizer=keras.optimizers.Adam(cfg["learning_rate"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x_t, y_t = tf.constant(data["x"]), tf.constant(data["y"])

    def step():
        return model.train_on_batch(x_t, y_t, return_dict=False)

    return step, lambda out: out, {"tensorflow": tf.__version__, "keras": keras.__version__}


BUILDERS = {"jaxdl": build_jaxdl, "torch": build_torch, "keras": build_keras}


def run_process(framework: str, cfg: dict, out: str) -> None:
    """One framework in this process: build, time, write JSON."""
    result: dict[str, Any] = {"framework": framework, "cpu_count": os.cpu_count()}
    data = make_data(cfg)
    step, sync, versions = BUILDERS[framework](cfg, data)
    result["versions"] = versions
    n_params = matmul_params(cfg)
    timing = time_steps(step, sync, examples_per_step=cfg["batch"], steps=cfg["steps"],
                        repeats=cfg["repeats"], warmup=cfg["warmup"])  # fmt: skip
    flops = train_flops_per_sequence(cfg)
    result.update(timing, matmul_params=n_params, flops_per_sequence=flops)
    result["tokens_per_s"] = timing["median"] * cfg["block"]
    result["gflops_per_s"] = timing["median"] * flops / 1e9
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"[{framework}] {timing['median']:.1f} sequences/s, "
          f"{result['gflops_per_s']:.1f} GFLOP/s, first call {timing['first_call_s']:.1f} s",
          flush=True)  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--framework", default=None, help="(internal) run one framework")
    parser.add_argument("--config", default=None, help="(internal) JSON config")
    for f in dataclasses.fields(Config):
        if f.name != "frameworks":
            parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    if args.framework:
        cfg = json.loads(args.config)
        run_process(args.framework, cfg, os.path.join(args.workdir, f"{args.framework}.json"))
        return
    cfg = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    cfg["frameworks"] = [f for f in args.frameworks.split(",") if f]
    cfg["threads"] = cfg["threads"] or os.cpu_count()
    results = {}
    for fw in cfg["frameworks"]:
        cmd = [sys.executable, "-m", "experiments.benchmarks.gpt_step", "--workdir", args.workdir,
               "--framework", fw, "--config", json.dumps(cfg)]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cfg["timeout_s"])
        path = os.path.join(args.workdir, f"{fw}.json")
        if proc.returncode == 0 and os.path.exists(path):
            with open(path) as f:
                results[fw] = json.load(f)
            print(proc.stdout.strip().splitlines()[-1])
        else:
            results[fw] = {"skipped": (proc.stderr or proc.stdout)[-2000:]}
            print(f"[{fw}] failed: {(proc.stderr or proc.stdout)[-500:]}")
        results[fw]["process_s"] = time.perf_counter() - t0
    ok = {k: v for k, v in results.items() if "median" in v}
    ratios = {}
    if "jaxdl" in ok:
        ratios = {p: ok["jaxdl"]["median"] / v["median"] for p, v in ok.items() if p != "jaxdl"}
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump({"config": cfg, "results": results, "jaxdl_over_peer": ratios}, f, indent=2)
    # CPU seconds per wall second while timing (the harness's cpu_per_wall): on a machine shared
    # with other jobs a process that got less of the cores is slower for that reason alone, so the
    # table also gives sequences per CPU-second (median / cpu_per_wall), a load-corrected figure.
    lines = ["| framework | sequences/s (median) | [min, max] | tokens/s | GFLOP/s | "
             "first call (s) | CPU s per wall s | sequences per CPU-second | jaxdl / this |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for fw, r in ok.items():
        lines.append(f"| {fw} | {r['median']:.2f} | [{r['min']:.2f}, {r['max']:.2f}] | "
                     f"{r['tokens_per_s']:.0f} | {r['gflops_per_s']:.1f} | "
                     f"{r['first_call_s']:.1f} | {r['cpu_per_wall']:.2f} | "
                     f"{r['median'] / r['cpu_per_wall']:.2f} | {ratios.get(fw, 1.0):.2f} |")  # fmt: skip
    table = "\n".join(lines)
    with open(os.path.join(args.workdir, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    if ok:
        from experiments.common import new_figure, save_figure

        fig, ax = new_figure(figsize=(5, 3.5))
        names = list(ok)
        med = [ok[n]["median"] for n in names]
        err = [[ok[n]["median"] - ok[n]["min"] for n in names],
               [ok[n]["max"] - ok[n]["median"] for n in names]]  # fmt: skip
        ax.bar(names, med, yerr=err, capsize=4, color=["C0", "C1", "C2"][: len(names)])
        ax.set(ylabel="train sequences / s (T = 128)",
               title="GPT 6x256, batch 32: train-step throughput")  # fmt: skip
        save_figure(fig, os.path.join(args.workdir, "gpt_step.png"))


if __name__ == "__main__":
    main()
