"""The course's MNIST CNN, trained end to end with the course's recipe.

Recipe: Adam (learning rate 1e-3), batch 128, softmax cross-entropy, the callbacks
EarlyStopping(patience=5), ModelCheckpoint(save_best_only=True), ReduceLROnPlateau(factor=0.5,
patience=3). Offline it trains on ``mnist_5k`` (4,000 real MNIST digits, 10% of them held out for
validation, tested on the separate 1,000); ``--dataset mnist`` uses full MNIST through TFDS when
a network is available.

    python -m experiments.mnist_cnn --workdir runs/mnist_cnn
    python -m experiments.mnist_cnn --workdir runs/mnist_full --dataset mnist --epochs 12
    python -m experiments.mnist_cnn --workdir runs/mnist_f16 --precision float16
    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python -m experiments.mnist_cnn --workdir runs/mnist_dp8 --num_devices 8
    python -m jaxdl.train.launch --num_processes 2 --devices_per_process 4 -- \
        python -m experiments.mnist_cnn --workdir runs/mnist_mp --num_devices 8

``--num_devices`` trains data-parallel on that many devices (default: all of them when there are
several and the batch divides); ``--precision`` is ``float32``, ``bfloat16`` or ``float16``
(:mod:`jaxdl.train.precision`); ``--num_processes``/``--process_id``/``--coordinator_address``
start ``jax.distributed`` (the launcher sets them through the environment).

Writes into ``workdir``: ``metrics.json`` (history, test metrics, wall time), ``curves.png``
(loss and accuracy per epoch), ``checkpoints/`` (the best epoch, orbax) and ``resume/``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax

from experiments.common import distributed_main, loss_scale_metrics, plot_history, save_json
from jaxdl import data, models, train


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "mnist_5k"
    epochs: int = 12
    batch_size: int = 128
    learning_rate: float = 1e-3
    validation_split: float = 0.1
    seed: int = 0
    early_stopping_patience: int = 5
    reduce_lr_patience: int = 3
    reduce_lr_factor: float = 0.5
    num_devices: int | None = None  # None: every device when there are several
    precision: str = "float32"  # or "bfloat16", "float16" (dynamic loss scaling)
    num_processes: int = 0  # > 1: jax.distributed; 0: from the launcher's environment, else 1
    process_id: int = -1  # -1: from the environment
    coordinator_address: str = ""  # e.g. "localhost:12355"; "": from the environment


def get_config() -> Config:
    return Config()


def train_and_evaluate(config: Config, workdir: str, verbose: bool = True) -> dict:
    """Train, evaluate on the test split, and write metrics, plot and checkpoints to ``workdir``."""
    os.makedirs(workdir, exist_ok=True)
    x_train, y_train = data.load(config.dataset, "train", validation_split=config.validation_split)
    val = (
        data.load(config.dataset, "validation", validation_split=config.validation_split)
        if config.validation_split
        else None
    )
    x_test, y_test = data.load(config.dataset, "test")
    model = models.MnistCNN()
    callbacks = [
        train.EarlyStopping(patience=config.early_stopping_patience, restore_best_weights=True),
        train.ModelCheckpoint(save_best_only=True),
        train.ReduceLROnPlateau(factor=config.reduce_lr_factor, patience=config.reduce_lr_patience),
        train.TensorBoard(),  # <workdir>/tensorboard: `tensorboard --logdir <workdir>/tensorboard`
    ]
    start = time.perf_counter()
    history = train.fit(
        model,
        train.default_optimizer(config.learning_rate),
        train_data=(x_train, y_train),
        val_data=val,
        epochs=config.epochs,
        batch_size=config.batch_size,
        callbacks=callbacks,
        seed=config.seed,
        workdir=workdir,
        verbose=verbose,
        num_devices=config.num_devices,
        precision=config.precision,
    )
    train_seconds = time.perf_counter() - start
    test = train.evaluate(model, history.state, (x_test, y_test))
    metrics = {
        "config": config,
        "train_examples": len(x_train),
        "test_examples": len(x_test),
        "history": history.history,
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "train_seconds": train_seconds,
        "devices": len(jax.tree.leaves(history.state.params)[0].sharding.device_set),
    }
    metrics.update(loss_scale_metrics(history.history))
    save_json(metrics, os.path.join(workdir, "metrics.json"))
    plot_history(history.history, os.path.join(workdir, "curves.png"), "MnistCNN", log_loss=True)
    if verbose:
        print(
            f"test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f}) on {len(x_test)} "
            f"{config.dataset} test images; training took {train_seconds:.1f} s"
        )
    return metrics


def main(argv: list[str] | None = None) -> None:
    distributed_main(get_config, train_and_evaluate, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
