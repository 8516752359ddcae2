"""Stopping a run on SIGINT/SIGTERM, the same way in both worlds: the first signal lets the current update
finish, then the run saves a checkpoint and stops; a second signal stops at once and saves nothing.

A preempted job (a scheduler's SIGTERM, a Ctrl-C) so loses no finished update. The classic trainer, a
population and the LLM trainers all route the signals through StopSignals and stop with TrainingInterrupted,
whose message names the checkpoint and the command that continues the run.
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Callable

CAUGHT = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after finishing an update and saving a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, run_dir: Path | None,
                 world_size: int = 1, command: str = "proximo train") -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        nproc = f" --nproc {world_size}" if world_size > 1 else ""
        saved = (f"checkpoint saved to {checkpoint}; continue with `{command} --resume {run_dir}{nproc}`"
                 if checkpoint is not None else "no run directory, so nothing was saved")
        super().__init__(f"stopped by {name} at step {step:,}; {saved}")


class StopSignals:
    """SIGINT/SIGTERM turned into a request: `received` holds the first signal (the run stops after this
    update); a second signal raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.announce = True  # print one line when a signal arrives (rank 0 only: torchrun signals every rank)

    def install(self, announce: bool = True) -> Callable[[], None]:
        """Clear any earlier request and catch the signals (main thread only: Python allows handlers nowhere
        else); returns the function that puts the previous handlers back."""
        self.received, self.announce = None, announce
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in CAUGHT}
        for sig in previous:
            signal.signal(sig, self._on_signal)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return restore

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask for a stop after the current update, as a signal does (for code and tests)."""
        self.received = signum

    def _on_signal(self, signum: int, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt  # a second signal: give up on this update, save nothing
        self.received = signum
        if self.announce:
            print(f"\nproximo: {signal.Signals(signum).name} received; finishing this update, then saving a "
                  "checkpoint (send it again to stop at once without saving)", file=sys.stderr, flush=True)
