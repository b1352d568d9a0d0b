"""What every framework's benchmark process shares: the workloads, their analytic FLOP counts, the
synthetic data, the timing loop and the command line. NumPy only, so that importing it pulls no
framework into a peer's process.

A benchmark module (``bench_<framework>.py``) defines one builder per workload it supports,
``build(workload, cfg, data) -> step``, where ``step()`` runs one training (or inference) step on
resident data and returns something whose evaluation forces the step to finish (``sync``); the
timing, the JSON and the command line come from :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# ---- the workloads ----------------------------------------------------------------------------

# The course's MNIST CNN, multiply-adds counted twice (FLOPs) per example, forward pass:
#   conv 3x3x1->32 on 26x26 outputs, conv 3x3x32->64 on 11x11, dense 1600->128, dense 128->10.
CNN_FWD_FLOPS = 2 * (26 * 26 * 32 * 9 * 1 + 11 * 11 * 64 * 9 * 32 + 1600 * 128 + 128 * 10)
# Backward = two matmuls per forward matmul (input and weight gradients): 3x the forward, the usual
# convention (it counts the first conv's unneeded input gradient, 2.5% of the total).
CNN_TRAIN_FLOPS = 3 * CNN_FWD_FLOPS  # 15.8 MFLOP per example


def lstm_fwd_flops(timesteps: int, features: int, hidden: int) -> int:
    """Per sequence: ``T`` steps of ``[x_t, h_{t-1}] (in + H) @ (in + H, 4H)``, then ``Dense(1)``."""
    return 2 * timesteps * (features + hidden) * 4 * hidden + 2 * hidden


def gru_fwd_flops(timesteps: int, features: int, hidden: int) -> int:
    """Per sequence: ``T`` steps of ``(in + H) @ (in + H, 3H)``, then ``Dense(1)``."""
    return 2 * timesteps * (features + hidden) * 3 * hidden + 2 * hidden


def bilstm_fwd_flops(timesteps: int, features: int, hidden: int) -> int:
    """Per sequence: two LSTMs' ``T`` steps of ``(in + H) @ (in + H, 4H)``, then ``Dense(1)`` on
    the ``2H`` concatenated final states."""
    return 2 * (2 * timesteps * (features + hidden) * 4 * hidden) + 2 * 2 * hidden


# The recurrent workloads share lstm_train's shapes and data (batch 128, T = 100, 8 features,
# hidden 64, one target per sequence, MSE, Adam). gru_train is the reset-after GRU (PyTorch's
# nn.GRU, Keras's GRU(reset_after=True), jaxdl's GRUCell default): 14,273 parameters in jaxdl,
# PyTorch and Keras (flax's GRUCell has no bias on the recurrent r and z products: 14,145).
# bilstm_train reads out the two directions' final states, (B, 2H): 37,505 parameters (PyTorch's
# nn.LSTM has a second bias vector per direction, 512 more, the same function).
SEQUENCE_WORKLOADS = ("lstm_train", "gru_train", "bilstm_train")
WORKLOADS = ("cnn_train", "cnn_infer", *SEQUENCE_WORKLOADS, "cnn_tta")
DESCRIPTIONS = {
    "cnn_train": "MnistCNN train step (forward, backward, Adam), dropout on",
    "cnn_infer": "MnistCNN inference (forward, dropout off)",
    "lstm_train": "LSTM(64) -> Dense(1) train step (MSE, Adam)",
    "gru_train": "GRU(64) (reset-after) -> Dense(1) train step (MSE, Adam)",
    "bilstm_train": "Bidirectional(LSTM(64)) -> Dense(1) train step (MSE, Adam)",
    "cnn_tta": "MnistCNN on mnist_5k: training seconds until 97% test accuracy",
}


def flops_per_example(workload: str, cfg: dict[str, Any]) -> float | None:
    if workload == "cnn_train":
        return float(CNN_TRAIN_FLOPS)
    if workload == "cnn_infer":
        return float(CNN_FWD_FLOPS)
    fwd = {"lstm_train": lstm_fwd_flops, "gru_train": gru_fwd_flops,
           "bilstm_train": bilstm_fwd_flops}.get(workload)  # fmt: skip
    if fwd is not None:
        return 3.0 * fwd(cfg["timesteps"], cfg["features"], cfg["hidden"])
    return None


def batch_size(workload: str, cfg: dict[str, Any]) -> int:
    return cfg["infer_batch_size"] if workload == "cnn_infer" else cfg["batch_size"]


def make_data(workload: str, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """The same arrays for every framework: channels-last images in [0, 1) with int32 labels, or
    float32 windows ``(B, T, features)`` with float32 targets ``(B, 1)``."""
    rng = np.random.default_rng(cfg["seed"])
    b = batch_size(workload, cfg)
    if workload in ("cnn_train", "cnn_infer"):
        return {
            "x": rng.random((b, 28, 28, 1), dtype=np.float32),
            "y": rng.integers(0, 10, b).astype(np.int32),
        }
    if workload in SEQUENCE_WORKLOADS:  # the same arrays for all three
        return {
            "x": rng.standard_normal((b, cfg["timesteps"], cfg["features"])).astype(np.float32),
            "y": rng.standard_normal((b, 1)).astype(np.float32),
        }
    if workload == "cnn_tta":
        with np.load(cfg["mnist_npz"]) as f:
            return {k: f[k] for k in f.files}
    raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")


# ---- the machine's limit ----------------------------------------------------------------------


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """This CPU's float32 matmul rate through XLA (GFLOP/s): the best of ``repeats`` calls of a
    jitted ``n x n`` ``jnp.dot``. Imports JAX; call it in a process of its own
    (:func:`matmul_peak_subprocess`) so that it does not start a peer's backend."""
    import time

    import jax
    import jax.numpy as jnp

    import jaxdl  # noqa: F401 (its XLA:CPU flags, as in the jaxdl processes)

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, a))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(dot(a, a))
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def matmul_peak_subprocess(python: str = "") -> float:
    """:func:`matmul_peak` in a fresh process (NaN if it fails)."""
    import subprocess
    import sys

    code = "from experiments.benchmarks._harness import matmul_peak; print(matmul_peak())"
    proc = subprocess.run([python or sys.executable, "-c", code], capture_output=True, text=True)
    try:
        return float(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return float("nan")


def comma_list(
    parser: argparse.ArgumentParser, flag: str, value: str, allowed: tuple[str, ...]
) -> list[str]:
    """The names in the comma-separated ``value`` of ``flag``; a parser error naming the unknown
    ones and the choices."""
    names = [v for v in value.split(",") if v]
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        parser.error(f"{flag}: unknown {unknown}; choose from {allowed}")
    return names


def run_meta(started_utc: str, loadavg_before: tuple[float, ...], **extra: Any) -> dict[str, Any]:
    """What a benchmark run records about itself: its start and end, the machine's load before and
    after, the core count and the command line (plus ``extra``)."""
    import sys

    return {
        "started_utc": started_utc,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_before": loadavg_before,
        "loadavg_after": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "command": " ".join(sys.argv),
        **extra,
    }


# ---- timing ----------------------------------------------------------------------------------


def time_steps(
    step: Callable[[], Any],
    sync: Callable[[Any], Any],
    *,
    examples_per_step: int,
    steps: int,
    repeats: int,
    warmup: int,
) -> dict[str, Any]:
    """First call (compilation, tracing, allocation) timed alone; ``warmup`` more calls untimed;
    then ``repeats`` blocks of ``steps`` calls, each block ended by ``sync`` so queued asynchronous
    work is inside the block that launched it. Throughput per block in examples/s."""
    t0 = time.perf_counter()
    sync(step())
    first_call_s = time.perf_counter() - t0
    for _ in range(warmup):
        sync(step())
    rates, cpu_ratio = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            out = step()
        sync(out)
        wall = time.perf_counter() - t0
        rates.append(steps * examples_per_step / wall)
        cpu_ratio.append((time.process_time() - c0) / wall)
    rates_arr = np.asarray(rates)
    return {
        "first_call_s": first_call_s,
        "examples_per_s": rates,
        "median": float(np.median(rates_arr)),
        "min": float(rates_arr.min()),
        "max": float(rates_arr.max()),
        "iqr": [float(np.percentile(rates_arr, 25)), float(np.percentile(rates_arr, 75))],
        # CPU seconds per wall second while timing: near the thread count when the process had the
        # cores to itself, lower when it waited for them
        "cpu_per_wall": float(np.median(cpu_ratio)),
    }


def main(
    framework: str,
    build: Callable[..., Any],
    versions: Callable[[], dict[str, str]],
    configure: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """The command line of a benchmark process: ``--workload W --out FILE --config JSON``.
    ``configure(cfg)``, if given, runs first (settings that must precede the framework's start)."""
    parser = argparse.ArgumentParser(description=f"{framework} benchmark process")
    parser.add_argument("--workload", required=True, choices=WORKLOADS)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--config", required=True, help="JSON dict of the harness settings")
    args = parser.parse_args()
    cfg = json.loads(args.config)
    result: dict[str, Any] = {
        "framework": framework,
        "workload": args.workload,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "threads": cfg["threads"],
    }
    try:
        if configure is not None:
            configure(cfg)
        result["versions"] = versions()
        data = make_data(args.workload, cfg)
        out = build(args.workload, cfg, data)
        if args.workload == "cnn_tta":
            result.update(out)
        else:
            step, sync = out
            b = batch_size(args.workload, cfg)
            timing = time_steps(
                step,
                sync,
                examples_per_step=b,
                steps=cfg["steps"],
                repeats=cfg["repeats"],
                warmup=cfg["warmup"],
            )
            flops = flops_per_example(args.workload, cfg)
            result.update(timing, batch_size=b, flops_per_example=flops)
            result["gflops_per_s"] = timing["median"] * flops / 1e9
    except NotImplementedError as e:
        result["skipped"] = str(e) or "workload not implemented for this framework"
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    summary = result.get("skipped") or (
        f"{result['median']:.0f} ex/s" if "median" in result else f"{result.get('seconds')} s"
    )
    print(f"[{framework}] {args.workload}: {summary}", flush=True)


def tta_loop(
    train_epoch: Callable[[int], None],
    test_accuracy: Callable[[], float],
    *,
    target: float,
    max_epochs: int,
) -> dict[str, Any]:
    """Train epoch by epoch until the test accuracy reaches ``target``. The clock runs only during
    ``train_epoch`` (compilation included, as a user waits for it); evaluation is not counted."""
    seconds, history = 0.0, []
    for epoch in range(max_epochs):
        t0 = time.perf_counter()
        train_epoch(epoch)
        seconds += time.perf_counter() - t0
        acc = float(test_accuracy())
        history.append({"epoch": epoch + 1, "train_seconds": seconds, "test_accuracy": acc})
        if acc >= target:
            return {"seconds": seconds, "epochs": epoch + 1, "reached": True, "history": history}
    return {"seconds": seconds, "epochs": max_epochs, "reached": False, "history": history}
