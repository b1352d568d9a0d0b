"""jaxdl.xla_flags: which flags ``import jaxdl`` adds, that the user's own win, the opt-out, and
that they take effect in a fresh process (the compiled convolution changes kernel)."""

import os
import subprocess
import sys

import jax
import pytest

from jaxdl import xla_flags

TESTED = xla_flags._jaxlib_version() in xla_flags.TESTED_JAXLIB


@pytest.fixture
def tested_jaxlib(monkeypatch):
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: xla_flags.TESTED_JAXLIB[0])


def test_adds_every_flag_to_an_empty_environment(tested_jaxlib):
    env = {}
    added = xla_flags.apply(env)
    assert added == [f"--{k}={v}" for k, v in xla_flags.CPU_FLAGS.items()]
    assert env["XLA_FLAGS"].split() == added


def test_keeps_the_users_flags_and_values(tested_jaxlib):
    name = next(iter(xla_flags.CPU_FLAGS))
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count=8 --{name}=true"}
    added = xla_flags.apply(env)
    tokens = env["XLA_FLAGS"].split()
    assert tokens[:2] == ["--xla_force_host_platform_device_count=8", f"--{name}=true"]
    assert all(not a.startswith(f"--{name}=") for a in added)  # the user's value wins
    assert len(added) == len(xla_flags.CPU_FLAGS) - 1
    assert xla_flags.apply(env) == []  # idempotent


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_opt_out(tested_jaxlib, value):
    env = {xla_flags.OPT_OUT_ENV: value}
    assert xla_flags.apply(env) == []
    assert "XLA_FLAGS" not in env


def test_an_untested_jaxlib_gets_no_flags(monkeypatch):
    # XLA aborts on a flag it does not know: only versions the flags were measured with get them
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: (0, 4))
    env = {}
    assert xla_flags.apply(env) == []
    assert env == {}


def test_train_step_options_on_cpu_and_the_users_value_wins(tested_jaxlib):
    assert xla_flags.train_step_compiler_options({}) == xla_flags.TRAIN_STEP_OPTIONS
    name = next(iter(xla_flags.TRAIN_STEP_OPTIONS))
    assert xla_flags.train_step_compiler_options({"XLA_FLAGS": f"--{name}=x"}) is None
    assert xla_flags.train_step_compiler_options({xla_flags.OPT_OUT_ENV: "0"}) is None


def test_inference_options_follow_the_model(tested_jaxlib):
    from jaxdl import models

    resnet = models.resnet_cifar(20)
    assert xla_flags.inference_compiler_options(resnet, {}) == xla_flags.TRAIN_STEP_OPTIONS
    assert xla_flags.inference_compiler_options(None, {}) == xla_flags.TRAIN_STEP_OPTIONS
    # MnistCNN's inference is faster under XLA's defaults, and says so
    assert xla_flags.inference_compiler_options(models.MnistCNN(), {}) is None
    assert xla_flags.inference_compiler_options(resnet, {xla_flags.OPT_OUT_ENV: "0"}) is None


def test_library_inference_paths_compile_with_the_models_options(tested_jaxlib, monkeypatch):
    import jax.numpy as jnp
    import numpy as np

    from jaxdl import models, train
    from jaxdl.train import loop
    from jaxdl.train import step as step_mod

    loop._predict_step.cache_clear()  # predict compiles once per model: make it compile here
    seen = []
    real_jit = jax.jit

    def recording_jit(fn, **kwargs):
        seen.append(kwargs.get("compiler_options"))
        return real_jit(fn, **kwargs)

    monkeypatch.setattr(step_mod.jax, "jit", recording_jit)
    model = models.resnet_cifar(20)
    x = jnp.zeros((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    expected = xla_flags.inference_compiler_options(model)
    out = train.predict(model, variables, np.zeros((3, 32, 32, 3), np.float32), batch_size=2)
    assert out.shape == (3, 10)
    sums = train.make_eval_step(model)(variables, x, jnp.zeros(2, jnp.int32), jnp.ones(2))
    assert float(sums["count"]) == 2.0
    assert seen[-2:] == [expected, expected]
    assert train.jit_inference(lambda v: v, models.MnistCNN()) is not None
    assert seen[-1] is None


_PROBE = """
import os, jaxdl, jax, jax.numpy as jnp
from jax import lax
from jaxdl import xla_flags
x, k = jnp.ones((8, 13, 13, 32)), jnp.ones((3, 3, 32, 64))
f = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
options = xla_flags.train_step_compiler_options()
text = jax.jit(f, compiler_options=options).lower(x, k).compile().as_text()
flag = "xla_cpu_enable_concurrency_optimized_scheduler=false" in os.environ.get("XLA_FLAGS", "")
print(("YNN_CONV" if "__ynn_fusion" in text else "XLA_CONV") + (" SCHED" if flag else ""))
"""


@pytest.mark.skipif(not TESTED, reason="the flags are only applied on a tested jaxlib")
def test_the_flags_take_effect_in_a_fresh_process():
    def run(extra):
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXDL_XLA_FLAGS")}
        env.update(extra, JAX_PLATFORMS="cpu")
        out = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.strip().splitlines()[-1]

    # with jaxdl's options a train step's convolution is XLA's own (multi-threaded) and the
    # scheduler flag is in the environment XLA reads; opted out, neither
    assert run({}) == "XLA_CONV SCHED"
    assert run({"JAXDL_XLA_FLAGS": "0"}) == "YNN_CONV"


# ---- the one-time warning for a hand-jitted train step -----------------------------------------


def _cnn_and_data():
    import jax.numpy as jnp

    from jaxdl import models

    model = models.MnistCNN()
    x, y = jnp.ones((2, 28, 28, 1)), jnp.zeros(2, jnp.int32)
    return model, model.init(jax.random.key(0), x)["params"], x, y


def _hand_grad(model, x, y):
    from jaxdl import losses

    def loss(p):
        logits = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(1)})
        return losses.cross_entropy(logits, y)

    return jax.jit(jax.grad(loss))


def test_hand_jitted_train_step_warns_once_and_library_steps_do_not(monkeypatch):
    import warnings

    from jaxdl import optim, train

    monkeypatch.setattr(xla_flags, "_warned", False)
    expected = bool(xla_flags.train_step_compiler_options())
    model, params, x, y = _cnn_and_data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = train.create_train_state(model, optim.adam(1e-3), x, 0)
        train.make_train_step(model, optim.adam(1e-3))(state, x, y)  # jit_train_step: quiet
        jax.jit(lambda p: model.apply({"params": p}, x))(params)  # inference: quiet
        assert not [w for w in caught if "train-step compiler option" in str(w.message)]
        _hand_grad(model, x, y)(params)
        _hand_grad(model, 2 * x, y)(params)  # once per process
    mine = [w for w in caught if "train-step compiler option" in str(w.message)]
    assert len(mine) == (1 if expected else 0)
    if expected:
        assert "jaxdl.train.jit_train_step" in str(mine[0].message)


def test_tuned_step_context_silences_a_hand_jitted_step(monkeypatch):
    import warnings

    monkeypatch.setattr(xla_flags, "_warned", False)
    model, params, x, y = _cnn_and_data()
    grad = _hand_grad(model, x, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with xla_flags.tuned_step():
            grad(params)
    assert not [w for w in caught if "train-step compiler option" in str(w.message)]
