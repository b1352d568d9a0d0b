"""DDPM and DDIM on scikit-learn's 8x8 digits, with the sample quality measured.

One class-conditional :class:`jaxdl.models.UNet` per noise schedule (linear and cosine, same steps,
batch and seed), trained on the ``epsilon`` objective with the label replaced by the null class 20%
of the time (Ho & Salimans 2022), so one network gives unconditional samples (null label),
conditional samples, and guided ones. Adam, gradient clipping, an EMA of the weights that all
sampling uses. Images are scaled to [-1, 1]; samplers clip the predicted ``x_0`` to [-1, 1].

Quality: a small CNN classifier trained on the real training digits; its 64-d penultimate features
give a Frechet distance (FD, the FID recipe of Heusel et al. 2017 with this feature space) between
``n_eval`` generated images and the real test images (360). The same FD between ``n_eval`` real
*training* images and the test images is the floor (what real data scores), and samples of the
untrained model (the EMA at step 0) the ceiling. The classifier also gives the class histogram of
unconditional samples (mode coverage) and its accuracy on conditional samples at guidance scales
``s`` (``s = 0`` unconditional, ``1`` plain conditional, ``> 1`` guided).

Measured during training: DDIM-50 FD and a sample grid at ``eval_at`` steps. At the end: DDPM-1000
and DDIM 10/20/50/100 (quality vs wall-clock sampling time), linear vs cosine.

Default (a few minutes per schedule on 2 busy CPU cores):
``python -m experiments.diffusion_digits --workdir runs/diffusion_digits``

28x28 (``docs/experiments/diffusion_mnist.md``, about 26 CPU-minutes)::

    python -m experiments.diffusion_digits --workdir runs/diffusion_mnist --dataset mnist_5k \
        --channels 16 --channel_mults 1,2,2 --attention true --schedules cosine --steps 2000 \
        --eval_at 250,500,1000,2000 --ddim_steps 10,20,50 --ddpm_eval false
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import data, diffusion, models, optim, xla_flags


@dataclasses.dataclass
class Config:
    dataset: str = "digits"  # or "mnist_5k" (28x28; use --channel_mults 1,2,2)
    schedules: tuple[str, ...] = ("linear", "cosine")
    num_train_steps: int = 1000  # T, the diffusion length
    channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2)
    attention: bool = False
    steps: int = 1500  # optimizer steps per schedule
    batch: int = 64
    learning_rate: float = 2e-3
    clip_norm: float = 1.0
    ema_decay: float = 0.99
    p_uncond: float = 0.2  # label dropout to the null class
    eval_at: tuple[int, ...] = (250, 750, 1500)
    n_eval: int = 200  # generated images per FD
    ddim_steps: tuple[int, ...] = (10, 20, 50, 100)
    ddpm_eval: bool = True  # DDPM-1000 at the end (1,000 network calls on n_eval images)
    guidance_scales: tuple[float, ...] = (0.0, 1.0, 3.0)
    classifier_steps: int = 600
    seed: int = 0


def get_config() -> Config:
    return Config()


# ----------------------------------------------------------------------------- feature classifier

import flax.linen as nn  # noqa: E402


class DigitsCNN(nn.Module):
    """conv3x3(32) -> conv3x3(64) -> 2x2 pool -> dense(64) [features] -> dense(10)."""

    @nn.compact
    def __call__(self, x, features: bool = False):
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.relu(nn.Conv(64, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)  # (B, 4*4*64)
        f = nn.relu(nn.Dense(64)(x))  # (B, 64)
        return f if features else nn.Dense(10)(f)


def train_classifier(x, y, xt, yt, steps: int, seed: int):
    model = DigitsCNN() if x.shape[1] == 8 else models.MnistCNN()
    params = model.init(jax.random.key(seed), x[:1])
    opt = optim.adam(1e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s, xb, yb):
        def loss_fn(p):
            logits = model.apply(p, xb)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], 1))

        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = opt.update(g, s, p)
        return jax.tree.map(jnp.add, p, u), s, loss

    rng = np.random.default_rng(seed)
    for _ in tqdm(range(steps), desc="classifier", leave=False):
        idx = rng.integers(0, len(x), 128)
        params, state, _ = step(params, state, x[idx], y[idx])
    logits = jax.jit(model.apply)(params, xt)
    acc = float(jnp.mean(jnp.argmax(logits, -1) == yt))
    if isinstance(model, DigitsCNN):
        feats = jax.jit(lambda p, x: model.apply(p, x, features=True))
    else:  # MnistCNN: its 128-d hidden layer, the first Dense's output after the ReLU

        def _feats(p, x):
            _, state = model.apply(
                p, x, capture_intermediates=lambda mdl, _: isinstance(mdl, nn.Dense)
            )
            return nn.relu(state["intermediates"]["Dense_0"]["__call__"][0])

        feats = jax.jit(_feats)
    predict = jax.jit(lambda p, x: jnp.argmax(model.apply(p, x), -1))
    return (
        (lambda x: np.asarray(feats(params, x), np.float64)),
        (lambda x: np.asarray(predict(params, x))),
        acc,
    )


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))`` between Gaussians fitted to two feature sets."""
    from scipy import linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(c1 @ c2)
    covmean = np.real(covmean)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * covmean))


