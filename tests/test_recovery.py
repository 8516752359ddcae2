"""After a crash: a run killed at any moment leaves a directory that eval, load and resume accept.

Unit tests damage copies of one short finished run; the kill tests SIGKILL real `proximo train` processes,
at seeded random moments and at the worst moments of a folder write (paused there on purpose).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from proximo import PPO, cli
from proximo.checkpoint import CheckpointError, CheckpointFallbackWarning, ensure_run_dir, load_tensors, unprefixed
from proximo.errors import ProximoError
from proximo.train import list_checkpoints, load_policy

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's proximo, whatever is installed
SMALL = ["--num-envs", "2", "--n-steps", "16", "--batch-size", "16", "--n-epochs", "1", "--eval-episodes", "1",
         "--quiet", "--no-tensorboard"]
STEPS = ["step_000000000032", "step_000000000064", "step_000000000096"]


def _step(n: int) -> str:
    return f"step_{n:012d}"


def _cli(capsys, argv) -> tuple[int, list[str]]:
    """Exit status and stderr lines of one in-process `proximo` command."""
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse mistakes
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err.strip().splitlines()


def _policy_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return unprefixed("policy", load_tensors(folder / "state.safetensors"))


def _same_weights(policy, tensors) -> bool:
    state = policy.state_dict()
    return state.keys() == tensors.keys() and all(torch.equal(state[k], tensors[k]) for k in state)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A short finished run with checkpoints at steps 32, 64 and 96 and a final policy/."""
    run_dir = tmp_path_factory.mktemp("recovery") / "run"
    assert cli.main(["train", "CartPole-v1", "--run-dir", str(run_dir), "--total-steps", "96", "--save-every", "32",
                     *SMALL]) == 0
    assert [p.name for p in list_checkpoints(run_dir)] == STEPS
    return run_dir


@pytest.fixture
def killed(finished, tmp_path):
    """A copy of the finished run as a kill after its last checkpoint leaves it: no policy/, no summary.json."""
    run_dir = tmp_path / "killed"
    shutil.copytree(finished, run_dir)
    shutil.rmtree(run_dir / "policy")
    (run_dir / "summary.json").unlink()
    return run_dir


# no final policy -----------------------------------------------------------------------------------

def test_no_policy_uses_the_newest_checkpoint_and_names_it(killed, capsys):
    code, err = _cli(capsys, ["eval", killed, "--episodes", "1"])
    assert code == 0
    assert err == [f"proximo: {killed} has no final policy/; using checkpoint {STEPS[-1]}"]
    with pytest.warns(CheckpointFallbackWarning, match=f"^proximo: .* using checkpoint {STEPS[-1]}$"):
        agent = PPO.load(killed)
    assert _same_weights(agent.policy, _policy_tensors(killed / "checkpoints" / STEPS[-1]))
    assert agent.env == "CartPole-v1" and agent.config.num_envs == 2
    action, _ = agent.predict(np.zeros(4, dtype=np.float32))
    assert int(action) in (0, 1)


def test_policy_rebuilt_from_a_checkpoint_equals_the_final_policy(finished):
    final, _ = load_policy(finished)
    from_checkpoint, meta = load_policy(finished, checkpoint="step_96")
    assert _same_weights(from_checkpoint, final.state_dict())
    assert meta["checkpoint"] == str(finished / "checkpoints" / STEPS[-1]) and meta["global_step"] == 96
    assert {"env_id", "env_kwargs", "config", "observation_space", "action_space"} <= meta.keys()


