"""Callbacks on scripted metric sequences: they act at exactly the epoch Keras 3 would.

The expected epochs below were worked out by hand from Keras's rules (stated in each callback's
docstring); each sequence is built so that an off-by-one in wait/patience/cooldown changes them.
"""

import flax.linen as fnn
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import optim, train
from jaxdl.train.optimizer import prepare_optimizer


def _trainer(workdir=None, kind="jaxdl"):
    opt = {
        "jaxdl": lambda: optim.sgd(0.1),
        "inject": lambda: optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
        "optax": lambda: optax.sgd(0.1),
    }[kind]()
    params = {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)}
    run_opt = prepare_optimizer(opt, params)
    state = train.create_train_state(fnn.Dense(2), run_opt.tx, jnp.ones((1, 3)))
    return train.RunContext(state, workdir, run_opt)


def _run(callback, values, monitor="val_loss", trainer=None):
    """Feed ``values`` epoch by epoch; return the trainer and the epoch it stopped at (or None)."""
    trainer = trainer or _trainer()
    callback.on_train_begin(trainer)
    stopped = None
    scales = []
    for epoch, v in enumerate(values):
        callback.on_epoch_end(epoch, {monitor: v}, trainer)
        scales.append(trainer.lr_scale)
        if trainer.stop_training:
            stopped = epoch
            break
    callback.on_train_end(trainer)
    return trainer, stopped, scales


@pytest.mark.parametrize(
    "kwargs, values, expected_stop",
    [
        # best at epoch 1; epochs 2, 3 do not improve; wait reaches 2 at epoch 3.
        (dict(patience=2), [1.0, 0.9, 0.95, 0.92, 0.91], 3),
        # patience 5 (the course's): improvements keep resetting wait until epoch 3.
        (dict(patience=5), [1.0, 0.9, 0.8, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.1], 8),
        # min_delta: 0.9 -> 0.89 is not an improvement of more than 0.05.
        (dict(patience=1, min_delta=0.05), [1.0, 0.9, 0.89, 0.5], 2),
        # patience 0 never stops at epoch 0, stops at the first non-improvement after.
        (dict(patience=0), [1.0, 1.0, 1.0], 1),
        # mode max for accuracies ('auto' picks it from the name).
        (dict(monitor="val_accuracy", patience=1), [0.5, 0.6, 0.6, 0.7], 2),
        # negative values (e.g. a log-likelihood objective) are ordinary numbers here.
        (dict(patience=2), [-1.0, -1.5, -1.4, -1.45, -1.6], 3),
    ],
)
def test_early_stopping_stops_at_keras_epoch(kwargs, values, expected_stop):
    cb = train.EarlyStopping(**kwargs)
    _, stopped, _ = _run(cb, values, monitor=kwargs.get("monitor", "val_loss"))
    assert stopped == expected_stop


def test_early_stopping_restores_best_weights_only_when_it_stopped():
    trainer = _trainer()
    cb = train.EarlyStopping(patience=1, restore_best_weights=True)
    cb.on_train_begin(trainer)
    values = [1.0, 0.5, 0.7, 0.8]
    snapshots = []
    for epoch, v in enumerate(values):
        # Make the parameters differ per epoch, like training would.
        trainer.state = trainer.state.replace(
            params={"kernel": jnp.full((3, 2), float(epoch)), "bias": jnp.zeros(2)}
        )
        snapshots.append(float(epoch))
        cb.on_epoch_end(epoch, {"val_loss": v}, trainer)
        if trainer.stop_training:
            break
    assert epoch == 2
    cb.on_train_end(trainer)
    np.testing.assert_array_equal(trainer.state.params["kernel"], np.full((3, 2), 1.0))