# ----------------------------------------------------------------------------- diffusion model


def make_schedule(name: str, T: int) -> diffusion.Schedule:
    return diffusion.linear_schedule(T) if name == "linear" else diffusion.cosine_schedule(T)


def make_samplers(model: models.UNet, sched: diffusion.Schedule, shape):
    null = model.null_label

    def eps_fn(params, labels, scale):
        if scale is None:  # unconditional: the null label, one network call per step
            return lambda x, t: model.apply(params, x, t, jnp.full((x.shape[0],), null, jnp.int32))
        cond = lambda x, t, y: model.apply(params, x, t, y)  # noqa: E731
        return diffusion.guided_eps_fn(cond, labels, scale, null)

    def ddim(params, key, labels=None, scale=None, num_steps=50):
        f = eps_fn(params, labels, scale)
        return diffusion.ddim_sample(f, sched, shape, key, num_steps, clip_x0=1.0)

    def ddpm(params, key, labels=None, scale=None):
        return diffusion.ddpm_sample(eps_fn(params, labels, scale), sched, shape, key, clip_x0=1.0)

    return (
        jax.jit(ddim, static_argnames=("num_steps", "scale")),
        jax.jit(ddpm, static_argnames=("scale",)),
    )


def to_images(x) -> np.ndarray:
    return np.clip((np.asarray(x) + 1.0) / 2.0, 0.0, 1.0)  # [-1, 1] -> [0, 1]


def save_grid(images: np.ndarray, path: str, title: str, ncol: int = 10) -> None:
    """Tile up to 100 images edge to edge (no gaps) into one picture, one image pixel per block
    of screen pixels (nearest-neighbour), with the title above it."""
    n = min(len(images), 100)
    nrow = math.ceil(n / ncol)
    h, w = images.shape[1:3]
    grid = np.zeros((nrow * h, ncol * w))  # empty tiles (n < nrow * ncol) stay white under gray_r
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = images[i, ..., 0]
    scale = 0.06 if h <= 8 else 0.022  # inches per image pixel: about 0.5-0.6 in per tile
    fig, ax = new_figure(figsize=(ncol * w * scale, nrow * h * scale + 0.3))
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - 0.3 / (nrow * h * scale + 0.3))
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)


