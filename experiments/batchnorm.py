"""BatchNorm: with and without, at a normal and at a large learning rate.

Claim (Ioffe & Szegedy 2015; the course): batch normalisation speeds up training and lets a
network train at learning rates at which the same network without it diverges or stalls.

The model is the course's MNIST CNN layout (conv 32 - pool - conv 64 - pool - dense 128 -
dense 10) with, in the BatchNorm variant, a ``BatchNorm`` after each conv and the hidden dense
layer (before the ReLU; their biases dropped, as BatchNorm's offset replaces them). Trained with
SGD + momentum 0.9 on offline MNIST (3,600 training digits), at each learning rate of
``learning_rates``. A run whose loss becomes NaN/Inf is stopped by ``fit`` and reported as
diverged, with the step.

    python -m experiments.batchnorm --workdir runs/batchnorm
    python -m experiments.batchnorm --workdir runs/batchnorm_long --epochs 20 --learning_rates 0.01,0.1,1.0

Writes ``metrics.json`` and ``curves.png``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import flax.linen as nn
import jax
import numpy as np

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import data, optim, train
from jaxdl.nn.pooling import max_pool


class SmallCNN(nn.Module):
    """The MnistCNN layout with switches for BatchNorm and for the ReLUs (a planted bug).

    Shapes: (N, 28, 28, 1) -> (N, 13, 13, 32) -> (N, 5, 5, 64) -> (N, 1600) -> (N, 128) -> (N, 10).
    """

    batchnorm: bool = False
    relu: bool = True
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        act = nn.relu if self.relu else (lambda v: v)

        def norm(h):
            if not self.batchnorm:
                return h
            return nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)

        bias = not self.batchnorm
        x = max_pool(act(norm(nn.Conv(32, (3, 3), padding="VALID", use_bias=bias)(x))))
        x = max_pool(act(norm(nn.Conv(64, (3, 3), padding="VALID", use_bias=bias)(x))))
        x = x.reshape(x.shape[0], -1)
        x = act(norm(nn.Dense(128, use_bias=bias)(x)))
        return nn.Dense(self.num_classes)(x)


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "mnist_5k"
    validation_split: float = 0.1
    epochs: int = 6
    batch_size: int = 128
    learning_rates: tuple[float, ...] = (0.02, 0.5)
    momentum: float = 0.9
    seed: int = 0


def get_config() -> Config:
    return Config()


def run(config: Config, batchnorm: bool, lr: float, splits: dict, verbose: bool) -> dict:
    model = SmallCNN(batchnorm=batchnorm)
    start = time.perf_counter()
    result = {"batchnorm": batchnorm, "learning_rate": lr}
    try:
        history = train.fit(
            model,
            optim.momentum(lr, beta=config.momentum),
            train_data=splits["train"],
            val_data=splits["validation"],
            epochs=config.epochs,
            batch_size=config.batch_size,
            seed=config.seed,
            verbose=False,
        )
        test = train.evaluate(model, history.state, splits["test"])
        result.update(
            diverged=None,
            history=history.history,
            test_accuracy=test["accuracy"],
            test_loss=test["loss"],
            final_train_loss=history.history["loss"][-1],
            epoch1_val_accuracy=history.history["val_accuracy"][0],
        )
    except train.NonFiniteLossError as e:
        result.update(diverged=str(e).split(";")[0], history=None, test_accuracy=None)
    result["seconds"] = time.perf_counter() - start
    if verbose:
        name = "BatchNorm" if batchnorm else "plain"
        if result["diverged"]:
            print(f"{name:9s} lr={lr:<5g} DIVERGED: {result['diverged']}")
        else:
            print(
                f"{name:9s} lr={lr:<5g} epoch-1 val acc {result['epoch1_val_accuracy']:.4f}  "
                f"final train loss {result['final_train_loss']:.4f}  test acc "
                f"{result['test_accuracy']:.4f}  ({result['seconds']:.0f} s)"
            )
    return result


def plot(runs: list[dict], path: str) -> None:
    fig, (ax_loss, ax_acc) = new_figure(1, 2, figsize=(12, 4.5))
    for r in runs:
        label = f"{'BN' if r['batchnorm'] else 'plain'}, lr={r['learning_rate']:g}"
        ls = "-" if r["batchnorm"] else "--"
        if r["history"] is None:
            ax_loss.plot([], [], ls=ls, label=f"{label} (diverged)")
            continue
        epochs = np.arange(1, len(r["history"]["loss"]) + 1)
        ax_loss.plot(epochs, r["history"]["loss"], ls=ls, marker="o", label=label)
        ax_acc.plot(epochs, r["history"]["val_accuracy"], ls=ls, marker="o", label=label)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("training loss")
    ax_acc.set_ylabel("validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("CNN with and without BatchNorm, SGD + momentum")
    save_figure(fig, path)


def train_and_evaluate(config: Config, workdir: str, verbose: bool = True) -> dict:
    os.makedirs(workdir, exist_ok=True)
    splits = {
        "train": data.load(config.dataset, "train", validation_split=config.validation_split),
        "validation": data.load(
            config.dataset, "validation", validation_split=config.validation_split
        ),
        "test": data.load(config.dataset, "test"),
    }
    runs = [
        run(config, bn, lr, splits, verbose) for lr in config.learning_rates for bn in (False, True)
    ]
    params = {
        bn: sum(
            x.size
            for x in jax.tree.leaves(
                SmallCNN(batchnorm=bn).init(jax.random.PRNGKey(0), splits["test"][0][:1])["params"]
            )
        )
        for bn in (False, True)
    }
    metrics = {
        "config": config,
        "parameters": {"plain": params[False], "batchnorm": params[True]},
        "runs": runs,
    }
    save_json(metrics, os.path.join(workdir, "metrics.json"))
    plot(runs, os.path.join(workdir, "curves.png"))
    return metrics


def main(argv=None) -> None:
    config, workdir = parse_config(get_config(), argv, description=__doc__.splitlines()[0])
    train_and_evaluate(config, workdir)


if __name__ == "__main__":
    main(sys.argv[1:])
