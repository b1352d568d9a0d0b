"""Tests for jaxdl.train.parallel and the launcher.

The pytest process keeps its single CPU device. The multi-device checks run in subprocesses with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (tests/train/multi_device_checks.py writes
its measurements as JSON; the assertions are here), and the multi-process check starts two
processes of four devices each through ``jaxdl.train.launch``. The reference for every
multi-device result is plain single-device training on the same global batches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxdl import optim, train
from jaxdl.train import launch, parallel
from tests.train.parallel_cases import TinyNet, data, fit_case

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOL = 1e-6  # float32 rounding of a sum split 8 ways, after a few steps of size ~0.1


def _run_checks(tmp_path_factory, part: str) -> dict:
    out = tmp_path_factory.mktemp("multi_device") / f"{part}.json"
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.train.multi_device_checks", str(out), part],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    return _run_checks(tmp_path_factory, "steps")


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    return _run_checks(tmp_path_factory, "fit")


# --- 8 devices, in a subprocess ------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["replicated", "fsdp"])
def test_sharded_step_equals_single_device(steps, layout):
    """jit + NamedSharding on 8 devices, with dropout and BatchNorm: three steps end where one
    device ends on the same global batches (state, momentum buffers, running statistics)."""
    r = steps[layout]
    assert r["params"] < TOL
    assert r["opt_state"] < TOL
    assert r["batch_stats"] < TOL  # global-batch statistics: synchronised for free
    assert r["loss_sum"] < 1e-4
    assert r["batch_spec"] == str(P("data"))
    assert r["step_spec"] == str(P())


def test_replicated_state_is_whole_on_every_device(steps):
    r = steps["replicated"]
    assert r["kernel_spec"] == str(P())
    assert r["kernel_devices"] == 8
    assert r["kernel_shard_shapes"] == [r["kernel_shape"]]


def test_fsdp_really_shards_parameters_and_optimizer_state(steps):
    """Dense_0's kernel is (8, 128): split along its 128 columns, 16 per device, and so is its
    momentum buffer; each device holds an eighth."""
    r = steps["fsdp"]
    assert r["kernel_shape"] == [8, 128]
    assert r["kernel_spec"] == str(P(None, "data"))
    assert r["kernel_shard_shapes"] == [[8, 16]]
    assert r["trace_spec"] == str(P(None, "data"))
    assert r["trace_shard_shapes"] == [[8, 16]]


def test_pmap_with_synchronised_batchnorm_equals_single_device(steps):
    r = steps["pmap_synced_bn"]
    assert r["params"] < TOL
    assert r["batch_stats"] < TOL
    assert r["replicas_agree"] == 0.0  # pmean gives every replica the same gradient
    assert r["count"] == 64.0  # metric sums are psum-ed over the 8 devices


def test_pmap_with_local_batchnorm_differs(steps):
    """Per-device statistics (8 rows each) normalise differently: the option is not a no-op."""
    r = steps["pmap_local_bn"]
    assert r["params"] > 1e-4
    assert r["replicas_agree"] == 0.0


@pytest.mark.parametrize("case", ["shard_map_synced_bn", "shard_map_lstm"])
def test_shard_map_step_equals_single_device(steps, case):
    """jit(shard_map) on 8 devices, 8 rows each: the averaged per-device gradients are the global
    batch's, so three steps end where one device ends (BatchNorm synchronised over "data"; the
    LSTM through lstm_layer's hand-written backward pass, run per device)."""
    r = steps[case]
    assert r["params"] < TOL
    assert r["opt_state"] < TOL
    assert r["batch_stats"] < TOL
    assert r["loss_sum"] < 1e-4
    assert r["count"] == 64.0  # metric sums are psum-ed over the 8 devices
    assert r["replicas_agree"] == 0.0  # every device applied the same update
    assert r["kernel_devices"] == 8
    assert r["params_spec"] == str(P())


def test_shard_map_step_with_local_batchnorm_differs(steps):
    """Per-device statistics (8 rows each) normalise differently; the running statistics are
    averaged afterwards so the replicas still agree."""
    r = steps["shard_map_local_bn"]
    assert r["params"] > 1e-4
    assert r["replicas_agree"] == 0.0


