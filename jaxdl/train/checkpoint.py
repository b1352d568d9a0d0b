"""Checkpoints on orbax: atomic writes, exact restores, no pickles.

Orbax writes each checkpoint into a temporary directory and renames it into place when complete,
so a run killed mid-save leaves the previous checkpoint intact. Arrays are stored as tensorstore
arrays and restored into the structure of a target state: bit-identical values, same dtypes.
Metadata (epoch, history, callback state) is stored as JSON next to the arrays.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


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
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
            ),
        )

    def save(self, step: int, state: Any, meta: dict | None = None) -> None:
        """Write checkpoint ``step`` (synchronously: the state may be donated right after).

        An existing checkpoint with the same number is replaced: a resumed run redoes the epoch
        that was interrupted, and its callbacks save that epoch again.
        """
        if step in self._manager.all_steps():
            self._manager.delete(int(step))
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {})
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore checkpoint ``step`` (default: the latest) into the structure of ``target``.

        ``target`` may be concrete arrays or ``jax.ShapeDtypeStruct``s (``jax.eval_shape``).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"] or {})

    def close(self) -> None:
        self._manager.close()
