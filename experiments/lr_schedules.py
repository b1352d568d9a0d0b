"""Learning-rate schedules and gradient clipping on the MNIST CNN.

Claim (the course's "training best practices"): decaying the learning rate over training (step /
exponential, cosine; Loshchilov & Hutter 2017) ends at a lower training loss and equal or better
test accuracy than a constant rate; a linear warm-up (Goyal et al. 2017) protects the first steps,
when Adam's second-moment estimate is still poor; clipping the global gradient norm (Pascanu et
al. 2013) keeps a too-large constant rate from wrecking training.

Runs (Adam unless named sgd, the course's MnistCNN, offline MNIST with 3,600 training digits):

* ``constant`` -- ``peak_lr`` throughout;
* ``exponential`` -- ``peak_lr * 0.1^(t / T)`` (:func:`jaxdl.optim.exponential_decay`);
* ``cosine`` -- :func:`jaxdl.optim.cosine_decay` from ``peak_lr`` to 0 over the ``T`` steps;
* ``warmup_cosine`` -- linear warm-up over ``warmup_epochs`` then cosine
  (:func:`jaxdl.optim.warmup_cosine_decay`);
* ``high_constant`` and ``high_constant_clipped`` -- a constant ``high_lr`` without and with
  :func:`jaxdl.optim.clip_by_global_norm` (``clip_norm``) before Adam;
* ``sgd_high`` and ``sgd_high_clipped`` -- the same pair for SGD with momentum 0.9 at
  ``sgd_high_lr``. Adam divides by a running gradient scale, so clipping before it changes less
  than before SGD, whose step grows with the gradient.

    python -m experiments.lr_schedules --workdir runs/lr_schedules
    python -m experiments.lr_schedules --workdir runs/lr_schedules_long --epochs 20

Writes ``metrics.json`` and ``curves.png`` (schedules, training loss, validation accuracy).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import data, models, optim, train
from jaxdl.data.batching import num_batches


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "mnist_5k"
    validation_split: float = 0.1
    epochs: int = 6
    batch_size: int = 128
    peak_lr: float = 2e-3
    warmup_epochs: float = 1.0
    high_lr: float = 2e-2
    clip_norm: float = 1.0
    sgd_high_lr: float = 0.5
    variants: tuple[str, ...] = (
        "constant",
        "exponential",
        "cosine",
        "warmup_cosine",
        "high_constant",
        "high_constant_clipped",
        "sgd_high",
        "sgd_high_clipped",
    )
    seed: int = 0


def get_config() -> Config:
    return Config()


def make_schedule(variant: str, config: Config, total_steps: int, steps_per_epoch: int):
    peak = config.peak_lr
    if variant == "constant":
        return optim.constant(peak)
    if variant == "exponential":
        return optim.exponential_decay(peak, transition_steps=total_steps, decay_rate=0.1)
    if variant == "cosine":
        return optim.cosine_decay(peak, decay_steps=total_steps)
    if variant == "warmup_cosine":
        warmup = max(1, int(config.warmup_epochs * steps_per_epoch))
        return optim.warmup_cosine_decay(0.0, peak, warmup_steps=warmup, decay_steps=total_steps)
    if variant in ("high_constant", "high_constant_clipped"):
        return optim.constant(config.high_lr)
    if variant in ("sgd_high", "sgd_high_clipped"):
        return optim.constant(config.sgd_high_lr)
    raise ValueError(f"unknown variant {variant!r}")


def make_optimizer(variant: str, schedule, config: Config):
    base = optim.momentum(schedule, beta=0.9) if variant.startswith("sgd") else optim.adam(schedule)
    if variant.endswith("_clipped"):
        # Clip first: the optimizer then sees gradients of global norm <= clip_norm.
        return optim.chain(optim.clip_by_global_norm(config.clip_norm), base)
    return base


def train_and_evaluate(config: Config, workdir: str, verbose: bool = True) -> dict:
    os.makedirs(workdir, exist_ok=True)
    train_data = data.load(config.dataset, "train", validation_split=config.validation_split)
    val_data = data.load(config.dataset, "validation", validation_split=config.validation_split)
    test_data = data.load(config.dataset, "test")
    steps_per_epoch = num_batches(len(train_data[0]), config.batch_size, drop_remainder=False)
    total = steps_per_epoch * config.epochs
    model = models.MnistCNN()
    runs = []
    for variant in config.variants:
        schedule = make_schedule(variant, config, total, steps_per_epoch)
        start = time.perf_counter()
        result = {"variant": variant, "lr": [float(schedule(t)) for t in range(total)]}
        try:
            history = train.fit(
                model,
                make_optimizer(variant, schedule, config),
                train_data=train_data,
                val_data=val_data,
                epochs=config.epochs,
                batch_size=config.batch_size,
                seed=config.seed,
                verbose=False,
            )
            test = train.evaluate(model, history.state, test_data)
            h = history.history
            result.update(
                diverged=None,
                history=h,
                final_train_loss=h["loss"][-1],
                final_val_accuracy=h["val_accuracy"][-1],
                test_accuracy=test["accuracy"],
                test_loss=test["loss"],
            )
        except train.NonFiniteLossError as e:
            result.update(diverged=str(e).split(";")[0], history=None, test_accuracy=None)
        result["seconds"] = time.perf_counter() - start
        runs.append(result)
        if verbose:
            if result["diverged"]:
                print(f"{variant:22s} DIVERGED: {result['diverged']}")
            else:
                print(
                    f"{variant:22s} final train loss {result['final_train_loss']:.4f}  val acc "
                    f"{result['final_val_accuracy']:.4f}  test acc {result['test_accuracy']:.4f}  "
                    f"test loss {result['test_loss']:.4f}  ({result['seconds']:.0f} s)"
                )
    metrics = {"config": config, "steps_per_epoch": steps_per_epoch, "runs": runs}
    save_json(metrics, os.path.join(workdir, "metrics.json"))
    plot(runs, steps_per_epoch, os.path.join(workdir, "curves.png"))
    return metrics


def plot(runs: list[dict], steps_per_epoch: int, path: str) -> None:
    fig, (ax_lr, ax_loss, ax_acc) = new_figure(1, 3, figsize=(16, 4.5))
    for r in runs:
        (line,) = ax_lr.plot(np.arange(len(r["lr"])) / steps_per_epoch, r["lr"], label=r["variant"])
        if r["history"] is None:
            continue
        epochs = np.arange(1, len(r["history"]["loss"]) + 1)
        ax_loss.plot(epochs, r["history"]["loss"], marker="o", color=line.get_color())
        ax_acc.plot(epochs, r["history"]["val_accuracy"], marker="o", color=line.get_color())
    ax_lr.set_yscale("log")
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate")
    ax_lr.legend(fontsize=8)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("training loss")
    ax_acc.set_ylabel("validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
    for ax in (ax_lr, ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle("MnistCNN: learning-rate schedules and gradient clipping")
    save_figure(fig, path)


def main(argv=None) -> None:
    config, workdir = parse_config(get_config(), argv, description=__doc__.splitlines()[0])
    train_and_evaluate(config, workdir)


if __name__ == "__main__":
    main(sys.argv[1:])