@pytest.mark.parametrize(
    "kwargs, values, expected_scales",
    [
        # The course's ReduceLROnPlateau(factor=0.5, patience=3): plateau at 0.9 for 3 epochs.
        (
            dict(factor=0.5, patience=3),
            [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8],
            [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25],
        ),
        # cooldown 2 spaces the reductions on a flat curve: epochs 1, 3, 5 (not every epoch).
        (dict(factor=0.5, patience=1, cooldown=2), [1.0] * 6, [1, 0.5, 0.5, 0.25, 0.25, 0.125]),
        (dict(factor=0.5, patience=1), [1.0] * 4, [1, 0.5, 0.25, 0.125]),
        # min_delta is absolute: 1e-3 steps do not count as improvement with min_delta=1e-2.
        (
            dict(factor=0.1, patience=2, min_delta=1e-2),
            [1.0, 0.999, 0.998, 0.997],
            [1, 1, 0.1, 0.1],
        ),
        # negative losses improving steadily never trigger a reduction...
        (dict(factor=0.5, patience=1), [-1.0, -1.1, -1.2, -1.3], [1, 1, 1, 1]),
        # ...and a negative plateau does.
        (dict(factor=0.5, patience=2), [-1.0, -1.0, -1.0], [1, 1, 0.5]),
    ],
)
def test_reduce_lr_on_plateau_reduces_at_keras_epochs(kwargs, values, expected_scales):
    _, _, scales = _run(train.ReduceLROnPlateau(**kwargs), values)
    np.testing.assert_allclose(scales, expected_scales)


def test_reduce_lr_respects_min_lr_in_absolute_terms():
    trainer = _trainer()  # base learning rate 0.1, kept in the state by inject_hyperparams
    _, _, scales = _run(
        train.ReduceLROnPlateau(factor=0.5, patience=1, min_lr=0.03), [1.0] * 5, trainer=trainer
    )
    # 0.1 -> 0.05 -> max(0.025, 0.03) = 0.03 -> stays.
    np.testing.assert_allclose(np.array(scales) * 0.1, [0.1, 0.05, 0.03, 0.03, 0.03], rtol=1e-6)
    assert trainer.learning_rate == pytest.approx(0.03)


def test_reduce_lr_min_lr_without_known_base_rate_is_a_clear_error():
    with pytest.raises(ValueError, match="min_lr"):
        train.ReduceLROnPlateau(min_lr=1e-5).on_train_begin(_trainer(kind="optax"))


def test_reduce_lr_changes_the_rate_a_plain_optax_optimizer_uses():
    trainer = _trainer(kind="optax")
    _, _, scales = _run(train.ReduceLROnPlateau(factor=0.5, patience=1), [1.0] * 3, trainer=trainer)
    assert scales == [1.0, 0.5, 0.25] and trainer.learning_rate is None
    grads = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}
    tx = prepare_optimizer(optax.sgd(0.1), grads).tx
    updates, _ = tx.update(grads, trainer.state.opt_state, trainer.state.params)
    np.testing.assert_allclose(updates["bias"], -0.1 * 0.25 * np.ones(2), rtol=1e-6)


def test_model_checkpoint_save_best_only_saves_improving_epochs(tmp_path):
    cb = train.ModelCheckpoint(str(tmp_path / "ckpt"), save_best_only=True, max_to_keep=5)
    _run(cb, [0.5, 0.4, 0.45, 0.3, 0.35])
    assert cb.saved_epochs == [1, 2, 4]
    assert cb.checkpointer.all_steps() == [1, 2, 4]


def test_model_checkpoint_every_epoch_keeps_last_k(tmp_path):
    cb = train.ModelCheckpoint(str(tmp_path / "ckpt"), max_to_keep=2)
    _run(cb, [0.5, 0.4, 0.45, 0.3])
    assert cb.checkpointer.all_steps() == [3, 4]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: train.EarlyStopping(mode="maximum"), "mode must be"),
        (lambda: train.EarlyStopping(patience=-1), "patience"),
        (lambda: train.ReduceLROnPlateau(factor=1.5), "factor"),
        (lambda: train.ReduceLROnPlateau(cooldown=-1), "cooldown"),
    ],
)
def test_bad_callback_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_missing_monitor_names_available_metrics():
    with pytest.raises(ValueError, match=r"val_loss.*\['loss'\]"):
        train.EarlyStopping().on_epoch_end(0, {"loss": 1.0}, _trainer())


def test_checkpointer_replaces_a_step_that_already_exists(tmp_path):
    ckpt = train.Checkpointer(str(tmp_path / "c"), max_to_keep=3)
    ckpt.save(1, {"w": jnp.zeros(2)}, {"v": 1})
    ckpt.save(1, {"w": jnp.ones(2)}, {"v": 2})  # e.g. the epoch redone after a resume
    restored, meta = ckpt.restore({"w": jnp.zeros(2)})
    np.testing.assert_array_equal(restored["w"], np.ones(2))
    assert meta == {"v": 2} and ckpt.all_steps() == [1]