@pytest.mark.parametrize("damage", ["truncated tensors", "half json", "no tensors", "tensors that do not fit"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(killed, capsys, damage):
    newest = killed / "checkpoints" / STEPS[-1]
    if damage == "truncated tensors":
        data = (newest / "state.safetensors").read_bytes()
        (newest / "state.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "half json":
        text = (newest / "state.json").read_text()
        (newest / "state.json").write_text(text[: len(text) // 2])
    elif damage == "no tensors":
        (newest / "state.safetensors").unlink()
    else:
        from safetensors.torch import save_file
        tensors = load_tensors(newest / "state.safetensors")
        tensors = {k: (v[:1].clone() if k.startswith("policy.") and v.dim() == 2 else v) for k, v in tensors.items()}
        save_file(tensors, str(newest / "state.safetensors"))
    code, err = _cli(capsys, ["eval", killed, "--episodes", "1"])
    assert code == 0 and len(err) == 1, err
    assert err[0].startswith(f"proximo: {killed} has no final policy/; using checkpoint {STEPS[-2]} "
                             f"(newer {STEPS[-1]} is damaged: ")
    with pytest.warns(CheckpointFallbackWarning, match=f"using checkpoint {STEPS[-2]} "):
        agent = PPO.load(killed)
    assert _same_weights(agent.policy, _policy_tensors(killed / "checkpoints" / STEPS[-2]))


def test_every_checkpoint_damaged_is_one_line(killed, capsys):
    for name in STEPS:
        (killed / "checkpoints" / name / "state.safetensors").write_bytes(b"not a safetensors file")
    code, err = _cli(capsys, ["eval", killed])
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"proximo: error: {killed} has no final policy/ and none of its 3 checkpoints loads")


def test_no_checkpoint_and_no_policy_is_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"env_id": "CartPole-v1"}))
    (tmp_path / "checkpoints").mkdir()
    code, err = _cli(capsys, ["eval", tmp_path])
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"proximo: error: no saved policy in {tmp_path}")
    with pytest.raises(CheckpointError, match="no saved policy"):
        PPO.load(tmp_path)


# --checkpoint ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("pick", ["step_32", "step_000000000032", "32", "path"])
def test_checkpoint_flag_picks_an_older_one_even_with_a_final_policy(finished, capsys, pick):
    folder = finished / "checkpoints" / STEPS[0]
    name = str(folder) if pick == "path" else pick
    code, err = _cli(capsys, ["eval", finished, "--episodes", "1", "--checkpoint", name])
    assert code == 0 and err == []
    with warnings_as_errors():
        agent = PPO.load(finished, checkpoint=name)
    assert _same_weights(agent.policy, _policy_tensors(folder))
    assert not _same_weights(agent.policy, load_policy(finished)[0].state_dict())


def test_a_checkpoint_folder_loads_directly(finished):
    folder = finished / "checkpoints" / STEPS[1]
    with warnings_as_errors():
        policy, meta = load_policy(folder)
        assert _same_weights(PPO.load(folder).policy, _policy_tensors(folder))
    assert _same_weights(policy, _policy_tensors(folder)) and meta["global_step"] == 64
    # a name is looked up among the siblings of a checkpoint folder
    assert load_policy(folder, checkpoint="step_32")[1]["global_step"] == 32


def test_an_unknown_or_damaged_checkpoint_pick_is_one_line(finished, tmp_path, capsys):
    code, err = _cli(capsys, ["eval", finished, "--checkpoint", "step_50"])
    assert code == 2 and err == [f"proximo: error: no checkpoint step_000000000050 in {finished / 'checkpoints'}; "
                                 f"it has {', '.join(STEPS)} (pick one of those)"]
    code, err = _cli(capsys, ["eval", finished, "--checkpoint", "latest"])
    assert code == 2 and len(err) == 1 and "'latest' is neither a checkpoint folder nor a name like step_4096" in err[0]
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    (copy / "checkpoints" / STEPS[0] / "state.json").write_text("{")
    code, err = _cli(capsys, ["eval", copy, "--checkpoint", "step_32"])  # asked for by name: no silent fallback
    assert code == 2 and len(err) == 1 and "state.json is corrupt" in err[0]


