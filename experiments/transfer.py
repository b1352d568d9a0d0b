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
"""

from __future__ import annotations

import dataclasses
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


def backbone_mask(params) -> dict:
    """'head' for the classifier's parameters, 'backbone' for everything else."""
    flat = flax.traverse_util.flatten_dict(params)
    labels = {k: "head" if k[0] == "head" else "backbone" for k in flat}
    return flax.traverse_util.unflatten_dict(labels)


def make_finetune_step(model, params, mode: str, config: Config):
    """``(tx, step)`` for one way of training; ``step(params, batch_stats, opt_state, x, y)``."""
    adam = optim.adam(config.learning_rate)
    if mode == "frozen":
        tx = optax.multi_transform(
            {"head": adam, "backbone": optax.set_to_zero()}, backbone_mask(params)
        )
    else:
        tx = adam
    bn_train = mode != "frozen"

    @jax.jit
    def step(params, batch_stats, opt_state, xb, yb):
        def objective(p):
            variables = {"params": p, "batch_stats": batch_stats}
            if bn_train:
                logits, upd = model.apply(variables, xb, train=True, mutable=["batch_stats"])
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
    for _ in range(config.finetune_steps):
        idx = rng.choice(
            len(x), config.finetune_batch_size, replace=len(x) < config.finetune_batch_size
        )
        params, batch_stats, opt_state, _ = step(params, batch_stats, opt_state, x[idx], y[idx])
    return {"params": params, "batch_stats": batch_stats}


def train_and_evaluate(config: Config, workdir: str) -> dict:
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
