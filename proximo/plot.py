"""`proximo plot`: learning curves of one or several runs, mean and band over seeds of one config."""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from proximo.errors import ProximoError
from proximo.metrics import read_jsonl
from proximo.rundir import CURVES, run_kind, run_title, step_unit

# Fields that differ between seeds of one experiment, or only change bookkeeping.
_NOT_GROUPING = {"seed", "eval_episodes", "save_every", "keep_checkpoints", "log_every", "torch_threads"}


def run_curve(run_dir: Path) -> tuple[str, str]:
    """(the column a run's learning curve shows by default, what its global_step counts): the mean episode
    return over environment steps for a classic run; an LLM run's headline (reward, score, held-out accuracy)
    over updates or optimizer steps."""
    config_path = Path(run_dir) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    keys = CURVES.get(run_kind(config), CURVES["classic"])
    y = keys[0]
    metrics = Path(run_dir) / "metrics.csv"
    if len(keys) > 1 and metrics.is_file():
        with open(metrics, newline="") as handle:
            rows = list(csv.DictReader(handle))
        y = next((key for key in keys if any(row.get(key) not in (None, "") for row in rows)), y)
    return y, step_unit(config)


def read_curve(run_dir: Path, y: str = "episode_return_mean") -> tuple[np.ndarray, np.ndarray]:
    """(global_step [K], y [K]) from a run's metrics.csv, skipping rows where y is empty."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise ProximoError(f"{run_dir} has no metrics.csv; is it a proximo run directory?")
    steps, values = [], []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        if y not in (reader.fieldnames or []) and (Path(run_dir) / "updates.jsonl").is_file():
            # a column metrics.csv does not keep (self-play's selfplay_rating, ...): every row is in updates.jsonl

            rows = read_jsonl(Path(run_dir) / "updates.jsonl", corrupt="skip")
        for row in rows:
            if row.get(y) not in (None, ""):
                steps.append(float(row["global_step"]))
                values.append(float(row[y]))
    return np.asarray(steps), np.asarray(values)


def _group_key(run_dir: Path) -> str:
    config_path = Path(run_dir) / "config.json"
    if not config_path.is_file():
        return str(run_dir)
    config = json.loads(config_path.read_text())
    return json.dumps({k: v for k, v in config.items() if k not in _NOT_GROUPING}, sort_keys=True)


def _label(run_dirs: list[Path]) -> str:
    config_path = run_dirs[0] / "config.json"
    title = run_title(json.loads(config_path.read_text())) if config_path.is_file() else "?"
    name = title if title != "?" else run_dirs[0].name
    return f"{name} ({len(run_dirs)} seeds)" if len(run_dirs) > 1 else f"{name}: {run_dirs[0].name}"


def draw_seeds(axes, curves: list[tuple[np.ndarray, np.ndarray]], label: str, linewidth: float = 1.6,
               alpha: float = 0.2) -> int:
    """Draw the seeds of one setting on axes: one run as it is, several as their mean with a min-max band over the
    steps they all reached. Returns how many curves had points."""
    curves = [(s, v) for s, v in curves if len(s)]
    if len(curves) == 1:
        axes.plot(curves[0][0], curves[0][1], label=label, linewidth=linewidth)
    elif curves:
        grid = np.linspace(max(c[0][0] for c in curves), min(c[0][-1] for c in curves), 200)
        stacked = np.stack([np.interp(grid, s, v) for s, v in curves])
        line, = axes.plot(grid, stacked.mean(0), label=label, linewidth=linewidth)
        axes.fill_between(grid, stacked.min(0), stacked.max(0), color=line.get_color(), alpha=alpha)
    return len(curves)


def plot_runs(run_dirs: list[Path], output: Path, y: str | None = None, title: str | None = None) -> Path:
    """Draw y (None: the first run's learning curve, run_curve) against the runs' step counter; runs sharing
    a config (seeds aside) become one mean line with a min-max band."""
    default_y, x_label = run_curve(Path(run_dirs[0]))
    y = y or default_y
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[Path]] = defaultdict(list)
    for run_dir in run_dirs:
        groups[_group_key(Path(run_dir))].append(Path(run_dir))
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    for members in groups.values():
        draw_seeds(axes, [read_curve(member, y) for member in members], _label(members))
    if not axes.lines:
        what = "no finished episodes" if y == "episode_return_mean" else "nothing"
        raise ProximoError(f"{what} to plot in {', '.join(map(str, run_dirs))} (column {y!r} is empty)")
    axes.set_xlabel(x_label)
    axes.set_ylabel("episode return (mean of last 100)" if y == "episode_return_mean" else y.replace("_", " "))
    axes.set_title(title or "proximo learning curve")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save_figure(figure, output)


def save_figure(figure, output: str | Path) -> Path:
    """Lay out and write a matplotlib figure to output (folders made as needed), close it; returns the path."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)
    plt.close(figure)
    return output
