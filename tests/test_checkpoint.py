"""Checkpoints: atomic under kill -9, clear one-line errors for corrupt files and the wrong env, keep-last-K."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from proximo import cli
from proximo.checkpoint import CheckpointError, load_tensors
from proximo.config import make_config
from proximo.train import Trainer, list_checkpoints, load_policy
from tests.fault_envs import BrokenEnv

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(num_envs=2, n_steps=16, batch_size=16, n_epochs=1, eval_episodes=1)

# Saves checkpoints in a loop; the fourth tensor file (step 96) is written half, then the saver
# says so and waits to be killed: the kill lands mid-write, whatever the machine's load.
KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import proximo.checkpoint as checkpoint
    real_save = checkpoint.save_file
    calls = []

    def slow_save(tensors, path, *args, **kwargs):
        real_save(tensors, path, *args, **kwargs)
        calls.append(path)
        if len(calls) == 4:
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])
            print("half-written", flush=True)
            time.sleep(60)

    checkpoint.save_file = slow_save
    from proximo.config import make_config
    from proximo.train import Trainer
    trainer = Trainer("CartPole-v1", make_config(None, num_envs=2, n_steps=16, batch_size=16, n_epochs=1,
                      keep_checkpoints=2), sys.argv[1], verbose=False, tensorboard=False)
    while True:
        print("saving", trainer.global_step, flush=True)
        trainer.save_checkpoint()
        trainer.global_step += 32
""")


def _trainer(env, run_dir, **overrides):
    return Trainer(env, make_config(None, **{**SMALL, **overrides}), run_dir, verbose=False, tensorboard=False)


def test_kill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(KILL_SCRIPT)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's proximo, whatever is installed
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.strip())
            if lines[-1] == "half-written":
                break
        assert lines == ["saving 0", "saving 32", "saving 64", "saving 96", "half-written"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    folder = run_dir / "checkpoints"
    leftovers = [p for p in folder.iterdir() if p.name.startswith(".step_000000000096")]
    assert leftovers, "the kill should have landed inside the save of step 96"
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_tensors(next(leftovers[0].glob(".state.safetensors.*")))
    # keep_checkpoints=2 pruned step 0; the interrupted save left no step_96 folder behind.
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_000000000032", "step_000000000064"]
    fresh = _trainer("CartPole-v1", None)
    fresh.load_training_state(list_checkpoints(run_dir)[-1])
    assert fresh.global_step == 64


def _run_with_checkpoints(run_dir, capsys):
    code = cli.main(["train", "CartPole-v1", "--run-dir", str(run_dir), "--quiet", "--no-tensorboard",
                     "--num-envs", "2", "--n-steps", "16", "--batch-size", "16", "--n-epochs", "1",
                     "--eval-episodes", "1", "--total-steps", "96", "--save-every", "32"])
    assert code == 0
    capsys.readouterr()
    return list_checkpoints(run_dir)


def test_keeps_the_last_k_checkpoints(tmp_path, capsys):
    assert [p.name for p in _run_with_checkpoints(tmp_path, capsys)] == [
        "step_000000000032", "step_000000000064", "step_000000000096"]
    trainer = _trainer("CartPole-v1", tmp_path / "k1", save_every=32, keep_checkpoints=1, total_steps=96)
    trainer.train()
    assert [p.name for p in list_checkpoints(tmp_path / "k1")] == ["step_000000000096"]


def test_truncated_checkpoint_is_one_clear_line(tmp_path, capsys):
    checkpoints = _run_with_checkpoints(tmp_path, capsys)
    newest = checkpoints[-1] / "state.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    code = cli.main(["train", "--resume", str(tmp_path), "--total-steps", "128", "--quiet", "--no-tensorboard"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert re.match(rf"proximo: error: {re.escape(str(newest))} is corrupt or truncated \(.*\); use an earlier "
                    rf"checkpoint \(the previous checkpoint: --resume {re.escape(str(checkpoints[-2]))}\)$", err[0])
    # The hint works: resume from the previous checkpoint folder.
    code = cli.main(["train", "--resume", str(checkpoints[-2]), "--total-steps", "128", "--quiet",
                     "--no-tensorboard"])
    assert code == 0
    assert json.loads((tmp_path / "summary.json").read_text())["global_step"] == 128


def test_damaged_json_is_a_checkpoint_error(tmp_path, capsys):
    folder = _run_with_checkpoints(tmp_path, capsys)[-1]
    meta = folder / "state.json"
    good = meta.read_text()
    meta.write_text(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"state.json is corrupt \(.*\); use an earlier checkpoint"):
        _trainer("CartPole-v1", None).load_training_state(folder)
    data = json.loads(good)
    del data["optimizer"]
    meta.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"is incomplete or damaged \(KeyError: 'optimizer'\)"):
        _trainer("CartPole-v1", None).load_training_state(folder)


def test_truncated_policy_file_is_one_line_in_eval(tmp_path, capsys):
    _run_with_checkpoints(tmp_path, capsys)
    weights = tmp_path / "policy" / "policy.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="policy.safetensors is corrupt or truncated"):
        load_policy(tmp_path)
    assert cli.main(["eval", str(tmp_path), "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "policy.safetensors is corrupt or truncated" in err[0]


def test_kill_between_the_renames_of_a_folder_rewrite_is_recovered(tmp_path, capsys):
    # atomic_write_dir replaces an existing folder by two renames (old aside, new in); a kill between them
    # leaves only .<name>.old and the temporary folder. Loading must bring the old folder back.
    checkpoints = _run_with_checkpoints(tmp_path, capsys)
    for folder in (tmp_path / "policy", checkpoints[-1]):
        os.replace(folder, folder.with_name(f".{folder.name}.old"))
        (folder.parent / f".{folder.name}.abc.tmp").mkdir()
    policy, meta = load_policy(tmp_path)
    assert meta["env_id"] == "CartPole-v1"
    assert list_checkpoints(tmp_path)[-1].name == "step_000000000096"
    _trainer("CartPole-v1", None).load_training_state(list_checkpoints(tmp_path)[-1])


def test_checkpoint_from_another_env_names_the_mismatch(tmp_path):
    source = _trainer("CartPole-v1", tmp_path, total_steps=32)
    source.train()
    folder = list_checkpoints(tmp_path)[-1]
    with pytest.raises(CheckpointError, match="was made on CartPole-v1, not Acrobot-v1"):
        _trainer("Acrobot-v1", None).load_training_state(folder)
    with pytest.raises(CheckpointError, match=r"observation space Box\(shape \(4,\), float32\), but this env has "
                                              r"Box\(shape \(3,\), float32\)"):
        _trainer(lambda: BrokenEnv(None), None).load_training_state(folder)
    with pytest.raises(CheckpointError, match="num_envs=2, this run has 4"):
        _trainer("CartPole-v1", None, num_envs=4).load_training_state(folder)


def test_no_pickle_on_load_paths():
    # Loading a file from a stranger must not run code: no pickle, no torch.load without weights_only.
    offenders = []
    for path in (ROOT / "proximo").rglob("*.py"):
        text = path.read_text()
        if re.search(r"^\s*(import pickle|from pickle|import dill|import cloudpickle)", text, re.M):
            offenders.append(f"{path.name}: pickle import")
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            if "weights_only=True" not in call:
                offenders.append(f"{path.name}: {call}")
    assert not offenders
