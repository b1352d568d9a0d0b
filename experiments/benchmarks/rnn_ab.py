"""Interleaved A/B of recurrent train-step variants on one CPU device, in one process.

Every variant is the harness's ``jaxdl_1dev`` step (:func:`jaxdl.train.make_train_step`, Adam, the
state donated) on the harness's data (batch 128, ``T`` = 100, 8 features, hidden 64, one target,
MSE) for one model: ``lstm`` (:class:`jaxdl.models.Forecaster`), ``gru`` (the same with
``cell="gru"``) or ``bilstm`` (two LSTM layers under :class:`jaxdl.nn.Bidirectional`, the
harness's ``bilstm_train`` model). A variant is ``model[:key=value[:key=value...]]``:

* ``lo=FIELD=INT`` (repeatable): a field of :mod:`jaxdl.nn.recurrent`'s ``_LSTM_OPTS`` (how
  :func:`jaxdl.nn.lstm_layer` lays out its loops: ``store_z``, ``store_acts``; see
  ``_LSTMOpts``) while the step is traced; ``lo=all=0`` sets every field to 0/False, the layout
  before issue 23 item 3;
* ``splits=N``: ``batch_splits``; ``impl=scan|lstm_layer|gru_layer|auto``; ``hoist=0|1``;
  ``unroll=N``: the :class:`jaxdl.nn.RNN` fields of the same names;
* ``opt=NAME=VALUE`` (repeatable): an XLA compiler option added to the step's ``jax.jit`` on top
  of :func:`jaxdl.xla_flags.train_step_compiler_options` (the step is then
  ``make_train_step(..., jit=False)`` compiled as :func:`jaxdl.train.jit_train_step` does).

All variants are compiled first; then ``rounds`` rounds run every variant for ``steps`` steps in
turn (the order rotated each round), so a change in machine load hits them alike. Reported per
variant: the median over rounds of ms per step, examples/s, the CPU-seconds per wall-second while
it ran, and the ratio to the first variant. The machine is shared: wall times taken beside other
jobs are inflated, ratios between variants of the same round much less so.

    python -m experiments.benchmarks.rnn_ab --workdir runs/rnn_ab \\
        --variants lstm:lo=all=0,lstm --rounds 7 --steps 10
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time

import numpy as np

import jaxdl  # noqa: F401  (its XLA:CPU flags before the backend starts)
from experiments.common import parse_config, save_json


@dataclasses.dataclass(frozen=True)
class Config:
    variants: tuple[str, ...] = ("lstm:lo=all=0", "lstm")
    batch: int = 128
    timesteps: int = 100
    features: int = 8
    hidden: int = 64
    learning_rate: float = 1e-3
    rounds: int = 7
    steps: int = 10
    warmup: int = 3
    seed: int = 0


def get_config() -> Config:
    return Config()


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    model, *opts = spec.split(":")
    if model not in ("lstm", "gru", "bilstm"):
        raise ValueError(f"variant {spec!r}: model must be lstm, gru or bilstm")
    kv: dict = {"opt": {}}
    for o in opts:
        k, _, v = o.partition("=")
        if k in ("opt", "lo"):
            name, _, value = v.partition("=")
            kv.setdefault(k, {})[name] = value
            continue
        if k not in ("splits", "impl", "hoist", "unroll"):
            raise ValueError(f"variant {spec!r}: unknown option {k!r}")
        kv[k] = v
    return model, kv


@contextlib.contextmanager
def _layer_opts(lo: dict[str, str]):
    """``jaxdl.nn.recurrent._LSTM_OPTS`` with the fields in ``lo`` changed, while tracing."""
    from jaxdl.nn import recurrent

    old = recurrent._LSTM_OPTS
    new = old
    for name, value in lo.items():
        if name == "all":
            new = new._make(type(f)(int(value)) for f in new)
        else:
            new = new._replace(**{name: type(getattr(new, name))(int(value))})
    recurrent._LSTM_OPTS = new
    try:
        yield
    finally:
        recurrent._LSTM_OPTS = old


def build_model(model: str, kv: dict[str, str], hidden: int):
    import flax.linen as fnn
    import jax.numpy as jnp

    from jaxdl import models, nn

    rnn_kw = {}
    if "splits" in kv:
        rnn_kw["batch_splits"] = int(kv["splits"])
    if "hoist" in kv:
        rnn_kw["hoist_inputs"] = bool(int(kv["hoist"]))
    if "unroll" in kv:
        rnn_kw["unroll"] = int(kv["unroll"])
    impl = kv.get("impl")
    if model in ("lstm", "gru"):
        m = models.Forecaster(hidden=hidden, cell=model, **rnn_kw)
        if impl is None:
            return m

        class Impl(fnn.Module):  # Forecaster's layers with RNN(impl=...)
            @fnn.compact
            def __call__(self, x, train: bool = False):
                cell = models.sequence.make_cell(model, hidden)
                carry, _ = nn.RNN(cell, impl=impl, name="rnn", **rnn_kw)(x, return_carry=True)
                return fnn.Dense(1, name="head")(models.sequence.final_hidden(carry))

        return Impl()

    class BiForecaster(fnn.Module):
        @fnn.compact
        def __call__(self, x, train: bool = False):
            def rnn():
                kw = dict(rnn_kw, **({"impl": impl} if impl else {}))
                return nn.RNN(nn.LSTMCell(hidden, parent=None), parent=None, **kw)

            (cf, cb), _ = nn.Bidirectional(rnn(), rnn(), return_carry=True)(x)
            return fnn.Dense(1)(jnp.concatenate([cf[1], cb[1]], axis=-1))

    return BiForecaster()


def train_and_evaluate(config: Config, workdir: str) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxdl import losses, optim, train

    os.makedirs(workdir, exist_ok=True)
    c = config
    rng = np.random.default_rng(c.seed)  # the harness's arrays (same seed, same order)
    x = jnp.asarray(rng.standard_normal((c.batch, c.timesteps, c.features)).astype(np.float32))
    y = jnp.asarray(rng.standard_normal((c.batch, 1)).astype(np.float32))

    runners = {}
    for spec in c.variants:
        model_name, kv = parse_variant(spec)
        model = build_model(model_name, kv, c.hidden)
        opt = optim.adam(c.learning_rate)
        state = train.create_train_state(model, opt, x, c.seed)
        if kv["opt"]:
            from jaxdl import xla_flags

            raw = train.make_train_step(model, opt, loss_fn=losses.mse, jit=False)

            def traced(*a, raw=raw):
                with xla_flags.tuned_step():
                    return raw(*a)

            def typed(v: str):
                low = v.lower()
                if low in ("true", "false"):
                    return low == "true"
                return int(v) if v.lstrip("-").isdigit() else v

            extra = {k: typed(v) for k, v in kv["opt"].items()}
            options = {**xla_flags.train_step_compiler_options(), **extra}
            step_fn = jax.jit(traced, donate_argnums=(0,), compiler_options=options)
        else:
            step_fn = train.make_train_step(model, opt, loss_fn=losses.mse)
        t0 = time.perf_counter()
        with _layer_opts(kv.get("lo", {})):  # read while the step is traced
            state, m = step_fn(state, x, y)
            jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        for _ in range(c.warmup):
            state, m = step_fn(state, x, y)
        jax.block_until_ready(m)
        runners[spec] = {"fn": step_fn, "state": state, "compile_s": compile_s}
        print(f"compiled {spec} in {compile_s:.2f} s", flush=True)

    times = {s: [] for s in c.variants}
    cpu = {s: [] for s in c.variants}
    order = list(c.variants)
    for r in range(c.rounds):
        for spec in order[r % len(order) :] + order[: r % len(order)]:
            run = runners[spec]
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(c.steps):
                run["state"], m = run["fn"](run["state"], x, y)
            jax.block_until_ready(m)
            wall = time.perf_counter() - t0
            times[spec].append(1e3 * wall / c.steps)
            cpu[spec].append((time.process_time() - c0) / wall)
    base = float(np.median(times[c.variants[0]]))
    results = {}
    for spec in c.variants:
        med = float(np.median(times[spec]))
        results[spec] = {
            "ms_per_step_median": med,
            "ms_per_step_all": times[spec],
            "examples_per_s": c.batch / med * 1e3,
            "cpu_per_wall": float(np.median(cpu[spec])),
            "compile_s": runners[spec]["compile_s"],
            "speedup_vs_first": base / med,
        }
        print(
            f"{spec:32s} {med:7.2f} ms/step  (min {min(times[spec]):6.2f})  "
            f"{c.batch / med * 1e3:7.0f} ex/s  CPU/wall {np.median(cpu[spec]):.2f}  "
            f"x{base / med:.3f} vs {c.variants[0]}",
            flush=True,
        )
    out = {
        "config": c,
        "started_note": "niced on a shared 2-core machine unless stated otherwise",
        "load_after": os.getloadavg(),
        "command": " ".join(sys.argv),
        "results": results,
    }
    save_json(out, os.path.join(workdir, "metrics.json"))
    return out


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), sys.argv[1:], __doc__)
    train_and_evaluate(cfg, wd)
