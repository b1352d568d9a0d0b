"""Which leaves of a parameter tree are kernels (the weights that compression touches)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

# Leaves never quantised or pruned: biases and normalisation parameters and statistics. They are a
# tiny fraction of the bytes, and an error in a bias or a norm scale shifts every output at once.
_NOT_KERNELS = ("bias", "scale", "offset", "mean", "var", "b")


def leaf_name(path: tuple) -> str:
    last = path[-1] if path else None
    return str(getattr(last, "key", getattr(last, "name", getattr(last, "idx", ""))))


def is_kernel(path: tuple, leaf: Any) -> bool:
    """A floating array with at least two axes that is not named like a bias or norm parameter.

    Dense kernels ``(in, out)``, conv kernels ``(H, W, in, out)`` and attention kernels
    ``(..., out)`` qualify; their **last** axis is the output channel (Flax's layout).
    """
    name = leaf_name(path)
    if name in _NOT_KERNELS or name.startswith("b_"):
        return False
    dtype = getattr(leaf, "dtype", None)
    return np.ndim(leaf) >= 2 and dtype is not None and np.issubdtype(dtype, np.floating)


def path_str(path: tuple) -> str:
    return "/".join(leaf_name((p,)) for p in path)


def kernel_paths(params: Any) -> list[str]:
    """The ``/``-joined paths of the kernels in ``params``, in tree order."""
    out = []
    jax.tree_util.tree_map_with_path(
        lambda p, x: out.append(path_str(p)) if is_kernel(p, x) else None, params
    )
    return out
