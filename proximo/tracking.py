"""Experiment trackers besides TensorBoard: `--track wandb` sends a run to Weights & Biases.

A tracker is one more sink of proximo/metrics.py's MetricsWriter: it gets the rows metrics.csv gets
(the same columns, under the same names, against global_step), the run's config at the start, and
at the end the findings of `proximo doctor` for the run directory as a table and summary values.
wandb is imported only when a run asks for it.

Where the run goes: the project is config `track_project`, else $WANDB_PROJECT, else "proximo"; the run's
name is `track_run_name`, else $WANDB_NAME, else the run directory's name. W&B's own variables apply as
usual (WANDB_MODE=offline writes the run locally, WANDB_DIR where; by default it goes in RUN_DIR/wandb).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from proximo.checkpoint import load_json
from proximo.diagnostics import RULES_BY_NAME
from proximo.doctor import examine
from proximo.errors import ConfigError, ProximoError
from proximo.extras import install_hint

TRACKERS = ("none", "wandb")
DEFAULT_PROJECT = "proximo"
FINDING_COLUMNS = ["rule", "title", "start_update", "start_step", "last_update", "fired_updates", "detail", "fix"]


class WandbTracker:
    """One W&B run: log() each metrics row, finish() with the doctor's findings."""

    def __init__(self, run_dir: Path, config: dict[str, Any], project: str | None = None,
                 name: str | None = None) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError(f"--track wandb needs {install_hint('wandb')} (or train with --track none)") from None
        self.run_dir = Path(run_dir)
        self._wandb = wandb
        directory = os.environ.get("WANDB_DIR") or str(self.run_dir)
        Path(directory).mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                                  name=name or os.environ.get("WANDB_NAME") or self.run_dir.name,
                                  config=config, dir=directory)
        except Exception as exc:  # wandb raises its own errors (no API key, no network, bad settings)
            raise ProximoError(f"W&B could not start a run ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                               "log in with `wandb login`, set WANDB_MODE=offline, or train with --track none") from None
        # global_step is the x-axis of every metric, as in metrics.csv and TensorBoard; W&B's own _step
        # just counts rows (a resumed run starts a new W&B run, whose steps start again).
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")

    def log(self, row: dict[str, Any]) -> None:
        """Log one metrics row: the finite numbers of it."""
        values = {key: value for key, value in row.items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
        if values:
            self.run.log(values)

    def finish(self, exit_code: int = 0) -> None:
        """Log the doctor's findings for the run directory, then close the W&B run."""
        try:
            self._log_findings()
        finally:
            self.run.finish(exit_code=exit_code)

    def _log_findings(self) -> None:
        try:
            report = examine(self.run_dir)
        except ProximoError as exc:  # no update rows yet (a run stopped before its first), or no readable config
            self.run.summary["doctor/error"] = str(exc)
            return
        rows = []
        for episode in report.episodes:
            rule = RULES_BY_NAME[episode.rule]
            rows.append([episode.rule, rule.title, episode.start_update, episode.start_step, episode.last_update,
                         len(episode.fired_updates), episode.evidence.detail, rule.fix])
        self.run.log({"doctor/findings": self._wandb.Table(columns=FINDING_COLUMNS, data=rows)})
        self.run.summary["doctor/healthy"] = report.healthy
        self.run.summary["doctor/finding_count"] = len(rows)
        self.run.summary["doctor/rules"] = sorted({row[0] for row in rows})


def open_tracker(config: Any, run_dir: Path) -> WandbTracker | None:
    """The tracker config.track asks for (None for "none"), given the run's config.json (or the config's fields)."""
    kind = getattr(config, "track", "none")
    if kind == "none":
        return None
    if kind != "wandb":
        raise ConfigError(f"track must be one of {', '.join(TRACKERS)}; got {kind!r}")
    return WandbTracker(run_dir, _run_config(config, Path(run_dir)), getattr(config, "track_project", None),
                        getattr(config, "track_run_name", None))


def _run_config(config: Any, run_dir: Path) -> dict[str, Any]:
    # config.json, which the trainers write before they open the metrics, also holds the env id and
    # what the run's auto settings became; it is the run's record, so W&B gets that
    try:
        return load_json(run_dir / "config.json")
    except ProximoError:
        return config.to_dict()