def test_bad_input_raises_clear_errors(steps):
    e = steps["errors"]
    assert "batch_size=30 is not divisible by the 8 devices" in e["batch_not_divisible"]
    assert "batch_size=30 is not divisible by the 8 devices" in e["batch_not_divisible_mesh"]
    assert "num_devices=16" in e["too_many_devices"]
    assert "'data' axis" in e["mesh_without_data_axis"]
    assert "'model': 2" in e["mesh_with_model_axis"]
    assert "not divisible by num_devices=8" in e["pmap_split"]
    assert "batch_size=30 is not divisible by the 8 devices" in e["shard_map_batch"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["fit_auto", "fit_fsdp"])
def test_fit_on_eight_devices_equals_one(fits, case):
    """fit shards transparently (all 8 devices without being asked; a short last batch padded and
    masked) and reproduces single-device fit: same per-epoch history, same parameters."""
    r = fits[case]
    assert r["devices"] == 8
    assert fits["fit_single_devices"] == 1
    assert r["params"] < TOL
    assert r["opt_state"] < TOL
    for name, diffs in r["history"].items():
        assert np.max(np.abs(diffs)) < 1e-5, name
    expected = str(P(None, "data")) if case == "fit_fsdp" else str(P())
    assert r["kernel_spec"] == expected


def test_fit_picks_the_per_device_step_for_recurrent_models_on_cpu(fits):
    """ "auto" takes shard_map for an LSTM on CPU devices, and it trains as one device does."""
    r = fits["fit_recurrent"]
    assert r["chosen"] == "shard_map"
    assert r["params"] < 1e-5
    assert np.max(np.abs(r["loss"])) < 1e-5


@pytest.mark.slow
def test_fit_resumes_on_eight_devices(fits):
    """An 8-device fit checkpointed after epoch 1 and resumed ends where one device ends."""
    r = fits["fit_resumed"]
    assert r["devices"] == 8
    assert r["epochs"] == [0, 1]
    assert r["params"] < TOL


@pytest.mark.slow
def test_two_processes_of_four_devices_match_single_process(tmp_path):
    """2 processes x 4 CPU devices through jax.distributed (gloo) on localhost, started by the
    launcher: fit on the global 8-device mesh ends with single-process parameters and history."""
    out = tmp_path / "params.npz"
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    codes = launch.launch(
        [sys.executable, "-m", "tests.train.mp_worker", str(out)],
        num_processes=2,
        devices_per_process=4,
        env=env,
        timeout=900,
    )
    assert codes == [0, 0]
    got = np.load(out)
    ref = fit_case(num_devices=1)
    for path, leaf in jax.tree.leaves_with_path(ref.state.params):
        np.testing.assert_allclose(got[jax.tree_util.keystr(path)], leaf, atol=TOL, rtol=0)
    for name, values in ref.history.items():
        np.testing.assert_allclose(got[f"history/{name}"], values, atol=1e-5, rtol=0)


# --- one device, in this process -----------------------------------------------------------------


def test_fsdp_spec_picks_largest_divisible_axis():
    assert parallel.fsdp_spec((1600, 128), 8) == P("data", None)
    assert parallel.fsdp_spec((3, 3, 32, 64), 8) == P(None, None, None, "data")
    assert parallel.fsdp_spec((3, 3, 1, 32), 8, min_size=1) == P(None, None, None, "data")
    assert parallel.fsdp_spec((10, 1001), 8) == P()  # nothing divisible
    assert parallel.fsdp_spec((128,), 8) == P()  # below min_size: replicate
    assert parallel.fsdp_spec((), 8) == P()


def test_state_shardings_keep_step_rng_and_batch_stats_replicated():
    x, _ = data(8)
    state = train.create_train_state(TinyNet(), optim.momentum(0.1), x[:1], 0)
    mesh = parallel.make_mesh(1)
    sh = parallel.state_shardings(state, mesh, shard_params=True)
    assert sh.step.spec == P() and sh.rng.spec == P()
    assert all(s.spec == P() for s in jax.tree.leaves(sh.batch_stats))
    assert sh.params["Dense_0"]["kernel"].spec == P(None, "data")


def test_shard_map_step_on_one_device_is_the_plain_step():
    """A one-device mesh: the shard_map step computes what make_train_step computes (parameters,
    momentum, BatchNorm statistics, metric sums), and it lowers ahead of time like a jitted
    function."""
    x, y = data(16)
    model, tx = TinyNet(), optim.momentum(0.1, 0.9)
    mesh = parallel.make_mesh(1)
    ref_step = train.make_train_step(model, tx)
    step = parallel.make_shard_map_train_step(model, tx, mesh)
    ref = train.create_train_state(model, tx, x[:1], 0)
    state = parallel.shard_state(train.create_train_state(model, tx, x[:1], 0), mesh)
    assert isinstance(step.lower(state, x, y), jax.stages.Lowered)
    for _ in range(2):
        ref, ref_metrics = ref_step(ref, x, y)
        state, metrics = step(state, *parallel.shard_batch((x, y), mesh))
    chex.assert_trees_all_close(state.params, ref.params, atol=1e-6)
    chex.assert_trees_all_close(state.opt_state, ref.opt_state, atol=1e-6)
    chex.assert_trees_all_close(state.batch_stats, ref.batch_stats, atol=1e-6)
    chex.assert_trees_all_close(metrics, ref_metrics, atol=1e-5)


