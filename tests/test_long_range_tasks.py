"""experiments/transformer_long_range.py: the copy task's model builders run a training step on
tiny shapes, the parameter counts the docs quote, and the end-to-end script on a tiny grid."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import transformer_long_range as exp
from jaxdl import losses, optim
from jaxdl.data.synthetic_sequences import copy_task


def tiny(**kw) -> exp.Config:
    return dataclasses.replace(
        exp.Config(), task="copy", num_symbols=3, alphabet=4, embed_dim=8, num_layers=1,
        num_heads=2, lstm_hidden=6, gru_hidden=5, batch=4, test_size=8, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["transformer", "lstm", "gru"])
def test_copy_models_take_a_step(kind):
    c, T = tiny(), 5
    model, prepare = exp.build_copy_model(kind, T, c)
    params = exp.init_copy_params(kind, model, prepare, T, c, jax.random.key(0))
    x, y = copy_task(jax.random.key(1), c.batch, T, c.num_symbols, c.alphabet)
    logits = model.apply({"params": params}, prepare(x))
    assert logits.shape == (c.batch, T + 2 * c.num_symbols, c.alphabet + 2)

    def loss_fn(p):
        return losses.cross_entropy(model.apply({"params": p}, prepare(x)), y)

    tx = optim.adam(1e-2)
    loss0, g = jax.value_and_grad(loss_fn)(params)
    u, _ = tx.update(g, tx.init(params), params)
    new = jax.tree.map(jnp.add, params, u)
    assert np.isfinite(loss0)
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(g))
    assert float(loss_fn(new)) < float(loss0)  # one Adam step on the same batch lowers it


def test_fan_in_init_rescales_the_gpt():
    c, T = tiny(), 5
    model, prepare = exp.build_copy_model("transformer", T, c)
    p_fan = exp.init_copy_params("transformer", model, prepare, T, c, jax.random.key(0))
    p_gpt2 = exp.init_copy_params(
        "transformer", model, prepare, T, dataclasses.replace(c, gpt_init="gpt2"),
        jax.random.key(0),
    )  # fmt: skip
    assert np.std(p_gpt2["wte"]["embedding"]) == pytest.approx(0.02, rel=0.3)
    assert np.std(p_fan["wte"]["embedding"]) == pytest.approx(1 / np.sqrt(8), rel=0.3)
    np.testing.assert_array_equal(p_fan["ln_f"]["scale"], 1.0)  # norms untouched
    with pytest.raises(ValueError, match="gpt_init"):
        exp.init_copy_params("transformer", model, prepare, T,
                             dataclasses.replace(c, gpt_init="xavier"), jax.random.key(0))  # fmt: skip


def test_default_copy_models_have_matched_parameter_counts():
    """The counts docs/experiments/transformer_long_range.md quotes (built abstractly: no FLOPs)."""
    c = dataclasses.replace(exp.Config(), task="copy")
    counts = {}
    for kind in ("transformer", "lstm", "gru"):
        model, prepare = exp.build_copy_model(kind, 50, c)
        x = jnp.zeros((1, 70), jnp.int32)
        shapes = jax.eval_shape(lambda m=model, p=prepare: m.init(jax.random.key(0), p(x)))
        counts[kind] = exp.param_count(shapes["params"])
    assert counts == {"transformer": 25_792 + 70 * 32, "lstm": 25_910, "gru": 25_595}


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="copy_models"):
        exp.build_copy_model("elman2", 5, tiny())
    with pytest.raises(ValueError, match="task"):
        exp.train_and_evaluate(dataclasses.replace(exp.Config(), task="reverse"), "/nonexistent")


@pytest.mark.slow
def test_copy_experiment_end_to_end(tmp_path):
    c = tiny(lengths=(3,), copy_steps=4, copy_eval_every=2, copy_models=("transformer", "gru"))
    summary = exp.train_and_evaluate(c, str(tmp_path))
    assert set(summary) == {"T=3/transformer", "T=3/gru"}
    with open(os.path.join(tmp_path, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["curves"]["3"]["gru"]["step"] == [0, 2, 4]
    assert metrics["baselines"]["3"]["accuracy_recall"] == pytest.approx(0.25)
    assert os.path.exists(os.path.join(tmp_path, "transformer_long_range_copy.png"))
    # --reuse: a second call reads the saved runs back instead of training
    again = exp.train_and_evaluate(dataclasses.replace(c, reuse=True), str(tmp_path))
    assert again == summary


def test_assemble_only_reports_cut_short_runs(tmp_path):
    """A run file saved mid-training ("complete": false) is assembled as cut short at its step."""
    c = tiny(lengths=(3,), copy_models=("lstm",), assemble_only=True)
    runs = tmp_path / "copy_runs"
    runs.mkdir()
    curve = {"step": [0, 2, 4], "accuracy_recall": [0.2, 0.5, 0.995],
             "loss_recall": [1.4, 1.0, 0.1], "loss_all_steps": [0.5, 0.3, 0.01]}  # fmt: skip
    (runs / "lstm_T3.json").write_text(json.dumps({**curve, "complete": False}))
    summary = exp.train_and_evaluate(c, str(tmp_path))["T=3/lstm"]
    assert summary["complete"] is False
    assert summary["steps_run"] == 4 and summary["solved_at_step"] == 4
    assert summary["params"] == 4 * 6 * (6 + 6 + 1) + 6 * 6 + 6  # LSTM(6) on one-hot 6 + Dense(6)
