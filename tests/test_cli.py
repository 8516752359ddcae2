"""The command line end to end, and bad input answered by one line and exit status 2."""
import csv
import json
import subprocess
import sys

import pytest

from proximo.cli import main

PROXIMO = [sys.executable, "-m", "proximo.cli"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = subprocess.run(PROXIMO + ["train", "CartPole-v1", "--preset", "cartpole", "--total-steps", "2048",
                                       "--seed", "3", "--run-dir", str(run_dir), "--eval-episodes", "3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return run_dir, result


def test_train_writes_the_run_directory(short_run):
    run_dir, result = short_run
    assert "eval return (3 episodes, deterministic)" in result.stdout
    config = json.loads((run_dir / "config.json").read_text())
    assert config["env_id"] == "CartPole-v1" and config["seed"] == 3 and config["n_steps"] == 32
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2048 // 256
    for column in ("global_step", "episode_return_mean", "sps", "approx_kl", "clip_fraction", "entropy",
                   "policy_loss", "value_loss", "explained_variance", "learning_rate"):
        assert column in rows[0]
    assert [int(r["global_step"]) for r in rows] == list(range(256, 2049, 256))
    assert float(rows[0]["learning_rate"]) > float(rows[-1]["learning_rate"])  # linear schedule
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "policy" / "policy.safetensors").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("global_step", "wall_time_s", "sps", "eval_return_mean", "eval_return_std"):
        assert key in summary
    assert summary["global_step"] == 2048 and summary["eval_episodes"] == 3
    assert (run_dir / "checkpoints").is_dir()


def test_eval_and_plot_commands(short_run, tmp_path):
    run_dir, _ = short_run
    result = subprocess.run(PROXIMO + ["eval", str(run_dir), "--episodes", "2"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "CartPole-v1: return" in result.stdout and "over 2 episodes" in result.stdout
    assert main(["plot", str(run_dir), "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def _one_line_error(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse mistakes
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("proximo: error:"), err
    return err


@pytest.mark.parametrize("argv,fragment", [
    (["train", "NoSuchEnv-v9"], "unknown env id 'NoSuchEnv-v9'"),
    (["train", "CartPole-v1", "--preset", "fastest"], "unknown preset 'fastest'"),
    (["train", "CartPole-v1", "--warp-speed", "9"], "unrecognized arguments: --warp-speed"),
    (["train", "CartPole-v1", "--learning-rate", "abc"], "--learning-rate: expected float"),
    (["train", "CartPole-v1", "--learning-rate", "-0.1"], "learning_rate must be a positive"),
    (["train", "CartPole-v1", "--gamma", "1.5"], "gamma must lie in [0, 1]"),
    (["train", "CartPole-v1", "--n-epochs", "0"], "n_epochs must be at least 1"),
    (["train", "CartPole-v1", "--num-envs", "0"], "num_envs must be at least 1"),
    (["train", "CartPole-v1", "--preset", "cartpole", "--batch-size", "100"], "does not divide"),
    (["train", "CartPole-v1", "--normalize-obs", "maybe"], "expected true or false"),
    (["train"], "needs an env id"),
])
def test_bad_input_gets_one_clear_line(capsys, argv, fragment):
    assert fragment in _one_line_error(capsys, argv)


def test_eval_of_a_directory_without_policy(capsys, tmp_path):
    assert "no saved policy" in _one_line_error(capsys, ["eval", str(tmp_path)])


def test_unsupported_space_is_one_line(capsys, monkeypatch):
    import gymnasium as gym

    from tests.envs import TextObsEnv
    gym.register("proximo-test/TextObs-v0", entry_point=TextObsEnv)
    try:
        err = _one_line_error(capsys, ["train", "proximo-test/TextObs-v0", "--total-steps", "64"])
    finally:
        gym.registry.pop("proximo-test/TextObs-v0")
    assert "observation space Text" in err


def test_cli_error_from_a_real_process_has_no_traceback():
    result = subprocess.run(PROXIMO + ["train", "CartPole-v1", "--gamma", "2"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "proximo: error: gamma must lie in [0, 1], got 2.0"


def _mujoco_entry():
    """An env id whose `mujoco` per-env entry changes fields, and those fields."""
    from proximo.config import PRESET_ENVS

    return next((env_id, entry) for env_id, entry in PRESET_ENVS["mujoco"].items() if entry["values"])


def test_train_plan_applies_the_per_env_entry_under_the_flags():
    from proximo.cli import build_parser, train_plan

    env_id, entry = _mujoco_entry()
    plan = train_plan(build_parser().parse_args(["train", env_id, "--preset", "mujoco"]))
    assert all(plan["config"][name] == value for name, value in entry["values"].items())
    assert plan["preset_note"].startswith(f"preset mujoco + {env_id} entry:")
    name = next(iter(entry["values"]))
    flag = f"--{name.replace('_', '-')}"
    value = {"net_arch": "32,32", "gamma": "0.5", "gae_lambda": "0.5"}.get(name, "0.0005")
    plan = train_plan(build_parser().parse_args(["train", env_id, "--preset", "mujoco", flag, value]))
    assert str(plan["config"][name]).replace(" ", "") in (value, f"[{value}]", str(float(value)))
    assert f"overridden by flags: {name}=" in plan["preset_note"]
    other = train_plan(build_parser().parse_args(["train", "Pendulum-v1", "--preset", "mujoco"]))
    assert other["preset_note"] == "preset mujoco: its own values (it has no entry for Pendulum-v1)"


def test_train_prints_the_values_used_line_even_when_quiet(capsys, tmp_path):
    from proximo.config import PRESET_ENVS

    env_id = "InvertedPendulum-v5"  # an untrained policy drops the pole within steps: a short eval episode
    entry = PRESET_ENVS["mujoco"][env_id]
    code = main(["train", env_id, "--preset", "mujoco", "--total-steps", "64", "--num-envs", "1", "--n-steps", "64",
                 "--batch-size", "64", "--n-epochs", "1", "--eval-episodes", "1", "--run-dir", str(tmp_path / "r"),
                 "--quiet", "--no-tensorboard"])
    assert code == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"preset mujoco + {env_id} entry: ") and f"(source: {entry['source']})" in first
