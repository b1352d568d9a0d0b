"""experiments/layernorm_warmup.py: the pre-/post-LN x warm-up grid runs end to end at a tiny size,
and its pre- and post-LN runs of a seed start from the same weights."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import layernorm_warmup as exp
from jaxdl import models


def tiny(**kw):
    base = dict(learning_rates=(1e-3,), warmups=(0, 2), steps=4, num_layers=1, num_heads=2,
                embed_dim=16, seq_len=8, batch=2, eval_every=2, eval_windows=8)  # fmt: skip
    return dataclasses.replace(exp.Config(), **{**base, **kw})


@pytest.mark.slow
def test_grid_end_to_end(tmp_path):
    summary = exp.train_and_evaluate(tiny(), str(tmp_path))
    assert set(summary) == {f"{n}/lr=0.001/warmup={w}" for n in ("pre", "post") for w in (0, 2)}
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["runs"]) == 4
    for run in metrics["runs"]:
        assert run["step"] == [0, 2, 4] and len(run["train_loss"]) == 4
        assert np.isfinite(run["final_val_bpc"]) and run["max_grad_norm_first_100"] > 0
    assert (tmp_path / "layernorm_warmup.png").exists()


def test_pre_and_post_ln_share_their_initial_weights():
    """flax seeds each parameter from its path, so the two GPTs differ only by ln_f."""
    x = jnp.zeros((1, 8), jnp.int32)
    pre = jax.jit(models.GPT(256, 8, 2, 2, 16).init)(jax.random.key(0), x)["params"]
    post = jax.jit(models.GPT(256, 8, 2, 2, 16, norm_position="post").init)(jax.random.key(0), x)
    post = post["params"]
    assert set(pre) - set(post) == {"ln_f"}
    jax.tree.map(np.testing.assert_array_equal, {k: v for k, v in pre.items() if k != "ln_f"}, post)


def test_unknown_norm_or_optimizer_is_named(tmp_path):
    with pytest.raises(ValueError, match="norms must be drawn from"):
        exp.train_and_evaluate(tiny(norms=("sandwich",)), str(tmp_path))
    with pytest.raises(ValueError, match="optimizer must be one of"):
        exp.train_and_evaluate(tiny(optimizer="lion"), str(tmp_path))
