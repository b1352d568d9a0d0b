"""Interleaved A/B of inference passes compiled with XLA's defaults and with
:func:`jaxdl.train.jit_inference` (which passes :func:`jaxdl.xla_flags.inference_compiler_options`),
one model at a time, both variants in one process (so the machine's drift hits them alike).

On XLA:CPU the defaults hand convolutions (and the elementwise work around them) to the YNNPACK
library; the option keeps convolutions in XLA's own kernels. Which is faster depends on the model,
so each model's row says which one jaxdl's inference paths (``predict``, ``evaluate``,
``make_eval_step``) use for it: the option, unless the model declares
``cpu_inference_kernels = "library"``.

Models: the zoo of :mod:`experiments.benchmarks.zoo_step` at 32x32x3 and the course's
``MnistCNN`` at 28x28x1, random inputs (speed does not depend on the values), inference mode.
Each variant is compiled first, then timed in turns: ``rounds`` rounds of ``steps`` calls; the
median milliseconds per call.

Run: ``python -m experiments.benchmarks.inference_ab --out runs/inference_ab.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import jaxdl  # noqa: F401  (before JAX's backend starts: jaxdl.xla_flags, jaxdl.cpu_malloc)
from experiments.benchmarks._harness import comma_list

MODELS = ("mnist_cnn", "resnet20", "resnet56", "densenet100", "efficientnet_b0")


def _model_and_input(name: str, batch_size: int):
    import jax

    from experiments.benchmarks import zoo_step
    from jaxdl import models

    if name == "mnist_cnn":
        return models.MnistCNN(), jax.random.normal(jax.random.key(0), (batch_size, 28, 28, 1))
    x = jax.random.normal(jax.random.key(0), (batch_size, 32, 32, 3))
    return zoo_step.jaxdl_model(name), x


def compare(name: str, batch_size: int, rounds: int, steps: int) -> dict:
    """Median ms per inference call of ``name`` with XLA's defaults and through
    ``jit_inference``, timed in turns."""
    import jax

    from jaxdl import train, xla_flags

    model, x = _model_and_input(name, batch_size)
    variables = model.init(jax.random.key(1), x, train=False)

    def forward(v, x):
        return model.apply(v, x, train=False)

    compiled = {
        "xla_defaults": jax.jit(forward),
        "jit_inference": train.jit_inference(forward, model),
    }
    for fn in compiled.values():
        jax.block_until_ready(fn(variables, x))
    times: dict[str, list[float]] = {k: [] for k in compiled}
    for _ in range(rounds):
        for k, fn in compiled.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                out = fn(variables, x)
            jax.block_until_ready(out)
            times[k].append((time.perf_counter() - t0) / steps * 1e3)
    ms = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "model": name,
        "batch_size": batch_size,
        "ms": ms,
        "ms_all": times,
        "jit_inference_options": xla_flags.inference_compiler_options(model),
        "speedup": ms["xla_defaults"] / ms["jit_inference"],
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    names = comma_list(p, "--models", args.models, MODELS)
    rows = []
    print("| model | batch | XLA defaults (ms) | jit_inference (ms) | defaults / jit_inference |")
    print("|---|---|---|---|---|")
    for name in names:
        r = compare(name, args.batch_size, args.rounds, args.steps)
        rows.append(r)
        print(
            f"| {name} | {r['batch_size']} | {r['ms']['xla_defaults']:.1f} | "
            f"{r['ms']['jit_inference']:.1f} | {r['speedup']:.2f}x |",
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
