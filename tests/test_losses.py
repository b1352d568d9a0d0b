"""jaxdl.losses against optax and NumPy loops of each formula, at ordinary and extreme logits."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from jaxdl import losses

RNG = np.random.default_rng(0)
N, K = 12, 5
LOGITS = RNG.normal(size=(N, K)).astype(np.float32) * 3
LABELS = RNG.integers(0, K, size=N).astype(np.int32)


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


class CrossEntropyTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_optax_integer_and_one_hot(self):
        ref = optax.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS)
        ce = self.variant(lambda z, y: losses.cross_entropy(z, y, reduction="none"))
        chex.assert_trees_all_close(ce(LOGITS, LABELS), ref, rtol=1e-6)
        chex.assert_trees_all_close(ce(LOGITS, jax.nn.one_hot(LABELS, K)), ref, rtol=1e-6)
        chex.assert_trees_all_close(
            self.variant(losses.cross_entropy)(LOGITS, LABELS), jnp.mean(ref), rtol=1e-6
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_label_smoothing_matches_optax(self):
        s = 0.1
        smoothed = optax.smooth_labels(jax.nn.one_hot(LABELS, K), s)
        ref = optax.softmax_cross_entropy(LOGITS, smoothed)
        got = self.variant(lambda z, y: losses.cross_entropy(z, y, s, reduction="none"))(
            LOGITS, LABELS
        )
        chex.assert_trees_all_close(got, ref, rtol=1e-6)

    def test_class_weights_keras_semantics(self):
        w = np.array([1.0, 2.0, 0.5, 0.0, 3.0], np.float32)
        per = -np_log_softmax(LOGITS)[np.arange(N), LABELS]
        # Keras: sample weight w_y, then the mean over the batch size (not over the weight sum).
        expected = np.mean(per * w[LABELS])
        got = losses.cross_entropy(LOGITS, LABELS, class_weights=w)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        # Smoothing must not leak other classes' weights into the example weight.
        got_s = losses.cross_entropy(LOGITS, LABELS, 0.2, class_weights=w, reduction="none")
        plain_s = losses.cross_entropy(LOGITS, LABELS, 0.2, reduction="none")
        np.testing.assert_allclose(got_s, plain_s * w[LABELS], rtol=1e-6)

    def test_mask_means_over_kept_examples(self):
        mask = np.arange(N) % 3 != 0
        labels = np.where(mask, LABELS, -1)  # padding label at dropped positions is allowed
        per = -np_log_softmax(LOGITS)[np.arange(N), LABELS]
        np.testing.assert_allclose(
            losses.cross_entropy(LOGITS, labels, mask=mask), per[mask].mean(), rtol=1e-6
        )
        np.testing.assert_allclose(
            losses.cross_entropy(LOGITS, labels, mask=mask, reduction="sum"), per[mask].sum(), 1e-6
        )
        none = losses.cross_entropy(LOGITS, labels, mask=mask, reduction="none")
        np.testing.assert_array_equal(np.asarray(none)[~mask], 0.0)
        assert float(losses.cross_entropy(LOGITS, LABELS, mask=np.zeros(N, bool))) == 0.0

    def test_gradient_is_softmax_minus_target(self):
        s = 0.1
        g = jax.grad(lambda z: losses.cross_entropy(z, LABELS, s, reduction="sum"))(LOGITS)
        q = (1 - s) * np.eye(K)[LABELS] + s / K
        np.testing.assert_allclose(g, np.exp(np_log_softmax(LOGITS)) - q, atol=1e-6)

    def test_extreme_logits_finite_and_exact(self):
        z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], np.float32)
        y = np.array([1, 1])
        got = losses.cross_entropy(z, y, reduction="none")
        np.testing.assert_allclose(got, [2e4, 0.0], rtol=1e-6)
        g = jax.grad(lambda z: losses.cross_entropy(z, y))(z)
        assert np.all(np.isfinite(g))

    def test_bad_input(self):
        with pytest.raises(ValueError, match="labels must lie in"):
            losses.cross_entropy(LOGITS, np.full(N, K))
        with pytest.raises(ValueError, match="labels must lie in"):
            losses.cross_entropy(LOGITS, np.full(N, -1))
        with pytest.raises(ValueError, match="labels must be integer with shape"):
            losses.cross_entropy(LOGITS, LABELS[:-1])
        with pytest.raises(ValueError, match="integer class indices"):
            losses.cross_entropy(LOGITS, LABELS.astype(np.float32))
        with pytest.raises(ValueError, match="class_weights must be non-negative"):
            losses.cross_entropy(LOGITS, LABELS, class_weights=[1, 1, -1, 1, 1])
        with pytest.raises(ValueError, match=r"class_weights must have shape \(5,\)"):
            losses.cross_entropy(LOGITS, LABELS, class_weights=[1, 1])
        with pytest.raises(ValueError, match="label_smoothing"):
            losses.cross_entropy(LOGITS, LABELS, 1.0)
        with pytest.raises(ValueError, match="reduction"):
            losses.cross_entropy(LOGITS, LABELS, reduction="avg")
        with pytest.raises(ValueError, match="mask must have shape"):
            losses.cross_entropy(LOGITS, LABELS, mask=np.ones(N + 1, bool))


class FocalTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_gamma_zero_is_cross_entropy(self):
        f = self.variant(lambda z, y: losses.focal_loss(z, y, gamma=0.0, reduction="none"))
        chex.assert_trees_all_close(
            f(LOGITS, LABELS), losses.cross_entropy(LOGITS, LABELS, reduction="none"), rtol=1e-6
        )

    @parameterized.parameters(0.5, 2.0, 5.0)
    def test_matches_numpy_formula(self, gamma):
        alpha = np.array([0.25, 1.0, 2.0, 0.5, 1.5])
        log_p = np_log_softmax(LOGITS)
        p = np.exp(log_p)
        expected = [-alpha[y] * (1 - p[i, y]) ** gamma * log_p[i, y] for i, y in enumerate(LABELS)]
        got = losses.focal_loss(LOGITS, LABELS, gamma, alpha, reduction="none")
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        np.testing.assert_allclose(
            losses.focal_loss(LOGITS, LABELS, gamma, 0.25),
            np.mean([-0.25 * (1 - p[i, y]) ** gamma * log_p[i, y] for i, y in enumerate(LABELS)]),
            rtol=1e-5,
        )

    def test_down_weights_easy_examples(self):
        easy = np.array([[8.0, 0.0, 0.0]], np.float32)
        hard = np.array([[0.0, 0.0, 0.0]], np.float32)
        y = np.array([0])
        ratio = lambda z: float(losses.focal_loss(z, y) / losses.cross_entropy(z, y))  # noqa: E731
        assert ratio(easy) < 1e-6 < ratio(hard)

    def test_extreme_logits_gradients_finite(self):
        z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], np.float32)
        for gamma in (0.0, 0.5, 2.0):
            g = jax.grad(lambda z, gamma=gamma: losses.focal_loss(z, np.array([0, 0]), gamma))(z)
            assert np.all(np.isfinite(g)), gamma

    def test_bad_input(self):
        with pytest.raises(ValueError, match="gamma"):
            losses.focal_loss(LOGITS, LABELS, gamma=-1.0)
        with pytest.raises(ValueError, match="alpha must be non-negative"):
            losses.focal_loss(LOGITS, LABELS, alpha=[1, 1, 1, 1, -1])
        with pytest.raises(ValueError, match="labels must lie in"):
            losses.focal_loss(LOGITS, np.full(N, 7))


class BinaryTest(parameterized.TestCase):
    Z = (RNG.normal(size=(6, 3)) * 4).astype(np.float32)
    Y = RNG.integers(0, 2, size=(6, 3)).astype(np.float32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_bce_matches_optax(self):
        got = self.variant(
            lambda z, y: losses.binary_cross_entropy_with_logits(z, y, reduction="none")
        )(self.Z, self.Y)
        chex.assert_trees_all_close(
            got, optax.sigmoid_binary_cross_entropy(self.Z, self.Y), rtol=1e-5
        )

    def test_pos_weight_matches_formula(self):
        z, y = self.Z.astype(np.float64), self.Y
        sig = 1 / (1 + np.exp(-z))
        expected = -(3.0 * y * np.log(sig) + (1 - y) * np.log(1 - sig))
        got = losses.binary_cross_entropy_with_logits(self.Z, y, 3.0, reduction="none")
        np.testing.assert_allclose(got, expected, rtol=1e-5)

    def test_bce_extreme(self):
        z = np.array([1e4, -1e4, 1e4], np.float32)
        got = losses.binary_cross_entropy_with_logits(
            z, np.array([1.0, 0.0, 0.0]), reduction="none"
        )
        np.testing.assert_allclose(got, [0.0, 0.0, 1e4])

    @parameterized.parameters((0.0, None), (2.0, None), (2.0, 0.25))
    def test_sigmoid_focal_matches_optax(self, gamma, alpha):
        got = losses.sigmoid_focal_loss(self.Z, self.Y, gamma, alpha, reduction="none")
        ref = optax.sigmoid_focal_loss(self.Z, self.Y, alpha=alpha, gamma=gamma)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="same shape"):
            losses.binary_cross_entropy_with_logits(self.Z, self.Y[:, 0])
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            losses.binary_cross_entropy_with_logits(self.Z, 2 * self.Y + 1)


class RegressionTest(parameterized.TestCase):
    P = RNG.normal(size=(8, 2)).astype(np.float32) * 3
    T = RNG.normal(size=(8, 2)).astype(np.float32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_against_optax_and_numpy(self):
        p, t = self.P, self.T
        chex.assert_trees_all_close(
            self.variant(losses.mse)(p, t), jnp.mean(optax.squared_error(p, t)), rtol=1e-6
        )
        chex.assert_trees_all_close(
            self.variant(losses.mae)(p, t), np.mean(np.abs(p - t)), rtol=1e-6
        )
        for delta in (0.5, 1.0, 2.0):
            got = self.variant(lambda p, t, d=delta: losses.huber(p, t, d, reduction="none"))(p, t)
            chex.assert_trees_all_close(got, optax.huber_loss(p, t, delta=delta), rtol=1e-6)

    def test_huber_gradient_bounded_by_delta(self):
        g = jax.grad(lambda p: losses.huber(p, self.T, 0.5, reduction="sum"))(self.P)
        assert np.max(np.abs(g)) <= 0.5 + 1e-6
        r = self.P - self.T
        np.testing.assert_allclose(g, np.clip(r, -0.5, 0.5), rtol=1e-6)

    def test_row_mask(self):
        mask = np.array([1, 0, 1, 1, 0, 1, 1, 1], bool)
        sq = (self.P - self.T) ** 2
        np.testing.assert_allclose(losses.mse(self.P, self.T, mask=mask), sq[mask].mean(), 1e-6)

    def test_shape_mismatch_refused(self):
        with pytest.raises(ValueError, match="predictions and targets must have the same shape"):
            losses.mse(self.P[:, :1], self.P[:, 0])
        with pytest.raises(ValueError, match="delta"):
            losses.huber(self.P, self.T, 0.0)


class PenaltyTest(parameterized.TestCase):
    PARAMS = {
        "Conv_0": {"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.ones(2)},
        "BatchNorm_0": {"scale": jnp.full(2, 3.0), "bias": jnp.ones(2)},
        "Dense_0": {"kernel": jnp.full((2, 4), -2.0), "bias": jnp.ones(4)},
        "cell": {"w_i": jnp.full((2, 3), 0.5), "b_i": jnp.ones(3)},
    }

    def test_mask_selects_kernels_only(self):
        m = losses.penalty_mask(self.PARAMS)
        assert m["Conv_0"] == {"kernel": True, "bias": False}
        assert m["BatchNorm_0"] == {"scale": False, "bias": False}
        assert m["cell"] == {"w_i": True, "b_i": False}

    def test_values_and_gradients(self):
        # 18 ones, 8 twos, 6 halves -> sum w^2 = 18 + 32 + 1.5, sum |w| = 18 + 16 + 3
        np.testing.assert_allclose(losses.l2_penalty(self.PARAMS, 0.1), 0.05 * 51.5, rtol=1e-6)
        np.testing.assert_allclose(losses.l1_penalty(self.PARAMS, 0.1), 0.1 * 37.0, rtol=1e-6)
        g = jax.grad(lambda p: losses.l2_penalty(p, 0.1))(self.PARAMS)
        chex.assert_trees_all_close(g["Dense_0"]["kernel"], 0.1 * self.PARAMS["Dense_0"]["kernel"])
        chex.assert_trees_all_close(g["BatchNorm_0"]["scale"], jnp.zeros(2))
        # An explicit all-True mask reaches the biases too.
        everything = jax.tree.map(lambda _: True, self.PARAMS)
        total_sq = sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(self.PARAMS))
        np.testing.assert_allclose(
            losses.l2_penalty(self.PARAMS, 2.0, everything), total_sq, rtol=1e-6
        )

    def test_l2_grad_equals_optax_decay_under_sgd(self):
        # SGD on L2 with coeff c = SGD with optax's masked decayed weights c.
        lr, c = 0.1, 0.01
        grads = jax.tree.map(jnp.zeros_like, self.PARAMS)
        tx = optax.chain(optax.add_decayed_weights(c, mask=losses.penalty_mask), optax.sgd(lr))
        upd, _ = tx.update(grads, tx.init(self.PARAMS), self.PARAMS)
        g = jax.grad(lambda p: losses.l2_penalty(p, c))(self.PARAMS)
        chex.assert_trees_all_close(upd, jax.tree.map(lambda x: -lr * x, g), atol=1e-7)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="coeff"):
            losses.l2_penalty(self.PARAMS, -1.0)


def test_get_by_name():
    assert losses.get("focal") is losses.focal_loss
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        losses.get("hinge")
