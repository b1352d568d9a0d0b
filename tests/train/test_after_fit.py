"""What a researcher does right after ``fit``: reliable inputs, restorable and verified
checkpoints, predict, multi-input and streaming data, logging, and no hidden recompiles."""

import csv
import glob
import os

import chex
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import data, models, optim, train
from jaxdl.data import augment
from jaxdl.train import loop


class TinyBN(fnn.Module):
    """Dense -> BatchNorm -> ReLU -> Dense: small, with batch statistics."""

    num_classes: int = 3

    @fnn.compact
    def __call__(self, x, train: bool = False):
        x = fnn.Dense(8)(x.reshape(x.shape[0], -1))
        x = fnn.BatchNorm(use_running_average=not train)(x)
        return fnn.Dense(self.num_classes)(fnn.relu(x))


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 1).astype(np.int32)
    return x, y


# -- silent wrong results ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [3, -1])
def test_labels_outside_the_classes_are_refused_naming_the_first(toy, bad):
    x, y = toy
    y = y.copy()
    y[17] = bad
    with pytest.raises(ValueError, match=rf"label {bad} at index 17 .* 3 classes"):
        train.fit(TinyBN(), optim.sgd(0.1), (x, y), epochs=1, verbose=0)
    state = train.create_train_state(TinyBN(), optim.sgd(0.1), x[:1])
    with pytest.raises(ValueError, match=rf"label {bad} at index 17"):
        train.evaluate(TinyBN(), state, (x, y))


def test_restore_best_weights_applies_even_without_early_stop():
    """Keras 3: the best epoch's weights come back at the end whether or not training stopped."""
    params = {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)}
    run_opt = train.optimizer.prepare_optimizer(optim.sgd(0.1), params)
    ctx = train.RunContext(train.create_train_state(fnn.Dense(2), run_opt.tx, jnp.ones((1, 3))))
    cb = train.EarlyStopping(patience=10, restore_best_weights=True)
    cb.on_train_begin(ctx)
    for epoch, value in enumerate([0.5, 0.3, 0.4]):
        ctx.state = ctx.state.replace(params=jax.tree.map(lambda p, e=epoch: p * 0 + e, params))
        cb.on_epoch_end(epoch, {"val_loss": value}, ctx)
    assert not ctx.stop_training
    cb.on_train_end(ctx)
    np.testing.assert_array_equal(ctx.state.params["bias"], np.ones(2))  # epoch 1's weights


# -- checkpoints -------------------------------------------------------------------------------


def _largest_data_file(directory):
    files = [f for f in glob.glob(os.path.join(directory, "**", "*"), recursive=True)]
    files = [f for f in files if os.path.isfile(f) and "meta" not in f.split(os.sep)[-2:][0]]
    return max(files, key=os.path.getsize)


