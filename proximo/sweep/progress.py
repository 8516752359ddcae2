"""A sweep's progress: one live line on a terminal, plain periodic lines otherwise (CI, pipes, logs)."""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from proximo.sweep.spec import Trial


def last_step(run_dir: Path) -> int:
    """global_step of the last complete row of a run's metrics.csv (0 when it has none)."""
    path = Path(run_dir) / "metrics.csv"
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 4096))
            lines = handle.read().decode(errors="replace").split("\n")
    except OSError:
        return 0
    for line in reversed(lines[:-1]):  # the text after the last newline may be a row still being written
        head = line.split(",", 1)[0]
        if head.isdigit():
            return int(head)
    return 0


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class SweepProgress:
    """Counts done / running / failed / queued trials and estimates the time left from the steps trained so far."""

    def __init__(self, todo: list[Trial], run_dirs: dict[str, Path], done_before: int, total: int, slots: int,
                 every_s: float, say: Callable[[str], None]) -> None:
        self.todo, self.run_dirs, self.total, self.slots = list(todo), run_dirs, total, slots
        self.done, self.failures, self.every_s, self.say = done_before, 0, every_s, say
        self.open = {t.name: t for t in todo}
        self.start = time.monotonic()
        self.start_steps = {t.name: last_step(run_dirs[t.name]) for t in todo}
        self.interactive = sys.stderr.isatty()
        self._last = self.start
        self._width = 0

    def finished(self, trial: Trial, summary: dict[str, Any]) -> None:
        """A trial finished: say its result on its own line."""
        self.open.pop(trial.name, None)
        self.done += 1
        self._line(f"done {self.done}/{self.total}: {trial.env_id} {trial.setting} seed {trial.seed}: eval "
                   f"{summary.get('eval_return_mean', float('nan')):.1f}, last-100 training return "
                   f"{_num(summary.get('train_return_last100_mean')):.1f}, {summary.get('wall_time_s', 0):.0f} s")

    def failed(self, trial: Trial, error: str) -> None:
        """A trial failed past its retries: say why on its own line."""
        self.open.pop(trial.name, None)
        self.failures += 1
        self._line(f"FAILED: {trial.env_id} {trial.setting} seed {trial.seed}: {error}")

    def status(self) -> str:
        """'3/12 done, 2 running, 0 failed, 7 queued, ETA 4m10s'."""
        running = min(len(self.open), self.slots)
        queued = len(self.open) - running
        trained, remaining = 0, 0
        for name, trial in list(self.open.items()):
            step = last_step(self.run_dirs[name])
            trained += max(0, step - self.start_steps[name])
            remaining += max(0, trial.config["total_steps"] - step)
        for trial in self.todo:
            if trial.name not in self.open:
                trained += max(0, trial.config["total_steps"] - self.start_steps[trial.name])
        elapsed = time.monotonic() - self.start
        rate = trained / elapsed if elapsed > 0 else 0.0
        eta = remaining / rate if rate > 0 else math.inf
        return (f"sweep: {self.done}/{self.total} done, {running} running, {self.failures} failed, {queued} queued; "
                f"{rate:,.0f} steps/s; elapsed {_duration(elapsed)}, ETA {_duration(eta)}")

    def tick(self) -> None:
        """Redraw the live line (terminal), or print a plain line once per period."""
        now = time.monotonic()
        if self.interactive:
            if now - self._last >= 1.0:
                self._last = now
                self._draw(self.status())
        elif now - self._last >= self.every_s:
            self._last = now
            self.say(f"proximo: {self.status()}")

    def _draw(self, text: str) -> None:
        sys.stderr.write("\r" + text.ljust(self._width))
        sys.stderr.flush()
        self._width = len(text)

    def _line(self, text: str) -> None:
        if self.interactive and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.say(f"proximo: {text}")

    def close(self) -> None:
        """End the live line."""
        if self.interactive and self._width:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._width = 0


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")
