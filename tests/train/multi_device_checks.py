"""The 8-device measurements behind test_parallel.py, run in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the main pytest process stays on one
device). Usage: ``python -m tests.train.multi_device_checks OUT.json PART`` with ``PART`` one of
``steps`` (the train steps: sharding, FSDP, pmap; and bad input) or ``fit``.

Everything is computed here and written as JSON (largest differences from the single-device
reference, shardings, error messages); the assertions live in test_parallel.py.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import jax
import numpy as np

from jaxdl import losses, models, optim, train
from jaxdl.train import parallel
from tests.train.parallel_cases import TinyNet, data, fit_case

STEPS = 3


def max_diff(a, b) -> float:
    a, b = parallel.gather(a), parallel.gather(b)
    diffs = jax.tree.map(lambda u, v: float(np.max(np.abs(np.asarray(u) - np.asarray(v)))), a, b)
    return max(jax.tree.leaves(diffs), default=0.0)


def fresh_state(model, tx, x):
    return train.create_train_state(model, tx, x[:1], 0)


def run_single(model, tx, x, y):
    step = train.make_train_step(model, tx)
    state = fresh_state(model, tx, x)
    for _ in range(STEPS):
        state, metrics = step(state, x, y)
    return jax.device_get(state), jax.device_get(metrics)


def main(out: str, part: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    start = time.perf_counter()
    results = {"steps": check_steps, "fit": check_fit}[part]()
    results["seconds"] = time.perf_counter() - start
    with open(out, "w") as f:
        json.dump(results, f, indent=1, default=str)


def check_steps() -> dict:
    results: dict = {}
    x, y = data(64)
    tx = optim.momentum(0.1, 0.9)
    mesh = parallel.make_mesh(8)

    # 1. jit + sharding, replicated and FSDP, with dropout: equal to one device on the global batch.
    model = TinyNet(dropout_rate=0.25)
    ref, ref_metrics = run_single(model, tx, x, y)
    for name, fsdp in (("replicated", False), ("fsdp", True)):
        state = fresh_state(model, tx, x)
        shardings = parallel.state_shardings(state, mesh, fsdp)
        state = parallel.shard_state(state, mesh, fsdp)
        step = parallel.make_sharded_train_step(model, tx, mesh, shardings)
        for _ in range(STEPS):
            state, metrics = step(state, *parallel.shard_batch((x, y), mesh))
        kernel = state.params["Dense_0"]["kernel"]
        trace = state.opt_state[0].trace["Dense_0"]["kernel"]  # momentum buffer
        results[name] = {
            "params": max_diff(state.params, ref.params),
            "batch_stats": max_diff(state.batch_stats, ref.batch_stats),
            "opt_state": max_diff(state.opt_state, ref.opt_state),
            "loss_sum": abs(float(metrics["loss_sum"]) - float(ref_metrics["loss_sum"])),
            "kernel_spec": str(kernel.sharding.spec),
            "kernel_shape": list(kernel.shape),
            "kernel_shard_shapes": sorted({tuple(s.data.shape) for s in kernel.addressable_shards}),
            "kernel_devices": len(kernel.sharding.device_set),
            "trace_spec": str(trace.sharding.spec),
            "trace_shard_shapes": sorted({tuple(s.data.shape) for s in trace.addressable_shards}),
            "step_spec": str(state.step.sharding.spec),
            "batch_spec": str(parallel.shard_batch((x, y), mesh)[0].sharding.spec),
        }

    # 2. pmap: without dropout (pmap folds the device index into the dropout key by design).
    plain = TinyNet()
    ref, _ = run_single(plain, tx, x, y)
    for name, axis in (("pmap_synced_bn", "batch"), ("pmap_local_bn", None)):
        model = TinyNet(bn_axis_name=axis)
        step = parallel.make_pmap_train_step(model, tx, axis_name="batch")
        state = parallel.replicate(fresh_state(model, tx, x))
        for _ in range(STEPS):
            state, metrics = step(state, *parallel.split_batch((x, y), 8))
        one = parallel.unreplicate(state)
        results[name] = {
            "params": max_diff(one.params, ref.params),
            "batch_stats": max_diff(one.batch_stats, ref.batch_stats),
            "replicas_agree": max_diff(
                jax.tree.map(lambda a: a[0], state.params),
                jax.tree.map(lambda a: a[7], state.params),
            ),
            "count": float(parallel.unreplicate(metrics)["count"]),
        }

    # 3. shard_map: pmap's maths on the sharding runtime; BatchNorm synchronised over "data", and
    # the LSTM whose hand-written backward pass each device runs on its own 8 rows.
    sequences = np.random.default_rng(1).normal(size=(64, 12, 3)).astype(np.float32)
    targets = sequences[:, -3:, 0].mean(axis=1, keepdims=True)
    cases = {
        "shard_map_synced_bn": (TinyNet(bn_axis_name="data"), TinyNet(), tx, (x, y), {}),
        "shard_map_local_bn": (TinyNet(), TinyNet(), tx, (x, y), {}),
        "shard_map_lstm": (
            models.Forecaster(hidden=16),
            models.Forecaster(hidden=16),
            optim.adam(1e-2),
            (sequences, targets),
            {"loss_fn": losses.mse},
        ),
    }
    for name, (model, ref_model, opt, (xs, ys), kwargs) in cases.items():
        ref_step = train.make_train_step(ref_model, opt, **kwargs)
        ref_state = fresh_state(ref_model, opt, xs)
        step = parallel.make_shard_map_train_step(model, opt, mesh, **kwargs)
        state = parallel.shard_state(fresh_state(model, opt, xs), mesh)
        for _ in range(STEPS):
            ref_state, ref_metrics = ref_step(ref_state, xs, ys)
            state, metrics = step(state, *parallel.shard_batch((xs, ys), mesh))
        kernel = jax.tree.leaves(state.params)[0]
        shards = [np.asarray(s.data) for s in kernel.addressable_shards]
        results[name] = {
            "params": max_diff(state.params, ref_state.params),
            "opt_state": max_diff(state.opt_state, ref_state.opt_state),
            "batch_stats": max_diff(state.batch_stats, ref_state.batch_stats),
            "loss_sum": abs(float(metrics["loss_sum"]) - float(ref_metrics["loss_sum"])),
            "count": float(metrics["count"]),
            "replicas_agree": max(float(np.max(np.abs(a - shards[0]))) for a in shards),
            "kernel_devices": len(shards),
            "params_spec": str(kernel.sharding.spec),
        }

    results["errors"] = bad_input(tx, mesh)
    return results


def check_fit() -> dict:
    """fit on all devices (automatically) and with FSDP (explicitly), against fit on one device."""
    results: dict = {}
    single = fit_case(num_devices=1)
    for name, kwargs in (
        ("fit_auto", {}),
        ("fit_fsdp", {"num_devices": 8, "shard_params": True}),
    ):
        h = fit_case(**kwargs)
        kernel = h.state.params["Dense_0"]["kernel"]
        results[name] = {
            "params": max_diff(h.state.params, single.state.params),
            "opt_state": max_diff(h.state.opt_state, single.state.opt_state),
            "history": {
                k: [a - b for a, b in zip(v, single.history[k], strict=True)]
                for k, v in h.history.items()
            },
            "devices": len(kernel.sharding.device_set),
            "kernel_spec": str(kernel.sharding.spec),
        }
    results["fit_single_devices"] = len(single.state.params["Dense_0"]["kernel"].devices())
    # Resume on the mesh: one epoch, then a second fit in the same workdir continues it.
    with tempfile.TemporaryDirectory() as workdir:
        fit_case(epochs=1, workdir=workdir)
        resumed = fit_case(workdir=workdir)
    results["fit_recurrent"] = check_fit_recurrent()
    results["fit_resumed"] = {
        "params": max_diff(resumed.state.params, single.state.params),
        "devices": len(resumed.state.params["Dense_0"]["kernel"].sharding.device_set),
        "epochs": resumed.epoch,
    }
    return results


def check_fit_recurrent() -> dict:
    """fit's "auto" step for a recurrent model on CPU devices is the per-device one, and it trains
    as one device does (a 70-row epoch: the padded short batch splits over the devices too)."""
    import flax.linen as fnn

    from jaxdl import nn as jnn
    from jaxdl.train import loop

    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 6, 3)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int32)

    class Seq(fnn.Module):
        @fnn.compact
        def __call__(self, x, train: bool = False):
            h = jnn.RNN(jnn.LSTMCell(8))(x)[:, -1]  # (B, 8)
            return fnn.Dense(2)(h)

    kw = dict(epochs=2, batch_size=16, verbose=0)
    single = train.fit(Seq(), optim.adam(1e-2), (x, y), num_devices=1, **kw)
    chosen = loop._choose_parallel_step("auto", Seq(), parallel.make_mesh(8), False, False, x[:1])
    multi = train.fit(Seq(), optim.adam(1e-2), (x, y), num_devices=8, **kw)
    return {
        "chosen": chosen,
        "params": max_diff(multi.state.params, single.state.params),
        "loss": [a - b for a, b in zip(multi.history["loss"], single.history["loss"], strict=True)],
    }


def bad_input(tx, mesh) -> dict:
    errors = {}
    x100, y100 = data(100)
    for name, call in {
        "batch_not_divisible": lambda: train.fit(
            TinyNet(), tx, (x100, y100), batch_size=30, num_devices=8, verbose=False
        ),
        "batch_not_divisible_mesh": lambda: train.fit(
            TinyNet(), tx, (x100, y100), batch_size=30, mesh=mesh, verbose=False
        ),
        "too_many_devices": lambda: parallel.make_mesh(16),
        "mesh_without_data_axis": lambda: parallel.check_mesh(
            jax.sharding.Mesh(np.asarray(jax.devices()), ("model",))
        ),
        "mesh_with_model_axis": lambda: parallel.check_mesh(
            jax.sharding.Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "model"))
        ),
        "pmap_split": lambda: parallel.split_batch((x100, y100), 8),
        "shard_map_batch": lambda: parallel.make_shard_map_train_step(TinyNet(), tx, mesh)(
            parallel.shard_state(fresh_state(TinyNet(), tx, x100), mesh), x100[:30], y100[:30]
        ),
    }.items():
        try:
            call()
            errors[name] = None
        except ValueError as e:
            errors[name] = str(e)
    return errors


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
