"""Transfer learning in small: pretrain a ResNet on one task, fine-tune it on another.

Claim: features learned on a source task make a related target task learnable from far fewer
labels. A frozen backbone (only the new head trains) already beats training from scratch when
labels are scarce; full fine-tuning adapts the features too.

Source task: MNIST digits 0-4 (the packaged 5,000-image subset). Target task: digits 5-9 with
``n`` labelled examples per class, ``n`` in ``shots``. Three ways to train the target network
(same architecture, new 5-way head):

- ``scratch``: random initialisation, everything trains;
- ``frozen``: the pretrained backbone, an optimizer mask that trains the head only
  (``optax.multi_transform`` with ``optax.set_to_zero`` on the backbone), and BatchNorm kept in
  inference mode (its running statistics frozen too, as Keras does for a frozen layer);
- ``finetune``: the pretrained backbone, everything trains (BatchNorm in training mode).

    python -m experiments.transfer --workdir runs/transfer

With ``--pretrained torchvision`` the backbone is instead torchvision's ImageNet network
``--arch`` (resnet18 by default; any name of :data:`jaxdl.models.TORCHVISION_NAMES`): its weights
are downloaded through ``torch.hub`` from torchvision's URLs (or read from ``--weights_file``, a
state_dict saved by ``torch.save``), converted by :func:`jaxdl.models.from_torchvision`, and the
same three modes are fine-tuned on the target task, the 28x28 digits resized to
``--image_size``, replicated to RGB and normalised with ImageNet's mean and deviation. Offline,
the script says so and runs the pretrain-then-fine-tune path above.

    python -m experiments.transfer --workdir runs/transfer_imagenet --pretrained torchvision \
        --learning_rate 3e-4
"""

from __future__ import annotations

import dataclasses
import socket
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
    depth: int = 8  # resnet_cifar depth (6n + 2)
    num_filters: int = 16
    pretrain_epochs: int = 3
    pretrain_batch_size: int = 64
    shots: tuple[int, ...] = (2, 10, 50)  # labelled target examples per class
    finetune_steps: int = 80
    finetune_batch_size: int = 32
    learning_rate: float = 1e-3
    seeds: tuple[int, ...] = (0, 1)
    seed: int = 0
    # "none": pretrain on digits 0-4 here; "torchvision": torchvision's ImageNet weights for `arch`.
    pretrained: str = "none"
    arch: str = "resnet18"
    weights_file: str = ""  # a local torchvision state_dict instead of the download
    image_size: int = 64  # the digits' side for an ImageNet backbone
    download_timeout: float = 30.0  # seconds before the download counts as offline


def get_config() -> Config:
    return Config()


def split_tasks():
    x, y = data.load("mnist_5k", "train")
    xt, yt = data.load("mnist_5k", "test")
    src, tgt = y < 5, y >= 5
    src_t, tgt_t = yt < 5, yt >= 5
    return (
        (x[src], y[src]),
        (xt[src_t], yt[src_t]),
        (x[tgt], y[tgt] - 5),
        (xt[tgt_t], yt[tgt_t] - 5),
    )


def few_shot(x, y, n: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), n, replace=False) for c in range(5)])
    return x[idx], y[idx]


def backbone_mask(params, head: str = "head") -> dict:
    """'head' for the classifier's parameters (module ``head``), 'backbone' for everything else."""
    flat = flax.traverse_util.flatten_dict(params)
    labels = {k: "head" if k[0] == head else "backbone" for k in flat}
    return flax.traverse_util.unflatten_dict(labels)


