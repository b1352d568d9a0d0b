import chex
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import data, losses, models, train


@pytest.fixture(scope="module")
def small_mnist():
    x, y = data.load("mnist_5k", "train")
    xt, yt = data.load("mnist_5k", "test")
    # The files are grouped by class: random subsets, not leading slices.
    i = np.random.default_rng(0).permutation(len(x))[:320]
    j = np.random.default_rng(1).permutation(len(xt))[:200]
    return (x[i], y[i]), (xt[j], yt[j])


def _course_callbacks():
    return [
        train.EarlyStopping(patience=5, restore_best_weights=True),
        train.ModelCheckpoint(save_best_only=True),
        train.ReduceLROnPlateau(factor=0.5, patience=1),
    ]


class _Interrupt(train.Callback):
    """Simulates a crash (e.g. a pre-empted job) at the end of one epoch, before it is saved."""

    def __init__(self, at_epoch):
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs, trainer):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for p, q in zip(la, lb, strict=True):
        assert p.dtype == q.dtype
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, small_mnist):
    train_data, val_data = small_mnist
    kwargs = dict(
        train_data=train_data, val_data=val_data, epochs=4, batch_size=64, seed=3, verbose=False
    )
    model = models.MnistCNN()
    # mode="max" on a falling loss makes the plateau rule fire every other epoch: the learning
    # rate then changes during the run, and the restart must carry that change over.
    forced = lambda: train.ReduceLROnPlateau(monitor="loss", mode="max", factor=0.5, patience=1)
    full = train.fit(
        model,
        None,
        callbacks=_course_callbacks() + [forced(), _Interrupt(None)],
        workdir=str(tmp_path / "full"),
        **kwargs,
    )

    workdir = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        train.fit(
            model,
            None,
            callbacks=_course_callbacks() + [forced(), _Interrupt(2)],
            workdir=workdir,
            **kwargs,
        )
    resumed = train.fit(
        model,
        None,
        callbacks=_course_callbacks() + [forced(), _Interrupt(None)],
        workdir=workdir,
        **kwargs,
    )

    _leaves_equal(full.state.params, resumed.state.params)
    _leaves_equal(full.state.opt_state, resumed.state.opt_state)
    assert int(full.state.step) == int(resumed.state.step) == 4 * 5
    assert full.history == resumed.history
    assert full.history["lr_scale"] == resumed.history["lr_scale"]
    assert full.history["lr_scale"][-1] < 1.0


def test_course_callbacks_run_in_fit_and_checkpoint_restores(tmp_path, small_mnist):
    train_data, val_data = small_mnist
    callbacks = _course_callbacks()
    h = train.fit(
        models.MnistCNN(),
        None,
        train_data,
        val_data,
        epochs=3,
        batch_size=64,
        callbacks=callbacks,
        workdir=str(tmp_path),
        verbose=False,
    )
    assert set(h.history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "lr_scale"}
    assert h.epoch == [0, 1, 2]
    assert h.history["loss"][-1] < h.history["loss"][0]
    best = callbacks[1]
    assert best.saved_epochs and best.saved_epochs[0] == 1
    restored, meta = best.checkpointer.restore(h.state)
    assert meta["epoch"] == best.saved_epochs[-1]
    val = train.evaluate(models.MnistCNN(), restored, val_data)
    assert val["loss"] == pytest.approx(meta["logs"]["val_loss"], rel=1e-5)


def test_fit_matches_a_hand_written_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = rng.integers(0, 3, 64).astype(np.int32)
    model = fnn.Dense(3)
    h = train.fit(
        model, optax.sgd(0.1), (x, y), epochs=2, batch_size=16, shuffle=False, verbose=False
    )
    state = train.create_train_state(model, optax.sgd(0.1), x[:1], 0)
    params = state.params
    for _ in range(2):
        for i in range(0, 64, 16):
            g = jax.grad(
                lambda p: losses.cross_entropy(
                    model.apply({"params": p}, x[i : i + 16]), y[i : i + 16]
                )
            )(params)
            params = jax.tree.map(lambda p, g: p - 0.1 * g, params, g)
    chex.assert_trees_all_close(h.state.params, params, rtol=1e-5, atol=1e-6)


def test_class_weight_scales_the_training_loss_like_keras():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = np.repeat(np.arange(2, dtype=np.int32), 16)
    model = fnn.Dense(2)
    plain = train.fit(model, optax.sgd(0.0), (x, y), epochs=1, batch_size=32, verbose=False)
    weighted = train.fit(
        model,
        optax.sgd(0.0),
        (x, y),
        epochs=1,
        batch_size=32,
        verbose=False,
        class_weight={0: 0.0, 1: 2.0},
    )
    state = train.create_train_state(model, optax.sgd(0.0), x[:1], 0)
    per_example = losses.cross_entropy(
        model.apply({"params": state.params}, x), y, reduction="none"
    )
    expected = float(jnp.mean(per_example * jnp.where(jnp.asarray(y) == 1, 2.0, 0.0)))
    assert weighted.history["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert plain.history["loss"][0] == pytest.approx(float(jnp.mean(per_example)), rel=1e-5)


def test_non_finite_loss_stops_naming_the_step():
    x = np.ones((40, 3), np.float32)
    x[25] = np.nan  # the batch holding example 25 poisons step 2 (batches of 10, no shuffle)
    y = np.zeros((40,), np.int32)
    with pytest.raises(train.NonFiniteLossError, match="step 2 "):
        train.fit(
            fnn.Dense(2),
            optax.sgd(0.1),
            (x, y),
            epochs=1,
            batch_size=10,
            shuffle=False,
            verbose=False,
        )


def test_augment_runs_inside_the_step_and_changes_training():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.integers(0, 2, 32).astype(np.int32)
    noisy = lambda key, xb: xb + jax.random.normal(key, xb.shape)
    a = train.fit(fnn.Dense(2), optax.sgd(0.1), (x, y), epochs=1, batch_size=8, verbose=False)
    b = train.fit(
        fnn.Dense(2), optax.sgd(0.1), (x, y), epochs=1, batch_size=8, verbose=False, augment=noisy
    )
    assert a.history["loss"] != b.history["loss"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(train_data=None), "train_data"),
        (dict(train_data=(np.zeros((4, 3)), np.zeros(5, np.int32))), "same length"),
        (dict(epochs=0), "epochs"),
        (dict(batch_size=-1), "batch_size"),
        (dict(class_weight={0: -1.0}), r"class_weight\[0\]"),
    ],
)
def test_fit_rejects_bad_arguments(kwargs, match):
    base = dict(train_data=(np.zeros((4, 3), np.float32), np.zeros(4, np.int32)), verbose=False)
    with pytest.raises(ValueError, match=match):
        train.fit(fnn.Dense(2), optax.sgd(0.1), **{**base, **kwargs})


def test_label_mixing_augment_feeds_soft_labels_to_the_loss():
    from jaxdl.data import augment

    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.integers(0, 3, 32).astype(np.int32)
    seen = {}

    def recording_loss(logits, labels, reduction="mean"):
        seen["labels_shape"] = labels.shape
        return losses.cross_entropy(logits, labels, reduction=reduction)

    h = train.fit(
        fnn.Dense(3),
        optax.sgd(0.1),
        (x, y),
        epochs=1,
        batch_size=8,
        verbose=False,
        augment=augment.mixup(alpha=0.4, num_classes=3),
        loss_fn=recording_loss,
    )
    assert seen["labels_shape"] == (8, 3)  # soft (N, K) targets reached the loss
    assert np.isfinite(h.history["loss"][0]) and 0.0 <= h.history["accuracy"][0] <= 1.0
