"""The model zoo's train and inference steps: jaxdl against PyTorch, one process per measurement.

Workloads, batch 128 of 32x32x3 images, 10 classes, synthetic data made once by NumPy (the same
arrays for both frameworks; PyTorch gets them transposed to NCHW before timing):

* ``resnet20``, ``resnet56``: the CIFAR ResNets of He et al. (2015), option-A shortcuts
  (:func:`jaxdl.models.resnet_cifar`);
* ``densenet100``: DenseNet-BC, L = 100, k = 12 (Huang et al. 2017; :func:`jaxdl.models.densenet_cifar`);
* ``efficientnet_b0``: EfficientNet-B0 (Tan & Le 2019) at 32x32 (:func:`jaxdl.models.EfficientNetB0`;
  PyTorch: ``torchvision.models.efficientnet_b0(num_classes=10)``, the same architecture).

``train``: forward, cross-entropy, backward and SGD with momentum 0.9 (lr 0.1), BatchNorm in
training mode, dropout and stochastic depth as each model defines them; jaxdl through
:func:`jaxdl.train.make_train_step` (one donated ``jax.jit``), PyTorch eager with
``torch.optim.SGD``. ``infer``: the forward pass in inference mode (running statistics, no dropout).

Timing as the harness (:func:`experiments.benchmarks._harness.time_steps`): first call alone,
warm-up, then blocks of steps each ended by a synchronisation; the median block's images/s.
GFLOP/s uses the analytic count of the multiply-adds of every convolution and dense layer,
read off the model's jaxpr (``2 * prod(output) * prod(window) * C_in / groups`` per convolution,
``2 m k n`` per matrix product), three times the forward count for a train step. The CPU's
matmul peak is measured in the same run (a 2048^3 float32 ``jnp.dot``), so every row shows its
distance to the limit.

    python -m experiments.benchmarks.zoo_step --workdir runs/zoo_step
    python -m experiments.benchmarks.zoo_step --workdir runs/zoo_step --models resnet20 --modes train

Writes ``results.json``, ``table.md`` and ``throughput.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from experiments.benchmarks._harness import matmul_peak_subprocess, run_meta

MODELS = ("resnet20", "resnet56", "densenet100", "efficientnet_b0")
MODES = ("train", "infer")
FRAMEWORKS = ("jaxdl", "torch")


@dataclasses.dataclass(frozen=True)
class Config:
    models: tuple[str, ...] = MODELS
    modes: tuple[str, ...] = MODES
    frameworks: tuple[str, ...] = FRAMEWORKS
    batch_size: int = 128
    steps: int = 5  # steps per timed block
    repeats: int = 5  # timed blocks
    warmup: int = 2
    seed: int = 0
    timeout_s: int = 900


def get_config() -> Config:
    return Config()


def _data(cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cfg["seed"])
    b = cfg["batch_size"]
    return rng.random((b, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, b).astype(np.int32)


# ---- jaxdl -----------------------------------------------------------------------------------


def jaxdl_model(name: str):
    from jaxdl import models

    if name.startswith("resnet"):
        return models.resnet_cifar(int(name[len("resnet") :]))
    if name == "densenet100":
        return models.densenet_cifar(100, 12)
    if name == "efficientnet_b0":
        return models.EfficientNetB0(num_classes=10)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def forward_flops(model, variables, x) -> float:
    """Analytic FLOPs of one forward pass per example: every convolution and matrix product of the
    jaxpr. Counted on the same network built with ``flax.linen.Conv`` (same parameters), whose
    convolutions are all ``conv_general_dilated``: jaxdl's depthwise layers are multiply-adds
    that would otherwise escape the count."""
    import flax.linen as fnn
    import jax
    import jax.extend

    if hasattr(model, "conv"):
        model = model.clone(conv=fnn.Conv)

    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    total = 0.0

    def walk(jpr):
        nonlocal total
        for eqn in jpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                lhs, rhs = (v.aval for v in eqn.invars[:2])
                out = eqn.outvars[0].aval
                dn = eqn.params["dimension_numbers"]
                window = np.prod([rhs.shape[d] for d in dn.rhs_spec[2:]])
                c_in = rhs.shape[dn.rhs_spec[1]]  # per group
                total += 2.0 * np.prod(out.shape) * window * c_in
            elif eqn.primitive.name == "dot_general":
                lhs, rhs = (v.aval for v in eqn.invars[:2])
                (lc, _), (lb, _) = eqn.params["dimension_numbers"]
                k = np.prod([lhs.shape[d] for d in lc])
                total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * k
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return total / x.shape[0]


def run_jaxdl(name: str, mode: str, cfg: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from experiments.benchmarks._harness import time_steps
    from jaxdl import optim, train

    x_np, y_np = _data(cfg)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    model = jaxdl_model(name)
    opt = optim.sgd(0.1, momentum=0.9)
    state = train.create_train_state(model, opt, x, cfg["seed"])
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    flops = forward_flops(model, variables, x)
    if mode == "infer":
        forward = train.jit_inference(lambda v, x: model.apply(v, x, train=False), model)

        def step():
            return forward(variables, x)

    else:
        flops *= 3
        step_fn = train.make_train_step(model, opt)
        holder = {"state": state}

        def step():
            holder["state"], metrics = step_fn(holder["state"], x, y)
            return metrics["loss_sum"]

    out = time_steps(
        step,
        jax.block_until_ready,
        examples_per_step=x.shape[0],
        steps=cfg["steps"],
        repeats=cfg["repeats"],
        warmup=cfg["warmup"],
    )
    return {**out, "flops_per_example": flops, "versions": {"jax": jax.__version__}}


# ---- PyTorch ---------------------------------------------------------------------------------


def torch_model(name: str):
    import torch
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x):
            out = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            short = x
            if self.stride != 1 or self.extra:  # option A: subsample, zero-pad the channels
                short = x[:, :, :: self.stride, :: self.stride]
                half = self.extra // 2
                short = nn.functional.pad(short, (0, 0, 0, 0, half, self.extra - half))
            return torch.relu(out + short)

    class DenseLayer(nn.Module):
        def __init__(self, cin: int, k: int):
            super().__init__()
            self.f = nn.Sequential(
                nn.BatchNorm2d(cin),
                nn.ReLU(),
                nn.Conv2d(cin, 4 * k, 1, bias=False),
                nn.BatchNorm2d(4 * k),
                nn.ReLU(),
                nn.Conv2d(4 * k, k, 3, 1, 1, bias=False),
            )

        def forward(self, x):
            return torch.cat([x, self.f(x)], 1)

    if name.startswith("resnet"):
        n = (int(name[len("resnet") :]) - 2) // 6
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)]
        layers.append(nn.ReLU())
        cin = 16
        for i, c in enumerate((16, 32, 64)):
            for j in range(n):
                layers.append(Basic(cin, c, 2 if (j == 0 and i > 0) else 1))
                cin = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
        return nn.Sequential(*layers)
    if name == "densenet100":
        k, n = 12, 16
        c = 2 * k
        layers = [nn.Conv2d(3, c, 3, 1, 1, bias=False)]
        for block in range(3):
            for _ in range(n):
                layers.append(DenseLayer(c, k))
                c += k
            if block < 2:
                out = c // 2
                layers += [
                    nn.BatchNorm2d(c),
                    nn.ReLU(),
                    nn.Conv2d(c, out, 1, bias=False),
                    nn.AvgPool2d(2),
                ]
                c = out
        layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        layers.append(nn.Linear(c, 10))
        return nn.Sequential(*layers)
    if name == "efficientnet_b0":
        return efficientnet_b0_torch()
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def efficientnet_b0_torch():
    """EfficientNet-B0 in PyTorch modules, torchvision's layout (which needs no torchvision):
    stem conv3x3/2-BN-SiLU, MBConv stages of :data:`jaxdl.models.efficientnet.B0_STAGES`, conv1x1
    to 1280-BN-SiLU, average pool, dropout 0.2, linear; stochastic depth 0.2 * i / 16."""
    import torch
    from torch import nn

    from jaxdl.models.efficientnet import B0_STAGES

    def cbn(cin, cout, k=1, s=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False)]
        layers.append(nn.BatchNorm2d(cout))
        return nn.Sequential(*layers, nn.SiLU()) if act else nn.Sequential(*layers)

    class MBConv(nn.Module):
        def __init__(self, cin, cout, t, k, s, p):
            super().__init__()
            hidden, squeeze = cin * t, max(1, cin // 4)
            layers = [cbn(cin, hidden)] if t != 1 else []
            layers.append(cbn(hidden, hidden, k, s, groups=hidden))
            self.pre = nn.Sequential(*layers)
            self.se = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(hidden, squeeze, 1),
                nn.SiLU(),
                nn.Conv2d(squeeze, hidden, 1),
                nn.Sigmoid(),
            )
            self.project = cbn(hidden, cout, act=False)
            self.residual, self.p = s == 1 and cin == cout, p

        def forward(self, x):
            h = self.pre(x)
            h = self.project(h * self.se(h))
            if not self.residual:
                return h
            if self.training and self.p > 0:  # per-example stochastic depth
                keep = torch.rand(h.shape[0], 1, 1, 1) >= self.p
                h = h * keep / (1 - self.p)
            return x + h

    total = sum(st.repeats for st in B0_STAGES)
    layers, cin, i = [cbn(3, 32, 3, 2)], 32, 0
    for st in B0_STAGES:
        for j in range(st.repeats):
            stride = st.stride if j == 0 else 1
            layers.append(
                MBConv(cin, st.features, st.expand_ratio, st.kernel, stride, 0.2 * i / total)
            )
            cin, i = st.features, i + 1
    layers += [cbn(cin, 1280), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2)]
    return nn.Sequential(*layers, nn.Linear(1280, 10))


def run_torch(name: str, mode: str, cfg: dict) -> dict:
    import torch

    from experiments.benchmarks._harness import time_steps

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(cfg["seed"])
    x_np, y_np = _data(cfg)
    x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(y_np).long()
    model = torch_model(name)
    if mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode():
                return model(x)

        sync = lambda out: None  # noqa: E731 (eager: the call has finished)
    else:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss

        sync = lambda loss: loss.item()  # noqa: E731
    out = time_steps(
        step,
        sync,
        examples_per_step=x.shape[0],
        steps=cfg["steps"],
        repeats=cfg["repeats"],
        warmup=cfg["warmup"],
    )
    return {**out, "versions": {"torch": torch.__version__}}


# ---- driver ----------------------------------------------------------------------------------


def _child(args: argparse.Namespace) -> None:
    cfg = json.loads(args.config)
    if args.framework == "jaxdl":
        import jaxdl  # noqa: F401 (before the backend starts: jaxdl.xla_flags)
    run = run_jaxdl if args.framework == "jaxdl" else run_torch
    result: dict[str, Any] = run(args.model, args.mode, cfg)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


def _spawn(framework: str, model: str, mode: str, cfg: dict, workdir: str) -> dict:
    out = os.path.join(workdir, f"{framework}_{model}_{mode}.json")
    cmd = [sys.executable, "-m", "experiments.benchmarks.zoo_step", "--child", "--framework"]
    cmd += [framework, "--model", model, "--mode", mode, "--out", out, "--config", json.dumps(cfg)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cfg["timeout_s"])
    except subprocess.TimeoutExpired:
        return {"skipped": "timed out"}
    if proc.returncode != 0 or not os.path.exists(out):
        return {"skipped": " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])}
    with open(out) as f:
        return json.load(f)


def table(results: list[dict], peak: float) -> str:
    lines = [
        f"CPU float32 matmul peak (2048^3 jnp.dot, best of 10): {peak:.0f} GFLOP/s",
        "",
        "| model | mode | framework | images/s (median) | min-max | GFLOP/s | % of peak | "
        "CPU s / wall s | jaxdl / torch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["model"], r["mode"], r["framework"]): r for r in results}
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['mode']} | {r['framework']} | skipped |||||")
            continue
        ours = by.get((r["model"], r["mode"], "jaxdl"), {})
        flops = ours.get("flops_per_example")
        gflops = r["median"] * flops / 1e9 if flops else float("nan")
        ratio = ""
        if r["framework"] != "jaxdl" and "median" in ours:
            ratio = f"{ours['median'] / r['median']:.2f}x"
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['framework']} | {r['median']:,.0f} | "
            f"{r['min']:,.0f}-{r['max']:,.0f} | {gflops:.1f} | {100 * gflops / peak:.0f}% | "
            f"{r['cpu_per_wall']:.2f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: str) -> None:
    """Images/s of each framework per model, one panel per mode (log scale: the models differ by
    two orders of magnitude), the ratio jaxdl / PyTorch over each pair."""
    from experiments.common import new_figure, save_figure

    by = {(r["model"], r["mode"], r["framework"]): r for r in results if "median" in r}
    modes = [m for m in MODES if any(k[1] == m for k in by)]
    models = [m for m in MODELS if any(k[0] == m for k in by)]
    fig, axes = new_figure(1, len(modes), figsize=(6 * len(modes), 4))
    axes = np.atleast_1d(axes)
    x = np.arange(len(models))
    for ax, mode in zip(axes, modes, strict=True):
        for i, fw in enumerate(FRAMEWORKS):
            vals = [by.get((m, mode, fw), {}).get("median", np.nan) for m in models]
            ax.bar(x + (i - 0.5) * 0.4, vals, width=0.4, label=fw)
        for j, m in enumerate(models):
            ours, peer = by.get((m, mode, "jaxdl")), by.get((m, mode, "torch"))
            if ours and peer:
                top = max(ours["median"], peer["median"])
                ax.text(j, top * 1.15, f"{ours['median'] / peer['median']:.2f}x", ha="center")
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 1.8)  # room for the ratio labels
        ax.set_xticks(x, models, rotation=15)
        ax.set_ylabel("images / s (median)")
        ax.set_title(f"{mode}, batch 128, 32x32 (label: jaxdl / PyTorch)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    save_figure(fig, path)


def train_and_evaluate(config: Config, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    for field, allowed in (("models", MODELS), ("modes", MODES), ("frameworks", FRAMEWORKS)):
        unknown = set(getattr(config, field)) - set(allowed)
        if unknown:
            raise ValueError(f"{field} must be among {allowed}, got {sorted(unknown)}")
    cfg = dataclasses.asdict(config)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_before = os.getloadavg()
    peak = matmul_peak_subprocess()
    print(f"matmul peak: {peak:.0f} GFLOP/s", flush=True)
    results = []
    for model in config.models:
        for mode in config.modes:
            for fw in config.frameworks:
                r = {"model": model, "mode": mode, "framework": fw}
                r.update(_spawn(fw, model, mode, cfg, workdir))
                status = r.get("skipped") or f"{r['median']:,.0f} images/s"
                print(f"[{fw}] {model} {mode}: {status}", flush=True)
                results.append(r)
    text = table(results, peak)
    print(text)
    meta = run_meta(started, load_before)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(text)
    out = {"config": cfg, "meta": meta, "matmul_gflops": peak, "results": results}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(out, f, indent=2)
    plot(results, os.path.join(workdir, "throughput.png"))
    return out


def main(argv: list[str]) -> None:
    if "--child" in argv:
        p = argparse.ArgumentParser()
        p.add_argument("--child", action="store_true")
        for name in ("framework", "model", "mode", "out", "config"):
            p.add_argument(f"--{name}", required=True)
        _child(p.parse_args(argv))
        return
    from experiments.common import parse_config

    cfg, workdir = parse_config(get_config(), argv, __doc__)
    train_and_evaluate(cfg, workdir)


if __name__ == "__main__":
    main(sys.argv[1:])
