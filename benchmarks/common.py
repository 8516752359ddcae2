"""Helpers shared by the benchmark scripts: machine description and result files."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """Cores, CPU model, Python and torch versions of this machine."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {"cores": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "proximo_commit": commit}


def write_results(stem: Path, data: dict, markdown: str) -> None:
    """Write stem.json and stem.md."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown)


def comma_choices(text: str, known, prog: str) -> list[str]:
    """The names of a comma list, each one of known; an unknown one is one line on stderr and exit status 2."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        print(f"{prog}: unknown name {unknown[0]!r}; choose from {', '.join(known)}", file=sys.stderr)
        raise SystemExit(2)
    return names


def require_counted(what: str, value: float) -> float:
    """value, or SystemExit naming what was counted as nothing: a speed benchmark that counts no tokens
    measures nothing, and must say so instead of printing 0 tokens/s (or a ratio of it)."""
    if not value > 0:
        raise SystemExit(f"benchmark counted no {what} (got {value!r}): what it wraps is no longer on the "
                         "trainer's path, so it measures nothing; fix the counting before reading any figure")
    return value


def summary_speeds(summary: dict) -> dict:
    """A proximo LLM run summary's gen_tokens_per_s and step_tokens_per_s, each required to be counted."""
    return {key: require_counted(f"tokens ({key} of the run summary)", summary[key])
            for key in ("gen_tokens_per_s", "step_tokens_per_s")}


def parameter_count(model_dir) -> int:
    """Parameters stored in a model directory's safetensors files (read from their headers, no weights)."""
    from safetensors import safe_open

    from proximo.llm.models import weights_files
    total = 0
    for path in weights_files(model_dir):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():
                shape = handle.get_slice(name).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


def timed(totals: dict, label, function):
    """function wrapped to add its wall seconds to totals[label] (label may be a callable of (args, kwargs))."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[label(args, kwargs) if callable(label) else label] += time.perf_counter() - start
    return wrapper
