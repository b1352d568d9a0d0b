"""``History``: what ``fit`` returns, as Keras's."""

from __future__ import annotations

from typing import Any


class History:
    """``history[name]`` is a per-epoch list of each logged value; ``epoch`` the epoch numbers;
    ``state`` the final train state (its optimizer state as the user's optimizer builds it)."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.state: Any = None

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": list(self.epoch), "history": {k: list(v) for k, v in self.history.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        h = cls()
        h.epoch = list(d["epoch"])
        h.history = {k: list(v) for k, v in d["history"].items()}
        return h
