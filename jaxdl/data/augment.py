r"""Data augmentation on device: pure functions of a PRNG key, vmapped over the batch, jittable.

Every augmentation here is built by a factory and has the signature ``aug(key, x) -> x`` on a batch
of images ``x`` of shape ``(N, H, W, C)`` (NHWC). The key is split into one key per example and the
per-example transform is ``jax.vmap``-ed, so each image gets its own random draw with no Python
loop, and the whole thing runs inside the jitted train step:
``fit(..., augment=augment.compose([augment.random_flip(), augment.random_crop(4)]))``, or by name,
``augment.from_names(["flip", "crop"])``.

Output shapes equal input shapes (padding-then-cropping, rotations and cutouts never resize), so
``jit`` compiles the step once.

:func:`mixup` also mixes the labels, so its signature is ``(key, x, y) -> (x, y_soft)`` and it
is declared so with :func:`label_mixing` (its ``mixes_labels`` attribute); ``fit(...,
augment=augment.mixup(0.2, num_classes=10))`` reads that declaration -- never the arity -- and
hands the soft labels to the loss (:func:`jaxdl.losses.cross_entropy` accepts ``(N, K)``
targets). :func:`compose` accepts both kinds in one list.

Augmentation encodes a prior: the label is invariant to the transform (a digit shifted by two
pixels is the same digit). Choose transforms that respect that -- a horizontal flip turns some
digits into non-digits, so it suits natural images (CIFAR) far better than MNIST. See
``docs/derivations/regularization.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Augment = Callable[[jax.Array, jax.Array], jax.Array]

PAD_MODES = ("constant", "edge", "reflect")


def _check_images(x: jax.Array, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name}: x must be a batch of images (N, H, W, C), got shape {x.shape}")


def _per_example(name: str, fn: Callable[[jax.Array, jax.Array], jax.Array]) -> Augment:
    """Lift ``fn(key, image (H, W, C)) -> image`` to a batch with one key per example."""

    def aug(key: jax.Array, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        _check_images(x, name)
        keys = jax.random.split(key, x.shape[0])
        return jax.vmap(fn)(keys, x)

    aug.__name__ = name
    aug.__qualname__ = name
    return aug


def _check_prob(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")


def random_flip(horizontal: bool = True, vertical: bool = False, p: float = 0.5) -> Augment:
    """Mirror each image left-right (and/or up-down), each with probability ``p``."""
    _check_prob(p)
    if not (horizontal or vertical):
        raise ValueError("random_flip needs horizontal=True or vertical=True")

    def flip(key, img):  # img: (H, W, C)
        k_h, k_v = jax.random.split(key)
        if horizontal:
            img = jnp.where(jax.random.bernoulli(k_h, p), img[:, ::-1], img)
        if vertical:
            img = jnp.where(jax.random.bernoulli(k_v, p), img[::-1], img)
        return img

    return _per_example("random_flip", flip)


def random_crop(padding: int = 4, mode: str = "constant", fill: float = 0.0) -> Augment:
    """Pad each side by ``padding`` pixels, then cut a window of the original size at a uniform
    random offset in ``[0, 2 * padding]^2``: a random translation by up to ``padding`` pixels
    (the CIFAR recipe of He et al. 2016, padding 4).

    Args:
      padding: pixels added on each side (``>= 0``; 0 is the identity).
      mode: ``"constant"`` (``fill``), ``"edge"`` or ``"reflect"``.
      fill: the constant pad value.
    """
    if padding < 0 or int(padding) != padding:
        raise ValueError(f"padding must be a non-negative integer, got {padding}")
    if mode not in PAD_MODES:
        raise ValueError(f"mode must be one of {PAD_MODES}, got {mode!r}")
    padding = int(padding)

    def crop(key, img):
        h, w, c = img.shape
        widths = ((padding, padding), (padding, padding), (0, 0))
        if mode == "constant":
            padded = jnp.pad(img, widths, constant_values=fill)
        else:
            padded = jnp.pad(img, widths, mode=mode)  # (H + 2p, W + 2p, C)
        dy, dx = jax.random.randint(key, (2,), 0, 2 * padding + 1)
        return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))

    return _per_example("random_crop", crop)


def rotate(img: jax.Array, degrees: jax.Array | float, fill: float = 0.0) -> jax.Array:
    r"""Rotate one image ``(H, W, C)`` counter-clockwise by ``degrees`` about its centre.

    Inverse mapping with bilinear interpolation: output pixel ``p`` reads the input at
    ``c + R(-theta)(p - c)``, ``c = ((H - 1)/2, (W - 1)/2)``; samples outside the image read
    ``fill``. With ``(row, col)`` coordinates (rows grow downwards) a counter-clockwise turn of
    ``theta`` on screen reads from ``row' = c_r + cos(theta)(r - c_r) + sin(theta)(q - c_q)`` and
    ``col' = c_q - sin(theta)(r - c_r) + cos(theta)(q - c_q)``: 90 degrees is ``np.rot90``.
    """
    h, w, _ = img.shape
    theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    rows, cols = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )  # (H, W) each
    r, q = rows - (h - 1) / 2, cols - (w - 1) / 2
    src_r = (h - 1) / 2 + cos * r + sin * q
    src_c = (w - 1) / 2 - sin * r + cos * q

    def one_channel(ch):
        return jax.scipy.ndimage.map_coordinates(
            ch, [src_r, src_c], order=1, mode="constant", cval=fill
        )

    return jax.vmap(one_channel, in_axes=-1, out_axes=-1)(img).astype(img.dtype)


def random_rotation(max_degrees: float = 10.0, fill: float = 0.0) -> Augment:
    """Rotate each image by an angle drawn uniformly from ``[-max_degrees, max_degrees]``
    (bilinear, see :func:`rotate`). Keep it small: a 180-degree turn maps 6 to 9."""
    if not 0.0 <= max_degrees <= 180.0:
        raise ValueError(f"max_degrees must be in [0, 180], got {max_degrees}")

    def rot(key, img):
        return rotate(
            img, jax.random.uniform(key, (), minval=-max_degrees, maxval=max_degrees), fill
        )

    return _per_example("random_rotation", rot)


def gaussian_noise(stddev: float = 0.1, clip: tuple[float, float] | None = (0.0, 1.0)) -> Augment:
    """Add ``N(0, stddev^2)`` noise to every pixel, then clip to ``clip`` (``None``: no clip)."""
    if stddev < 0:
        raise ValueError(f"stddev must be non-negative, got {stddev}")
    if clip is not None and not clip[0] < clip[1]:
        raise ValueError(f"clip must be (low, high) with low < high, got {clip}")

    def noise(key, img):
        out = img + stddev * jax.random.normal(key, img.shape, img.dtype)
        return out if clip is None else jnp.clip(out, clip[0], clip[1])

    return _per_example("gaussian_noise", noise)


def cutout(size: int = 8, fill: float = 0.0, p: float = 1.0) -> Augment:
    """Cutout (DeVries & Taylor 2017): set a ``size x size`` square to ``fill``.

    The square's centre is uniform over the image and the square is clipped at the border (the
    paper's choice), so near an edge less than ``size^2`` pixels are erased. Applied with
    probability ``p``. Built from index comparisons, so shapes stay static under ``jit``.
    """
    if size <= 0 or int(size) != size:
        raise ValueError(f"size must be a positive integer, got {size}")
    _check_prob(p)

    def cut(key, img):
        h, w, _ = img.shape
        k_pos, k_apply = jax.random.split(key)
        cy = jax.random.randint(k_pos, (), 0, h)
        cx = jax.random.randint(jax.random.fold_in(k_pos, 1), (), 0, w)
        top, left = cy - size // 2, cx - size // 2
        rows = jnp.arange(h)[:, None]  # (H, 1)
        cols = jnp.arange(w)[None, :]  # (1, W)
        inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
        inside = inside & jax.random.bernoulli(k_apply, p)
        return jnp.where(inside[:, :, None], jnp.asarray(fill, img.dtype), img)

    return _per_example("cutout", cut)


def label_mixing(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Declare ``fn(key, x, y) -> (x, y_soft)`` a label-mixing augmentation (sets
    ``fn.mixes_labels = True``), so ``fit`` and :func:`compose` pass it the labels."""
    if not callable(fn):
        raise ValueError(f"label_mixing: fn must be callable, got {fn!r}")
    fn.mixes_labels = True
    return fn


