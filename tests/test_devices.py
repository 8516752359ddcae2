"""Devices: what auto picks and why, bad device input in one line, and policies that move between devices."""
from __future__ import annotations

import json

import pytest
import torch

import proximo.devices
from proximo.cli import main
from proximo.devices import resolve_device
from proximo.errors import ConfigError
from tests.test_cli import _one_line_error

NO_CUDA = not torch.cuda.is_available()


def test_auto_takes_the_cpu_without_a_gpu_and_says_why(monkeypatch):
    monkeypatch.setattr(proximo.devices, "accelerator", lambda: None)
    assert resolve_device("auto", image=True, widest_layer=4096) == (torch.device("cpu"), "auto: no GPU found")


def test_auto_takes_a_gpu_only_for_policies_that_profit(monkeypatch):
    monkeypatch.setattr(proximo.devices, "accelerator", lambda: "cuda")
    device, why = resolve_device("auto", image=False, widest_layer=64)
    assert device == torch.device("cpu") and "runs faster on the CPU" in why
    device, why = resolve_device("auto", image=True, widest_layer=512)
    assert device == torch.device("cuda") and "CNN torso" in why
    device, why = resolve_device("auto", image=False, widest_layer=proximo.devices.WIDE_MLP)
    assert device == torch.device("cuda") and "wide" in why


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU, so --device cuda is valid here")
def test_cuda_requested_without_one_is_a_clear_error():
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
        resolve_device("cuda:0", image=False, widest_layer=64)


@pytest.mark.parametrize("argv,fragment", [
    (["train", "CartPole-v1", "--device", "tpu"], "device must be auto, cpu, cuda, cuda:N or mps; got 'tpu'"),
    (["train", "CartPole-v1", "--learner", "jax"], "learner must be one of auto, numpy, torch"),
    (["train", "CartPole-v1", "--learner", "numpy", "--shared-network", "true", "--total-steps", "64"],
     "learner=numpy cannot train this policy: the actor and critic share a trunk"),
])
def test_bad_device_and_learner_input_gets_one_line(capsys, argv, fragment):
    assert fragment in _one_line_error(capsys, argv)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU, so --device cuda is valid here")
def test_train_on_cuda_without_one_gets_one_line(capsys):
    assert "--device cuda: torch sees no CUDA GPU" in _one_line_error(
        capsys, ["train", "CartPole-v1", "--device", "cuda", "--total-steps", "64"])


def test_the_run_records_device_and_learner_and_a_cuda_config_loads_on_the_cpu(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "CartPole-v1", "--preset", "cartpole", "--total-steps", "512", "--run-dir", str(run_dir),
                 "--eval-episodes", "1", "--no-tensorboard", "--learner", "torch"]) == 0
    err = capsys.readouterr().err
    assert "proximo: device cpu (" in err and "learner torch: requested" in err  # said before training starts
    resolved = json.loads((run_dir / "config.json").read_text())["resolved"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert resolved["learner"].startswith("torch") and summary["learner"] == resolved["learner"]
    assert summary["device"].startswith("cpu")
    # A policy trained with --device cuda records that in its config; its tensors are saved on the host,
    # so it loads and evaluates on a machine without a GPU.
    meta_path = run_dir / "policy" / "policy.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["device"] = "cuda"
    meta_path.write_text(json.dumps(meta))
    assert main(["eval", str(run_dir), "--episodes", "1"]) == 0
    from proximo import PPO
    agent = PPO.load(run_dir)
    assert agent.policy.device == torch.device("cpu")
    # --device may change on resume (a GPU run continued on a CPU machine); other settings may not.
    assert main(["train", "--resume", str(run_dir), "--device", "cpu", "--total-steps", "768", "--quiet",
                 "--no-tensorboard"]) == 0


def test_observation_statistics_stay_float64_on_the_host_when_the_policy_moves():
    from gymnasium import spaces

    from proximo.config import make_config
    from proximo.train import build_policy
    policy = build_policy(spaces.Box(-1, 1, (3,)), spaces.Discrete(2), make_config(normalize_obs=True))
    policy.to(torch.float16)  # any .to() of the policy: the statistics do not follow
    assert policy.obs_rms.mean.dtype == torch.float64 and policy.obs_rms.mean.device.type == "cpu"
    assert policy.value_head.weight.dtype == torch.float16
