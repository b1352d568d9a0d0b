"""ViT vs CNN data efficiency on mnist_5k: test accuracy at 500/1,000/2,000/4,000 training images.

Dosovitskiy et al. (2021) found that Vision Transformers, lacking convolution's built-in locality and
translation equivariance, need more data than CNNs to reach the same accuracy (they lose to ResNets
on ImageNet-1k and win only after pre-training on 14-300M images). This script tests the small-scale
version of that claim: the same training budget, growing subsets of the 4,000 mnist_5k training
digits, the fixed 1,000-digit test split, ``seeds`` seeds per point.

Models (tiny, similar parameter counts; the script prints them):

* ViT: :class:`jaxdl.models.ViT` (28x28, 7x7 patches -> 16 tokens + class token, ``vit_layers``
  pre-LN blocks of width ``vit_dim``).
* CNN: conv 3x3 (``cnn_width``) -> ReLU -> 2x2 max pool -> conv 3x3 (2 x width) -> ReLU -> 2x2 pool
  -> Dense(64) -> ReLU -> Dense(10).

Both train for ``steps`` steps of batch ``batch`` (so a small subset is seen for more epochs), AdamW
with cosine decay, no augmentation. An attention-map figure shows where the class token of the ViT
trained on the most data looks (last layer, heads averaged) for a few test digits.

Default (about 15 minutes on the shared 2-core CPU)::

    python -m experiments.vit_data_efficiency --workdir runs/vit_data_efficiency
"""

from __future__ import annotations

import dataclasses
import os
import time

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import data, models, optim


@dataclasses.dataclass
class Config:
    sizes: tuple[int, ...] = (500, 1000, 2000, 4000)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 400
    batch: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    vit_patch: int = 7
    vit_layers: int = 2
    vit_heads: int = 4
    vit_dim: int = 64
    vit_mlp: int = 128
    cnn_width: int = 16


def get_config() -> Config:
    return Config()


class SmallCNN(fnn.Module):
    width: int = 16

    @fnn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        pool = lambda h: fnn.max_pool(h, (2, 2), (2, 2))  # noqa: E731
        x = pool(fnn.relu(fnn.Conv(self.width, (3, 3))(x)))  # (B, 14, 14, w)
        x = pool(fnn.relu(fnn.Conv(2 * self.width, (3, 3))(x)))  # (B, 7, 7, 2w)
        x = fnn.relu(fnn.Dense(64)(x.reshape(x.shape[0], -1)))
        return fnn.Dense(10)(x)


def make_model(kind: str, c: Config) -> fnn.Module:
    if kind == "vit":
        return models.ViT(28, c.vit_patch, c.vit_layers, c.vit_heads, c.vit_dim, c.vit_mlp, 10)
    return SmallCNN(c.cnn_width)


def make_trainer(kind: str, x_tr: np.ndarray, y_tr: np.ndarray, c: Config):
    """One compiled step per model kind: the subset is the first ``n`` rows of ``x_tr`` (passed
    already permuted) with ``n`` a traced argument, so every size and seed reuses the compilation."""
    model = make_model(kind, c)
    sched = optax.warmup_cosine_decay_schedule(
        0.0, c.learning_rate, min(30, c.steps // 10), c.steps
    )
    tx = optim.adamw(sched, weight_decay=c.weight_decay)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s, xs, ys, n, k):
        i = jax.random.randint(k, (c.batch,), 0, n)
        loss, g = jax.value_and_grad(loss_fn)(p, xs[i], ys[i])
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    predict = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), -1))
    init = jax.jit(lambda k, x: model.init(k, x)["params"])

    def train_one(x_perm, y_perm, n, x_te, y_te, seed):
        key = jax.random.key(seed)
        params = init(key, x_perm[:1])
        n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
        opt_state = tx.init(params)
        xs, ys = jnp.asarray(x_perm), jnp.asarray(y_perm)
        t0 = time.perf_counter()
        for k in range(c.steps):
            params, opt_state, _ = step(params, opt_state, xs, ys, n, jax.random.fold_in(key, k))
        pred = np.concatenate(
            [predict(params, x_te[i : i + 500]) for i in range(0, len(x_te), 500)]
        )
        result = {
            "accuracy": float(np.mean(pred == y_te)),
            "params": n_params,
            "seconds": time.perf_counter() - t0,
        }
        return result, (model, params)

    return train_one


