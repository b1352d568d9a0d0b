"""XLA:CPU's convolution kernels on the CIFAR ResNets' layers, one operation at a time.

For each 3x3 layer shape of ``resnet_cifar`` at batch 128 (32x32x16, 16x16x32 and 8x8x64 at
stride 1, and the two stride-2 layers that open stages 2 and 3), times the forward pass, the
input gradient and the kernel gradient, each as its own ``jax.jit``, under both kernel choices
XLA:CPU offers:

* ``xla``: XLA's own kernels, the per-``jit`` option of
  :func:`jaxdl.xla_flags.train_step_compiler_options` (what jaxdl's train steps and
  :func:`jaxdl.train.jit_inference` use);
* ``library``: XLA's defaults, which hand convolutions with more than 16 channels to YNNPACK.

Each operation has ``2 N H_out W_out 9 C_in C_out`` FLOPs; the table shows ms and GFLOP/s, and
the milliseconds one ResNet-20 train step spends in its 3x3 convolutions at these rates (the
first layer, on 3 channels, is not counted). ``docs/performance.md`` uses it to show where the
ResNets' training time goes.

Run: ``python -m experiments.benchmarks.conv_ops --out runs/conv_ops.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import jaxdl  # noqa: F401  (before JAX's backend starts)

# (spatial size, input channels, output channels, stride, layers of this shape in ResNet-20)
LAYERS = ((32, 16, 16, 1, 6), (16, 32, 32, 1, 5), (8, 64, 64, 1, 5), (32, 16, 32, 2, 1),
          (16, 32, 64, 2, 1))  # fmt: skip
OPS = ("forward", "input_grad", "kernel_grad")


def _time(fn, *args, repeats: int, calls: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / calls * 1e3)
    return float(np.median(times))


def measure(batch_size: int = 128, repeats: int = 5, calls: int = 10) -> list[dict]:
    """One row per (layer shape, kernels): ms and GFLOP/s of each operation."""
    import jax
    from jax import lax

    from jaxdl import xla_flags

    kernels = {"xla": xla_flags.TRAIN_STEP_OPTIONS, "library": {}}
    rows = []
    for size, c_in, c_out, stride, count in LAYERS:
        out_size = size // stride
        x = jax.random.normal(jax.random.key(0), (batch_size, size, size, c_in))
        w = jax.random.normal(jax.random.key(1), (3, 3, c_in, c_out)) * 0.1
        g = jax.random.normal(jax.random.key(2), (batch_size, out_size, out_size, c_out))

        def forward(x, w, stride=stride):
            return lax.conv_general_dilated(
                x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
            )

        fns = {
            "forward": (lambda x, w, g: forward(x, w)),
            "input_grad": (lambda x, w, g: jax.vjp(lambda a: forward(a, w), x)[1](g)[0]),
            "kernel_grad": (lambda x, w, g: jax.vjp(lambda b: forward(x, b), w)[1](g)[0]),
        }
        flops = 2 * batch_size * out_size * out_size * 9 * c_in * c_out
        for name, options in kernels.items():
            ms = {
                op: _time(
                    jax.jit(fn, compiler_options=options or None),
                    x,
                    w,
                    g,
                    repeats=repeats,
                    calls=calls,
                )  # fmt: skip
                for op, fn in fns.items()
            }
            rows.append({
                "layer": f"{size}x{size}x{c_in}->{c_out} stride {stride}",
                "kernels": name,
                "layers_in_resnet20": count,
                "ms": ms,
                "gflops_per_s": {op: flops / (t * 1e6) for op, t in ms.items()},
            })  # fmt: skip
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    rows = measure(args.batch_size, args.repeats, args.calls)
    print("| layer | kernels | forward ms (GFLOP/s) | input grad | kernel grad |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = " | ".join(f"{r['ms'][op]:.2f} ({r['gflops_per_s'][op]:.0f})" for op in OPS)
        print(f"| {r['layer']} | {r['kernels']} | {cells} |")
    for name in ("xla", "library"):
        total = sum(
            r["layers_in_resnet20"] * sum(r["ms"].values()) for r in rows if r["kernels"] == name
        )
        print(f"ResNet-20's 3x3 convolutions, forward and both gradients, {name} kernels: "
              f"{total:.0f} ms per step")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
