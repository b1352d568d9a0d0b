"""Small training problems shared by the multi-device subprocesses and the main test process."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import optim, train


class TinyNet(nn.Module):
    """Conv -> BatchNorm -> ReLU -> mean pool -> Dropout -> Dense: every piece whose data-parallel
    behaviour differs (batch statistics, dropout masks, per-example losses), small enough to
    compile in seconds. ``bn_axis_name`` synchronises BatchNorm under ``pmap``."""

    bn_axis_name: str | None = None
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(8, (3, 3), dtype=self.dtype)(x)  # (N, 8, 8, 8)
        x = nn.BatchNorm(
            use_running_average=not train, axis_name=self.bn_axis_name, dtype=self.dtype
        )(x)
        x = nn.relu(x).mean(axis=(1, 2))  # (N, 8)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(128, dtype=self.dtype)(x)  # (N, 128): big enough for FSDP to split
        return nn.Dense(10, dtype=self.dtype)(nn.relu(x))  # (N, 10)


def data(n: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int32) + 2 * (x[:, 0, 0, 0] > 0)
    return x, y


def fit_case(**kwargs) -> train.History:
    """Two epochs of momentum SGD on 100 examples in batches of 32: three full batches and a short
    one of 4 (not divisible by 8, so the sharded path replicates it)."""
    x, y = data()
    kwargs = {"epochs": 2, **kwargs}
    return train.fit(
        TinyNet(dropout_rate=0.25),
        optim.momentum(0.1, 0.9),
        train_data=(x, y),
        val_data=(x[:40], y[:40]),
        batch_size=32,
        verbose=False,
        **kwargs,
    )
