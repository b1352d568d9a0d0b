"""A CIFAR ResNet trained with ``fit`` on one or many devices, in float32, bfloat16 or float16.

Claim: data-parallel training over ``--num_devices`` devices (jit + ``NamedSharding``, batch split
over a ``"data"`` mesh axis) follows the single-device run to float32 rounding, and mixed precision
(``--precision bfloat16`` / ``float16`` with dynamic loss scaling) reaches the same accuracy. It
measures training throughput (examples/s over the epochs after the first, which includes
compilation) so the float32/bfloat16/float16 comparison can be made on a GPU.

Default (offline, bounded CPU time): ResNet-20 of width 8 on the packaged MNIST subset padded to
32x32 (2,000 images, 3 epochs). Full CIFAR-10 with a network, e.g. on a GPU::

    python -m experiments.cifar_resnet --workdir runs/cifar_r20 --dataset cifar10 \\
        --num_filters 16 --train_size 0 --test_size 0 --epochs 30 --precision bfloat16

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python -m experiments.cifar_resnet --workdir runs/cifar_dp8 --num_devices 8

Multi-process: ``python -m jaxdl.train.launch --num_processes 2 --devices_per_process 4 --
python -m experiments.cifar_resnet --workdir runs/cifar_mp``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax
import numpy as np

from experiments.common import distributed_main, loss_scale_metrics, plot_history, save_json
from jaxdl import data, models, optim, train


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "mnist_5k"  # or "cifar10" (TFDS, needs a network)
    depth: int = 20
    num_filters: int = 8  # the paper's CIFAR width is 16
    train_size: int = 2000  # 0: the whole training split
    test_size: int = 1000  # 0: the whole test split
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 0.05
    momentum: float = 0.9
    seed: int = 0
    num_devices: int | None = None  # None: every device when there are several
    shard_params: bool = False  # FSDP: split parameters and optimizer state over the devices
    precision: str = "float32"  # or "bfloat16", "float16"
    num_processes: int = 0  # > 1: jax.distributed; 0: from the launcher's environment, else 1
    process_id: int = -1
    coordinator_address: str = ""


def get_config() -> Config:
    return Config()


def load_data(config: Config):
    """NHWC float32 images normalised by the training mean/std; MNIST zero-padded 28 -> 32."""
    x, y = data.load(config.dataset, "train")
    xt, yt = data.load(config.dataset, "test")
    rng = np.random.default_rng(1234)  # random subsets: the packaged MNIST split is class-ordered
    if config.train_size:
        idx = rng.permutation(len(x))[: config.train_size]
        x, y = x[idx], y[idx]
    if config.test_size:
        idx = rng.permutation(len(xt))[: config.test_size]
        xt, yt = xt[idx], yt[idx]
    if x.shape[1] == 28:
        pad = ((0, 0), (2, 2), (2, 2), (0, 0))
        x, xt = np.pad(x, pad), np.pad(xt, pad)
    mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
    return ((x - mean) / std).astype(np.float32), y, ((xt - mean) / std).astype(np.float32), yt


class EpochTimer(train.Callback):
    """Wall time at the end of each epoch (the first includes compilation)."""

    def __init__(self):
        self.times: list[float] = []
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs, trainer):
        jax.block_until_ready(trainer.state.params)
        self.times.append(time.perf_counter() - self.start)


def train_and_evaluate(config: Config, workdir: str, verbose: bool = True) -> dict:
    os.makedirs(workdir, exist_ok=True)
    x, y, xt, yt = load_data(config)
    model = models.resnet_cifar(
        config.depth, num_filters=config.num_filters, input_channels=x.shape[-1]
    )
    timer = EpochTimer()
    history = train.fit(
        model,
        optim.momentum(config.learning_rate, config.momentum),
        train_data=(x, y),
        val_data=(xt, yt),
        epochs=config.epochs,
        batch_size=config.batch_size,
        callbacks=[timer],
        seed=config.seed,
        verbose=verbose,
        drop_remainder=True,
        num_devices=config.num_devices,
        shard_params=config.shard_params,
        precision=config.precision,
    )
    steady = np.diff(timer.times)  # epochs after the first: no compilation
    per_epoch = (len(x) // config.batch_size) * config.batch_size
    test = train.evaluate(model, history.state, (xt, yt))
    metrics = {
        "config": config,
        "devices": len(jax.tree.leaves(history.state.params)[0].sharding.device_set),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "history": history.history,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "epoch_seconds": timer.times,
        "examples_per_second": float(per_epoch / np.median(steady)) if len(steady) else None,
        "first_epoch_seconds": timer.times[0],
    }
    metrics.update(loss_scale_metrics(history.history))
    if jax.process_index() == 0:
        save_json(metrics, os.path.join(workdir, "metrics.json"))
        title = (
            f"ResNet-{config.depth} on {config.dataset}: {metrics['devices']} device(s), "
            f"{config.precision}"
        )
        plot_history(history.history, os.path.join(workdir, "curves.png"), title, "test")
    if verbose:
        print(
            f"test accuracy {test['accuracy']:.4f} on {metrics['devices']} device(s) in "
            f"{config.precision}; {metrics['examples_per_second'] or float('nan'):.0f} examples/s "
            f"after the first epoch ({metrics['first_epoch_seconds']:.1f} s with compilation)"
        )
    return metrics


def main(argv: list[str] | None = None) -> None:
    distributed_main(get_config, train_and_evaluate, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