def test_damaged_checkpoint_is_refused_and_resume_falls_back(toy, tmp_path):
    x, y = toy
    kw = dict(batch_size=16, verbose=0, workdir=str(tmp_path))
    full = train.fit(TinyBN(), optim.adam(1e-2), (x, y), epochs=3, batch_size=16, verbose=0)
    train.fit(TinyBN(), optim.adam(1e-2), (x, y), epochs=2, **kw)
    resume_dir = os.path.join(str(tmp_path), "resume")
    assert train.Checkpointer(resume_dir, max_to_keep=None).all_steps() == [0, 1]
    victim = _largest_data_file(os.path.join(resume_dir, "1"))
    with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) // 2)
        chunk = f.read(64)
        f.seek(os.path.getsize(victim) // 2)
        f.write(bytes(255 - b for b in chunk))
    ckpt = train.Checkpointer(resume_dir, max_to_keep=None)
    state = train.create_train_state(TinyBN(), optim.adam(1e-2), x[:1])
    target = {"train": state, "extra": {}, "callbacks": []}
    with pytest.raises(train.CorruptCheckpointError, match="resume/1"):
        ckpt.restore(target, 1)
    with pytest.warns(UserWarning, match="damaged|cannot be read"):
        resumed = train.fit(TinyBN(), optim.adam(1e-2), (x, y), epochs=3, **kw)
    chex.assert_trees_all_equal(resumed.state.params, full.state.params)


def test_checkpoints_restore_into_the_users_own_optimizer_tree(toy, tmp_path):
    x, y = toy
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    h = train.fit(
        TinyBN(), opt, (x, y), (x, y), epochs=2, batch_size=16, verbose=0, workdir=str(tmp_path),
        callbacks=[train.ModelCheckpoint(), train.ReduceLROnPlateau(patience=1)],
    )  # fmt: skip
    target = train.create_train_state(TinyBN(), opt, x[:1])
    restored, meta = train.Checkpointer(os.path.join(str(tmp_path), "checkpoints")).restore(target)
    chex.assert_trees_all_equal(restored.params, h.state.params)
    assert meta["epoch"] == 2
    # the returned state continues with the user's optimizer as it is
    step = train.make_train_step(TinyBN(), opt)
    before = int(h.state.step)
    state, _ = step(h.state, x[:16], y[:16])
    assert int(state.step) == before + 1


def test_load_variables_and_predict_for_a_batchnorm_model(toy, tmp_path):
    x, y = toy
    h = train.fit(TinyBN(), optim.adam(1e-2), (x, y), epochs=2, batch_size=16, verbose=0,
                  workdir=str(tmp_path))  # fmt: skip
    variables = train.load_variables(os.path.join(str(tmp_path), "resume"))
    assert set(variables) == {"params", "batch_stats"}
    chex.assert_trees_all_equal(variables["params"], jax.device_get(h.state.params))
    out = train.predict(TinyBN(), variables, x, batch_size=32)  # 70 rows: last batch padded
    ref = TinyBN().apply(variables, x, train=False)
    assert isinstance(out, np.ndarray) and out.shape == (70, 3)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(train.predict(TinyBN(), h.state, x), ref, rtol=1e-5, atol=1e-6)


# -- multi-input and streaming data --------------------------------------------------------------


def test_multi_input_models_train_from_tuples_and_dicts():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 20, size=(40, 7)).astype(np.int32)
    lengths = rng.integers(2, 8, size=(40,)).astype(np.int32)
    y = (tokens[:, 0] > 10).astype(np.int32)
    model = models.SequenceClassifier(vocab_size=20, hidden=8, embed_dim=8)
    h1 = train.fit(model, optim.adam(1e-2), ((tokens, lengths), y), epochs=1, batch_size=16,
                   verbose=0)  # fmt: skip
    h2 = train.fit(model, optim.adam(1e-2), ({"tokens": tokens, "seq_lengths": lengths}, y),
                   epochs=1, batch_size=16, verbose=0)  # fmt: skip
    chex.assert_trees_all_close(h1.state.params, h2.state.params, rtol=1e-6)
    out = train.predict(model, h1.state, (tokens, lengths))
    assert out.shape == (40, 2)
    with pytest.raises(ValueError, match="share their first dimension"):
        train.fit(model, optim.adam(1e-2), ((tokens, lengths[:5]), y), verbose=0)