def train_one(sched_name: str, c: Config, x_train, y_train, evaluate, workdir: str) -> dict:
    sched = make_schedule(sched_name, c.num_train_steps)
    model = models.UNet(c.channels, c.channel_mults, attention=c.attention, num_classes=10)
    # Every key derives from the config's seed: one for the weights, one folded with the step
    # number for each batch's t, noise and label dropout, one shared by every sampler (so DDIM-S,
    # DDPM-1000 and the guided runs all start from the same x_T and can be compared draw for draw).
    init_key, train_key, sample_key = jax.random.split(jax.random.key(c.seed), 3)
    hw = x_train.shape[1:]
    params = jax.jit(model.init)(
        init_key, jnp.zeros((2, *hw)), jnp.zeros((2,), jnp.int32), jnp.zeros((2,), jnp.int32)
    )
    n_params = sum(p.size for p in jax.tree.leaves(params))
    opt = optim.chain(optim.clip_by_global_norm(c.clip_norm), optim.adam(c.learning_rate))
    opt_state = opt.init(params)
    ema = jax.tree.map(jnp.copy, params)  # its own buffers: the step donates both

    def loss_fn(p, xb, yb, k):
        kd, kl = jax.random.split(k)
        drop = jax.random.uniform(kd, yb.shape) < c.p_uncond
        yb = jnp.where(drop, model.null_label, yb)  # classifier-free guidance training
        return diffusion.denoising_loss(lambda x, t: model.apply(p, x, t, yb), sched, xb, kl)

    def step(p, s, e, xb, yb, k):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb, k)
        u, s = opt.update(g, s, p)
        p = jax.tree.map(jnp.add, p, u)
        return p, s, diffusion.ema_update(e, p, c.ema_decay), loss

    step = jax.jit(
        step,
        donate_argnums=(0, 1, 2),
        compiler_options=xla_flags.train_step_compiler_options(),
    )
    ddim, ddpm = make_samplers(model, sched, (c.n_eval, *hw))
    rng = np.random.default_rng(c.seed)
    history, curve = [], []
    # Step 0: the untrained model (the ceiling).
    uncond0 = to_images(ddim(ema, sample_key))
    fd0 = evaluate(uncond0)["fd"]
    curve.append({"step": 0, "fd_ddim50": fd0})
    save_grid(uncond0, os.path.join(workdir, f"{sched_name}_samples_step0.png"), "step 0")
    t_start = time.time()
    losses = []
    for i in tqdm(range(1, c.steps + 1), desc=f"train {sched_name}"):
        idx = rng.integers(0, len(x_train), c.batch)
        params, opt_state, ema, loss = step(
            params, opt_state, ema, x_train[idx], y_train[idx], jax.random.fold_in(train_key, i)
        )
        losses.append(loss)
        if i % 100 == 0:
            history.append({"step": i, "loss": float(np.mean(jax.device_get(losses)))})
            losses = []
            if not math.isfinite(history[-1]["loss"]):
                raise FloatingPointError(f"loss is {history[-1]['loss']} at step {i}")
        if i in c.eval_at:
            imgs = to_images(ddim(ema, sample_key))
            fd = evaluate(imgs)["fd"]
            curve.append({"step": i, "fd_ddim50": fd})
            tqdm.write(f"{sched_name} step {i}: loss {float(loss):.4f}  FD(DDIM-50) {fd:.2f}")
            save_grid(imgs, os.path.join(workdir, f"{sched_name}_samples_step{i}.png"), f"step {i}")
    train_time = time.time() - t_start

    # Quality vs sampling time: DDIM-S and DDPM-1000 (unconditional, EMA weights).
    samplers = {f"ddim{s}": (lambda k, s=s: ddim(ema, k, num_steps=s)) for s in c.ddim_steps}
    if c.ddpm_eval:
        samplers["ddpm1000"] = lambda k: ddpm(ema, k)
    quality = {}
    for name, fn in samplers.items():
        jax.block_until_ready(fn(sample_key))  # compile
        t0 = time.time()
        imgs = to_images(jax.block_until_ready(fn(sample_key)))
        seconds = time.time() - t0
        quality[name] = {"seconds": seconds, **evaluate(imgs)}
        tqdm.write(f"{sched_name} {name}: FD {quality[name]['fd']:.2f} in {seconds:.2f} s")
        if name == "ddpm1000":
            save_grid(imgs, os.path.join(workdir, f"{sched_name}_ddpm1000.png"), "DDPM-1000")

    # Class-conditional with and without guidance (DDIM-50): accuracy of the classifier.
    labels = jnp.asarray(np.arange(c.n_eval) % 10, jnp.int32)
    guidance = {}
    for s in c.guidance_scales:
        imgs = to_images(ddim(ema, sample_key, labels, float(s)))
        r = evaluate(imgs, labels=np.asarray(labels))
        guidance[str(s)] = r
        tqdm.write(f"{sched_name} guidance s={s}: acc {r['accuracy']:.3f} FD {r['fd']:.2f}")
        m = min(100, len(imgs))
        order = np.argsort(np.asarray(labels)[:m], kind="stable")  # one row per class
        save_grid(
            imgs[:m][order],
            os.path.join(workdir, f"{sched_name}_guided_s{s:g}.png"),
            f"class-conditional, guidance s={s:g}",
        )
    return {
        "schedule": sched_name,
        "params": n_params,
        "train_seconds": train_time,
        "history": history,
        "fd_curve": curve,
        "quality": quality,
        "guidance": guidance,
    }


