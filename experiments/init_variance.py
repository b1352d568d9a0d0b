"""Initialisation and the forward/backward variance balance through a deep MLP.

Claim (Glorot & Bengio 2010; He et al. 2015): with weights of variance ``1/fan_in``-ish scale the
signal keeps its size through depth; with ``Var(W) = 2/(fan_in + fan_out)`` (Xavier) a tanh
network keeps both the forward activations and the backward gradients roughly constant, with
``Var(W) = 2/fan_in`` (He) a ReLU network does; any other scale shrinks or grows them
geometrically -- ``(n Var(W) / 2)^L`` for ReLU -- and zero initialisation gives no signal at all.

We push a batch of real MNIST digits through a ``depth``-layer MLP of constant ``width`` (no
normalisation, zero biases) under each (initialiser, activation) pair and measure, at every layer
``l``, the variance of the pre-activations ``z_l`` (forward) and of the back-propagated gradient
``dL/dz_l`` of the cross-entropy loss (backward, read with Flax's ``Module.perturb``). No training.

    python -m experiments.init_variance --workdir runs/init_variance
    python -m experiments.init_variance --workdir runs/init_variance_deep --depth 100

Writes ``metrics.json`` (per-layer variances, summary ratios) and ``variance.png``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import data, losses
from jaxdl.nn import initializers


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "mnist_5k"
    depth: int = 50
    width: int = 256
    batch_size: int = 512
    small_stddev: float = 0.01
    inits: tuple[str, ...] = ("zeros", "small_normal", "xavier", "he")
    activations: tuple[str, ...] = ("tanh", "relu")
    seed: int = 0


def get_config() -> Config:
    return Config()


def make_init(name: str, config: Config):
    return {
        "zeros": initializers.zeros,
        "small_normal": lambda: initializers.normal(config.small_stddev),
        "xavier": initializers.glorot_normal,
        "he": initializers.he_normal,
    }[name]()


class DeepMLP(nn.Module):
    """``depth`` hidden Dense+activation layers of ``width`` units, then a 10-way readout."""

    depth: int
    width: int
    activation: str
    kernel_init: object

    @nn.compact
    def __call__(self, x):
        act = {"tanh": jnp.tanh, "relu": nn.relu}[self.activation]
        h = x.reshape(x.shape[0], -1)
        for l in range(self.depth):
            z = nn.Dense(self.width, kernel_init=self.kernel_init, name=f"dense_{l}")(h)
            # perturb adds a zero that we differentiate against: its gradient is dL/dz_l.
            z = self.perturb(f"z_{l}", z)
            self.sow("intermediates", f"z_{l}", z)
            h = act(z)
        return nn.Dense(10, kernel_init=self.kernel_init, name="readout")(h)


def measure(config: Config, init_name: str, activation: str, x, y) -> dict[str, list[float]]:
    model = DeepMLP(config.depth, config.width, activation, make_init(init_name, config))
    variables = model.init(jax.random.PRNGKey(config.seed), x[:1])
    params, perturbations = variables["params"], variables["perturbations"]

    def loss(perturbations):
        logits, inter = model.apply(
            {"params": params, "perturbations": perturbations}, x, mutable=["intermediates"]
        )
        return losses.cross_entropy(logits, y), inter["intermediates"]

    deltas, inter = jax.grad(loss, has_aux=True)(perturbations)
    forward = [float(jnp.var(inter[f"z_{l}"][0])) for l in range(config.depth)]
    backward = [float(jnp.var(deltas[f"z_{l}"])) for l in range(config.depth)]
    return {"forward": forward, "backward": backward}


def plot(results: dict, config: Config, path: str) -> None:
    acts = config.activations
    fig, axes = new_figure(2, len(acts), figsize=(5.5 * len(acts), 8), squeeze=False)
    floor = 1e-30  # zero variance cannot be drawn on a log axis: it is drawn at the floor
    layers = np.arange(1, config.depth + 1)
    for j, act in enumerate(acts):
        for i, direction in enumerate(("forward", "backward")):
            ax = axes[i][j]
            for init in config.inits:
                v = np.maximum(results[act][init][direction], floor)
                ax.plot(layers, v, label=init)
            ax.set_yscale("log")
            ax.set_xlabel("layer")
            what = "Var(z_l)" if direction == "forward" else "Var(dL/dz_l)"
            ax.set_ylabel(what)
            ax.set_title(f"{act}: {direction} ({what})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(
        f"{config.depth}-layer MLP, width {config.width}, MNIST batch of {config.batch_size}"
    )
    save_figure(fig, path)


def train_and_evaluate(config: Config, workdir: str, verbose: bool = True) -> dict:
    os.makedirs(workdir, exist_ok=True)
    x, y = data.load(config.dataset, "train")
    x = x[: config.batch_size]
    y = y[: config.batch_size]
    # Standardise the inputs: the derivations assume zero-mean, unit-variance inputs.
    x = (x - x.mean()) / x.std()
    results: dict = {act: {} for act in config.activations}
    summary = []
    for act in config.activations:
        for init in config.inits:
            r = measure(config, init, act, jnp.asarray(x), jnp.asarray(y))
            results[act][init] = r
            f, b = r["forward"], r["backward"]
            # Gains along each signal's direction of travel: forward from layer 1 to L, backward
            # from layer L down to 1. Balanced propagation is a gain near 1 in both.
            row = {
                "activation": act,
                "init": init,
                "var_z_first": f[0],
                "var_z_last": f[-1],
                "forward_gain": f[-1] / f[0] if f[0] else None,
                "var_grad_last": b[-1],
                "var_grad_first": b[0],
                "backward_gain": b[0] / b[-1] if b[-1] else None,
            }
            summary.append(row)
            if verbose:
                fmt = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731
                print(
                    f"{act:5s} {init:13s} Var(z): {fmt(f[0])} -> {fmt(f[-1])} "
                    f"(gain {fmt(row['forward_gain'])}); Var(dL/dz): {fmt(b[-1])} -> {fmt(b[0])} "
                    f"(gain {fmt(row['backward_gain'])})"
                )
    # The ReLU prediction for a Gaussian init of variance s^2: each layer multiplies Var(z) by
    # width * s^2 / 2 (half the units are zeroed, E[relu(z)^2] = Var(z)/2).
    predicted = {
        "relu_small_normal_per_layer": config.width * config.small_stddev**2 / 2,
        "relu_xavier_per_layer": config.width * (2 / (2 * config.width)) / 2,
        "relu_he_per_layer": config.width * (2 / config.width) / 2,
    }
    for row in summary:
        if row["activation"] == "relu" and row["forward_gain"]:
            row["measured_per_layer"] = row["forward_gain"] ** (1 / (config.depth - 1))
    metrics = {"config": config, "summary": summary, "per_layer": results, "predicted": predicted}
    save_json(metrics, os.path.join(workdir, "metrics.json"))
    plot(results, config, os.path.join(workdir, "variance.png"))
    if verbose:
        for row in summary:
            if "measured_per_layer" in row:
                key = f"relu_{row['init']}_per_layer"
                print(
                    f"relu/{row['init']}: measured factor per layer "
                    f"{row['measured_per_layer']:.4f}, predicted {predicted.get(key, math.nan):.4f}"
                )
    return metrics


def main(argv=None) -> None:
    config, workdir = parse_config(get_config(), argv, description=__doc__)
    train_and_evaluate(config, workdir)


if __name__ == "__main__":
    main(sys.argv[1:])