@contextlib.contextmanager
def warnings_as_errors():
    """Fail on any warning inside the block (an explicit pick must not warn)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# doctor and resume on a killed run -------------------------------------------------------------------

def test_doctor_and_resume_accept_a_killed_run(killed, capsys):
    code, err = _cli(capsys, ["doctor", killed])
    assert code == 0, err
    code, err = _cli(capsys, ["train", "--resume", killed, "--total-steps", "128", *SMALL[-2:]])
    assert code == 0, err
    assert json.loads((killed / "summary.json").read_text())["global_step"] == 128
    assert load_policy(killed)[1].get("checkpoint") is None  # the resumed run wrote its final policy/


def test_resume_drops_a_metrics_row_torn_by_the_kill(killed, capsys):
    # A kill in the middle of a metrics write leaves a last line without its newline, in either file.
    with open(killed / "updates.jsonl", "a") as handle:
        handle.write('{"global_step": 12')
    with open(killed / "metrics.csv", "a") as handle:
        handle.write("12")
    code, err = _cli(capsys, ["train", "--resume", killed, "--total-steps", "128", *SMALL[-2:]])
    assert code == 0, err
    rows = [json.loads(line) for line in (killed / "updates.jsonl").read_text().splitlines()]
    assert [row["global_step"] for row in rows] == [32, 64, 96, 128]
    assert (killed / "metrics.csv").read_text().splitlines()[-1].startswith("128,")


def test_doctor_names_the_checkpoint_of_an_unfinished_run(killed, capsys):
    capsys.readouterr()
    assert cli.main(["doctor", str(killed)]) == 0
    out = capsys.readouterr().out
    assert f"unfinished: no final policy/ (killed, or still running); newest checkpoint {STEPS[-1]}" in out


def test_doctor_reads_a_run_killed_while_writing_its_first_line(tmp_path, capsys):
    (tmp_path / "updates.jsonl").write_text('{"update": 1, "approx_k')
    code, err = _cli(capsys, ["doctor", tmp_path])
    assert code == 2 and len(err) == 1 and "has no metrics" in err[0]


# a run directory that cannot be created ----------------------------------------------------------------

def test_a_run_dir_under_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = _cli(capsys, ["train", "CartPole-v1", "--run-dir", blocker / "run", *SMALL])
    assert code == 2
    assert err == [f"proximo: error: cannot create run directory {blocker / 'run'}: {blocker} is a file, not a "
                   "folder; choose a --run-dir in a folder you can write to"]
    code, err = _cli(capsys, ["train", "CartPole-v1", "--run-dir", blocker, *SMALL])
    assert code == 2 and err == [f"proximo: error: run directory {blocker} is a file, not a folder; choose a "
                                 "--run-dir in a folder you can write to"]
    with pytest.raises(ProximoError, match=r"cannot create run directory .*: not a directory \("):
        ensure_run_dir(blocker / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_bad_env_id_leaves_no_empty_run_dir(tmp_path, capsys):
    code, err = _cli(capsys, ["train", "NoSuchEnv-v9", "--run-dir", tmp_path / "a" / "run", *SMALL])
    assert code == 2 and "unknown env id" in err[0]
    assert not (tmp_path / "a").exists()


def test_a_read_only_run_dir_is_one_line(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    real_access = os.access
    # root ignores permission bits: answer as access() does for everyone else
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (not Path(path).is_relative_to(locked)
                                                                and real_access(path, mode, **kw)))
    try:
        code, err = _cli(capsys, ["train", "CartPole-v1", "--run-dir", locked / "run", *SMALL])
        assert code == 2 and err == [f"proximo: error: run directory {locked / 'run'} cannot be created in {locked} "
                                     "(permission denied); choose a --run-dir in a folder you can write to"]
        assert not (locked / "run").exists()
        with pytest.raises(ProximoError, match=r"run directory .*/locked/run(: permission denied| is not writable)"):
            ensure_run_dir(locked / "run")
    finally:
        locked.chmod(0o700)


# kill -9 -------------------------------------------------------------------------------------------------

def _known_checkpoints(run_dir: Path) -> list[str]:
    """Checkpoint folders on disk, those a kill between two renames left as .step_N.old included (read only)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.name.startswith(("step_", ".step_")) and not p.name.endswith(".tmp")
                  and (p / "state.json").is_file())


