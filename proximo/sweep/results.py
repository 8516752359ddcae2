"""A sweep's results: one row per trial (results.csv), and results.md with the grouped mean +- std over seeds."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from proximo.checkpoint import atomic_write_bytes, atomic_write_json
from proximo.sweep.spec import Trial
from proximo.sweep.trial import is_finished, read_json_or_empty, read_summary, trial_state

FAILURES = "failures.json"
COLUMNS = ["trial", "env_id", "setting", "seed", "status", "attempts", "global_step", "eval_return_mean",
           "eval_return_std", "train_return_last100", "sps", "wall_time_s", "run_dir", "error"]


def read_failures(sweep_dir: Path) -> dict[str, str]:
    """Trial name -> error of the trials that failed after their retries."""
    return read_json_or_empty(Path(sweep_dir) / FAILURES)


def write_failures(sweep_dir: Path, failures: dict[str, str]) -> None:
    """Save the failed trials' errors atomically."""
    atomic_write_json(Path(sweep_dir) / FAILURES, failures)


def trial_rows(trials: list[Trial], sweep_dir: Path, run_dirs: dict[str, Path]) -> list[dict[str, Any]]:
    """One row per trial, in sweep order: settings, status, final eval, last-100 training return, speed, time."""
    failures = read_failures(sweep_dir)
    rows = []
    for trial in trials:
        run_dir = run_dirs[trial.name]
        row: dict[str, Any] = {"trial": trial.name, "env_id": trial.env_id, "setting": trial.setting,
                               "seed": trial.seed, **{f"grid.{k}": v for k, v in trial.settings.items()},
                               "attempts": trial_state(run_dir).get("attempts", 0),
                               "run_dir": str(run_dir.relative_to(sweep_dir))}
        if is_finished(run_dir):
            summary = read_summary(run_dir)
            row.update(status="done", global_step=summary.get("global_step"),
                       eval_return_mean=summary.get("eval_return_mean"),
                       eval_return_std=summary.get("eval_return_std"),
                       train_return_last100=summary.get("train_return_last100_mean"),
                       sps=summary.get("sps"), wall_time_s=summary.get("wall_time_s"),
                       population=(summary.get("population") or {}).get("run_dir"))
        elif trial.name in failures:
            row.update(status="failed", error=failures[trial.name])
        else:
            row.update(status="interrupted" if (run_dir / "checkpoints").is_dir() else "not run")
        rows.append(row)
    return rows


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and value is not None else math.nan


def grouped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds of each (env, setting)'s finished trials, in first-seen order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["env_id"], row["setting"]), []).append(row)
    out = []
    for (env_id, setting), members in groups.items():
        done = [r for r in members if r["status"] == "done"]
        entry: dict[str, Any] = {"env_id": env_id, "setting": setting, "seeds": len(members), "done": len(done)}
        for key in ("eval_return_mean", "train_return_last100", "sps", "wall_time_s"):
            values = np.array([_number(r.get(key)) for r in done], dtype=np.float64)
            values = values[np.isfinite(values)]
            entry[key] = float(values.mean()) if len(values) else math.nan
            entry[f"{key}_std"] = float(values.std()) if len(values) else math.nan
        out.append(entry)
    return out


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def write_results(sweep_dir: Path, rows: list[dict[str, Any]], title: str, command: str | None = None) -> None:
    """Write results.csv (every trial) and results.md (per-trial table and the grouped summary), atomically."""
    sweep_dir = Path(sweep_dir)
    grid_columns = sorted({key for row in rows for key in row if key.startswith("grid.")},
                          key=lambda k: next(i for i, r in enumerate(rows) if k in r))
    columns = COLUMNS[:3] + grid_columns + COLUMNS[3:]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if row.get(key) is None else row.get(key)) for key in columns})
    atomic_write_bytes(sweep_dir / "results.csv", buffer.getvalue().encode())
    atomic_write_bytes(sweep_dir / "results.md", results_markdown(rows, title, command).encode())


def results_markdown(rows: list[dict[str, Any]], title: str, command: str | None = None) -> str:
    """The grouped summary and the per-trial table as markdown."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "interrupted", "not run")}
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", "```bash", command, "```", ""]
    lines += [", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(rows)} trials.", "",
              "## Mean +- std over seeds", "",
              "| env | setting | seeds done | final eval (deterministic) | last-100 training return | steps/s "
              "| wall s per trial |", "|---|---|---|---|---|---|---|"]
    for g in grouped(rows):
        lines.append(f"| {g['env_id']} | {g['setting']} | {g['done']}/{g['seeds']} | "
                     f"{_fmt(g['eval_return_mean'])} +- {_fmt(g['eval_return_mean_std'])} | "
                     f"{_fmt(g['train_return_last100'])} +- {_fmt(g['train_return_last100_std'])} | "
                     f"{_fmt(g['sps'], 0)} | {_fmt(g['wall_time_s'])} |")
    lines += ["", "## Trials", "",
              "| trial | seed | status | attempts | steps | final eval | last-100 training return | steps/s | wall s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        status = r["status"] + (f": {r['error']}" if r.get("error") else "")
        lines.append(f"| {r['env_id']} {r['setting']} | {r['seed']} | {status.replace('|', '/')} | {r['attempts']} | "
                     f"{_fmt(r.get('global_step'))} | {_fmt(r.get('eval_return_mean'))} +- "
                     f"{_fmt(r.get('eval_return_std'))} | {_fmt(r.get('train_return_last100'))} | "
                     f"{_fmt(r.get('sps'), 0)} | {_fmt(r.get('wall_time_s'))} |")
    return "\n".join(lines) + "\n"