def test_single_device_mesh_and_resolution():
    assert parallel.make_mesh().shape == {"data": 1}
    assert parallel.resolve_mesh(None, None, 32) is None  # one device: plain path
    assert parallel.resolve_mesh(None, 1, 30) is None
    with pytest.raises(ValueError, match="num_devices=2 but only 1"):
        parallel.make_mesh(2)
    with pytest.raises(ValueError, match="num_devices must be a positive int"):
        parallel.make_mesh(0)
    with pytest.raises(ValueError, match="mesh or num_devices, not both"):
        parallel.resolve_mesh(parallel.make_mesh(1), 1, 32)
    with pytest.raises(ValueError, match="mesh must be a jax.sharding.Mesh"):
        parallel.check_mesh("data")


def test_fit_rejects_more_devices_than_present():
    x, y = data(16)
    with pytest.raises(ValueError, match="num_devices=4 but only 1"):
        train.fit(TinyNet(), optim.sgd(0.1), (x, y), batch_size=8, num_devices=4, verbose=False)


def test_split_batch_and_replicate_layouts():
    x, y = data(16)
    xs, ys = parallel.split_batch((x, y), 1)
    assert xs.shape == (1, 16, 8, 8, 1) and ys.shape == (1, 16)
    np.testing.assert_array_equal(xs[0], x)
    rep = parallel.replicate({"w": np.arange(3.0)})
    assert rep["w"].shape == (1, 3)
    np.testing.assert_array_equal(parallel.unreplicate(rep)["w"], np.arange(3.0))


def test_initialize_distributed_single_process_and_errors(monkeypatch):
    for var in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID):
        monkeypatch.delenv(var, raising=False)
    assert parallel.initialize_distributed() is False
    with pytest.raises(ValueError, match="coordinator_address"):
        parallel.initialize_distributed(num_processes=2, process_id=0)
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\)"):
        parallel.initialize_distributed("localhost:1", num_processes=2, process_id=2)
    monkeypatch.setenv(parallel.ENV_NUM_PROCESSES, "2")
    with pytest.raises(ValueError, match="coordinator_address"):
        parallel.initialize_distributed()


def test_launcher_sets_each_process_environment(tmp_path):
    """Each child sees its id, the count and one shared coordinator address, in the environment
    and substituted into its arguments; exit codes come back in process order."""
    script = (
        "import os, sys, json; json.dump({k: os.environ.get(k) for k in "
        "('JAXDL_COORDINATOR_ADDRESS', 'JAXDL_NUM_PROCESSES', 'JAXDL_PROCESS_ID', 'XLA_FLAGS')}"
        ", open(sys.argv[1], 'w'))"
    )
    out = str(tmp_path / "env_{process_id}_of_{num_processes}.json")
    codes = launch.launch([sys.executable, "-c", script, out], 3, devices_per_process=2)
    assert codes == [0, 0, 0]
    envs = [json.loads((tmp_path / f"env_{i}_of_3.json").read_text()) for i in range(3)]
    assert [e["JAXDL_PROCESS_ID"] for e in envs] == ["0", "1", "2"]
    assert {e["JAXDL_NUM_PROCESSES"] for e in envs} == {"3"}
    assert len({e["JAXDL_COORDINATOR_ADDRESS"] for e in envs}) == 1
    assert all("--xla_force_host_platform_device_count=2" in e["XLA_FLAGS"] for e in envs)


def test_launcher_reports_failure_and_validates():
    codes = launch.launch([sys.executable, "-c", "import sys; sys.exit(3)"], 2)
    assert 3 in codes
    with pytest.raises(ValueError, match="num_processes"):
        launch.launch(["true"], 0)
    with pytest.raises(ValueError, match="devices_per_process"):
        launch.launch(["true"], 1, devices_per_process=0)
    with pytest.raises(ValueError, match="command"):
        launch.launch([], 1)
