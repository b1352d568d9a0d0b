"""He et al.'s degradation experiment, in small: plain vs residual nets at two depths.

Claim (He et al. 2015, Fig. 1 and Fig. 6): a deeper *plain* network (conv-BN-ReLU stacks) has a
*higher training error* than a shallower one, although it could represent the shallower one
exactly; the same depth with identity shortcuts trains at least as well as the shallow net.
We train plain-20, plain-56, ResNet-20 and ResNet-56 (the CIFAR layout of
:func:`jaxdl.models.resnet_cifar`, option-A shortcuts) with SGD + momentum and record the running
training error per step and the per-layer gradient norms at initialisation.

Default (offline, bounded CPU time): the packaged 5,000-image MNIST subset zero-padded to 32x32,
2,000 training images, width 8 (the paper's is 16), 400 steps of batch 64 (12.8 epochs; about
700 s of CPU time; ``--steps 150`` takes 300 s and shows the plain net's degradation only). Full run with a
network: ``--dataset cifar10 --num_filters 16 --train_size 0 --steps 64000 --batch_size 128``
(the paper's 64k iterations; its test errors are ResNet-20 8.75%, -56 6.97%, -110 6.43%).

    python -m experiments.resnet_depth --workdir runs/resnet_depth
"""

from __future__ import annotations

import dataclasses
import re
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import data, losses, models, optim, train


@dataclasses.dataclass
class Config:
    dataset: str = "mnist_5k"  # or "cifar10" (TFDS, needs a network)
    depths: tuple[int, ...] = (20, 56)
    num_filters: int = 8  # the paper's CIFAR width is 16
    train_size: int = 2000  # 0: the whole training split
    test_size: int = 1000  # 0: the whole test split
    batch_size: int = 64
    steps: int = 400  # 150 already shows plain-56's degradation; 400 lets ResNet-56 catch up
    # The paper's 0.1 at batch 128, scaled linearly to batch 64 (Goyal et al. 2017).
    learning_rate: float = 0.05
    warmup_steps: int = 15  # linear warm-up from 0 (He et al. warm ResNet-110 up at 0.01)
    zero_init_residual: bool = False  # residual nets only (Goyal et al. 2017)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    log_every: int = 20
    seed: int = 0


def get_config() -> Config:
    return Config()


def load_data(config: Config):
    """Images as float32 NHWC normalised by the training mean/std; MNIST padded 28 -> 32."""
    x, y = data.load(config.dataset, "train")
    xt, yt = data.load(config.dataset, "test")
    # Random subsets with a fixed seed: the packaged MNIST split is ordered by class.
    rng = np.random.default_rng(1234)
    if config.train_size:
        idx = rng.permutation(len(x))[: config.train_size]
        x, y = x[idx], y[idx]
    if config.test_size:
        idx = rng.permutation(len(xt))[: config.test_size]
        xt, yt = xt[idx], yt[idx]
    if x.shape[1] == 28:  # pad MNIST to CIFAR's 32x32 so the CIFAR network applies unchanged
        pad = ((0, 0), (2, 2), (2, 2), (0, 0))
        x, xt = np.pad(x, pad), np.pad(xt, pad)
    mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
    return ((x - mean) / std).astype(np.float32), y, ((xt - mean) / std).astype(np.float32), yt


def kernel_paths(params) -> list[tuple[str, ...]]:
    """Weighted layers (conv and dense kernels) in forward order."""

    def order(path):
        name = "/".join(path)
        if path[0] == "conv_init":
            return (0, 0, 0, 0)
        if path[0] == "head":
            return (9, 0, 0, 0)
        stage, block = map(int, re.match(r"stage(\d+)_block(\d+)", path[0]).groups())
        return (
            1,
            stage,
            block,
            9 if "proj" in name else int(re.search(r"conv(\d)", name).group(1)),
        )

    flat = flax.traverse_util.flatten_dict(params)
    return sorted((p[:-1] for p in flat if p[-1] == "kernel"), key=order)