def mixup(
    alpha: float = 0.2, num_classes: int | None = None
) -> Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    r"""Mixup (Zhang et al. 2018): train on convex combinations of pairs of examples.

    For each example ``i``, with a partner ``j = perm(i)`` from one random permutation of the batch
    and its own ``lambda_i ~ Beta(alpha, alpha)``:

    .. math::

        \tilde x_i = \lambda_i x_i + (1 - \lambda_i) x_j, \qquad
        \tilde y_i = \lambda_i y_i + (1 - \lambda_i) y_j .

    Returns ``mix(key, x, y) -> (x_mixed, y_soft)``: ``x`` of any shape ``(N, ...)``, ``y`` integer
    ``(N,)`` (then ``num_classes`` is required) or one-hot / soft ``(N, K)``; ``y_soft`` is
    ``(N, K)`` float.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")

    def mix(key: jax.Array, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, y = jnp.asarray(x), jnp.asarray(y)
        n = x.shape[0]
        if y.ndim == 1:
            if num_classes is None:
                raise ValueError("mixup: integer labels need num_classes")
            y = jax.nn.one_hot(y, num_classes, dtype=x.dtype)
        if y.ndim != 2 or y.shape[0] != n:
            raise ValueError(f"mixup: y must be (N,) or (N, K) with N = {n}, got {y.shape}")
        k_lam, k_perm = jax.random.split(key)
        lam = jax.random.beta(k_lam, alpha, alpha, (n,)).astype(x.dtype)  # (N,)
        perm = jax.random.permutation(k_perm, n)
        lam_x = lam.reshape((n,) + (1,) * (x.ndim - 1))
        x_mix = lam_x * x + (1.0 - lam_x) * x[perm]
        y = y.astype(x.dtype)
        y_mix = lam[:, None] * y + (1.0 - lam[:, None]) * y[perm]
        return x_mix, y_mix

    return label_mixing(mix)


def compose(augments: Sequence[Augment]) -> Augment:
    """Apply ``augments`` in order, each with its own key folded from ``key``.

    If any of them mixes labels (:func:`label_mixing`, e.g. :func:`mixup`), the composition is
    itself label-mixing, ``(key, x, y) -> (x, y_soft)``: plain transforms change ``x`` only, and
    each label-mixing one receives the current ``(x, y)``.
    """
    augments = tuple(augments)
    for a in augments:
        if not callable(a):
            raise ValueError(f"compose: every augmentation must be callable, got {a!r}")
    mixing = [getattr(a, "mixes_labels", False) for a in augments]

    if not any(mixing):

        def composed(key: jax.Array, x: jax.Array) -> jax.Array:
            for i, a in enumerate(augments):
                x = a(jax.random.fold_in(key, i), x)
            return x

        return composed

    def composed_mixing(key: jax.Array, x: jax.Array, y: jax.Array):
        for i, (a, mixes) in enumerate(zip(augments, mixing, strict=True)):
            k = jax.random.fold_in(key, i)
            if mixes:
                x, y = a(k, x, y)
            else:
                x = a(k, x)
        return x, y

    return label_mixing(composed_mixing)


def identity() -> Augment:
    """No augmentation (a placeholder that keeps a config's shape)."""
    return lambda key, x: x


_BY_NAME: dict[str, Callable[..., Augment]] = {
    "flip": random_flip,
    "crop": random_crop,
    "rotate": random_rotation,
    "noise": gaussian_noise,
    "cutout": cutout,
    "none": identity,
}
NAMES = tuple(sorted(_BY_NAME))


def get(name: str, **kwargs: Any) -> Augment:
    """The augmentation called ``name`` (one of :data:`NAMES`), built with ``kwargs``."""
    try:
        factory = _BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"unknown augmentation {name!r}; expected one of {NAMES} "
            "(mixup changes the labels: build it with augment.mixup)"
        ) from None
    return factory(**kwargs)


def from_names(names: Sequence[str | tuple[str, dict[str, Any]]]) -> Augment:
    """``compose`` of augmentations given by name, e.g. ``["crop", ("rotate", {"max_degrees": 5})]``
    -- convenient for experiment configs and command lines."""
    if isinstance(names, str):
        raise ValueError(f"names must be a sequence of names, got the string {names!r}")
    built = []
    for entry in names:
        name, kwargs = (entry, {}) if isinstance(entry, str) else entry
        built.append(get(name, **kwargs))
    return compose(built)
