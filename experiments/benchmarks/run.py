"""The cross-framework benchmark: jaxdl, stock flax + optax, PyTorch and Keras 3 (TensorFlow) on the
same workloads, each (framework, workload) pair in a fresh process, one after another.

Workloads (see ``_harness.py``): the course's MnistCNN train step (batch 128, Adam, dropout on),
its inference throughput (batch ``infer_batch_size``), the course's LSTM(64) -> Dense(1) train step
(T = 100, 8 features, batch 128, MSE, Adam), the same with ``GRU(64)`` (``gru_train``) and with
``Bidirectional(LSTM(64))`` (``bilstm_train``; :mod:`._harness`), and the time to 97% test accuracy on mnist_5k (jaxdl
and Keras). Method: the first call (compilation) is timed on its own, ``warmup`` further steps are
discarded, then ``repeats`` blocks of ``steps`` steps are timed; we report the median block's
examples/s, the spread (min, max, interquartile range), the achieved GFLOP/s against the analytic
count, and the ratio jaxdl/peer of the medians.

On CPU, ``jaxdl`` trains the recurrent models data-parallel over one CPU device per thread (``threads``, all
cores by default; :func:`jaxdl.train.parallel.make_shard_map_train_step`), and ``jaxdl_1dev``
runs the same step on a single device, so the table shows what the per-core devices buy.
``jaxdl_hand`` is the train step a researcher writes by hand (``jax.value_and_grad``,
:func:`jaxdl.optim.adam`, one donated ``jax.jit``) on jaxdl's models, and ``jaxdl_hand_jts`` the
same function compiled by :func:`jaxdl.train.jit_train_step`.

The peers live in the ``bench`` extra (``pip install -e ".[bench]"``); run from the environment
that has them (a framework that does not import is reported as skipped)::

    python -m experiments.benchmarks.run --workdir runs/bench

Writes ``results.json`` (every process's raw output), ``table.md`` (the ratio table) and
``throughput.png`` (bars per workload) into ``workdir``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

from experiments.benchmarks._harness import (
    DESCRIPTIONS,
    WORKLOADS,
    matmul_peak_subprocess,
    run_meta,
)
from experiments.benchmarks.bench_jaxdl import DATA_PARALLEL
from experiments.common import new_figure, parse_config, save_figure, save_json

FRAMEWORKS = ("jaxdl", "jaxdl_1dev", "jaxdl_hand", "jaxdl_hand_jts", "flax", "torch", "keras")
HAND_WORKLOADS = ("cnn_train", "lstm_train")  # where the hand-written steps are timed
TTA_FRAMEWORKS = ("jaxdl", "keras")


@dataclasses.dataclass(frozen=True)
class Config:
    frameworks: tuple[str, ...] = FRAMEWORKS
    workloads: tuple[str, ...] = WORKLOADS
    batch_size: int = 128
    infer_batch_size: int = 1000
    timesteps: int = 100
    features: int = 8
    hidden: int = 64
    learning_rate: float = 1e-3
    steps: int = 20  # steps per timed block
    repeats: int = 7  # timed blocks
    warmup: int = 5  # untimed steps after the first call
    threads: int = 0  # 0: every core the machine has (os.cpu_count())
    tta_target: float = 0.97
    tta_max_epochs: int = 25
    seed: int = 0
    python: str = ""  # interpreter for the processes; "" = this one
    timeout_s: int = 900  # per process


def get_config() -> Config:
    return Config()


def _mnist_npz(path: str) -> None:
    from jaxdl import data

    xtr, ytr = data.load("mnist_5k", "train")
    xte, yte = data.load("mnist_5k", "test")
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)


def _run_one(framework: str, workload: str, cfg: dict, workdir: str, config: Config) -> dict:
    out = os.path.join(workdir, f"{framework}_{workload}.json")
    cmd = [
        config.python or sys.executable,
        "-m",
        f"experiments.benchmarks.bench_{framework}",
        "--workload",
        workload,
        "--out",
        out,
        "--config",
        json.dumps(cfg),
    ]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=config.timeout_s)
    except subprocess.TimeoutExpired:
        return {"framework": framework, "workload": workload, "skipped": "timed out"}
    if proc.returncode != 0 or not os.path.exists(out):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"framework": framework, "workload": workload, "skipped": " | ".join(tail)}
    with open(out) as f:
        result = json.load(f)
    result["process_wall_s"] = time.time() - t0
    return result


def ratio_table(results: list[dict], peak: float = float("nan")) -> tuple[list[dict], str]:
    """jaxdl's median over each peer's (throughputs: higher is better; time-to-accuracy: the
    peer's seconds over jaxdl's, so > 1 also means jaxdl is faster); GFLOP/s also as a share of
    the measured matmul ``peak``."""
    by = {(r["framework"], r["workload"]): r for r in results if "skipped" not in r}
    rows, lines = [], []
    lines.append(
        "| workload | framework | median | spread (min-max) | GFLOP/s | % of matmul peak "
        "| first call s | jaxdl / framework |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for (fw, wl), r in by.items():
        ours = by.get(("jaxdl", wl))
        if wl == "cnn_tta":
            value = r["seconds"]
            ratio = (
                value / ours["seconds"]
                if ours and r.get("reached") and ours.get("reached")
                else None
            )
            median = (
                f"{value:.1f} s ({r['epochs']} epochs{'' if r['reached'] else ', not reached'})"
            )
            spread, gflops, share, first = "", "", "", ""
        else:
            value = r["median"]
            ratio = value and ours["median"] / value if ours else None
            median = f"{value:,.0f} ex/s"
            spread = f"{r['min']:,.0f}-{r['max']:,.0f}"
            gflops = f"{r['gflops_per_s']:.1f}"
            share = f"{100 * r['gflops_per_s'] / peak:.0f}%" if peak == peak else ""
            first = f"{r['first_call_s']:.2f}"
        rows.append({"workload": wl, "framework": fw, "value": value, "ratio": ratio})
        ratio_s = "" if ratio is None or fw == "jaxdl" else f"{ratio:.2f}x"
        lines.append(
            f"| {wl} | {fw} | {median} | {spread} | {gflops} | {share} | {first} | {ratio_s} |"
        )
    return rows, "\n".join(lines) + "\n"


def plot(results: list[dict], path: str) -> None:
    workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in results)]
    fig, axes = new_figure(1, len(workloads), figsize=(4 * len(workloads), 4))
    axes = np.atleast_1d(axes)
    for ax, wl in zip(axes, workloads, strict=True):
        rs = [r for r in results if r["workload"] == wl and "skipped" not in r]
        names = [r["framework"] for r in rs]
        if wl == "cnn_tta":
            vals = [r["seconds"] for r in rs]
            ax.set_ylabel("seconds to 97% test accuracy (lower is better)")
            ax.bar(names, vals, color="tab:gray")
        else:
            vals = [r["median"] for r in rs]
            lo = [r["median"] - r["min"] for r in rs]
            hi = [r["max"] - r["median"] for r in rs]
            ax.bar(names, vals, yerr=[lo, hi], capsize=4, color="tab:blue")
            ax.set_ylabel("examples / s (median, min-max)")
        ax.set_title(wl)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("jaxdl vs peers, same machine, one process each")
    save_figure(fig, path)


def train_and_evaluate(config: Config, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    unknown = set(config.frameworks) - set(FRAMEWORKS)
    if unknown:
        raise ValueError(f"frameworks must be among {FRAMEWORKS}, got {sorted(unknown)}")
    unknown = set(config.workloads) - set(WORKLOADS)
    if unknown:
        raise ValueError(f"workloads must be among {WORKLOADS}, got {sorted(unknown)}")
    cfg = dataclasses.asdict(config)
    cfg["threads"] = config.threads or os.cpu_count()
    if "cnn_tta" in config.workloads:
        cfg["mnist_npz"] = os.path.join(workdir, "mnist_5k.npz")
        _mnist_npz(cfg["mnist_npz"])
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_before = os.getloadavg()
    peak = matmul_peak_subprocess(config.python)
    print(f"matmul peak: {peak:.0f} GFLOP/s", flush=True)
    results = []
    for wl in config.workloads:
        for fw in config.frameworks:
            if wl == "cnn_tta" and fw not in TTA_FRAMEWORKS:
                continue
            if fw == "jaxdl_1dev" and wl not in DATA_PARALLEL:  # elsewhere it equals jaxdl
                continue
            if fw.startswith("jaxdl_hand") and wl not in HAND_WORKLOADS:
                continue
            r = _run_one(fw, wl, cfg, workdir, config)
            if "skipped" in r:
                print(f"[{fw}] {wl}: skipped ({r['skipped']})", flush=True)
            elif "median" in r:
                print(f"[{fw}] {wl}: {r['median']:,.0f} ex/s", flush=True)
            else:
                print(f"[{fw}] {wl}: {r['seconds']:.1f} s, {r['epochs']} epochs", flush=True)
            results.append(r)
    rows, table = ratio_table(results, peak)
    table = f"CPU float32 matmul peak (2048^3 jnp.dot, best of 10): {peak:.0f} GFLOP/s\n\n" + table
    print(table)
    meta = run_meta(started, load_before, descriptions=DESCRIPTIONS)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(table)
    out = {"config": cfg, "meta": meta, "matmul_gflops": peak, "results": results, "ratios": rows}
    save_json(out, os.path.join(workdir, "results.json"))
    plot(results, os.path.join(workdir, "throughput.png"))
    return out


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), sys.argv[1:], __doc__)
    train_and_evaluate(cfg, wd)
