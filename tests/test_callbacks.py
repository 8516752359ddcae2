"""The run skeleton's callbacks: user hooks, evaluation, early stopping, and their state on resume."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import proximo
from proximo.callbacks import Callback, CallbackList, EvalCallback, StopAtReturn, as_callbacks, run_loop
from proximo.config import make_config
from proximo.train import Trainer, list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(num_envs=2, n_steps=64, batch_size=64, n_epochs=2, eval_episodes=2, seed=3)


class Recorder(Callback):
    """Every hook call, in order."""

    def __init__(self, stop_at_update: int | None = None) -> None:
        self.calls: list[str] = []
        self.stop_at_update = stop_at_update

    def on_training_start(self):
        self.calls.append("start")

    def on_rollout_start(self):
        self.calls.append("rollout_start")

    def on_rollout_end(self):
        self.calls.append("rollout_end")

    def on_update_end(self, row):
        self.calls.append(f"update {row['update']}")
        if self.stop_at_update is not None and row["update"] >= self.stop_at_update:
            return False
        return None

    def on_training_end(self):
        self.calls.append("end")


def test_the_loop_calls_every_hook_in_order_and_stops_on_false():
    recorder = Recorder(stop_at_update=2)
    agent = proximo.PPO("CartPole-v1", **SMALL)
    agent.learn(10_000, callback=recorder)
    assert recorder.calls == ["start", "rollout_start", "rollout_end", "update 1",
                              "rollout_start", "rollout_end", "update 2", "end"]
    assert agent.num_timesteps == 256 and agent.summary["stopped_by"] == "Recorder"
    assert recorder.trainer is agent._trainer and recorder.num_timesteps == 256


def test_a_plain_function_and_a_list_both_work_and_every_callback_still_runs_after_a_stop():
    seen: list[int] = []
    after = Recorder()
    agent = proximo.PPO("CartPole-v1", **SMALL)
    agent.learn(10_000, callback=[lambda row: row["update"] < 3, lambda row: seen.append(row["update"]), after])
    assert seen == [1, 2, 3] and after.calls[-2:] == ["update 3", "end"]  # the later ones saw the last update too
    assert agent.num_timesteps == 3 * 128


def test_as_callbacks_rejects_what_is_not_a_callback():
    assert as_callbacks(None) == []
    with pytest.raises(TypeError, match="callback must be"):
        as_callbacks(42)


def test_run_loop_stops_before_learning_when_on_rollout_end_says_so():
    learned: list[int] = []

    class NoLearning(Callback):
        def on_rollout_end(self):
            return False

    callbacks = CallbackList([NoLearning()])
    stopped = run_loop(lambda: 1, lambda batch: learned.append(batch) or {}, lambda: False, callbacks)
    assert stopped == "NoLearning" and learned == []


def test_stop_at_return_on_the_docs_example_stops_early():
    """The docs' first callback example, with a lower threshold so it stops within seconds (seed 1:
    CartPole's training return passes 100 well before 30k steps with the cartpole preset)."""
    text = (ROOT / "docs" / "guides" / "callbacks-tracking.md").read_text()
    section = text[text.index("## Callbacks"):]
    start = section.index("```python") + len("```python")
    code = section[start:section.index("```", start)]
    assert 'agent.learn(100_000, callback=lambda row: row["episode_return_mean"] < 475)' in code
    first = code[:code.index("class WarnOnKL")]
    namespace: dict = {}
    exec(first.replace("100_000", "30_000").replace("< 475", "< 100"), namespace)
    agent = namespace["agent"]
    assert agent.num_timesteps < 30_000
    assert agent._trainer.last_stats["episode_return_mean"] >= 100
    assert agent.summary["stopped_by"] == "FunctionCallback"


def test_evaluation_does_not_change_training_and_keeps_the_best_policy(tmp_path):
    """Normalization frozen and RNG untouched: weights after training match bitwise with and without eval."""
    settings = dict(SMALL, normalize_obs=True, normalize_reward=True)
    plain = Trainer("CartPole-v1", make_config(**settings), None, verbose=False)
    plain.train(512)
    evaluated = Trainer("CartPole-v1", make_config(**settings), tmp_path / "run", verbose=False, tensorboard=False)
    evaluation = EvalCallback(eval_every=128, episodes=2)
    evaluated.train(512, callback=evaluation)
    for (name, a), b in zip(plain.policy.state_dict().items(), evaluated.policy.state_dict().values()):
        assert torch.equal(a, b), name
    assert [step for step, _ in evaluation.history] == [128, 256, 384, 512]
    rows = [json.loads(line) for line in (tmp_path / "run" / "updates.jsonl").read_text().splitlines()]
    assert all("eval_return_mean" in row for row in rows)
    best = json.loads((tmp_path / "run" / "best" / "eval.json").read_text())
    assert best["eval_return_mean"] == max(mean for _, mean in evaluation.history)
    loaded = proximo.PPO.load(tmp_path / "run" / "best")
    assert loaded.policy.obs_rms is not None


