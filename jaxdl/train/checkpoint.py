"""Checkpoints on orbax: atomic writes, verified restores, no pickles.

A :class:`Checkpointer` is a directory of numbered checkpoints ``<directory>/<step>/``, each an
orbax composite of the arrays (``state``, tensorstore) and JSON metadata (``meta``). Three
guarantees:

- **Atomic.** Orbax writes each checkpoint into a temporary directory and renames it into place
  when complete. Re-saving an existing number writes the new checkpoint beside the old one first
  and swaps the two by renames, so at every moment one complete copy exists under its number
  (a leftover of a swap cut short is finished on the next open).
- **Verified.** A SHA-256 digest of every array is stored in the metadata at save time and checked
  at restore: a damaged file raises :class:`CorruptCheckpointError` naming the checkpoint and the
  array, never a silent restore of garbage.
- **Exact.** Arrays restore bit for bit into the structure of a target (same dtypes, shapes).

:func:`load_variables` reads only what inference needs (``params`` and ``batch_stats``) from a
checkpoint written by ``fit`` or ``ModelCheckpoint``, without the optimizer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxdl.train.state import path_str

_REPLACING = ".replacing"  # suffix of a new copy written beside an existing checkpoint
_OLD = ".old"  # suffix of the previous copy during the swap


class CorruptCheckpointError(ValueError):
    """A checkpoint's arrays do not match the digests recorded when it was written."""


