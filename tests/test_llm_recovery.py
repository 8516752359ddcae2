"""After a crash, LLM runs too: `proximo llm grpo` processes SIGKILLed at seeded random moments leave a run
directory that `proximo llm eval` reads (its newest checkpoint's model folder when there is no model/) and that
`proximo llm grpo --resume` finishes; a run killed before its first checkpoint is refused in one line."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proximo import cli

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's proximo, whatever is installed
STEPS = 12
GRPO = ["llm", "grpo", "--init", "tiny", "--steps", str(STEPS), "--save-every", "1", "--prompts-per-step", "4",
        "--group-size", "2", "--max-new-tokens", "8", "--num-eval-prompts", "2", "--eval-every", "3", "--device", "cpu",
        "--torch-threads", "1", "--quiet", "--no-tensorboard"]


def _checkpoints(run_dir: Path) -> list[str]:
    folder = run_dir / "checkpoints"
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("step_")) if folder.is_dir() else []


def _kill_at(run_dir: Path, anchor: str, delay: float, checkpoints: int = 1) -> str:
    """Start a run, SIGKILL its process group `delay` s after the anchor (start | `checkpoints` checkpoints
    written); returns whether it was killed or finished first. Anchoring on a checkpoint count, not a clock,
    lands the kill mid-run on a fast or a loaded machine alike. Every wait is bounded; the process is always
    reaped."""
    proc = subprocess.Popen([sys.executable, "-m", "proximo", *GRPO, "--run-dir", str(run_dir)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while anchor == "checkpoints" and len(_checkpoints(run_dir)) < checkpoints and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.005)
        end = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < end:
            time.sleep(0.002)
        return "finished first" if proc.poll() is not None else "killed"
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)


def _cli(capsys, argv) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err.strip().splitlines()


def _check_usable(run_dir: Path, capsys) -> str:
    """eval and --resume accept what the kill left; returns what there was to use."""
    have_state = any((run_dir / "checkpoints" / name / "state.json").is_file() for name in _checkpoints(run_dir))
    if not (run_dir / "config.json").is_file() or not have_state:
        if (run_dir / "model").is_dir():
            return "finished without checkpoints"  # (not with --save-every 1)
        code, err = _cli(capsys, ["llm", "grpo", "--resume", run_dir])
        assert code == 2 and len(err) == 1, err
        return "nothing saved yet: refused in one line"
    code, err = _cli(capsys, ["llm", "eval", run_dir, "--prompts", "2"])
    assert code == 0, err
    had_model = (run_dir / "model").is_dir()
    code, err = _cli(capsys, ["llm", "grpo", "--resume", run_dir, "--quiet", "--no-tensorboard"])
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == STEPS
    steps = [json.loads(line)["global_step"] for line in (run_dir / "updates.jsonl").read_text().splitlines()]
    assert steps == list(range(STEPS + 1))  # one row per update, none twice, none torn
    return "final model" if had_model else "checkpoint only"


def _kill_runs(tmp_path, capsys, seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    outcomes = []
    for i in range(count):
        anchor = "start" if i % 3 == 0 else "checkpoints"
        # after 1..STEPS/2 checkpoints (one per step), then up to a tenth of a second: inside a step's work
        count = rng.randint(1, STEPS // 2)
        delay = rng.uniform(0.2, 6.0) if anchor == "start" else rng.uniform(0.0, 0.1)
        run_dir = tmp_path / f"run{i}"
        outcome = _kill_at(run_dir, anchor, delay, count)
        where = f"start +{delay:.2f}s" if anchor == "start" else f"checkpoint {count} +{delay:.2f}s"
        outcomes.append(f"{where}: {outcome}, {_check_usable(run_dir, capsys)}")
    with capsys.disabled():
        print("\n" + "\n".join(outcomes))  # what the kills hit, in the test's output
    return outcomes


def test_llm_runs_killed_at_random_moments_leave_a_usable_run(tmp_path, capsys):
    outcomes = _kill_runs(tmp_path, capsys, seed=5, count=2)
    assert any("killed, checkpoint only" in o for o in outcomes), outcomes


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_llm_runs_killed_at_many_random_moments_leave_a_usable_run(tmp_path, capsys, seed):
    outcomes = _kill_runs(tmp_path, capsys, seed=seed, count=6)
    assert sum("killed, checkpoint only" in o for o in outcomes) >= 2, outcomes
