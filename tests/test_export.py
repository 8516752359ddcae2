"""`proximo export`: the ONNX and TorchScript files give predict(obs, deterministic=True)'s actions."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from proximo.api import PPO
from proximo.cli import main
from proximo.config import make_config
from proximo.train import build_policy, save_policy

ROOT = Path(__file__).resolve().parent.parent
onnxruntime = pytest.importorskip(
    "onnxruntime", reason="the export tests need onnxruntime and onnx: pip install -e '.[export]'")
pytest.importorskip("onnx", reason="the export tests need onnx: pip install -e '.[export]'")

TOLERANCE = 1e-5


def _saved_policy(folder: Path, obs_space, action_space, normalize_obs: bool = True, **overrides) -> Path:
    """A policy with random weights and normalization statistics, saved as PPO.save does (no training)."""
    config = make_config(net_arch=[32, 32], normalize_obs=normalize_obs, **overrides)
    policy = build_policy(obs_space, action_space, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in policy.parameters():
            # larger than the orthogonal init's 0.01 head, so Box actions reach past their bounds
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        if policy.obs_rms is not None:
            policy.obs_rms.mean.copy_(torch.randn(policy.obs_rms.mean.shape, generator=generator, dtype=torch.float64))
            policy.obs_rms.var.copy_(torch.rand(policy.obs_rms.var.shape, generator=generator, dtype=torch.float64)
                                     * 4 + 0.01)
    save_policy(folder, policy, config, None)
    return folder


def _observations(space: spaces.Box, count: int = 100) -> np.ndarray:
    rng = np.random.default_rng(1)
    if space.dtype == np.uint8:
        return rng.integers(0, 256, (count, *space.shape), dtype=np.uint8)
    return (rng.standard_normal((count, *space.shape)) * 3).astype(np.float32)  # some past clip_obs


def _onnx(path: Path, obs: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"obs": obs})[0]


def _export(source: Path, out: Path, fmt: str, capsys) -> str:
    assert main(["export", str(source), "--format", fmt, "-o", str(out)]) == 0
    return capsys.readouterr().out


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    """A real (short) CartPole training run with observation normalization: Discrete actions."""
    run = tmp_path_factory.mktemp("cartpole") / "run"
    agent = PPO("CartPole-v1", run_dir=run, num_envs=2, n_steps=64, batch_size=64, n_epochs=2, total_steps=256,
                eval_episodes=1, normalize_obs=True, seed=3)
    agent.learn()
    return run


def test_box_policy_with_normalization_matches_predict_in_onnx_and_torchscript(tmp_path, capsys):
    obs_space, action_space = spaces.Box(-5, 5, (6,), np.float32), spaces.Box(-1, 1, (3,), np.float32)
    folder = _saved_policy(tmp_path / "saved", obs_space, action_space)
    obs = _observations(obs_space)
    expected, _ = PPO.load(folder).predict(obs, deterministic=True)
    assert (np.abs(expected) == 1).any() and (np.abs(expected) < 1).any()  # the clipping is exercised
    assert "normalized" in _export(folder, tmp_path / "p.onnx", "onnx", capsys)
    assert _max_diff(_onnx(tmp_path / "p.onnx", obs), expected) <= TOLERANCE
    _export(folder, tmp_path / "p.pt", "torchscript", capsys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(tmp_path / "p.pt"))
    assert _max_diff(scripted(torch.from_numpy(obs)).numpy(), expected) <= TOLERANCE
    # the normalization is part of the graph: without it the actions would differ
    raw, _ = PPO.load(_saved_policy(tmp_path / "raw", obs_space, action_space, normalize_obs=False)).predict(obs)
    assert _max_diff(raw, expected) > 1e-2


def test_discrete_training_run_matches_predict(cartpole_run, tmp_path, capsys):
    agent = PPO.load(cartpole_run)
    assert agent.policy.obs_rms is not None and float(agent.policy.obs_rms.count) > 100  # trained statistics
    obs = (np.random.default_rng(2).standard_normal((100, 4)) * [1.0, 1.0, 0.1, 1.0]).astype(np.float32)
    expected, _ = agent.predict(obs, deterministic=True)
    _export(cartpole_run, tmp_path / "c.onnx", "onnx", capsys)
    actions = _onnx(tmp_path / "c.onnx", obs)
    assert actions.dtype == np.int64 and np.array_equal(actions, expected)
    assert len(set(expected.tolist())) == 2  # both actions occur, so equality is not trivial
    _export(cartpole_run, tmp_path / "c.pt", "torchscript", capsys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert np.array_equal(torch.jit.load(str(tmp_path / "c.pt"))(torch.from_numpy(obs)).numpy(), expected)
    # one observation without a batch axis in predict(): the same action as row 0 of the batch
    single, _ = agent.predict(obs[0])
    assert int(single) == int(actions[0])


@pytest.mark.parametrize("action_space", [spaces.MultiDiscrete([3, 4, 2]), spaces.MultiBinary(5)],
                         ids=["multidiscrete", "multibinary"])
def test_multi_action_spaces_match_predict(action_space, tmp_path, capsys):
    obs_space = spaces.Box(-np.inf, np.inf, (5,), np.float32)
    folder = _saved_policy(tmp_path / "saved", obs_space, action_space)
    obs = _observations(obs_space)
    expected, _ = PPO.load(folder).predict(obs)
    _export(folder, tmp_path / "m.onnx", "onnx", capsys)
    actions = _onnx(tmp_path / "m.onnx", obs)
    assert actions.dtype == expected.dtype and np.array_equal(actions, expected)


def test_image_policy_matches_predict(tmp_path, capsys):
    obs_space = spaces.Box(0, 255, (12, 12, 3), np.uint8)  # channels last: the graph transposes
    folder = _saved_policy(tmp_path / "saved", obs_space, spaces.Discrete(4), normalize_obs=False)
    obs = _observations(obs_space)
    expected, _ = PPO.load(folder).predict(obs)
    _export(folder, tmp_path / "i.onnx", "onnx", capsys)
    assert np.array_equal(_onnx(tmp_path / "i.onnx", obs), expected)


@pytest.mark.parametrize("obs_space, overrides, message", [
    (spaces.Box(-1, 1, (3,), np.float32), {"recurrent": "lstm", "rnn_hidden": 8, "bptt_len": 16}, "recurrent (LSTM) policy"),
    (spaces.Dict({"a": spaces.Box(-1, 1, (2,)), "b": spaces.Discrete(3)}), {}, "Dict observations (a, b)"),
    (spaces.Discrete(5), {}, "Discrete observations"),
], ids=["recurrent", "dict", "discrete-obs"])
def test_declined_policies_say_so_in_one_line(obs_space, overrides, message, tmp_path, capsys):
    folder = _saved_policy(tmp_path / "saved", obs_space, spaces.Discrete(2), normalize_obs=False, **overrides)
    assert main(["export", str(folder), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("proximo: error:"), err
    assert not (tmp_path / "x.onnx").exists()


def test_a_damaged_policy_file_is_one_line(tmp_path, capsys):
    folder = _saved_policy(tmp_path / "saved", spaces.Box(-1, 1, (3,), np.float32), spaces.Discrete(2))
    (folder / "policy.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    assert main(["export", str(folder), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "policy.safetensors" in err, err


def test_the_docs_snippet_runs_with_onnxruntime_alone(cartpole_run, tmp_path, capsys):
    text = (ROOT / "docs" / "guides" / "export.md").read_text()
    section = text[text.index("# Export"):]
    start = section.index("```python") + len("```python")
    code = section[start:section.index("```", start)]
    assert 'InferenceSession("policy.onnx"' in code
    _export(cartpole_run, tmp_path / "policy.onnx", "onnx", capsys)
    # proximo and torch are made unimportable: the snippet needs onnxruntime and NumPy only
    guard = "import sys\nsys.modules['proximo'] = None\nsys.modules['torch'] = None\n"
    report = "\nimport json\nprint(json.dumps({'action': action.tolist(), 'meta': meta}))\n"
    done = subprocess.run([sys.executable, "-c", guard + code + report], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    expected, _ = PPO.load(cartpole_run).predict(np.zeros((1, 4), dtype=np.float32))
    assert out["action"] == expected.tolist()
    assert out["meta"]["env_id"] == "CartPole-v1" and json.loads(out["meta"]["action_space"])["type"] == "Discrete"


def test_a_killed_run_exports_its_newest_checkpoint_and_says_so(cartpole_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(cartpole_run, run)
    shutil.rmtree(run / "policy")  # as a kill before the end leaves it
    assert main(["export", str(run), "--checkpoint", "step_256", "-o", str(tmp_path / "k.onnx")]) == 0
    assert "step_000000000256" in capsys.readouterr().out
    assert main(["export", str(run), "-o", str(tmp_path / "k2.onnx")]) == 0
    captured = capsys.readouterr()
    assert "using checkpoint step_000000000256" in captured.err and len(captured.err.strip().splitlines()) == 1
    obs = np.zeros((3, 4), dtype=np.float32)
    assert np.array_equal(_onnx(tmp_path / "k.onnx", obs), _onnx(tmp_path / "k2.onnx", obs))