def train_and_evaluate(config: Config, workdir: str) -> dict:
    c = config
    os.makedirs(workdir, exist_ok=True)
    x_train, y_train = data.load(c.dataset, "train")
    x_test, y_test = data.load(c.dataset, "test")
    classify_feats, classify, clf_acc = train_classifier(
        x_train, y_train, x_test, y_test, c.classifier_steps, c.seed
    )
    print(f"feature classifier: test accuracy {clf_acc:.4f}")
    f_test = classify_feats(x_test)

    def evaluate(images: np.ndarray, labels: np.ndarray | None = None) -> dict:
        pred = classify(images)
        out = {
            "fd": frechet_distance(classify_feats(images), f_test),
            "class_histogram": np.bincount(pred, minlength=10).tolist(),
        }
        if labels is not None:
            out["accuracy"] = float(np.mean(pred == labels))
        return out

    rng = np.random.default_rng(c.seed)
    floor = evaluate(x_train[rng.choice(len(x_train), c.n_eval, replace=False)])
    print(f"FD floor (real train vs real test): {floor['fd']:.2f}")
    x_scaled = x_train * 2.0 - 1.0
    runs = {s: train_one(s, c, x_scaled, y_train, evaluate, workdir) for s in c.schedules}
    results = {
        "config": c,
        "classifier_test_accuracy": clf_acc,
        "fd_floor_real": floor["fd"],
        "real_class_histogram": floor["class_histogram"],
        "runs": runs,
    }
    save_json(results, os.path.join(workdir, "metrics.json"))
    plot(results, workdir)
    return results


def plot(results: dict, workdir: str) -> None:
    runs = results["runs"]
    fig, axes = new_figure(1, 3, figsize=(13, 3.8))
    for name, r in runs.items():
        curve = r["fd_curve"]
        axes[0].plot([p["step"] for p in curve], [p["fd_ddim50"] for p in curve], "o-", label=name)
        q = r["quality"]
        names = list(q)
        axes[1].plot(
            [q[n]["seconds"] for n in names], [q[n]["fd"] for n in names], "o-", label=name
        )
        for n in names:
            axes[1].annotate(n, (q[n]["seconds"], q[n]["fd"]), fontsize=7)
        g = r["guidance"]
        axes[2].plot([float(s) for s in g], [g[s]["accuracy"] for s in g], "o-", label=name)
    floor = results["fd_floor_real"]
    for ax in axes[:2]:
        ax.axhline(floor, color="gray", ls="--", label="real vs real (floor)")
        ax.set_yscale("log")
        ax.set_ylabel("Frechet distance (classifier features)")
    axes[0].set_xlabel("training step")
    axes[0].set_title("DDIM-50 samples during training")
    axes[1].set_xscale("log")
    axes[1].set_xlabel(f"seconds to sample {results['config'].n_eval} images")
    axes[1].set_title("quality vs sampling time")
    axes[2].set_xlabel("guidance scale s")
    axes[2].set_ylabel("classifier accuracy on requested class")
    axes[2].set_title("class-conditional DDIM-50")
    for ax in axes:
        ax.legend(fontsize=7)
    save_figure(fig, os.path.join(workdir, "diffusion_digits.png"))
    # class histogram of unconditional samples
    fig, ax = new_figure(figsize=(6, 3.2))
    width = 0.8 / (len(runs) + 1)
    real = np.asarray(results["real_class_histogram"], float)
    ax.bar(np.arange(10) - 0.4 + width / 2, real / real.sum(), width, label="real")
    for i, (name, r) in enumerate(runs.items(), start=1):
        sampler = "ddpm1000" if "ddpm1000" in r["quality"] else list(r["quality"])[-1]
        h = np.asarray(r["quality"][sampler]["class_histogram"], float)
        ax.bar(
            np.arange(10) - 0.4 + width * (i + 0.5), h / h.sum(), width, label=f"{name} {sampler}"
        )
    ax.set_xticks(range(10))
    ax.set_xlabel("class predicted by the classifier")
    ax.set_ylabel("fraction")
    ax.legend(fontsize=7)
    save_figure(fig, os.path.join(workdir, "diffusion_digits_histogram.png"))


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
