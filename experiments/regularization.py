"""Overfitting on a small training set, and four remedies: dropout, L2, augmentation, early stopping.

Claim (the course's "challenges & solutions"): trained on a few hundred examples, the MNIST CNN
fits its training set perfectly while its validation loss turns upwards; each regulariser narrows
that gap and raises test accuracy --

* **dropout** (Srivastava et al. 2014): ``MnistCNN(dropout_rate=0.5)``, the course's model;
* **L2** (coupled weight decay): the gradient of ``(lambda/2) ||w||^2`` over kernels only
  (:func:`jaxdl.losses.l2_penalty`'s mask), added to the gradient before Adam --
  ``optim.chain(optim.add_decayed_weights(lambda, mask), optim.adam(lr))``;
* **augmentation**: random 2-pixel translations and +-10 degree rotations on device
  (:mod:`jaxdl.data.augment`);
* **early stopping** (Keras semantics, patience 5, best weights restored).

The baseline and the L2/augmentation/early-stopping runs use no dropout, so each remedy acts
alone.

    python -m experiments.regularization --workdir runs/regularization
    python -m experiments.regularization --workdir runs/regularization_3seeds --seeds 0,1,2

Writes ``metrics.json`` (per-variant history and test metrics) and ``curves.png``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np

from experiments.common import (
    new_figure,
    parse_config,
    save_figure,
    save_json,
    summarize_over_seeds,
)
from jaxdl import data, losses, models, optim, train
from jaxdl.data import augment


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "mnist_5k"
    train_examples: int = 500
    validation_split: float = 0.1
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    dropout_rate: float = 0.5
    l2: float = 1e-3
    crop_padding: int = 2
    max_degrees: float = 10.0
    patience: int = 5
    variants: tuple[str, ...] = ("none", "dropout", "l2", "augment", "early_stopping")
    seeds: tuple[int, ...] = (0,)


def get_config() -> Config:
    return Config()


def run_variant(variant: str, config: Config, seed: int, splits: dict, verbose: bool) -> dict:
    dropout = config.dropout_rate if variant == "dropout" else 0.0
    model = models.MnistCNN(dropout_rate=dropout)
    if variant == "l2":
        # Coupled L2: d/dw (l2/2)||w||^2 = l2 * w joins the gradient, so Adam rescales it too.
        optimizer = optim.chain(
            optim.add_decayed_weights(config.l2, mask=losses.penalty_mask),
            optim.adam(config.learning_rate),
        )
    else:
        optimizer = optim.adam(config.learning_rate)
    aug = None
    if variant == "augment":
        aug = augment.compose(
            [augment.random_crop(config.crop_padding), augment.random_rotation(config.max_degrees)]
        )
    callbacks = []
    if variant == "early_stopping":
        callbacks.append(train.EarlyStopping(patience=config.patience, restore_best_weights=True))
    start = time.perf_counter()
    history = train.fit(
        model,
        optimizer,
        train_data=splits["train"],
        val_data=splits["validation"],
        epochs=config.epochs,
        batch_size=config.batch_size,
        callbacks=callbacks,
        seed=seed,
        augment=aug,
        verbose=False,
    )
    seconds = time.perf_counter() - start
    state = history.state
    final_train = train.evaluate(model, state, splits["train"])  # inference mode, no augmentation
    test = train.evaluate(model, state, splits["test"])
    h = history.history
    result = {
        "variant": variant,
        "seed": seed,
        "epochs_run": len(h["loss"]),
        "train_accuracy": final_train["accuracy"],
        "train_loss": final_train["loss"],
        "best_val_loss": min(h["val_loss"]),
        "final_val_loss": h["val_loss"][-1],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "gap": final_train["accuracy"] - test["accuracy"],
        "seconds": seconds,
        "history": h,
    }
    if verbose:
        print(
            f"{variant:15s} seed {seed}: epochs {result['epochs_run']:3d}  train acc "
            f"{result['train_accuracy']:.4f}  test acc {result['test_accuracy']:.4f}  test loss "
            f"{result['test_loss']:.4f}  val loss best/final {result['best_val_loss']:.3f}/"
            f"{result['final_val_loss']:.3f}  ({seconds:.0f} s)"
        )
    return result


def plot(runs: list[dict], path: str) -> None:
    fig, (ax_loss, ax_acc) = new_figure(1, 2, figsize=(12, 4.5))
    colors = {}
    for r in runs:
        if r["seed"] != runs[0]["seed"]:
            continue
        h = r["history"]
        epochs = np.arange(1, len(h["loss"]) + 1)
        (line,) = ax_loss.plot(epochs, h["loss"], lw=1, label=f"{r['variant']} train")
        colors[r["variant"]] = line.get_color()
        ax_loss.plot(epochs, h["val_loss"], ls="--", color=line.get_color(), label="  val")
        ax_acc.plot(epochs, h["val_accuracy"], color=line.get_color(), label=r["variant"])
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (solid: train, dashed: validation)")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=7, ncol=2)
    ax_acc.legend(fontsize=8)
    fig.suptitle("MnistCNN on a small training set: overfitting and its remedies")
    save_figure(fig, path)


def load_splits(config: Config) -> dict:
    x, y = data.load(config.dataset, "train", validation_split=config.validation_split)
    xv, yv = data.load(config.dataset, "validation", validation_split=config.validation_split)
    # A fixed random subset: the same few hundred examples for every variant and seed.
    idx = np.sort(np.random.default_rng(1234).permutation(len(x))[: config.train_examples])
    return {
        "train": (x[idx], y[idx]),
        "validation": (xv, yv),
        "test": data.load(config.dataset, "test"),
    }


def train_and_evaluate(config: Config, workdir: str, verbose: bool = True) -> dict:
    os.makedirs(workdir, exist_ok=True)
    splits = load_splits(config)
    runs = []
    for seed in config.seeds:
        for variant in config.variants:
            runs.append(run_variant(variant, config, seed, splits, verbose))
    keys = ("train_accuracy", "test_accuracy", "test_loss", "gap", "epochs_run")
    summary = summarize_over_seeds(runs, config.variants, keys, std_keys=("test_accuracy",))
    metrics = {
        "config": config,
        "train_examples": len(splits["train"][0]),
        "validation_examples": len(splits["validation"][0]),
        "test_examples": len(splits["test"][0]),
        "summary": summary,
        "runs": runs,
    }
    save_json(metrics, os.path.join(workdir, "metrics.json"))
    plot(runs, os.path.join(workdir, "curves.png"))
    if verbose:
        print(f"\nmean over seeds {config.seeds}:")
        for v, s in summary.items():
            print(
                f"{v:15s} train acc {s['train_accuracy']:.4f}  test acc {s['test_accuracy']:.4f} "
                f"(+-{s['test_accuracy_std']:.4f})  gap {s['gap']:.4f}  test loss {s['test_loss']:.4f}"
            )
    return metrics


def main(argv=None) -> None:
    config, workdir = parse_config(get_config(), argv, description=__doc__.splitlines()[0])
    train_and_evaluate(config, workdir)


if __name__ == "__main__":
    main(sys.argv[1:])
