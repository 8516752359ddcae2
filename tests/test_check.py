"""The env checker: what proximo needs from an env, and one clear line for each thing that is wrong."""
import gymnasium as gym
import pytest

from proximo import cli
from proximo.config import make_config
from proximo.envs.check import EnvCheckError, EnvCheckWarning, check_env
from proximo.train import Trainer
from tests.fault_envs import (
    ArrayRewardEnv, BrokenEnv, ObsOnlyResetEnv, OldApiEnv, TextObsEnv, TupleActionEnv, WrongDtypeEnv,
    WrongShapeEnv,
)

TEXT_ID = "ProximoTest/TextObs-v0"
if TEXT_ID not in gym.registry:
    gym.register(TEXT_ID, entry_point=TextObsEnv, max_episode_steps=20)


def test_cartpole_passes_and_reports_what_proximo_uses():
    report = check_env("CartPole-v1", steps=100)
    assert report.ok and not report.warnings
    text = "\n".join(report.notes)
    assert "Discrete(2) -> categorical policy" in text
    assert "shape (4,), float32" in text
    assert "time limit: 500 steps" in text


def test_pendulum_box_actions_are_described():
    report = check_env("Pendulum-v1", steps=20)
    assert report.ok
    assert any("diagonal Gaussian" in note for note in report.notes)


@pytest.mark.parametrize("env_class, expected", [
    (TextObsEnv, "observation space Text"),
    (TupleActionEnv, "action space Tuple"),
    (WrongShapeEnv, "shape (4,), the observation space declares (3,)"),
    (OldApiEnv, "old gym API"),
    (ArrayRewardEnv, "reward of type ndarray with shape (1,)"),
    (ObsOnlyResetEnv, "reset() returned a ndarray"),
])
def test_each_hard_problem_is_one_error(env_class, expected):
    report = check_env(env_class, steps=30)
    assert len(report.errors) == 1, report.errors
    assert expected in report.errors[0]
    with pytest.raises(EnvCheckError, match="^env "):
        report.raise_first()


@pytest.mark.parametrize("fault, expected", [
    ("nan_obs", "non-finite observation (nan at index [1])"),
    ("nan_reward", "non-finite reward (nan) at step 3"),
])
def test_nan_is_an_error(fault, expected):
    report = check_env(lambda: BrokenEnv(fault, after=3), steps=30)
    assert report.errors and expected in report.errors[0]


def test_dtype_mismatch_is_a_warning():
    report = check_env(WrongDtypeEnv, steps=30)
    assert report.ok
    assert report.warnings == ["step() returned observations of dtype float64, the space declares float32 "
                               "(proximo casts them, but the env and its space disagree)"]


def test_step_exception_is_reported():
    report = check_env(lambda: BrokenEnv("raise", after=7), steps=30)
    assert report.errors == ["step() raised RuntimeError: simulator exploded at random step 7; during training "
                             "proximo restarts such an env a few times, then stops"]


def test_cli_check_prints_one_line_for_an_unsupported_space(capsys):
    assert cli.main(["check", TEXT_ID]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"proximo: error: env {TEXT_ID}: observation space Text")


def test_cli_check_ok(capsys):
    assert cli.main(["check", "CartPole-v1", "--steps", "50"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("CartPole-v1: ok")


def test_training_refuses_a_broken_env_with_one_line(capsys, tmp_path):
    with pytest.raises(EnvCheckError, match="observation space Text"):
        Trainer(TextObsEnv, make_config(None, num_envs=1, n_steps=8, batch_size=8), verbose=False)
    assert cli.main(["train", TEXT_ID, "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("proximo: error: env ")


def test_training_warns_about_env_quirks_and_goes_on():
    with pytest.warns(EnvCheckWarning, match="dtype float64, the space declares float32"):
        trainer = Trainer(WrongDtypeEnv, make_config(None, num_envs=1, n_steps=8, batch_size=8, total_steps=8,
                                                     eval_episodes=1), verbose=False)
    assert trainer.train()["global_step"] == 8


def test_time_limit_of_a_factory_is_read_from_its_wrapper():
    report = check_env(lambda: gym.wrappers.TimeLimit(BrokenEnv(), max_episode_steps=7), steps=10)
    assert "time limit: 7 steps" in report.notes
    assert "time limit: none (episodes end only when the env terminates them)" in check_env(BrokenEnv, steps=1).notes
