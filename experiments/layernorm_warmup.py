"""Pre-LN against post-LN Transformers, with and without learning-rate warm-up (Xiong et al. 2020,
"On layer normalization in the Transformer architecture").

The claim (derived in ``docs/derivations/attention.md``, "Pre-LN vs post-LN"): with the LayerNorm
after each residual addition (post-LN, the original Transformer), the gradients of the top layers
are large at initialisation, so Adam's first steps at the full learning rate derail training and a
warm-up is needed; with the LayerNorm inside the branch (pre-LN, GPT-2) the identity path keeps the
gradients well-scaled and the warm-up can be dropped.

Setup: :class:`jaxdl.models.GPT` with ``norm_position`` ``"pre"`` or ``"post"`` (the same
parameters but ``ln_f``), trained as a byte-level language model on the char-LM corpus (the
Python standard library's source, ``experiments.char_lm.load_corpus``: real text every machine
has offline, checksum recorded), for ``steps`` steps of Adam (or RAdam, ``--optimizer radam``) at
each peak learning rate, with the learning rate linearly warmed up over ``warmup_steps`` (or not at all) and then cosine-decayed to
zero; no gradient clipping, which would hide part of the effect. Every run of a seed starts from
the same initial weights (``ln_f`` aside). Reported: held-out bits per character along training,
the final value per (norm, warm-up, learning rate, seed), the largest global gradient norm of the
first 100 steps, and each block's feed-forward gradient norms at initialisation
(:func:`init_gradient_by_layer`, the paper's Figure 3).

Default (about 14 minutes on 2 CPU cores)::

    python -m experiments.layernorm_warmup --workdir runs/layernorm_warmup

The measured outcome, which qualifies the claim, is in ``docs/experiments/layernorm_warmup.md``.
Writes ``metrics.json`` and ``layernorm_warmup.png`` (curves at the largest learning rate, the
final value against the learning rate, and the gradient norms by block at initialisation).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from experiments.char_lm import load_corpus, make_heldout_bpc, make_train_step, next_byte_loss
from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import models, optim

NORMS = ("pre", "post")
# Adam, or RAdam (Liu et al. 2020), whose rectified first steps are meant to replace the warm-up.
OPTIMIZERS = {"adam": optim.adam, "radam": optim.radam}


@dataclasses.dataclass
class Config:
    norms: tuple[str, ...] = NORMS
    learning_rates: tuple[float, ...] = (1e-3, 2e-3, 3e-3)
    warmups: tuple[int, ...] = (0, 100)  # linear warm-up steps; 0 = none
    seeds: tuple[int, ...] = (0,)
    optimizer: str = "adam"
    steps: int = 400
    num_layers: int = 6
    num_heads: int = 4
    embed_dim: int = 128
    seq_len: int = 64
    batch: int = 32
    eval_every: int = 50
    eval_windows: int = 256


def get_config() -> Config:
    return Config()


def _model_and_params(c: Config, norm: str, seed: int):
    """The experiment's GPT and its initial params; a seed gives pre- and post-LN the same
    weights (``ln_f`` aside)."""
    model = models.GPT(256, c.seq_len, c.num_layers, c.num_heads, c.embed_dim, norm_position=norm)
    return model, model.init(jax.random.key(seed), jnp.zeros((1, c.seq_len), jnp.int32))["params"]


def _run(c: Config, norm: str, lr: float, warmup: int, seed: int, train_bytes, bpc_for) -> dict:
    model, params = _model_and_params(c, norm, seed)
    schedule = optim.warmup_cosine_decay(0.0, lr, warmup, c.steps)
    tx = OPTIMIZERS[c.optimizer](schedule)
    opt_state = tx.init(params)
    step = make_train_step(model, tx, train_bytes, c.batch, c.seq_len)
    bpc = bpc_for(model)
    curve = {"step": [0], "val_bpc": [bpc(params)]}
    grad_norms, losses = [], []
    data_key = jax.random.key(1000 + seed)  # the same batches for every run of a seed
    desc = f"{norm}-LN lr {lr:g} warm-up {warmup} seed {seed}"
    t0 = time.perf_counter()
    bar = tqdm(range(1, c.steps + 1), desc=desc, unit="step", leave=False)
    for i in bar:
        params, opt_state, loss, gn = step(params, opt_state, jax.random.fold_in(data_key, i))
        if i <= 100:
            grad_norms.append(float(gn))
        losses.append(float(loss))
        if i % 10 == 0:
            rate = bar.format_dict["rate"] or 0.0  # steps/s
            bar.set_postfix(
                loss=f"{losses[-1]:.3f}", tokens_per_s=f"{rate * c.batch * c.seq_len:.0f}"
            )
        if i % c.eval_every == 0 or i == c.steps:
            curve["step"].append(i)
            curve["val_bpc"].append(bpc(params))
    return {
        "norm": norm,
        "learning_rate": lr,
        "warmup": warmup,
        "seed": seed,
        "final_val_bpc": curve["val_bpc"][-1],
        "max_grad_norm_first_100": max(grad_norms),
        "seconds": time.perf_counter() - t0,
        "train_loss": losses,
        **curve,
    }


def init_gradient_by_layer(c: Config, norm: str, seed: int, train_bytes, batches: int = 8) -> dict:
    """Xiong et al.'s Figure 3 measurement: at initialisation, the Frobenius norm of the loss
    gradient with respect to each block's feed-forward kernels ``fc`` (``W^1``) and ``proj``
    (``W^2``), averaged over ``batches`` random batches. Post-LN predicts norms that grow towards
    the output; pre-LN, norms that stay level (or fall) with depth."""
    model, params = _model_and_params(c, norm, seed)
    rng = np.random.default_rng(2000 + seed)
    grad = jax.jit(jax.grad(lambda p, w: next_byte_loss(model, p, w)))
    out = {"fc": np.zeros(c.num_layers), "proj": np.zeros(c.num_layers)}
    for _ in range(batches):
        starts = rng.integers(0, len(train_bytes) - c.seq_len - 1, c.batch)
        windows = jnp.asarray(np.stack([train_bytes[i : i + c.seq_len + 1] for i in starts]),
                              jnp.int32)  # fmt: skip
        g = grad(params, windows)
        for name in out:
            out[name] += [float(jnp.linalg.norm(g[f"h_{i}"][name]["kernel"])) / batches
                          for i in range(c.num_layers)]  # fmt: skip
    return {name: v.tolist() for name, v in out.items()}


def train_and_evaluate(config: Config, workdir: str) -> dict:
    c = config
    for norm in c.norms:
        if norm not in NORMS:
            raise ValueError(f"norms must be drawn from {NORMS}, got {norm!r}")
    if c.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {c.optimizer!r}")
    os.makedirs(workdir, exist_ok=True)
    corpus, info = load_corpus()
    split = int(0.9 * len(corpus))
    train_bytes, val_bytes = corpus[:split], corpus[split:]
    print(f"corpus: {info['bytes']:,} bytes, sha256 {info['sha256']}")

    def bpc_for(model):
        return make_heldout_bpc(model, val_bytes, c.seq_len, c.eval_windows)

    init_grads = {
        norm: init_gradient_by_layer(c, norm, c.seeds[0], train_bytes) for norm in c.norms
    }
    for norm, g in init_grads.items():
        print(f"{norm:4s}-LN at initialisation, |dL/dW| of each block's fc kernel, first to last: "
              + " ".join(f"{v:.3f}" for v in g["fc"]))  # fmt: skip

    runs = []
    for norm, lr, warmup, seed in itertools.product(c.norms, c.learning_rates, c.warmups, c.seeds):
        r = _run(c, norm, lr, warmup, seed, train_bytes, bpc_for)
        runs.append(r)
        print(f"{norm:4s}-LN  lr {lr:<7g} warm-up {warmup:<4d} seed {seed}: held-out "
              f"{r['final_val_bpc']:.3f} bits/char, max |g| in the first 100 steps "
              f"{r['max_grad_norm_first_100']:.2f} ({r['seconds']:.0f} s)")  # fmt: skip

    summary = {}
    for norm, lr, warmup in itertools.product(c.norms, c.learning_rates, c.warmups):
        finals = [r["final_val_bpc"] for r in runs
                  if (r["norm"], r["learning_rate"], r["warmup"]) == (norm, lr, warmup)]  # fmt: skip
        summary[f"{norm}/lr={lr:g}/warmup={warmup}"] = {
            "mean_final_val_bpc": float(np.mean(finals)),
            "min": float(np.min(finals)),
            "max": float(np.max(finals)),
        }
    save_json({"config": c, "corpus": info, "summary": summary, "init_grad_norms": init_grads,
               "runs": runs}, os.path.join(workdir, "metrics.json"))  # fmt: skip

    fig, axes = new_figure(1, 3, figsize=(16, 4))
    top = max(c.learning_rates)
    styles = {"pre": "-", "post": "--"}
    for r in runs:
        if r["learning_rate"] == top and r["seed"] == c.seeds[0]:
            w = "no warm-up" if r["warmup"] == 0 else f"warm-up {r['warmup']}"
            axes[0].plot(r["step"], r["val_bpc"], styles[r["norm"]], marker=".",
                         label=f"{r['norm']}-LN, {w}")  # fmt: skip
    axes[0].set(xlabel="training step", ylabel="held-out bits per character",
                title=f"peak learning rate {top:g}")  # fmt: skip
    for norm, warmup in itertools.product(c.norms, c.warmups):
        means = [summary[f"{norm}/lr={lr:g}/warmup={warmup}"]["mean_final_val_bpc"]
                 for lr in c.learning_rates]  # fmt: skip
        w = "no warm-up" if warmup == 0 else f"warm-up {warmup}"
        axes[1].plot(c.learning_rates, means, styles[norm], marker="o", label=f"{norm}-LN, {w}")
    axes[1].set(xscale="log", xlabel=f"peak learning rate ({c.optimizer})",
                ylabel=f"held-out bits/char after {c.steps} steps",
                title=f"mean over {len(c.seeds)} seed(s)")  # fmt: skip
    layers = np.arange(1, c.num_layers + 1)
    for norm, g in init_grads.items():
        for name, marker in (("fc", "o"), ("proj", "s")):
            axes[2].plot(layers, g[name], styles[norm], marker=marker, label=f"{norm}-LN, {name}")
    axes[2].set(xlabel="block (1 = nearest the input)", ylabel="|dL/dW| at initialisation",
                title="feed-forward kernels' gradients", yscale="log", xticks=layers)  # fmt: skip
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, os.path.join(workdir, "layernorm_warmup.png"))
    return summary


def main(argv=None) -> dict:
    config, workdir = parse_config(get_config(), argv, __doc__.split("\n\n")[0])
    return train_and_evaluate(config, workdir)


if __name__ == "__main__":
    main()
