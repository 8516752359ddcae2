"""Schedules for the learning rate, the clip range and the entropy coefficient."""
from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class Schedule:
    """A value that moves from `start` to `end` as training progresses from 0 to 1."""

    kind: str
    start: float
    end: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; choose one of {SCHEDULES}")

    def __call__(self, progress: float) -> float:
        """The value at progress in [0, 1] (fraction of total steps done)."""
        progress = min(max(progress, 0.0), 1.0)
        if self.kind == "constant":
            return self.start
        if self.kind == "linear":
            return self.start + (self.end - self.start) * progress
        return self.end + 0.5 * (self.start - self.end) * (1.0 + math.cos(math.pi * progress))