def _check_usable(run_dir: Path, capsys, resume_steps: int = 256) -> str:
    """What a user does after a kill: eval, PPO.load and resume must all work when a checkpoint exists."""
    if not _known_checkpoints(run_dir) and not (run_dir / "policy").is_dir():
        code, err = _cli(capsys, ["eval", run_dir, "--episodes", "1"])
        assert code == 2 and len(err) == 1 and "no saved policy" in err[0], err
        code, err = _cli(capsys, ["train", "--resume", run_dir, "--quiet", "--no-tensorboard"])
        assert code == 2 and len(err) == 1, err
        return "nothing saved"
    had_policy = (run_dir / "policy").is_dir() or (run_dir / ".policy.old").is_dir()
    code, err = _cli(capsys, ["eval", run_dir, "--episodes", "1"])
    assert code == 0, err
    assert err == ([] if had_policy else [f"proximo: {run_dir} has no final policy/; using checkpoint "
                                          f"{list_checkpoints(run_dir)[-1].name}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointFallbackWarning)
        agent = PPO.load(run_dir)
    agent.predict(np.zeros(4, dtype=np.float32))
    step = int(list_checkpoints(run_dir)[-1].name.split("_")[1])
    code, err = _cli(capsys, ["train", "--resume", run_dir, "--total-steps", step + resume_steps, "--quiet",
                              "--no-tensorboard"])
    assert code == 0, err
    return "final policy" if had_policy else "checkpoint only"


class KilledRun:
    """A `proximo train` subprocess that a background thread SIGKILLs `delay` seconds after an anchor event."""

    TRAIN = ["train", "CartPole-v1", "--preset", "cartpole", "--total-steps", "20000", "--save-every", "1024",
             "--quiet", "--no-tensorboard"]
    FINAL = _step(20224)  # 79 updates of 256 steps: _finish re-saves this one before evaluating

    def __init__(self, run_dir: Path, anchor: str, delay: float) -> None:
        self.run_dir, self.anchor, self.delay = run_dir, anchor, delay
        self.proc: subprocess.Popen | None = None
        self.outcome = "running"
        self._thread = threading.Thread(target=self._kill_later, daemon=True)

    def start(self) -> None:
        """Launch the training process and the thread that kills it."""
        self.proc = subprocess.Popen([sys.executable, "-m", "proximo.cli", *self.TRAIN, "--run-dir", str(self.run_dir)],
                                     cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self._thread.start()

    def _anchor_reached(self) -> bool:
        if self.anchor == "start":
            return True
        names = _known_checkpoints(self.run_dir)
        return bool(names) if self.anchor == "first checkpoint" else self.FINAL in names

    def _kill_later(self) -> None:
        deadline = time.monotonic() + 120
        while not self._anchor_reached() and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        end = time.monotonic() + self.delay
        while self.proc.poll() is None and time.monotonic() < end:
            time.sleep(0.002)
        self.outcome = "finished first" if self.proc.poll() is not None else "killed"
        self.stop()

    def stop(self) -> None:
        """SIGKILL the process group (the trainer and any env workers) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait(timeout=30)
            self.proc.stderr.close()

    def wait(self, timeout: float = 150) -> None:
        """Until the process is killed (or has finished)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"run {self.run_dir} neither finished nor was killed"


def _kill_plan(seed: int, count: int) -> list[tuple[str, float]]:
    """Seeded (anchor, delay) pairs: during start-up, all through training, and around the final write."""
    rng = random.Random(seed)
    anchors = ["start", "first checkpoint", "final checkpoint", "first checkpoint"]
    spans = {"start": (0.5, 5.0), "first checkpoint": (0.0, 4.0), "final checkpoint": (0.0, 1.5)}
    plan = []
    for i in range(count):
        anchor = anchors[i % len(anchors)]
        plan.append((anchor, rng.uniform(*spans[anchor])))
    return plan


def _kill_runs(tmp_path, capsys, seed: int, count: int) -> list[str]:
    runs = [KilledRun(tmp_path / f"run{i}", anchor, delay) for i, (anchor, delay) in enumerate(_kill_plan(seed, count))]
    outcomes = []
    try:
        for run in runs[:2]:
            run.start()
        for i, run in enumerate(runs):
            run.wait()
            if i + 2 < len(runs):
                runs[i + 2].start()  # two runs in flight: one starts up while another trains or is checked
            outcomes.append(f"{run.anchor} +{run.delay:.2f}s: {run.outcome}, {_check_usable(run.run_dir, capsys)}")
    finally:
        for run in runs:
            run.stop()
    return outcomes


def test_kill_9_at_random_moments_leaves_a_usable_run(tmp_path, capsys):
    outcomes = _kill_runs(tmp_path, capsys, seed=11, count=4)
    assert sum("killed, checkpoint only" in o for o in outcomes) >= 1, outcomes


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_at_many_random_moments_leaves_a_usable_run(tmp_path, capsys, seed):
    outcomes = _kill_runs(tmp_path, capsys, seed=seed, count=8)
    assert sum("killed, checkpoint only" in o for o in outcomes) >= 2, outcomes


# Runs `proximo train` with os.replace paused at one chosen rename of a folder write, so the kill lands
# exactly there: the moments a random kill rarely hits.
PAUSE_SCRIPT = textwrap.dedent("""
    import os, sys, time
    real_replace = os.replace
    where = sys.argv[1]
    seen = []

    def replace(src, dst):
        src, dst = os.fspath(src), os.fspath(dst)
        name, target = os.path.basename(src), os.path.basename(dst)
        seen.append(target)
        swapping = os.path.isdir(os.path.join(os.path.dirname(dst), "." + target + ".old"))
        pause = ((where == "policy rename" and target == "policy" and name.endswith(".tmp"))
                 or (where == "policy swap" and target == "policy" and swapping)
                 or (where == "checkpoint swap" and target.startswith("step_") and name.endswith(".tmp")
                     and swapping)
                 or (where == "inside a checkpoint" and target == "state.safetensors"
                     and seen.count("state.safetensors") == 2))
        if pause:
            print("paused", flush=True)
            time.sleep(600)
        real_replace(src, dst)

    os.replace = replace
    from proximo import cli
    sys.exit(cli.main(sys.argv[2:]))
""")


WORST_MOMENTS = [  # (where the kill lands, whether the run is a resume of a finished one, what is left to use)
    ("policy rename", False, "checkpoint only"),  # the final policy/ filled but not yet renamed into place
    ("checkpoint swap", False, "checkpoint only"),  # the final re-save of a step: old set aside, new not in place
    ("inside a checkpoint", False, "checkpoint only"),  # a checkpoint's tensors written, its state.json not yet
    ("policy swap", True, "final policy"),  # a resume replacing policy/: old set aside, new not in place
]


def test_kill_9_at_the_worst_moments_of_a_write_leaves_a_usable_run(tmp_path, capsys):
    procs = []
    try:
        for index, (where, resumed, _) in enumerate(WORST_MOMENTS):
            run_dir = tmp_path / f"run{index}"
            argv = ["train", "CartPole-v1", "--run-dir", str(run_dir), "--total-steps", "96", "--save-every", "32",
                    *SMALL]
            if resumed:  # a finished run resumed: its final policy/ is replaced by two renames
                assert cli.main(argv) == 0
                argv = ["train", "--resume", str(run_dir), "--total-steps", "128", *SMALL[-2:]]
            procs.append(subprocess.Popen([sys.executable, "-c", PAUSE_SCRIPT, where, *argv], cwd=ROOT, env=ENV,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          start_new_session=True))  # all four start up at once
        for proc, (where, resumed, expected) in zip(procs, WORST_MOMENTS):
            line = proc.stdout.readline()  # the pipe gives EOF if the process ends without pausing
            assert line == "paused\n", (where, line, proc.stderr.read() if proc.poll() is not None else "")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            proc.stdout.close()
            proc.stderr.close()
    for index, (where, resumed, expected) in enumerate(WORST_MOMENTS):
        run_dir = tmp_path / f"run{index}"
        assert [p.name for p in run_dir.rglob(".*")], f"{where}: no temporary or set-aside folder was left"
        if where == "policy swap":
            assert (run_dir / ".policy.old").is_dir() and not (run_dir / "policy").exists()
        assert _check_usable(run_dir, capsys, resume_steps=32) == expected, where