class _Source:
    """A random-access source of (x, y) records, as grain and tfds.data_source provide."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


def test_streaming_sources_and_batch_iterables_train(toy):
    x, y = toy
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 70, 16)]  # last batch short
    h_iter = train.fit(TinyBN(), optim.sgd(0.1), batches, epochs=2, verbose=0)
    h_arr = train.fit(TinyBN(), optim.sgd(0.1), (x, y), epochs=2, batch_size=16, shuffle=False,
                      verbose=0)  # fmt: skip
    chex.assert_trees_all_close(h_iter.state.params, h_arr.state.params, rtol=1e-5, atol=1e-6)
    h_src = train.fit(TinyBN(), optim.sgd(0.1), _Source(x, y), epochs=2, batch_size=16, verbose=0)
    assert len(h_src.history["loss"]) == 2 and np.isfinite(h_src.history["loss"]).all()
    gen = ((x[j % 70 : j % 70 + 10], y[j % 70 : j % 70 + 10]) for j in range(0, 10_000, 10))
    h_gen = train.fit(TinyBN(), optim.sgd(0.1), gen, epochs=3, steps_per_epoch=4, verbose=0)
    assert int(h_gen.state.step) == 12


# -- functions people expect ---------------------------------------------------------------------


def test_compose_accepts_label_mixing_next_to_plain_transforms():
    x = jnp.ones((4, 8, 8, 1))
    y = jnp.arange(4) % 3
    aug = augment.compose([augment.random_flip(), augment.mixup(0.4, num_classes=3)])
    assert aug.mixes_labels
    xm, ym = aug(jax.random.key(0), x, y)
    assert xm.shape == x.shape and ym.shape == (4, 3)
    np.testing.assert_allclose(ym.sum(-1), 1.0, rtol=1e-6)


def test_undeclared_label_mixing_augmentation_is_an_error(toy):
    x, y = toy
    with pytest.raises(ValueError, match="label_mixing"):
        train.fit(TinyBN(), optim.sgd(0.1), (x, y), augment=lambda k, a, b: (a, b), verbose=0)


def test_get_learning_rate_under_inject_hyperparams_of_an_optax_optimizer():
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=0.01)
    params = {"w": jnp.ones(3)}
    s = tx.init(params)
    s.hyperparams["learning_rate"] = jnp.asarray(0.005)
    assert optim.get_learning_rate(s) == pytest.approx(0.005)


def test_deterministic_flag_models_train_in_training_mode():
    class DropModel(fnn.Module):
        @fnn.compact
        def __call__(self, x, deterministic: bool = True):
            return fnn.Dropout(0.5, deterministic=deterministic)(fnn.Dense(2)(x))

    assert train.state.train_kwargs(DropModel(), True) == {"deterministic": False}
    assert train.state.train_kwargs(DropModel(), False) == {"deterministic": True}


# -- progress and logging ------------------------------------------------------------------------


def test_off_a_terminal_one_line_per_epoch_and_no_bar(toy, capsys):
    x, y = toy
    train.fit(TinyBN(), optim.sgd(0.1), (x, y), epochs=2, batch_size=16)  # verbose="auto"
    out, err = capsys.readouterr()
    assert out.count("epoch 1/2:") == 1 and out.count("epoch 2/2:") == 1
    assert "batch/s" not in err and "it/s" not in err


def test_csv_logger_and_tensorboard(toy, tmp_path):
    x, y = toy
    path = str(tmp_path / "log.csv")
    train.fit(TinyBN(), optim.sgd(0.1), (x, y), (x, y), epochs=2, batch_size=16, verbose=0,
              workdir=str(tmp_path), callbacks=[train.CSVLogger(path), train.TensorBoard(update_freq=2)])  # fmt: skip
    rows = list(csv.reader(open(path)))
    assert rows[0][0] == "epoch" and "val_loss" in rows[0] and len(rows) == 3
    events = glob.glob(str(tmp_path / "tensorboard" / "*" / "events.out.tfevents.*"))
    assert {os.path.basename(os.path.dirname(e)) for e in events} == {"train", "validation"}


# -- no hidden compiles --------------------------------------------------------------------------


def test_one_train_step_program_per_fit_and_cached_evaluate(toy, monkeypatch):
    x, y = toy  # 70 rows, batch 16: four full batches and a short one
    made = []
    real = loop.make_train_step

    def spy(*a, **k):
        made.append(real(*a, **k))
        return made[-1]

    monkeypatch.setattr(loop, "make_train_step", spy)
    h = train.fit(TinyBN(), optim.sgd(0.1), (x, y), (x, y), epochs=2, batch_size=16, verbose=0,
                  eval_batch_size=32)  # fmt: skip
    assert made[0]._cache_size() == 1
    train.evaluate(TinyBN(), h.state, (x, y), batch_size=32)
    step = loop._eval_step(TinyBN(), None)
    before = step._cache_size()
    train.evaluate(TinyBN(), h.state, (x, y), batch_size=32)
    assert step._cache_size() == before  # a second evaluate compiles nothing


def test_a_padded_last_batch_trains_as_the_short_batch_would(toy):
    """Without BatchNorm, the masked padded batch gives exactly the short batch's update."""
    x, y = toy
    model = fnn.Dense(3)
    state = train.create_train_state(model, optim.sgd(0.5), x[:1])
    step = train.make_train_step(model, optim.sgd(0.5), donate=False)
    short, _ = step(state, x[64:], y[64:])
    xp = np.concatenate([x[64:], x[:10]])
    yp = np.concatenate([y[64:], y[:10]])
    mask = (np.arange(16) < 6).astype(np.float32)
    padded, metrics = step(state, xp, yp, mask)
    chex.assert_trees_all_close(short.params, padded.params, rtol=1e-6, atol=1e-7)
    assert float(metrics["count"]) == 6.0


def test_mnist_5k_head_slice_is_a_sample_of_every_class():
    _, y = data.load("mnist_5k", "train")
    assert len(np.unique(y[:200])) == 10