def make_step(model, tx, paths):
    """SGD step returning the loss, the batch's training error and each layer's gradient norm."""

    def objective(params, batch_stats, x, y):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        error = jnp.mean(jnp.argmax(logits, -1) != y)
        return losses.cross_entropy(logits, y), (updates["batch_stats"], error)

    def step(state: train.TrainState, x, y):
        (loss, (batch_stats, error)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, state.batch_stats, x, y
        )
        flat = flax.traverse_util.flatten_dict(grads)
        norms = jnp.stack([jnp.linalg.norm(flat[p + ("kernel",)]) for p in paths])  # (layers,)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        return state, loss, error, norms

    return jax.jit(step, donate_argnums=(0,))


def train_one(name: str, model, config: Config, x, y, xt, yt) -> dict:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, config.steps
    )
    tx = optim.chain(
        optax.add_decayed_weights(config.weight_decay),
        optim.momentum(schedule, beta=config.momentum),
    )
    state = train.create_train_state(model, tx, x[:1], config.seed)
    paths = kernel_paths(state.params)
    step = make_step(model, tx, paths)
    rng = np.random.default_rng(config.seed)
    curve, window, grad_norms_init = [], [], None
    t0 = time.time()
    bar = tqdm(range(config.steps), desc=name, mininterval=5.0)
    for i in bar:
        idx = rng.choice(len(x), config.batch_size, replace=False)
        state, loss, error, norms = step(state, x[idx], y[idx])
        if grad_norms_init is None:
            grad_norms_init = np.asarray(norms)
        window.append(float(error))
        if (i + 1) % config.log_every == 0:
            curve.append(
                {"step": i + 1, "train_error": float(np.mean(window)), "loss": float(loss)}
            )
            window = []
    seconds = time.time() - t0
    final_train = train.evaluate(model, state, (x, y), batch_size=500)
    final_test = train.evaluate(model, state, (xt, yt), batch_size=500)
    return {
        "layers": ["/".join(p) for p in paths],
        "grad_norms_init": grad_norms_init,
        "curve": curve,
        "train_error": 1.0 - final_train["accuracy"],
        "test_error": 1.0 - final_test["accuracy"],
        "train_loss": final_train["loss"],
        "seconds": seconds,
        "params": models.count_params(state.params),
    }


def train_and_evaluate(config: Config, workdir: str) -> dict:
    x, y, xt, yt = load_data(config)
    print(f"{config.dataset}: train {x.shape}, test {xt.shape}")
    results = {}
    for depth in config.depths:
        for kind in ("plain", "resnet"):
            name = f"{kind}-{depth}"
            model = models.resnet_cifar(
                depth,
                shortcut="none" if kind == "plain" else "A",
                zero_init_residual=config.zero_init_residual and kind == "resnet",
                num_filters=config.num_filters,
                input_channels=x.shape[-1],
            )
            r = train_one(name, model, config, x, y, xt, yt)
            results[name] = r
            print(
                f"{name:10s} params {r['params']:>9,}  final train error {r['train_error']:.2%}  "
                f"test error {r['test_error']:.2%}  last-window running train error "
                f"{r['curve'][-1]['train_error']:.2%}  ({r['seconds']:.0f}s)"
            )
    metrics = {"config": config, "results": results}
    save_json(metrics, f"{workdir}/metrics.json")
    plot(results, workdir)
    return metrics


def plot(results: dict, workdir: str) -> None:
    fig, axes = new_figure(1, 2, figsize=(12, 4.5))
    colors = {}
    for name, r in results.items():
        kind, depth = name.split("-")
        color = colors.setdefault(depth, f"C{len(colors)}")
        steps = [c["step"] for c in r["curve"]]
        errs = [100 * c["train_error"] for c in r["curve"]]
        axes[0].plot(steps, errs, ls="--" if kind == "plain" else "-", color=color, label=name)
        norms = r["grad_norms_init"]
        axes[1].semilogy(
            np.arange(1, len(norms) + 1),
            norms,
            ls="--" if kind == "plain" else "-",
            color=color,
            label=name,
            marker=".",
        )
    axes[0].set(
        xlabel="step", ylabel="training error (%) (running, train mode)", title="Training error"
    )
    axes[0].legend()
    axes[1].set(
        xlabel="layer (input -> output)",
        ylabel="||dL/dW|| at initialisation",
        title="Per-layer gradient norm at init",
    )
    axes[1].legend()
    save_figure(fig, f"{workdir}/resnet_depth.png")


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
