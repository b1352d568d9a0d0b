"""EfficientNet's scaling table measured from our models: parameters and FLOPs of B0-B7.

Claim (Tan & Le 2019, Table 2): B0 ... B7 have 5.3M ... 66M parameters and cost 0.39B ... 37B
FLOPs (multiply-adds) at their resolutions 224 ... 600, and compound scaling with
``alpha * beta**2 * gamma**2 ~= 2`` makes FLOPs grow about ``2**phi``.

For every variant we build :func:`jaxdl.models.EfficientNetB0` ... ``B7`` abstractly (nothing is
allocated), count parameters, and take the forward pass's FLOPs from XLA's cost analysis of the
lowered program at batch 1 and the variant's resolution (halved: XLA counts a multiply-add as two
FLOPs). The same is done for the *un-rounded* compound family ``d = 1.2**phi, w = 1.1**phi,
r = 224 * 1.15**phi`` to check the ``2**phi`` law. Nothing is trained; no accuracy is claimed.

    python -m experiments.efficientnet_scaling --workdir runs/efficientnet_scaling
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import models
from jaxdl.models import efficientnet as eff

# The paper's Table 2: (parameters in millions, FLOPs in billions).
PAPER = {
    "b0": (5.3, 0.39),
    "b1": (7.8, 0.70),
    "b2": (9.2, 1.0),
    "b3": (12, 1.8),
    "b4": (19, 4.2),
    "b5": (30, 9.9),
    "b6": (43, 19),
    "b7": (66, 37),
}


@dataclasses.dataclass
class Config:
    variants: tuple[str, ...] = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7")
    phis: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)  # the un-rounded compound family
    num_classes: int = 1000


def get_config() -> Config:
    return Config()


def measure(model, resolution: int) -> tuple[int, float]:
    s = models.summary(model, (1, resolution, resolution, 3), depth=1)
    return s.total_params, s.flops / 2  # multiply-adds


def train_and_evaluate(config: Config, workdir: str) -> dict:
    table = {}
    for v in tqdm(config.variants, desc="variants"):
        t0 = time.time()
        model = eff.efficientnet(v, num_classes=config.num_classes)
        params, macs = measure(model, model.resolution)
        paper_params, paper_flops = PAPER[v]
        table[v] = {
            "width": model.width,
            "depth": model.depth,
            "resolution": model.resolution,
            "blocks": sum(s.repeats for s in model.scaled_stages),
            "params": params,
            "gmacs": macs / 1e9,
            "paper_params_m": paper_params,
            "paper_gflops": paper_flops,
            "seconds": time.time() - t0,
        }
    compound = {}
    for phi in tqdm(config.phis, desc="phi"):
        c = eff.compound_scaling(phi)
        model = models.EfficientNet(width=c.width, depth=c.depth, num_classes=config.num_classes)
        params, macs = measure(model, c.resolution)
        compound[phi] = {
            "width": c.width,
            "depth": c.depth,
            "resolution": c.resolution,
            "params": params,
            "gmacs": macs / 1e9,
            "predicted_factor": c.flops_factor,
        }
    base = compound[min(compound)]["gmacs"] if compound else None
    for row in compound.values():
        row["measured_factor"] = row["gmacs"] / base

    print(
        f"{'':4s} {'w':>4s} {'d':>4s} {'res':>4s} {'blocks':>6s} {'params':>12s} {'paper':>6s} "
        f"{'GMACs':>7s} {'paper':>6s}"
    )
    for v, r in table.items():
        print(
            f"{v:4s} {r['width']:4.1f} {r['depth']:4.1f} {r['resolution']:4d} {r['blocks']:6d} "
            f"{r['params']:12,d} {r['paper_params_m']:5.1f}M {r['gmacs']:7.3f} {r['paper_gflops']:5.2f}B"
        )
    print("compound family: phi, (w, d, r), GMACs, measured factor vs 1.92**phi")
    for phi, r in compound.items():
        print(
            f"  {phi}  ({r['width']:.3f}, {r['depth']:.3f}, {r['resolution']})  {r['gmacs']:.3f}  "
            f"{r['measured_factor']:.2f} vs {r['predicted_factor']:.2f}"
        )
    metrics = {"config": config, "variants": table, "compound": compound}
    save_json(metrics, f"{workdir}/metrics.json")
    plot(table, compound, workdir)
    return metrics


def plot(table: dict, compound: dict, workdir: str) -> None:
    fig, axes = new_figure(1, 3, figsize=(16, 4.8))
    params = np.array([r["params"] / 1e6 for r in table.values()])
    gmacs = np.array([r["gmacs"] for r in table.values()])
    res = np.array([r["resolution"] for r in table.values()])
    ax = axes[0]
    sc = ax.scatter(gmacs, params, c=res, cmap="viridis", s=60, zorder=3, label="ours (measured)")
    ax.plot(gmacs, params, color="grey", lw=0.8)
    ax.scatter(
        [r["paper_gflops"] for r in table.values()],
        [r["paper_params_m"] for r in table.values()],
        marker="x",
        color="C3",
        label="paper Table 2",
    )
    for v, r in table.items():
        ax.annotate(
            v.upper(), (r["gmacs"], r["params"] / 1e6), textcoords="offset points", xytext=(4, -10)
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="FLOPs (billions of multiply-adds)",
        ylabel="parameters (M)",
        title="EfficientNet B0-B7: params vs FLOPs",
    )
    fig.colorbar(sc, ax=ax, label="resolution (px)")
    ax.legend(loc="upper left")
    ax = axes[1]
    ax.plot(res, gmacs, "o-", label="FLOPs (B MACs)")
    ax.plot(res, params, "s-", label="params (M)")
    ax.set(xlabel="resolution (px)", yscale="log", title="Cost vs resolution")
    ax.legend()
    ax = axes[2]
    phis = np.array(list(compound))
    ax.semilogy(
        phis,
        [compound[p]["measured_factor"] for p in phis],
        "o-",
        label="measured FLOPs / FLOPs(phi=0)",
    )
    ax.semilogy(
        phis,
        [compound[p]["predicted_factor"] for p in phis],
        "--",
        label="(alpha beta^2 gamma^2)^phi",
    )
    ax.semilogy(phis, 2.0**phis, ":", label="2^phi")
    ax.set(xlabel="phi", title="Un-rounded compound family (1.2, 1.1, 1.15)")
    ax.legend()
    save_figure(fig, f"{workdir}/efficientnet_scaling.png")


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
