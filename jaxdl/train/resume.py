"""The resume checkpoint of ``fit``: what a run must store after each epoch to continue exactly,
saved and restored in one place.

After epoch ``e`` it stores, under ``<workdir>/resume/<e>``:

- arrays: the train state with the user's own optimizer state (``train``), what ``fit`` added
  to the optimizer (the learning-rate multiplier, loss-scale counters: ``extra``), and each
  callback's arrays (``callbacks``);
- JSON: the epoch, the history, each callback's counters, and the stop flag.

The two most recent epochs are kept. Restoring verifies every array against its digest; a
damaged latest checkpoint is reported and the previous intact one is used (the run then redoes
the lost epoch, bit for bit).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import jax

from jaxdl.train.callbacks import Callback, RunContext
from jaxdl.train.checkpoint import Checkpointer, CorruptCheckpointError
from jaxdl.train.history import History


class ResumeCheckpoint:
    """Save and restore a run's progress in ``<workdir>/resume``."""

    KEEP = 2

    def __init__(self, workdir: str):
        self.checkpointer = Checkpointer(os.path.join(workdir, "resume"), max_to_keep=self.KEEP)

    @property
    def directory(self) -> str:
        return self.checkpointer.directory

    @staticmethod
    def _arrays(ctx: RunContext, callbacks: Sequence[Callback], from_target: bool) -> dict:
        user_opt, extra = ctx.optimizer.split(ctx.state.opt_state)
        return {
            "train": ctx.state.replace(opt_state=user_opt),
            "extra": extra,
            "callbacks": [
                cb.array_target(ctx) if from_target else cb.get_arrays() for cb in callbacks
            ],
        }

    def save(
        self, epoch: int, ctx: RunContext, callbacks: Sequence[Callback], history: History
    ) -> None:
        meta = {
            "epoch": epoch,
            "history": history.to_dict(),
            "callbacks": [cb.get_state() for cb in callbacks],
            "stop_training": ctx.stop_training,
        }
        self.checkpointer.save(epoch, self._arrays(ctx, callbacks, from_target=False), meta)

    def restore(
        self, ctx: RunContext, callbacks: Sequence[Callback], shardings: Any = None
    ) -> tuple[int, History] | None:
        """Load the latest intact checkpoint into ``ctx`` and ``callbacks``; return
        ``(next epoch, history)``, or ``None`` when there is nothing to resume from.

        Raises:
          CorruptCheckpointError: every checkpoint there is damaged.
        """
        steps = self.checkpointer.all_steps()
        if not steps:
            return None
        target = self._arrays(ctx, callbacks, from_target=True)
        errors = []
        for step in reversed(steps):
            try:
                arrays, meta = self.checkpointer.restore(target, step)
            except CorruptCheckpointError as e:
                warnings.warn(f"{e}; trying the previous resume checkpoint", stacklevel=3)
                errors.append(str(e))
                continue
            opt_state = ctx.optimizer.join(arrays["train"].opt_state, arrays["extra"])
            state = arrays["train"].replace(opt_state=opt_state)
            ctx.state = state if shardings is None else jax.device_put(state, shardings)
            for cb, counters, cb_arrays in zip(
                callbacks, meta["callbacks"], arrays["callbacks"], strict=True
            ):
                cb.set_state(counters)
                cb.set_arrays(cb_arrays)
            ctx.stop_training = meta["stop_training"]
            return meta["epoch"] + 1, History.from_dict(meta["history"])
        raise CorruptCheckpointError(
            f"every resume checkpoint in {self.directory} is damaged: "
            + "; ".join(errors)
            + ". Delete the directory to start afresh."
        )