def attention_figure(model, params, x, path: str) -> None:
    """Class-token attention of the last layer (heads averaged), upsampled onto the digit."""
    _, inter = model.apply({"params": params}, x, mutable="intermediates")
    last = inter["intermediates"]["encoder"][f"encoder_layer_{model.num_layers - 1}"]
    w = np.asarray(last["self_attention"]["attention_weights"][0])  # (B, heads, N+1, N+1)
    g = model.image_size // model.patch_size
    cls_to_patches = w[:, :, 0, 1:].mean(1).reshape(-1, g, g)  # (B, g, g)
    fig, axes = new_figure(2, len(x), figsize=(1.8 * len(x), 3.8))
    for i in range(len(x)):
        axes[0, i].imshow(np.asarray(x[i, ..., 0]), cmap="gray")
        axes[1, i].imshow(np.asarray(x[i, ..., 0]), cmap="gray")
        up = np.kron(cls_to_patches[i], np.ones((model.patch_size, model.patch_size)))
        axes[1, i].imshow(up, cmap="inferno", alpha=0.6)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("test digit")
    axes[1, 0].set_ylabel("class-token\nattention")
    save_figure(fig, path)


def train_and_evaluate(config: Config, workdir: str) -> dict:
    c = config
    os.makedirs(workdir, exist_ok=True)
    x_tr, y_tr = data.load("mnist_5k", "train")
    x_te, y_te = data.load("mnist_5k", "test")
    x_tr = np.asarray(x_tr, np.float32).reshape(-1, 28, 28, 1)
    x_te = np.asarray(x_te, np.float32).reshape(-1, 28, 28, 1)
    if x_tr.max() > 1.5:
        x_tr, x_te = x_tr / 255.0, x_te / 255.0
    y_tr, y_te = np.asarray(y_tr), np.asarray(y_te)
    results = {k: {n: [] for n in c.sizes} for k in ("vit", "cnn")}
    last = None
    runs = [(k, n, s) for n in c.sizes for s in c.seeds for k in ("vit", "cnn")]
    trainers = {k: make_trainer(k, x_tr, y_tr, c) for k in ("vit", "cnn")}
    for kind, n, seed in tqdm(runs, desc="runs"):
        # Subset: the first n digits of a seed-dependent permutation (nested: larger n contain smaller).
        perm = np.random.default_rng(seed).permutation(len(x_tr))
        r, trained = trainers[kind](x_tr[perm], y_tr[perm], n, x_te, y_te, seed)
        results[kind][n].append(r)
        if kind == "vit" and n == max(c.sizes):
            last = trained
    summary = {
        kind: {
            n: {
                "accuracy_mean": float(np.mean([r["accuracy"] for r in rs])),
                "accuracy_std": float(np.std([r["accuracy"] for r in rs])),
                "accuracies": [r["accuracy"] for r in rs],
                "params": rs[0]["params"],
            }
            for n, rs in per.items()
        }
        for kind, per in results.items()
    }
    save_json(
        {"config": c, "summary": summary, "runs": results}, os.path.join(workdir, "metrics.json")
    )
    fig, ax = new_figure(figsize=(6, 4))
    for kind, label in (("cnn", "CNN"), ("vit", "ViT")):
        m = np.array([summary[kind][n]["accuracy_mean"] for n in c.sizes])
        s = np.array([summary[kind][n]["accuracy_std"] for n in c.sizes])
        ax.errorbar(c.sizes, 100 * m, yerr=100 * s, marker="o", capsize=3,
                    label=f"{label} ({summary[kind][c.sizes[0]]['params']:,} params)")  # fmt: skip
    ax.set(xscale="log", xlabel="training images (mnist_5k subset)", ylabel="test accuracy (%)",
           title=f"mean ± std over {len(c.seeds)} seeds, {c.steps} steps each")  # fmt: skip
    ax.minorticks_off()
    ax.set_xticks(c.sizes, [str(n) for n in c.sizes])
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, os.path.join(workdir, "vit_data_efficiency.png"))
    if last is not None:
        first_of_each = [int(np.flatnonzero(y_te == d)[0]) for d in range(10)]  # one per class
        attention_figure(*last, jnp.asarray(x_te[first_of_each]),
                         os.path.join(workdir, "vit_attention.png"))  # fmt: skip
    for kind in ("cnn", "vit"):
        for n in c.sizes:
            s = summary[kind][n]
            print(f"{kind} n={n:5d}  accuracy {100 * s['accuracy_mean']:.1f} ± "
                  f"{100 * s['accuracy_std']:.1f} %")  # fmt: skip
    return summary


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