def array_digests(tree: Any) -> dict[str, str]:
    """SHA-256 of each array leaf's bytes, keyed by :func:`jaxdl.train.state.path_str`. Arrays that span several
    processes are skipped (no single process holds them)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            continue
        host = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        digest = hashlib.sha256(host.tobytes())
        digest.update(f"{host.dtype.str}{host.shape}".encode())
        out[path_str(path)] = digest.hexdigest()
    return out


class Checkpointer:
    """A directory of numbered checkpoints, each holding a pytree ``state`` and JSON ``meta``.

    Args:
      directory: where the checkpoints live (created if missing).
      max_to_keep: how many of the most recent checkpoints to keep (``None`` keeps all).
    """

    def __init__(self, directory: str, max_to_keep: int | None = 1):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
        self.directory = os.path.abspath(directory)
        self.max_to_keep = max_to_keep
        self._primary = jax.process_index() == 0
        if self._primary:
            os.makedirs(self.directory, exist_ok=True)
            self._finish_interrupted_swaps()
        self._sync("open")
        self._orbax = ocp.Checkpointer(ocp.CompositeCheckpointHandler())

    # -- layout ------------------------------------------------------------------------------

    def _path(self, step: int) -> str:
        return os.path.join(self.directory, str(int(step)))

    def _sync(self, what: str) -> None:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jaxdl-checkpoint-{what}-{self.directory}")

    def _finish_interrupted_swaps(self) -> None:
        """A run killed during a swap leaves ``N.replacing`` (complete: orbax renamed it into
        place only once written) and perhaps ``N.old``: keep the newer complete copy."""
        for name in os.listdir(self.directory):
            full = os.path.join(self.directory, name)
            if name.endswith(_REPLACING):
                final = full[: -len(_REPLACING)]
                if os.path.exists(final):
                    shutil.rmtree(full)
                else:
                    os.rename(full, final)
        for name in os.listdir(self.directory):
            if name.endswith(_OLD):
                shutil.rmtree(os.path.join(self.directory, name))

    def all_steps(self) -> list[int]:
        """The numbers of the complete checkpoints, ascending."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(
            int(n)
            for n in os.listdir(self.directory)
            if n.isdigit() and os.path.isdir(os.path.join(self.directory, n))
        )

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    # -- save --------------------------------------------------------------------------------

    def save(self, step: int, state: Any, meta: dict | None = None) -> None:
        """Write checkpoint ``step`` (synchronously: the state may be donated right after).

        An existing checkpoint with the same number is replaced atomically: a resumed run redoes
        the epoch that was interrupted, and its callbacks save that epoch again.
        """
        final = self._path(step)
        replacing = os.path.exists(final)
        target = final + _REPLACING if replacing else final
        record = {"meta": meta or {}, "digests": array_digests(state)}
        self._orbax.save(
            target,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(record)
            ),
            force=True,
        )
        if self._primary:
            if replacing:
                os.rename(final, final + _OLD)
                os.rename(target, final)
                shutil.rmtree(final + _OLD)
            if self.max_to_keep is not None:
                for old in self.all_steps()[: -self.max_to_keep]:
                    shutil.rmtree(self._path(old))
        self._sync(f"save-{step}")

    # -- restore -----------------------------------------------------------------------------

    def _read(self, step: int | None, abstract: Any | None) -> tuple[Any, dict, int]:
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        path = self._path(step)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no checkpoint {step} in {self.directory}")
        restore = ocp.args.StandardRestore(abstract) if abstract is not None else None
        try:
            restored = self._orbax.restore(
                path,
                args=ocp.args.Composite(
                    state=restore or ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
                ),
            )
        except (ValueError, TypeError, KeyError) as e:
            if "structure" in str(e).lower() or "tree" in str(e).lower():
                raise  # a wrong target is the caller's error, not damage
            raise CorruptCheckpointError(f"checkpoint {path} cannot be read: {e}") from e
        except Exception as e:  # tensorstore/zarr decoding errors of damaged files
            raise CorruptCheckpointError(f"checkpoint {path} cannot be read: {e}") from e
        record = dict(restored["meta"] or {})
        return restored["state"], record, step

    def _verify(self, state: Any, record: dict, step: int, only: tuple[str, ...] = ()) -> None:
        expected = record.get("digests")
        if expected is None:  # written before digests existed: nothing to check against
            return
        actual = array_digests(state)
        for name, digest in actual.items():
            if only and not name.startswith(only):
                continue
            if name in expected and expected[name] != digest:
                raise CorruptCheckpointError(
                    f"checkpoint {self._path(step)} is damaged: array {name!r} does not match "
                    "the digest recorded when it was written"
                )

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore checkpoint ``step`` (default: the latest) into the structure of ``target``.

        ``target`` may be concrete arrays or ``jax.ShapeDtypeStruct``s (``jax.eval_shape``).

        Raises:
          FileNotFoundError: no such checkpoint.
          CorruptCheckpointError: its files are damaged (digest mismatch or unreadable).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        state, record, step = self._read(step, abstract)
        self._verify(state, record, step)
        return state, dict(record.get("meta", record))

    def restore_raw(self, step: int | None = None, only: tuple[str, ...] = ()) -> tuple[Any, dict]:
        """Restore without a target: nested dicts of NumPy arrays, as orbax stored them.
        Digests are checked for the leaves whose path starts with one of ``only`` (all if empty)."""
        state, record, step = self._read(step, None)
        self._verify(state, record, step, only)
        return state, dict(record.get("meta", record))

    def close(self) -> None:
        self._orbax.close()


def load_variables(directory: str, step: int | None = None) -> dict[str, Any]:
    """The model variables of a checkpoint, for inference without the optimizer.

    ``directory`` is a :class:`Checkpointer` directory written by ``fit`` (``<workdir>/resume``)
    or by ``ModelCheckpoint`` (``<workdir>/checkpoints`` by default). Returns
    ``{"params": ..., "batch_stats": ...}`` (``batch_stats`` only when the model has BatchNorm),
    ready for ``model.apply(variables, x, train=False)`` or :func:`jaxdl.train.predict`.

    Raises:
      FileNotFoundError: no checkpoint there.
      CorruptCheckpointError: the parameters or statistics are damaged.
    """
    ckpt = Checkpointer(directory, max_to_keep=None)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.abspath(directory)}")
    raw, _ = ckpt.restore_raw(step, only=("params", "batch_stats", "train/params", "train/batch"))
    tree = raw.get("train", raw)  # fit's resume checkpoints nest the state under "train"
    if "params" not in tree:
        raise ValueError(
            f"checkpoint {ckpt._path(step)} holds no 'params' (keys: {sorted(tree)}); "
            "is it a train-state checkpoint?"
        )
    out = {"params": tree["params"]}
    if tree.get("batch_stats"):
        out["batch_stats"] = tree["batch_stats"]
    return jax.tree.map(np.asarray, out)
