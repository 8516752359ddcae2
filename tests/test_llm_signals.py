"""A preempted LLM run loses no finished step: SIGINT/SIGTERM (or request_stop) lets the step finish, saves a
checkpoint even with periodic checkpoints off, and stops with one line naming the command that continues; the
resumed run ends bitwise as the uninterrupted one. A real `proximo llm grpo` process sent SIGTERM exits 143
with that line and `--resume` finishes it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from proximo.llm import GRPO, SFT
from proximo.stopping import TrainingInterrupted

ROOT = Path(__file__).resolve().parents[1]
CLOCK = {"time_s", "tokens_per_s", "gen_tokens_per_s", "sequences_per_s"}


def _flat(trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainer.ensure_optimizer().params])


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "updates.jsonl") as handle:
        return [{k: v for k, v in json.loads(line).items() if k not in CLOCK} for line in handle]


def _stop_at(trainer, step: int, signum: int):
    def callback(row):
        if row["update"] == step:
            trainer.request_stop(signum)  # what the signal handler does
    return callback


def _stopped_then_resumed(make, tmp_path: Path, signum: int):
    whole = make(tmp_path / "whole")
    whole.train()
    stopped = make(tmp_path / "stopped")
    with pytest.raises(TrainingInterrupted) as caught:
        stopped.train(callback=_stop_at(stopped, 2, signum))
    message = str(caught.value)
    assert f"stopped by {signal.Signals(signum).name} at step 2" in message, message
    assert f"`proximo llm {stopped.kind} --resume {tmp_path / 'stopped'}`" in message, message
    assert caught.value.checkpoint.name == "step_000000000002"
    resumed = make(tmp_path / "stopped")
    assert resumed.resume(tmp_path / "stopped").name == "step_000000000002"
    resumed.train()
    assert torch.equal(_flat(whole), _flat(resumed))
    assert _rows(tmp_path / "whole") == _rows(tmp_path / "stopped")
    return whole, resumed


def test_grpo_stopped_by_a_signal_saves_and_resumes_bitwise(tmp_path):
    def make(run_dir):  # save_every 0: the stop itself must write the checkpoint
        return GRPO("tiny", run_dir=run_dir, steps=4, prompts_per_step=4, group_size=2, max_new_tokens=6,
                    num_eval_prompts=2, eval_every=2, tensorboard=False, save_every=0)
    _stopped_then_resumed(make, tmp_path, signal.SIGTERM)


def test_sft_stopped_by_a_signal_saves_and_resumes_bitwise(tmp_path):
    rows = [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a in range(3) for b in range(3)]

    def make(run_dir):
        return SFT("tiny", run_dir=run_dir, dataset=rows, max_steps=4, batch_size=4, eval_every=3,
                   num_eval_prompts=2, tensorboard=False, save_every=0)
    whole, resumed = _stopped_then_resumed(make, tmp_path, signal.SIGINT)
    assert whole._order == resumed._order


def test_a_grpo_process_sent_sigterm_saves_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "proximo", "llm", "grpo", "--init", "tiny", "--steps", "40", "--prompts-per-step",
            "4", "--group-size", "2", "--max-new-tokens", "8", "--num-eval-prompts", "2", "--eval-every", "50",
            "--save-every", "0", "--device", "cpu", "--torch-threads", "1", "--no-tensorboard", "--quiet",
            "--run-dir", str(run_dir)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        rows = run_dir / "updates.jsonl"
        # Wait for a training step's row (row 0 is the evaluation before training).
        while proc.poll() is None and time.monotonic() < deadline and \
                (not rows.is_file() or len(rows.read_text().splitlines()) < 2):
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be signalled"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("proximo: stopped by SIGTERM at step ") and f"proximo llm grpo --resume {run_dir}" in last
    step = int(last.split("at step ")[1].split(";")[0].replace(",", ""))
    assert 1 <= step < 40
    assert (run_dir / "checkpoints" / f"step_{step:012d}" / "state.json").is_file()
    done = subprocess.run([sys.executable, "-m", "proximo", "llm", "grpo", "--resume", str(run_dir), "--steps", str(step + 2),
                           "--quiet", "--no-tensorboard"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == step + 2
