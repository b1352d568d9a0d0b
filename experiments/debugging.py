"""The debugging toolkit on three planted bugs: what each tool shows.

Claim (the course's "debug common deep-learning issues"): each of the standard checks separates
some bugs from a healthy run, and none separates all of them -- so one runs all of them.

Setups (the MnistCNN layout of :class:`experiments.batchnorm.SmallCNN`, Adam, offline MNIST):

* ``healthy`` -- learning rate ``lr`` (1e-3, the course's);
* ``lr_10x`` -- the learning rate 10 times too high;
* ``missing_relu`` -- the ReLUs left out (``SmallCNN(relu=False)``): conv and dense layers
  compose into one linear map, only the max-pools stay non-linear;
* ``shuffled_labels`` -- the training labels randomly permuted (a data-pipeline bug).

Tools (:mod:`jaxdl.train.debug`), run on each setup:

1. :func:`~jaxdl.train.debug.overfit_one_batch` on ``overfit_examples`` examples;
2. :func:`~jaxdl.train.debug.lr_range_test` (Smith 2017) with Adam -- the learning rate it
   suggests, and the lowest smoothed loss it reaches;
3. a short :func:`jaxdl.train.fit` with the :class:`~jaxdl.train.debug.LayerStatsLogger`
   callback -- training loss, validation accuracy, dead-ReLU fraction and gradient norm per epoch;
4. :func:`~jaxdl.train.debug.find_first_nonfinite` over the first ``nan_steps`` steps.

    python -m experiments.debugging --workdir runs/debugging

Writes ``metrics.json``, ``lr_range.png`` (the four range tests) and ``training.png``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import numpy as np

from experiments.batchnorm import SmallCNN
from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import data, optim, train
from jaxdl.train import debug


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "mnist_5k"
    train_examples: int = 2000
    validation_split: float = 0.1
    lr: float = 1e-3
    epochs: int = 4
    batch_size: int = 64
    overfit_examples: int = 32
    overfit_steps: int = 300
    range_min_lr: float = 1e-5
    range_max_lr: float = 1.0
    range_steps: int = 80
    nan_steps: int = 60
    setups: tuple[str, ...] = ("healthy", "lr_10x", "missing_relu", "shuffled_labels")
    seed: int = 0


def get_config() -> Config:
    return Config()


def build(setup: str, config: Config, x, y):
    """Model, learning rate and training labels of a setup."""
    model = SmallCNN(relu=setup != "missing_relu")
    lr = config.lr * (10 if setup == "lr_10x" else 1)
    if setup == "shuffled_labels":
        y = np.random.default_rng(config.seed).permutation(y)
    return model, lr, y


def diagnose(setup: str, config: Config, splits: dict, verbose: bool) -> dict:
    x, y = splits["train"]
    model, lr, y = build(setup, config, x, y)
    out: dict = {"setup": setup, "learning_rate": lr}
    start = time.perf_counter()

    n = config.overfit_examples
    of = debug.overfit_one_batch(
        model, optim.adam(lr), (x[:n], y[:n]), steps=config.overfit_steps, seed=config.seed
    )
    out["overfit"] = dataclasses.asdict(of)

    rt = debug.lr_range_test(
        model,
        optim.adam,
        (x, y),
        min_lr=config.range_min_lr,
        max_lr=config.range_max_lr,
        num_steps=config.range_steps,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    out["lr_range"] = dataclasses.asdict(rt)
    out["lr_range"]["min_smoothed_loss"] = float(np.min(rt.smoothed))

    probe = (x[:256], y[:256])
    logger = debug.LayerStatsLogger(model, probe, relu_layers=("Conv_0", "Conv_1", "Dense_0"))
    hist = train.fit(
        model,
        optim.adam(lr),
        train_data=(x, y),
        val_data=splits["validation"],
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=config.seed,
        callbacks=[logger],
        verbose=False,
    )
    out["history"] = hist.history
    out["layer_stats"] = logger.records
    out["test"] = train.evaluate(model, hist.state, splits["test"])

    nf = debug.find_first_nonfinite(
        model, optim.adam(lr), (x, y), steps=config.nan_steps, batch_size=config.batch_size
    )
    out["nonfinite"] = None if nf is None else dataclasses.asdict(nf)
    out["seconds"] = time.perf_counter() - start

    if verbose:
        h = hist.history
        print(
            f"\n[{setup}] lr={lr:g}\n"
            f"  overfit one batch ({n} ex.): passed={of.passed} after {of.steps} steps, "
            f"final loss {of.final_loss:.4f}, acc {of.final_accuracy}\n"
            f"  LR range test: min smoothed loss {out['lr_range']['min_smoothed_loss']:.3f} at "
            f"lr {rt.min_loss_lr:.2g}; suggested lr {rt.suggestion:.2g} (configured {lr:g}, "
            f"{lr / rt.suggestion:.1f}x the suggestion)\n"
            f"  training: loss {[round(v, 3) for v in h['loss']]}\n"
            f"            val acc {[round(v, 3) for v in h['val_accuracy']]}, test acc "
            f"{out['test']['accuracy']:.4f}\n"
            f"            dead ReLU fraction {[round(v, 3) for v in h['dead_relu_fraction']]}\n"
            f"            grad norm {[round(v, 3) for v in h['grad_norm']]}\n"
            f"  NaN/Inf: {'none in ' + str(config.nan_steps) + ' steps' if nf is None else nf.message}"
            f"\n  ({out['seconds']:.0f} s)"
        )
    return out


def plot(results: list[dict], workdir: str) -> None:
    fig, ax = new_figure(figsize=(7, 4.5))
    for r in results:
        lr_r = r["lr_range"]
        ax.plot(lr_r["learning_rates"], lr_r["smoothed"], label=r["setup"])
    ax.axhline(math.log(10), color="grey", ls=":", label="ln 10 (chance)")
    ax.set_xscale("log")
    ax.set_ylim(0, 4)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.set_title("LR range test (Adam) per setup")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, os.path.join(workdir, "lr_range.png"))

    fig, axes = new_figure(1, 3, figsize=(16, 4.5))
    for r in results:
        h = r["history"]
        epochs = np.arange(1, len(h["loss"]) + 1)
        axes[0].plot(epochs, h["loss"], marker="o", label=r["setup"])
        axes[1].plot(epochs, h["val_accuracy"], marker="o", label=r["setup"])
        axes[2].plot(epochs, h["dead_relu_fraction"], marker="o", label=r["setup"])
    for ax, name in zip(
        axes, ("training loss", "validation accuracy", "dead ReLU fraction"), strict=True
    ):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, os.path.join(workdir, "training.png"))


def train_and_evaluate(config: Config, workdir: str, verbose: bool = True) -> dict:
    os.makedirs(workdir, exist_ok=True)
    x, y = data.load(config.dataset, "train", validation_split=config.validation_split)
    idx = np.sort(np.random.default_rng(1234).permutation(len(x))[: config.train_examples])
    splits = {
        "train": (x[idx], y[idx]),
        "validation": data.load(
            config.dataset, "validation", validation_split=config.validation_split
        ),
        "test": data.load(config.dataset, "test"),
    }
    results = [diagnose(s, config, splits, verbose) for s in config.setups]
    save_json({"config": config, "results": results}, os.path.join(workdir, "metrics.json"))
    plot(results, workdir)
    return {"config": config, "results": results}


def main(argv=None) -> None:
    config, workdir = parse_config(get_config(), argv, description=__doc__.splitlines()[0])
    train_and_evaluate(config, workdir)


if __name__ == "__main__":
    main(sys.argv[1:])
