"""One run directory for every trainer, classic and LLM alike.

    <run>/config.json          what the run was asked to do (written at the start)
    <run>/metrics.csv          one row per update (updates.jsonl: the same rows with their lists)
    <run>/tb/                  TensorBoard scalars (optional)
    <run>/checkpoints/step_<N>/ written atomically; the newest keep are kept
    <run>/summary.json         written at the end
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Callable

from proximo.checkpoint import STATE_META, atomic_build_dir, atomic_write_json, ensure_run_dir, load_json, recover_dir
from proximo.metrics import MetricsWriter

STEP_DIGITS = 12  # checkpoints/step_000000004096: names sort in step order
# What a run's one step counter (global_step) counts: config.json's "step_unit" (a classic run's, written
# before LLM runs shared this layout, has none: env steps) -> how plots and reports name it.
STEP_UNITS = {"env_steps": "environment steps", "updates": "updates", "optimizer_steps": "optimizer steps"}
# The learning curve of each kind of run: the first of these columns its metrics hold.
CURVES = {"classic": ("episode_return_mean",), "grpo": ("reward",), "rlhf": ("score", "reward"),
          "sft": ("eval_sampled_accuracy", "eval_greedy_accuracy", "eval_nll"), "rm": ("eval_sampled_accuracy",)}


def run_kind(config: dict[str, Any]) -> str:
    """classic for a `proximo train` run, else the LLM command that wrote config.json (grpo, rlhf, sft, rm)."""
    kind = config.get("kind")
    return kind if isinstance(kind, str) and isinstance(config.get("config"), dict) else "classic"


def run_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The training settings in a config.json: a classic run's are its top level, an LLM run's its "config"."""
    return config if run_kind(config) == "classic" else config["config"]


def run_title(config: dict[str, Any]) -> str:
    """What a run trained: its env id, or `llm KIND: MODEL` ("?" when config.json does not say)."""
    if run_kind(config) == "classic":
        return str(config.get("env_id") or "?")
    return f"llm {config['kind']}: {config.get('model', '?')}"


def step_unit(config: dict[str, Any]) -> str:
    """What a run's global_step counts, in words (environment steps, updates, optimizer steps)."""
    return STEP_UNITS.get(str(config.get("step_unit", "env_steps")), "steps")


class RunDir:
    """A run's folder and the files in it; every write is atomic."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        # A writer creates the folder (or learns in one line why it cannot); a reader (create=False) checks
        # nothing, so a run directory on a read-only mount still lists and loads.
        self.path = ensure_run_dir(path, create=True) if create else Path(path)

    def write_config(self, data: dict[str, Any]) -> None:
        """config.json: the settings the run started with."""
        atomic_write_json(self.path / "config.json", data)

    def read_config(self) -> dict[str, Any]:
        """config.json as written by write_config (a CheckpointError names a missing or damaged file)."""
        return load_json(self.path / "config.json")

    def metrics(self, tensorboard: bool = True, columns: list[str] | None = None,
                from_step: int | None = None, tracker=None) -> MetricsWriter:
        """The per-update writer (tracker: a W&B sink, proximo/tracking.py); from_step (a resume) drops rows
        logged past that step first."""
        return MetricsWriter(self.path, tensorboard=tensorboard, columns=columns, from_step=from_step,
                             tracker=tracker)

    def checkpoint_path(self, step: int) -> Path:
        """checkpoints/step_<step> (zero-padded so names sort by step)."""
        return self.path / "checkpoints" / f"step_{step:0{STEP_DIGITS}d}"

    def checkpoints(self, marker: str | None = None) -> list[Path]:
        """Complete checkpoint folders, oldest first (with marker: only those holding that file).

        A kill between an atomic replacement's two renames leaves .step_N.old: it is put back first.
        """
        folder = self.path / "checkpoints"
        if not folder.is_dir():
            return []
        for leftover in folder.glob(".step_*.old"):
            recover_dir(leftover.with_name(leftover.name[1:-len(".old")]))
        return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step_")
                      and (marker is None or (p / marker).is_file()))

    def save_checkpoint(self, step: int, fill: Callable[[Path], None], keep: int,
                        marker: str | None = None) -> Path:
        """Build checkpoints/step_<step>/ with fill(tmp_folder), atomically; keep the newest keep."""
        folder = self.checkpoint_path(step)
        atomic_build_dir(folder, fill)
        for old in self.checkpoints(marker)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        # Half-built folders of a writer killed mid-checkpoint; only the writer sweeps them (a reader
        # could catch this one's own in the making).
        for leftover in folder.parent.glob(".step_*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
        return folder

    def write_summary(self, summary: dict[str, Any]) -> None:
        """summary.json, with NaN and infinities written as null (JSON has no spelling for them)."""
        atomic_write_json(self.path / "summary.json",
                          {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                           for k, v in summary.items()})


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    return RunDir(run_dir, create=False).checkpoints(marker=STATE_META)
