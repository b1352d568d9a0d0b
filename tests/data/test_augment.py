"""jaxdl.data.augment: each transform against a NumPy reference of what it may produce, per-example
independence, shape preservation, jit == no-jit, and bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jaxdl.data import augment

KEY = jax.random.PRNGKey(0)
X = np.random.default_rng(0).uniform(size=(16, 6, 7, 2)).astype(np.float32)


class AugmentTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_flip_each_example_is_itself_or_mirrored(self):
        out = np.asarray(self.variant(augment.random_flip())(KEY, X))
        flipped = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, X, strict=True)]
        kept = [np.array_equal(o, x) for o, x in zip(out, X, strict=True)]
        assert all(f or k for f, k in zip(flipped, kept, strict=True))
        assert 0 < sum(flipped) < len(X)  # independent draws per example, not one per batch
        vert = np.asarray(augment.random_flip(False, True, p=1.0)(KEY, X))
        np.testing.assert_array_equal(vert, X[:, ::-1])

    @chex.variants(with_jit=True, without_jit=True)
    def test_crop_is_a_window_of_the_padded_image(self):
        p = 2
        out = np.asarray(self.variant(augment.random_crop(p))(KEY, X))
        padded = np.pad(X, ((0, 0), (p, p), (p, p), (0, 0)))
        offsets = set()
        for o, xp in zip(out, padded, strict=True):
            hits = [
                (dy, dx)
                for dy in range(2 * p + 1)
                for dx in range(2 * p + 1)
                if np.array_equal(o, xp[dy : dy + 6, dx : dx + 7])
            ]
            assert hits, "output is not a shifted window"
            offsets.add(hits[0])
        assert len(offsets) > 3
        np.testing.assert_array_equal(augment.random_crop(0)(KEY, X), X)

    def test_crop_reflect_mode(self):
        out = np.asarray(augment.random_crop(1, mode="reflect")(KEY, X))
        padded = np.pad(X, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        for o, xp in zip(out, padded, strict=True):
            assert any(
                np.array_equal(o, xp[dy : dy + 6, dx : dx + 7])
                for dy in range(3)
                for dx in range(3)
            )

    def test_rotate_matches_rot90_and_identity(self):
        img = np.random.default_rng(1).uniform(size=(9, 9, 3)).astype(np.float32)
        np.testing.assert_allclose(augment.rotate(img, 90.0), np.rot90(img), atol=1e-5)
        np.testing.assert_allclose(augment.rotate(img, -90.0), np.rot90(img, -1), atol=1e-5)
        np.testing.assert_allclose(augment.rotate(img, 0.0), img, atol=1e-6)
        np.testing.assert_allclose(augment.random_rotation(0.0)(KEY, X), X, atol=1e-6)

    def test_rotate_bilinear_small_angle(self):
        # A linear ramp along columns, rotated by a small angle: bilinear interpolation of a linear
        # function is exact, so interior pixels equal the ramp evaluated at the source coordinate.
        h = w = 11
        img = np.tile(np.arange(w, dtype=np.float32), (h, 1))[..., None]
        theta = np.deg2rad(7.0)
        out = np.asarray(augment.rotate(img, 7.0))[..., 0]
        r, q = np.meshgrid(np.arange(h) - 5.0, np.arange(w) - 5.0, indexing="ij")
        src_c = 5.0 - np.sin(theta) * r + np.cos(theta) * q
        interior = (np.abs(r) <= 3) & (np.abs(q) <= 3)
        np.testing.assert_allclose(out[interior], src_c[interior], atol=1e-4)

    def test_noise_moments_and_clip(self):
        x = np.full((64, 8, 8, 1), 0.5, np.float32)
        d = np.asarray(augment.gaussian_noise(0.1, clip=None)(KEY, x)) - x
        np.testing.assert_allclose(d.std(), 0.1, rtol=0.05)
        assert abs(d.mean()) < 0.005
        out = np.asarray(augment.gaussian_noise(1.0)(KEY, x))
        assert out.min() >= 0.0 and out.max() <= 1.0

    def test_cutout_erases_one_clipped_square(self):
        size = 3
        x = np.ones((32, 8, 8, 2), np.float32)
        out = np.asarray(augment.cutout(size)(KEY, x))
        areas = []
        for o in out:
            erased = o[..., 0] == 0
            np.testing.assert_array_equal(erased, o[..., 1] == 0)  # same square in every channel
            rows, cols = np.nonzero(erased)
            assert erased.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # a full rectangle
            assert np.ptp(rows) < size and np.ptp(cols) < size
            areas.append(erased.sum())
        assert max(areas) == size * size and min(areas) < size * size  # clipped at the border
        np.testing.assert_array_equal(augment.cutout(size, p=0.0)(KEY, x), x)

    def test_mixup_mixes_inputs_and_labels_alike(self):
        k = 8
        x = np.broadcast_to(np.arange(k, dtype=np.float32)[:, None, None, None], (k, 4, 4, 1))
        y = np.arange(k)
        xm, ym = augment.mixup(0.4, num_classes=k)(KEY, x, y)
        xm, ym = np.asarray(xm), np.asarray(ym)
        assert ym.shape == (k, k)
        np.testing.assert_allclose(ym.sum(1), 1.0, rtol=1e-6)
        # Image i is filled with the value i, so a mixed image's value is the label-weighted mean.
        np.testing.assert_allclose(xm[:, 0, 0, 0], ym @ np.arange(k), rtol=1e-5)
        assert np.all((ym > 0).sum(1) <= 2)
        assert not np.allclose(ym, np.eye(k))

    @chex.variants(with_jit=True, without_jit=True)
    def test_compose_and_names_keep_shape_and_are_deterministic(self):
        aug = augment.from_names(["flip", "crop", ("cutout", {"size": 2}), "noise"])
        out = self.variant(aug)(KEY, X)
        chex.assert_shape(out, X.shape)
        chex.assert_trees_all_close(out, aug(KEY, X), atol=1e-6)
        assert not np.allclose(out, aug(jax.random.PRNGKey(1), X))

    def test_runs_inside_a_jitted_grad_step(self):
        aug = augment.compose([augment.random_crop(1), augment.cutout(2)])

        @jax.jit
        def step(w, key, x):
            return jax.grad(lambda w: jnp.sum(w * aug(key, x)))(w)

        chex.assert_shape(step(jnp.ones(X.shape), KEY, X), X.shape)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="unknown augmentation 'shear'"):
            augment.from_names(["flip", "shear"])
        with pytest.raises(ValueError, match=r"x must be a batch of images \(N, H, W, C\)"):
            augment.random_flip()(KEY, X[0])
        with pytest.raises(ValueError, match="padding"):
            augment.random_crop(-1)
        with pytest.raises(ValueError, match="mode"):
            augment.random_crop(2, mode="wrap")
        with pytest.raises(ValueError, match="p must be"):
            augment.random_flip(p=1.5)
        with pytest.raises(ValueError, match="num_classes"):
            augment.mixup(0.2)(KEY, X, np.arange(16))
        with pytest.raises(ValueError, match="alpha"):
            augment.mixup(0.0)
        with pytest.raises(ValueError, match="size"):
            augment.cutout(0)


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_crop_reflect_and_edge_modes_shift_the_content(mode):
    # Issue 24: in these modes a crop that never moves (offset always (p, p)) must fail. Each
    # output is matched to the one window of NumPy's padded image it equals; the offsets must
    # vary, include shifted ones, and reach the padded border.
    p = 2
    x = np.random.default_rng(5).uniform(size=(48, 5, 6, 1)).astype(np.float32)
    out = np.asarray(jax.jit(augment.random_crop(p, mode=mode))(KEY, x))
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=mode)
    offsets = []
    for o, xp in zip(out, padded, strict=True):
        hits = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if np.array_equal(o, xp[dy : dy + 5, dx : dx + 6])
        ]
        assert len(hits) == 1, f"{mode}: output matches windows {hits} of the padded image"
        offsets.append(hits[0])
    assert len(set(offsets)) > 5  # uniform over 25 offsets: 48 draws hit many of them
    moved = [o != (p, p) for o in offsets]
    assert sum(moved) > len(x) // 2  # most examples are translated...
    assert sum(not np.array_equal(o, xi) for o, xi in zip(out, x, strict=True)) == sum(moved)
    assert any(dy in (0, 2 * p) or dx in (0, 2 * p) for dy, dx in offsets)  # ...into the padding
