"""Exact resume: N steps, stop, resume to 2N gives bitwise the parameters of 2N steps in one go (CPU)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from proximo import cli
from proximo.config import make_config
from proximo.envs.snapshot import restore_env, snapshot_env
from proximo.train import ResumeWarning, Trainer, TrainingInterrupted, list_checkpoints
from tests.fault_envs import BrokenEnv

ROOT = Path(__file__).resolve().parents[1]


def _trainer(env, config, run_dir):
    return Trainer(env, config, run_dir, verbose=False, tensorboard=False)


def _assert_same_state(a: Trainer, b: Trainer):
    sa, sb = a.policy.state_dict(), b.policy.state_dict()
    assert sa.keys() == sb.keys()
    different = [key for key in sa if not torch.equal(sa[key], sb[key])]
    assert not different, f"tensors differ after resume: {different}"
    ta, tb = a.training_state()[0], b.training_state()[0]
    assert all(torch.equal(ta[key], tb[key]) for key in ta if key.startswith(("optimizer.", "reward_scaler.")))
    assert a.global_step == b.global_step and a.update_index == b.update_index


def _one_go_vs_resumed(env, config, tmp_path, updates):
    n = updates * config.rollout_size
    whole = _trainer(env, config.replace(total_steps=2 * n), tmp_path / "whole")
    whole.train()
    first = _trainer(env, config.replace(total_steps=n), tmp_path / "split")
    first.train()
    resumed = _trainer(env, config.replace(total_steps=2 * n), tmp_path / "split")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeWarning)  # these envs must resume exactly, with no warning
        resumed.load_training_state(list_checkpoints(tmp_path / "split")[-1])
    resumed.train()
    return whole, resumed


def test_cartpole_resume_is_bitwise_exact(tmp_path):
    # 3 updates of 2 envs x 64 steps: episodes are in progress at the stop, so env state matters.
    config = make_config(None, num_envs=2, n_steps=64, batch_size=32, n_epochs=2, eval_episodes=1, seed=3)
    whole, resumed = _one_go_vs_resumed("CartPole-v1", config, tmp_path, updates=3)
    _assert_same_state(whole, resumed)
    assert list(whole.collector.episodes.returns) == list(resumed.collector.episodes.returns)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "Hopper-v5"])
def test_continuous_with_normalization_resume_is_bitwise_exact(tmp_path, env_id):
    # Pendulum: 200-step episodes, 2 x 128-step rollouts, so the stop falls mid-episode. Hopper: the MuJoCo
    # simulator state is restored too. Observation and reward statistics move in every step.
    config = make_config(None, num_envs=2, n_steps=128, batch_size=64, n_epochs=2, eval_episodes=1, seed=4,
                         normalize_obs=True, normalize_reward=True)
    whole, resumed = _one_go_vs_resumed(env_id, config, tmp_path, updates=2)
    _assert_same_state(whole, resumed)
    assert torch.equal(whole.policy.obs_rms.mean, resumed.policy.obs_rms.mean)
    assert torch.equal(whole.reward_scaler.running_return, resumed.reward_scaler.running_return)


def test_stop_mid_run_with_schedules_and_adaptive_kl_resumes_exactly(tmp_path):
    # Linear lr/clip annealing and adaptive beta: their positions must come back with the checkpoint.
    config = make_config(None, num_envs=2, n_steps=32, batch_size=32, n_epochs=2, eval_episodes=1, seed=6,
                         lr_schedule="linear", clip_schedule="linear", objective="adaptive_kl",
                         total_steps=6 * 64)
    whole = _trainer("CartPole-v1", config, tmp_path / "whole")
    whole.train()
    stopped = _trainer("CartPole-v1", config, tmp_path / "split")
    original = stopped.collector.collect

    def collect():
        if stopped.global_step == 2 * 64:
            stopped.request_stop()  # what Ctrl-C does: finish this update, save, stop
        return original()
    stopped.collector.collect = collect
    with pytest.raises(TrainingInterrupted):
        stopped.train()
    assert stopped.global_step == 3 * 64
    resumed = _trainer("CartPole-v1", config, tmp_path / "split")
    resumed.load_training_state(list_checkpoints(tmp_path / "split")[-1])
    assert resumed.kl_controller.value == stopped.kl_controller.value != config.kl_coef
    resumed.train()
    _assert_same_state(whole, resumed)


def _assert_snapshot_replays(make, seed: int, steps_before: int, steps_after: int):
    """Step an env, restore its JSON snapshot into a fresh env reset elsewhere: both must then step alike."""
    source = make()
    source.reset(seed=seed)
    source.action_space.seed(seed + 1)
    actions = [source.action_space.sample() for _ in range(steps_before + steps_after)]
    for action in actions[:steps_before]:
        source.step(action)
    snapshot = json.loads(json.dumps(snapshot_env(source)))
    copy = make()
    copy.reset(seed=seed + 100)  # a different state, to be overwritten
    restore_env(copy, snapshot)
    for action in actions[steps_before:]:
        a, b = source.step(action), copy.step(action)
        assert np.array_equal(a[0], b[0]) and a[1:4] == b[1:4]


@pytest.mark.parametrize("env_id", ["Hopper-v5", "Acrobot-v1", "MountainCarContinuous-v0"])
def test_env_snapshot_round_trips_through_json(env_id):
    _assert_snapshot_replays(lambda: gym.make(env_id), seed=1, steps_before=25, steps_after=35)


def test_unknown_env_resumes_with_one_warning(tmp_path):
    config = make_config(None, num_envs=2, n_steps=16, batch_size=16, n_epochs=1, eval_episodes=1,
                         total_steps=32)
    first = _trainer(lambda: BrokenEnv(None), config, tmp_path)
    first.train()
    resumed = _trainer(lambda: BrokenEnv(None), config.replace(total_steps=64), tmp_path)
    with pytest.warns(ResumeWarning, match=r"env class BrokenEnv\), so on resume the in-progress episodes restart"):
        resumed.load_training_state(list_checkpoints(tmp_path)[-1])
    assert resumed.global_step == 32 and resumed.train()["global_step"] == 64


def test_sigint_to_proximo_train_saves_a_checkpoint_that_resumes(tmp_path, capsys):
    # Ctrl-C in a terminal signals the whole process group (the trainer; its async env workers leave that group).
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's proximo, whatever is installed
    proc = subprocess.Popen(
        [sys.executable, "-m", "proximo.cli", "train", "CartPole-v1", "--run-dir", str(run_dir),
         "--no-tensorboard", "--num-envs", "2", "--n-steps", "16", "--batch-size", "16", "--n-epochs", "1",
         "--eval-episodes", "1", "--total-steps", "100000000", "--env-backend", "async"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        metrics = run_dir / "metrics.csv"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:  # header + 2 updates
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(r"proximo: stopped by SIGINT at step ([\d,]+); checkpoint saved to (\S+); continue with "
                         r"`proximo train --resume (\S+)`", last)
    assert match, last
    step = int(match.group(1).replace(",", ""))
    assert Path(match.group(2)) == list_checkpoints(run_dir)[-1] and match.group(2).endswith(f"{step:012d}")
    assert not (run_dir / "summary.json").exists()  # stopped, not finished
    code = cli.main(["train", "--resume", match.group(3), "--total-steps", str(step + 64), "--quiet",
                     "--no-tensorboard"])
    assert code == 0
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == step + 64


def test_resume_with_a_new_horizon_warns_that_annealed_schedules_jump(tmp_path):
    config = make_config(None, num_envs=2, n_steps=16, batch_size=16, n_epochs=1, eval_episodes=1,
                         lr_schedule="linear", total_steps=64)
    _trainer("CartPole-v1", config, tmp_path).train()
    same = _trainer("CartPole-v1", config.replace(total_steps=64), tmp_path)
    same.load_training_state(list_checkpoints(tmp_path)[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeWarning)
        same.train()  # the same horizon: no warning
    longer = _trainer("CartPole-v1", config.replace(total_steps=128), tmp_path)
    longer.load_training_state(list_checkpoints(tmp_path)[-1])
    with pytest.warns(ResumeWarning, match="annealed over 64 steps before this resume and now anneal over 128"):
        longer.train()


def test_atari_snapshot_round_trips_without_sticky_actions_and_explains_why_not_with_them():
    pytest.importorskip("ale_py", reason="the Atari snapshot needs ale-py: pip install -e '.[atari]'")
    from proximo.envs.atari import PixelOptions
    from proximo.envs.make import make_single_env
    from proximo.envs.snapshot import why_unsnapshottable

    # The training pipeline (episodic life, fire reset, sign rewards, game score) and the evaluation one.
    for options in (PixelOptions(episodic_life=True, sign_rewards=True), PixelOptions()):
        _assert_snapshot_replays(lambda: make_single_env("ALE/Breakout-v5", pixels=options),
                                 seed=3, steps_before=60, steps_after=100)
    assert "sticky actions" in why_unsnapshottable(make_single_env("ALE/Breakout-v5",
                                                                   pixels=PixelOptions(sticky_actions=0.25)))


def test_resume_from_an_earlier_checkpoint_logs_each_update_once(tmp_path):
    # Train 6 updates with a checkpoint every 2, then resume from the first checkpoint: the 4 updates
    # after it are logged again, so the first run's rows for them must go, leaving the one-go log.
    config = make_config(None, num_envs=2, n_steps=32, batch_size=32, n_epochs=2, eval_episodes=1, seed=8,
                         total_steps=6 * 64, save_every=128, keep_checkpoints=10)
    _trainer("CartPole-v1", config, tmp_path / "whole").train()
    _trainer("CartPole-v1", config, tmp_path / "split").train()
    earliest = list_checkpoints(tmp_path / "split")[0]
    resumed = _trainer("CartPole-v1", config, tmp_path / "split")
    resumed.load_training_state(earliest)
    assert resumed.global_step == 128
    resumed.train()

    def column(run, name):
        lines = (tmp_path / run / "metrics.csv").read_text().splitlines()
        header = lines[0].split(",")
        return [row.split(",")[header.index(name)] for row in lines[1:]]
    assert column("split", "global_step") == column("whole", "global_step") == [str(64 * k) for k in range(1, 7)]
    assert column("split", "approx_kl") == column("whole", "approx_kl")  # the resume is exact, so are its rows
    steps = [json.loads(line)["global_step"] for line in (tmp_path / "split" / "updates.jsonl").read_text().splitlines()]
    assert steps == [64 * k for k in range(1, 7)]