def test_patience_stops_after_evaluations_without_improvement():
    evaluation = EvalCallback(eval_every=64, episodes=1, patience=2, min_delta=1e9)  # nothing counts as better
    agent = proximo.PPO("CartPole-v1", **dict(SMALL, num_envs=1))
    agent.learn(10_000, callback=evaluation)
    assert len(evaluation.history) == 3 and agent.num_timesteps == 3 * 64
    assert "no eval improvement in 2 evaluations" in agent.summary["stopped_by"]


def test_stop_at_return_callback_reads_the_row():
    stop = StopAtReturn(10.0)
    assert stop.on_update_end({"episode_return_mean": float("nan")}) is None
    assert stop.on_update_end({"episode_return_mean": 9.9}) is None
    assert stop.on_update_end({"episode_return_mean": 10.0}) is False and "reached 10" in stop.reason


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proximo", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_cli_eval_every_and_resume_keep_the_evaluation_state(tmp_path):
    run = tmp_path / "run"
    common = ["--num-envs", "2", "--n-steps", "64", "--batch-size", "64", "--n-epochs", "1", "--eval-episodes", "2",
              "--quiet", "--no-tensorboard"]
    done = _cli("train", "CartPole-v1", "--total-steps", "256", "--eval-every", "128", "--save-every", "128",
                "--run-dir", str(run), *common[:-2], "--no-tensorboard")
    assert done.returncode == 0, done.stderr
    state = json.loads((list_checkpoints(run)[-1] / "state.json").read_text())
    saved = state["callback.EvalCallback"]
    assert saved["next_eval"] == 384 and [step for step, _ in saved["history"]] == [128, 256]
    done = _cli("train", "--resume", str(run), "--total-steps", "512", "--quiet")
    assert done.returncode == 0, done.stderr
    state = json.loads((list_checkpoints(run)[-1] / "state.json").read_text())
    assert [step for step, _ in state["callback.EvalCallback"]["history"]] == [128, 256, 384, 512]
    assert (run / "best" / "policy.json").is_file()


def test_cli_stop_at_return_stops_early_and_says_why(tmp_path):
    run = tmp_path / "run"
    done = _cli("train", "CartPole-v1", "--num-envs", "2", "--n-steps", "64", "--batch-size", "64", "--n-epochs", "1",
                "--total-steps", "20000", "--stop-at-return", "5", "--eval-episodes", "2", "--run-dir", str(run),
                "--no-tensorboard")
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 128 and "reached 5" in summary["stopped_by"]
    assert "stopped early" in done.stderr


def test_cli_stop_patience_without_eval_every_is_one_line(tmp_path):
    done = _cli("train", "CartPole-v1", "--stop-patience", "3", "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--eval-every" in done.stderr, done.stderr


def test_llm_trainers_take_the_same_callbacks(tmp_path):
    pytest.importorskip("transformers", reason="the LLM trainers need the llm extra: pip install -e '.[llm]'")
    from proximo.llm.grpo import GRPO

    recorder = Recorder(stop_at_update=10**9)
    trainer = GRPO("tiny", reward_fn=lambda prompts, completions: [float(len(c)) for c in completions],
                   prompts=["ab", "ba"], prompts_per_step=2, group_size=2, num_eval_prompts=2, max_new_tokens=3,
                   run_dir=tmp_path / "grpo", tensorboard=False)
    summary = trainer.train(5, callback=[recorder, lambda row: False if trainer.step_count >= 2 else None])
    assert summary["steps"] == 2 and summary["stopped_by"] == "FunctionCallback"
    assert recorder.calls == ["start", "rollout_start", "rollout_end", "update 1",
                              "rollout_start", "rollout_end", "update 2", "end"]
    assert (tmp_path / "grpo" / "summary.json").is_file()
