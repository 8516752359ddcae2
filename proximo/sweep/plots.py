"""`proximo plot SWEEP_DIR`: one learning curve per setting (mean over seeds, min-max band), a panel per env."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from proximo.errors import ProximoError
from proximo.plot import draw_seeds, read_curve, save_figure
from proximo.sweep.spec import SweepSpec


def is_sweep_dir(path: Path) -> bool:
    """True for a folder that `proximo sweep` (or `paper table1`) wrote."""
    return (Path(path) / "sweep.json").is_file()


def sweep_groups(sweep_dir: Path) -> dict[str, dict[str, list[Path]]]:
    """env -> setting -> the run directories of its seeds, in the sweep's order."""
    from proximo.sweep.runner import RUNS  # here, not above: the runner imports the env makers, `proximo plot` none

    data = json.loads((Path(sweep_dir) / "sweep.json").read_text())
    # sweep.json is written with sorted keys, which loses the order of the grid's fields that the trial folders
    # are named in (objective=clip,clip_range=0.1): take the order whose folders exist.
    grid = data["grid"]
    for order in itertools.permutations(grid):
        spec = SweepSpec(envs=data["envs"], preset=data["preset"], base=data["base"],
                         grid={name: grid[name] for name in order}, seeds=data["seeds"],
                         settings=data.get("settings"))
        trials = spec.trials()
        if any((Path(sweep_dir) / RUNS / trial.name).exists() for trial in trials):
            break
    groups: dict[str, dict[str, list[Path]]] = {}
    for trial in trials:
        groups.setdefault(trial.env_id, {}).setdefault(trial.setting, []).append(Path(sweep_dir) / RUNS / trial.name)
    return groups


def plot_sweep(sweep_dir: Path, output: Path, y: str = "episode_return_mean", title: str | None = None) -> Path:
    """Draw every setting's mean curve over its seeds with a min-max band; one panel per env."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sweep_groups(sweep_dir)
    columns = min(len(groups), 4)
    rows = -(-len(groups) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), dpi=110, squeeze=False)
    drawn = 0
    for ax, (env_id, settings) in zip(axes.flat, groups.items()):
        for setting, run_dirs in settings.items():
            curves = [read_curve(d, y) for d in run_dirs if (d / "metrics.csv").is_file()]
            seeds = sum(len(s) > 0 for s, _ in curves)
            label = f"{setting} ({seeds} seed{'s' if seeds != 1 else ''})"
            drawn += draw_seeds(ax, curves, label, linewidth=1.4, alpha=0.18) > 0
        ax.set_title(env_id, fontsize=10)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("return, mean of last 100 episodes" if y == "episode_return_mean" else y.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6 if len(settings) > 6 else 8)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    if not drawn:
        raise ProximoError(f"no trial of the sweep in {sweep_dir} has finished episodes to plot yet")
    figure.suptitle(title or f"proximo sweep {Path(sweep_dir).name}: mean over seeds, band min-max", fontsize=11)
    return save_figure(figure, output)
