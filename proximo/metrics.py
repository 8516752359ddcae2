"""Per-update metrics: metrics.csv, updates.jsonl (with ratio histograms), TensorBoard, progress."""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from proximo.errors import ProximoError

CSV_COLUMNS = [
    "global_step", "update", "time_s", "sps", "episode_return_mean", "episode_length_mean", "episodes",
    "approx_kl", "approx_kl_k1", "clip_fraction", "entropy", "policy_loss", "value_loss",
    "explained_variance", "grad_norm", "advantage_std", "learning_rate", "clip_range", "ent_coef",
    "kl_coef", "epochs", "eval_return_mean", "eval_return_std",
]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def drop_rows_after(path: Path, step: int) -> int:
    """Rewrite metrics.csv or updates.jsonl at path (atomically) without rows whose global_step > step.

    Returns how many rows were dropped; a missing file or one with nothing past step is left as is. A
    last line without its newline is a row torn by a kill mid-write: it is dropped too.
    """
    if not path.exists():
        return 0
    # surrogateescape: bytes that are not UTF-8 (a damaged file) are kept as they were, not a crash
    lines = path.read_text(errors="surrogateescape").splitlines(keepends=True)
    torn = 1 if lines and not lines[-1].endswith("\n") else 0
    if torn:
        lines = lines[:-1]
    if path.suffix == ".csv":
        if not lines:
            return 0
        header = next(csv.reader([lines[0]]))
        if "global_step" not in header:
            return 0
        column = header.index("global_step")
        keep = [lines[0]] + [line for line in lines[1:] if not _past(_csv_cell(line, column), step)]
    else:
        keep = [line for line in lines if not _past(_jsonl_cell(line), step)]
    dropped = len(lines) - len(keep) + torn
    if dropped:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text("".join(keep), errors="surrogateescape")
        os.replace(temporary, path)
    return dropped


# A row that cannot be read has no step to judge it by: it is kept, for `proximo doctor` to name.
def _csv_cell(line: str, column: int) -> list:
    try:
        return next(csv.reader([line]), [])[column:column + 1]
    except csv.Error:
        return []


def _jsonl_cell(line: str) -> list:
    row = jsonl_row(line)
    return [row.get("global_step")] if row is not None else []


def jsonl_row(line: str) -> dict[str, Any] | None:
    """The JSON object on one line of a .jsonl file, or None where the line holds none."""
    try:
        value = json.loads(line) if line.strip() else None
    except ValueError:  # JSONDecodeError, or a number too long to convert
        return None
    return value if isinstance(value, dict) else None


def _past(cell: list, step: int) -> bool:
    try:
        return bool(cell) and float(cell[0]) > step
    except (TypeError, ValueError):
        return False


def read_jsonl(path: Path, corrupt: str = "raise") -> list[dict[str, Any]]:
    """The rows (JSON objects) of a .jsonl file that proximo wrote, one per line.

    A last line without its newline is a row torn by a kill mid-write: it is left out. Any other line
    that is not a JSON object means a damaged file: corrupt="raise" stops with a ProximoError naming the
    file and line (what `proximo doctor` says), corrupt="skip" leaves it out (a resumed run's replay).
    """
    rows: list[dict[str, Any]] = []
    with open(path, errors="surrogateescape") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            value = jsonl_row(line)
            if value is not None:
                rows.append(value)
            elif line.endswith("\n") and corrupt == "raise":
                raise ProximoError(f"{path} line {number} is not a JSON object; the file is corrupt (restore it "
                                   "from a copy or delete that line)")
    return rows


class MetricsWriter:
    """Appends one row per update to metrics.csv and updates.jsonl and logs scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, columns: list[str] | None = None,
                 from_step: int | None = None, tracker: Any = None) -> None:
        # columns: metrics.csv header (default CSV_COLUMNS); the first three are step/update/time.
        # from_step: the step training continues from (a resume); rows logged past it are dropped,
        # since the resumed run logs those updates again.
        # tracker: one more sink (proximo/tracking.py, e.g. W&B): log(row) per row of the CSV's columns,
        # finish() on close.
        self.tracker = tracker
        self.columns = list(CSV_COLUMNS if columns is None else columns)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        csv_path = self.run_dir / "metrics.csv"
        if from_step is not None:
            drop_rows_after(csv_path, from_step)
            drop_rows_after(self.run_dir / "updates.jsonl", from_step)
        new_file = not csv_path.exists() or csv_path.stat().st_size == 0
        if not new_file:
            # Appending (a resume): keep the file's own header, which an older proximo may have written.
            with open(csv_path, newline="") as handle:
                header = next(csv.reader(handle), None)
            if header:
                self.columns = header
        self._csv_handle = open(csv_path, "a", newline="")
        self._csv = csv.DictWriter(self._csv_handle, fieldnames=self.columns, extrasaction="ignore")
        if new_file:
            self._csv.writeheader()
        self._jsonl = open(self.run_dir / "updates.jsonl", "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def write(self, row: dict[str, Any]) -> None:
        """Record one update's statistics (scalars go everywhere, lists only to updates.jsonl)."""
        self._csv.writerow({k: ("" if _clean(row.get(k)) is None else row.get(k)) for k in self.columns})
        self._csv_handle.flush()
        self._jsonl.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            step = int(row["global_step"])
            for key in self.columns[3:]:
                value = row.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"train/{key}", value, step)
        if self.tracker is not None:
            self.tracker.log({key: row.get(key) for key in self.columns})

    def close(self) -> None:
        """Flush and close every writer."""
        self._csv_handle.close()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None


class Progress:
    """A rich progress bar on a terminal; plain periodic lines otherwise (CI, pipes)."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, every_s: float = 10.0,
                 headline: str = "return", unit: str = "steps") -> None:
        self.total, self.enabled, self.every_s = total, enabled, every_s
        self.headline, self.unit = headline, unit
        self.interactive = enabled and sys.stderr.isatty()
        self._last_line = time.monotonic()
        self._bar = None
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeRemainingColumn
            self._bar = RichProgress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            self._task = self._bar.add_task("train", total=total, completed=start, info="")
            self._bar.start()

    def update(self, step: int, sps: float, mean_return: float) -> None:
        """Show the step count, the speed and the headline figure (the recent mean return by default)."""
        if not self.enabled:
            return
        info = f"{sps:,.0f} {self.unit}/s  {self.headline} {mean_return:.3g}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif time.monotonic() - self._last_line >= self.every_s or step >= self.total:
            self._last_line = time.monotonic()
            print(f"step {step:>10,}/{self.total:,}  {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the bar."""
        if self._bar is not None:
            self._bar.stop()
