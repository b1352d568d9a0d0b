"""Class imbalance 1:50: plain cross-entropy vs class-weighted cross-entropy vs focal loss.

Claim (the course; Lin et al. 2017): trained on data where some classes are 50 times rarer than
others, a classifier with the plain cross-entropy under-predicts the rare classes; weighting the
loss by inverse class frequency (Keras's ``class_weight``) or down-weighting easy examples (focal
loss) recovers recall on the rare classes, measured by balanced accuracy and macro-F1 on a
balanced test set.

Data: offline MNIST. The ``minority`` digits keep 1/``ratio`` of their training examples (about 8
each at the default 1:50), the others keep all (about 400 each); the test set is the untouched,
balanced 1,000-digit test split. Model: the course's MnistCNN, Adam 1e-3.

Variants:

* ``ce`` -- :func:`jaxdl.losses.cross_entropy`;
* ``weighted_ce`` -- ``fit(..., class_weight={c: N / (K N_c)})``, the inverse-frequency weights
  (the scikit-learn / Keras "balanced" heuristic);
* ``focal`` -- :func:`jaxdl.losses.focal_loss` with ``gamma=2``, no class weights;
* ``weighted_focal`` -- focal loss with ``alpha`` set to the same inverse-frequency weights.

    python -m experiments.class_imbalance --workdir runs/class_imbalance
    python -m experiments.class_imbalance --workdir runs/class_imbalance_5seeds --seeds 0,1,2,3,4

Writes ``metrics.json`` (per-class recall, balanced accuracy, macro-F1 per run) and
``recall.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time

import jax
import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

from experiments.common import (
    new_figure,
    parse_config,
    save_figure,
    save_json,
    summarize_over_seeds,
)
from jaxdl import data, losses, models, optim, train


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "mnist_5k"
    ratio: int = 50
    minority: tuple[int, ...] = (5, 6, 7, 8, 9)
    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 1e-3
    gamma: float = 2.0
    variants: tuple[str, ...] = ("ce", "weighted_ce", "focal", "weighted_focal")
    seeds: tuple[int, ...] = (0, 1)


def get_config() -> Config:
    return Config()


def imbalanced_subset(x, y, minority, ratio, seed=0):
    """Keep every example of the majority classes and the first 1/ratio (at least 1) of each
    minority class, in a seeded random order."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        if c in minority:
            idx = idx[: max(1, len(idx) // ratio)]
        keep.append(idx)
    keep = np.sort(np.concatenate(keep))
    return x[keep], y[keep]


def predict(model, state, x, batch_size=500):
    variables = {"params": state.params}
    apply = jax.jit(lambda v, xb: model.apply(v, xb, train=False))
    return np.concatenate(
        [np.asarray(apply(variables, x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    ).argmax(-1)


def run(variant: str, config: Config, seed: int, train_data, test_data, weights, verbose) -> dict:
    model = models.MnistCNN()
    loss_fn, class_weight = None, None
    if variant == "weighted_ce":
        class_weight = {int(c): float(w) for c, w in enumerate(weights)}
    elif variant == "focal":
        loss_fn = functools.partial(losses.focal_loss, gamma=config.gamma)
    elif variant == "weighted_focal":
        loss_fn = functools.partial(losses.focal_loss, gamma=config.gamma, alpha=weights)
    elif variant != "ce":
        raise ValueError(f"unknown variant {variant!r}")
    start = time.perf_counter()
    history = train.fit(
        model,
        optim.adam(config.learning_rate),
        train_data=train_data,
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=seed,
        loss_fn=loss_fn,
        class_weight=class_weight,
        verbose=False,
    )
    x_test, y_test = test_data
    pred = predict(model, history.state, x_test)
    minority = list(config.minority)
    recall = recall_score(y_test, pred, average=None, labels=np.arange(10))
    result = {
        "variant": variant,
        "seed": seed,
        "accuracy": float(np.mean(pred == y_test)),
        "balanced_accuracy": float(balanced_accuracy_score(y_test, pred)),
        "macro_f1": float(f1_score(y_test, pred, average="macro")),
        "minority_recall": float(np.mean(recall[minority])),
        "majority_recall": float(np.mean(np.delete(recall, minority))),
        "per_class_recall": recall.tolist(),
        "final_train_loss": history.history["loss"][-1],
        "seconds": time.perf_counter() - start,
    }
    if verbose:
        print(
            f"{variant:15s} seed {seed}: balanced acc {result['balanced_accuracy']:.4f}  macro-F1 "
            f"{result['macro_f1']:.4f}  recall minority {result['minority_recall']:.4f} / "
            f"majority {result['majority_recall']:.4f}  ({result['seconds']:.0f} s)"
        )
    return result


def plot(summary: dict, config: Config, path: str) -> None:
    fig, ax = new_figure(figsize=(10, 4.5))
    width = 0.8 / len(summary)
    for i, (variant, s) in enumerate(summary.items()):
        ax.bar(np.arange(10) + i * width, s["per_class_recall"], width, label=variant)
    for c in config.minority:
        ax.axvspan(c - 0.1, c + 0.9, color="grey", alpha=0.1)
    ax.set_xticks(np.arange(10) + 0.4 - width / 2)
    ax.set_xticklabels([f"{c}{'*' if c in config.minority else ''}" for c in range(10)])
    ax.set_xlabel(f"digit (* = minority, 1:{config.ratio})")
    ax.set_ylabel("test recall (mean over seeds)")
    ax.legend(fontsize=8)
    ax.set_title("Per-class recall on the balanced test set")
    save_figure(fig, path)


def train_and_evaluate(config: Config, workdir: str, verbose: bool = True) -> dict:
    os.makedirs(workdir, exist_ok=True)
    x, y = data.load(config.dataset, "train")
    xs, ys = imbalanced_subset(x, y, config.minority, config.ratio)
    counts = np.bincount(ys, minlength=10)
    # Inverse-frequency weights N / (K N_c): a balanced set would get weight 1 everywhere.
    weights = (len(ys) / (10 * counts)).astype(np.float32)
    if verbose:
        print(
            f"training counts per class: {counts.tolist()}; weights {np.round(weights, 2).tolist()}"
        )
    test = data.load(config.dataset, "test")
    runs = [
        run(v, config, seed, (xs, ys), test, weights, verbose)
        for seed in config.seeds
        for v in config.variants
    ]
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "minority_recall", "majority_recall")
    summary = summarize_over_seeds(runs, config.variants, keys, std_keys=keys)
    for v in config.variants:
        rs = [r for r in runs if r["variant"] == v]
        summary[v]["per_class_recall"] = np.mean([r["per_class_recall"] for r in rs], 0).tolist()
    metrics = {
        "config": config,
        "train_counts": counts.tolist(),
        "class_weights": weights.tolist(),
        "summary": summary,
        "runs": runs,
    }
    save_json(metrics, os.path.join(workdir, "metrics.json"))
    plot(summary, config, os.path.join(workdir, "recall.png"))
    if verbose:
        print(f"\nmean (std) over seeds {config.seeds}:")
        for v, s in summary.items():
            print(
                f"{v:15s} balanced acc {s['balanced_accuracy']:.4f} ({s['balanced_accuracy_std']:.4f})"
                f"  macro-F1 {s['macro_f1']:.4f} ({s['macro_f1_std']:.4f})  minority recall "
                f"{s['minority_recall']:.4f}  majority recall {s['majority_recall']:.4f}"
            )
    return metrics


def main(argv=None) -> None:
    config, workdir = parse_config(get_config(), argv, description=__doc__.splitlines()[0])
    train_and_evaluate(config, workdir)


if __name__ == "__main__":
    main(sys.argv[1:])