def make_finetune_step(model, params, mode: str, config: Config, head: str = "head"):
    """``(tx, step)`` for one way of training; ``step(params, batch_stats, opt_state, x, y, key)``
    (``key`` feeds the ``'dropout'`` stream: EfficientNet's dropout and stochastic depth)."""
    adam = optim.adam(config.learning_rate)
    if mode == "frozen":
        tx = optax.multi_transform(
            {"head": adam, "backbone": optax.set_to_zero()}, backbone_mask(params, head)
        )
    else:
        tx = adam
    bn_train = mode != "frozen"

    @jax.jit
    def step(params, batch_stats, opt_state, xb, yb, key):
        def objective(p):
            variables = {"params": p, "batch_stats": batch_stats}
            if bn_train:
                logits, upd = model.apply(
                    variables, xb, train=True, mutable=["batch_stats"], rngs={"dropout": key}
                )
                return losses.cross_entropy(logits, yb), upd["batch_stats"]
            # Frozen: BatchNorm in inference mode, its running statistics untouched.
            return losses.cross_entropy(model.apply(variables, xb, train=False), yb), batch_stats

        (loss, new_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    return tx, step


def finetune(tx, step, variables, x, y, config: Config, seed: int) -> dict:
    """Train for ``finetune_steps`` steps on ``(x, y)``; return the final variables."""
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    rng = np.random.default_rng(seed)
    keys = jax.random.split(jax.random.PRNGKey(seed), config.finetune_steps)
    for i in range(config.finetune_steps):
        idx = rng.choice(
            len(x), config.finetune_batch_size, replace=len(x) < config.finetune_batch_size
        )
        params, batch_stats, opt_state, _ = step(
            params, batch_stats, opt_state, x[idx], y[idx], keys[i]
        )
    return {"params": params, "batch_stats": batch_stats}


# torchvision's ImageNet weights (the IMAGENET1K_V1 entries of torchvision 0.28's model files).
TORCHVISION_URLS = {
    name: f"https://download.pytorch.org/models/{file}.pth"
    for name, file in {
        "resnet18": "resnet18-f37072fd",
        "resnet34": "resnet34-b627a593",
        "resnet50": "resnet50-0676ba61",
        "resnet101": "resnet101-63fe2227",
        "resnet152": "resnet152-394f9c45",
        "densenet121": "densenet121-a639ec97",
        "densenet169": "densenet169-b2777c0a",
        "densenet201": "densenet201-c1103571",
        "efficientnet_b0": "efficientnet_b0_rwightman-7f5810bc",
        "efficientnet_b1": "efficientnet_b1_rwightman-bac287d4",
        "efficientnet_b2": "efficientnet_b2_rwightman-c35c1473",
        "efficientnet_b3": "efficientnet_b3_rwightman-b3899882",
        "efficientnet_b4": "efficientnet_b4_rwightman-23ab8bcd",
        "efficientnet_b5": "efficientnet_b5_lukemelas-1a07897c",
        "efficientnet_b6": "efficientnet_b6_lukemelas-24a108a5",
        "efficientnet_b7": "efficientnet_b7_lukemelas-c5b4e57e",
    }.items()
}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def torchvision_state_dict(config: Config):
    """torchvision's ImageNet state_dict for ``config.arch``, or ``None`` when it cannot be had.

    ``torch.load(..., weights_only=True)``: tensors only, never arbitrary pickled objects.
    """
    import torch  # the experiment's only torch use: reading torchvision's weight files

    if config.arch not in TORCHVISION_URLS:
        raise ValueError(f"arch must be one of {sorted(TORCHVISION_URLS)}, got {config.arch!r}")
    if config.weights_file:
        return torch.load(config.weights_file, map_location="cpu", weights_only=True)
    url = TORCHVISION_URLS[config.arch]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(config.download_timeout)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; no network, DNS, timeouts
        print(
            f"--pretrained torchvision: could not download {url} ({type(e).__name__}: {e}).\n"
            "No network here? Falling back to the offline path: pretraining on digits 0-4 of the "
            "packaged MNIST subset, then fine-tuning on digits 5-9. To use ImageNet weights "
            "offline, copy the file and pass --weights_file PATH."
        )
        return None
    finally:
        socket.setdefaulttimeout(previous)


def to_imagenet_inputs(x: np.ndarray, size: int) -> np.ndarray:
    """(N, 28, 28, 1) digits in [0, 1] -> (N, size, size, 3), ImageNet-normalised."""
    x = jax.image.resize(jnp.asarray(x, jnp.float32), (x.shape[0], size, size, 1), "bilinear")
    x = jnp.broadcast_to(x, (x.shape[0], size, size, 3))
    return np.asarray((x - IMAGENET_MEAN) / IMAGENET_STD)


def transfer_from_imagenet(config: Config, workdir: str, state_dict) -> dict:
    """Fine-tune torchvision's ImageNet ``arch`` on the target task (scratch / frozen / finetune)."""
    t0 = time.time()
    pretrained = models.from_torchvision(config.arch, state_dict)
    head = "classifier" if config.arch.startswith("efficientnet") else "head"
    target = models.torchvision_model(config.arch, num_classes=5)
    _, _, (xg, yg), (xg_t, yg_t) = split_tasks()
    xg_t = to_imagenet_inputs(xg_t, config.image_size)
    print(f"{config.arch}: ImageNet weights converted; target test images {xg_t.shape}")
    predict = jax.jit(lambda v, x: jnp.argmax(target.apply(v, x, train=False), -1))
    modes = ("scratch", "frozen", "finetune")
    results = {mode: {n: [] for n in config.shots} for mode in modes}
    steps = {m: make_finetune_step(target, pretrained["params"], m, config, head) for m in modes}
    jobs = [(n, s, m) for n in config.shots for s in config.seeds for m in modes]
    for n, seed, mode in tqdm(jobs, desc="fine-tuning"):
        x, y = few_shot(xg, yg, n, seed)
        x = to_imagenet_inputs(x, config.image_size)
        init = jax.jit(target.init)(jax.random.PRNGKey(seed), x[:1])
        if mode != "scratch":  # ImageNet backbone, fresh 5-way head
            params = {**pretrained["params"], head: init["params"][head]}
            init = {"params": params, "batch_stats": pretrained["batch_stats"]}
        variables = finetune(*steps[mode], init, x, y, config, seed)
        acc = np.mean(
            np.concatenate(
                [predict(variables, xg_t[i : i + 256]) for i in range(0, len(xg_t), 256)]
            )
            == yg_t
        )
        results[mode][n].append(float(acc))
    summary = {m: {n: float(np.mean(a)) for n, a in per_n.items()} for m, per_n in results.items()}
    print(f"target test accuracy (digits 5-9) from ImageNet {config.arch}, mean over seeds:")
    print("shots/class " + " ".join(f"{m:>9s}" for m in summary))
    for n in config.shots:
        print(f"{n:11d} " + " ".join(f"{summary[m][n]:9.2%}" for m in summary))
    metrics = {
        "config": config,
        "pretrained": f"torchvision {config.arch} ImageNet",
        "target_accuracy": results,
        "target_accuracy_mean": summary,
        "seconds": time.time() - t0,
    }
    save_json(metrics, f"{workdir}/metrics.json")
    fig, ax = new_figure(figsize=(6, 4.5))
    for mode, per_n in summary.items():
        ax.plot(config.shots, [100 * per_n[n] for n in config.shots], "o-", label=mode)
    ax.set(
        xscale="log",
        xlabel="labelled target examples per class",
        ylabel="target test accuracy (%)",
        title=f"Transfer: ImageNet {config.arch} -> digits 5-9",
    )
    ax.legend()
    save_figure(fig, f"{workdir}/transfer.png")
    return metrics


def train_and_evaluate(config: Config, workdir: str) -> dict:
    if config.pretrained not in ("none", "torchvision"):
        raise ValueError(f"pretrained must be 'none' or 'torchvision', got {config.pretrained!r}")
    if config.pretrained == "torchvision":
        state_dict = torchvision_state_dict(config)
        if state_dict is not None:
            return transfer_from_imagenet(config, workdir, state_dict)
    (xs, ys), (xs_t, ys_t), (xg, yg), (xg_t, yg_t) = split_tasks()
    print(f"source: train {len(xs)}, test {len(xs_t)};  target pool: {len(xg)}, test {len(xg_t)}")
    make = lambda classes: models.resnet_cifar(  # noqa: E731
        config.depth, num_classes=classes, num_filters=config.num_filters, input_channels=1
    )
    t0 = time.time()
    history = train.fit(
        make(5),
        optim.adam(config.learning_rate),
        train_data=(xs, ys),
        val_data=(xs_t, ys_t),
        epochs=config.pretrain_epochs,
        batch_size=config.pretrain_batch_size,
        seed=config.seed,
    )
    pre = history.state
    pretrain_seconds = time.time() - t0
    source_acc = history.history["val_accuracy"][-1]
    print(f"pretrained on digits 0-4: test accuracy {source_acc:.2%} ({pretrain_seconds:.0f}s)")

    target = make(5)
    predict = jax.jit(lambda v, x: jnp.argmax(target.apply(v, x, train=False), -1))
    results = {mode: {n: [] for n in config.shots} for mode in ("scratch", "frozen", "finetune")}
    steps = {mode: make_finetune_step(target, pre.params, mode, config) for mode in results}
    jobs = [(n, s, m) for n in config.shots for s in config.seeds for m in results]
    for n, seed, mode in tqdm(jobs, desc="fine-tuning"):
        x, y = few_shot(xg, yg, n, seed)
        init = target.init(jax.random.PRNGKey(seed), x[:1])
        if mode != "scratch":
            # Pretrained backbone, fresh head (the source head maps to the wrong classes).
            params = {**pre.params, "head": init["params"]["head"]}
            init = {"params": params, "batch_stats": pre.batch_stats}
        variables = finetune(*steps[mode], init, x, y, config, seed)
        results[mode][n].append(float(np.mean(np.asarray(predict(variables, xg_t)) == yg_t)))

    summary = {
        mode: {n: float(np.mean(a)) for n, a in per_n.items()} for mode, per_n in results.items()
    }
    print("target test accuracy (digits 5-9), mean over seeds:")
    print("shots/class " + " ".join(f"{m:>9s}" for m in summary))
    for n in config.shots:
        print(f"{n:11d} " + " ".join(f"{summary[m][n]:9.2%}" for m in summary))
    metrics = {
        "config": config,
        "source_test_accuracy": source_acc,
        "pretrain_history": history.history,
        "pretrain_seconds": pretrain_seconds,
        "target_accuracy": results,
        "target_accuracy_mean": summary,
        "seconds": time.time() - t0,
    }
    save_json(metrics, f"{workdir}/metrics.json")
    fig, ax = new_figure(figsize=(6, 4.5))
    for mode, per_n in summary.items():
        ax.plot(config.shots, [100 * per_n[n] for n in config.shots], "o-", label=mode)
    ax.set(
        xscale="log",
        xlabel="labelled target examples per class",
        ylabel="target test accuracy (%)",
        title="Transfer: digits 0-4 -> digits 5-9",
    )
    ax.legend()
    save_figure(fig, f"{workdir}/transfer.png")
    return metrics


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
