"""One run over several processes (torchrun, gloo on 127.0.0.1): learning, stopping, resuming, a dead rank, bad input.

Every child process carries a token in its environment; each test's finally kills (by pid) whatever
still carries it, so no torchrun worker outlives its test, and every wait has a timeout.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

from proximo.errors import ConfigError
import torch

from proximo.checkpoint import load_tensors
from proximo.cli import main
from proximo.config import make_config
from proximo.learners.distributed import World, check_divides, init_world, rank_seed
from proximo.nn.normalize import RunningMeanStd
from proximo.train import ResumeWarning, Trainer, list_checkpoints

ROOT = Path(__file__).resolve().parents[1]

TOKEN_KEY = "PROXIMO_TEST_TOKEN"
# The cartpole preset with a 20,480-step budget (40 updates of 2 x 8 envs x 32 steps): 2 processes reach a
# deterministic evaluation of 500 / 473 / 500 on seeds 1 / 2 / 3 here. A random policy scores ~20, and two
# ranks that each learn alone (no gradient all-reduce) reached ~130 at this budget, so 300 leaves margin
# for numeric differences across CPUs without passing a run whose ranks do not train together.
TOTAL = 20_480
LEARNED = 300.0
SMALL = ["--preset", "cartpole", "--total-steps", str(TOTAL), "--seed", "1", "--eval-episodes", "5"]


# processes -----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tagged(token: str) -> list[tuple[int, dict[str, str]]]:
    """(pid, environment) of every live process that carries the token."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"{TOKEN_KEY}={token}".encode() in raw.split(b"\0"):
            env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
            found.append((int(entry.name), env))
    return found


def _kill_tagged(token: str) -> None:
    for pid, _ in _tagged(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Launch:
    """A child command (proximo or torchrun) with its output in files, and clean-up of everything it started."""

    def __init__(self, argv: list[str], cwd: Path, name: str, logs: Path | None = None) -> None:
        self.token = uuid.uuid4().hex
        logs = logs or cwd
        self.out, self.err = logs / f"{name}.out", logs / f"{name}.err"
        env = {**os.environ, TOKEN_KEY: self.token, "OMP_NUM_THREADS": "1"}
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.proc.args[:6]} still running after {timeout} s:\n{self.stderr()[-3000:]}")

    def stderr(self) -> str:
        return self.err.read_text()

    def worker(self, rank: int) -> int:
        """The pid of the torchrun worker of this rank."""
        for pid, env in _tagged(self.token):
            if env.get("RANK") == str(rank) and env.get("LOCAL_RANK") is not None:
                return pid
        pytest.fail(f"no rank {rank} worker found:\n{self.stderr()[-3000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        _kill_tagged(self.token)


def _proximo(*args: str) -> list[str]:
    return [sys.executable, "-m", "proximo", "train", *args]


def _torchrun(nproc: int, module: str, *args: str) -> list[str]:
    # What a user types for torchrun: a c10d rendezvous on a free loopback port, then `-m module args`.
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "-m", module, *args]


def _wait_for(condition, timeout: float, launch: Launch, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if launch.proc.poll() is not None:
            pytest.fail(f"exited ({launch.proc.returncode}) before {what}:\n{launch.stderr()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s:\n{launch.stderr()[-3000:]}")
        time.sleep(0.2)


def _metric_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.csv").read_text().splitlines()[1:] if (run_dir / "metrics.csv").exists() else []
    return [int(line.split(",")[0]) for line in lines if line]


# a process alone ----------------------------------------------------------------------------------
def test_a_process_alone_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = init_world(torch.device("cpu"))
    assert (world.rank, world.size, world.local_rank, world.is_main, world.backend) == (0, 1, 0, True, None)
    assert World.local() == world
    tensor = torch.arange(4.0)
    assert world.all_reduce_sum_(tensor) is tensor and torch.equal(tensor, torch.arange(4.0))
    assert world.broadcast_(tensor) is tensor and torch.equal(tensor, torch.arange(4.0))
    world.barrier()
    assert world.all_gather_object({"a": [1, 2]}) == [{"a": [1, 2]}]
    assert world.broadcast_object([3]) == [3] and world.on_main(lambda: 7) == 7
    assert world.comm_calls == 0  # a world of one never touches torch.distributed
    assert rank_seed(5, 0) == 5 and rank_seed(5, 2) == 2_000_005


def test_moments_of_two_halves_merged_once_equal_one_merge_of_the_whole():
    rng = np.random.default_rng(0)
    for shape in ((), (3,)):
        # A mean far from zero with a small spread: the case a sum of squares about zero would lose.
        first = rng.normal(1e4, 1e-2, size=(5,) + shape)
        whole = rng.normal(1e4, 1e-2, size=(64,) + shape)
        one, two = RunningMeanStd(shape), RunningMeanStd(shape)
        for rms in (one, two):
            rms.update(first)  # a running state that is not the prior
        one.update(whole)
        # What two ranks do: moments of each half about the shared mean, summed (the all-reduce), merged once.
        two.update_from_moments(two.moments(whole[:40]) + two.moments(whole[40:]))
        for key in ("mean", "var", "count"):
            np.testing.assert_allclose(getattr(two, key).numpy(), getattr(one, key).numpy(), rtol=1e-12, atol=0)
        # Centred on the running mean, the moments keep this spread to ~1e-6 (only the first batch, centred
        # on the prior's zero mean, loses a little); sums about zero would lose it to ~1e-3.
        alone = RunningMeanStd(shape, epsilon=1e-30)  # a negligible prior
        for batch in (first, whole[:40], whole[40:]):
            alone.update(batch)
        np.testing.assert_allclose(alone.var.numpy(), np.concatenate([first, whole]).var(0), rtol=2e-5)


# bad input --------------------------------------------------------------------------------------------
def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("proximo: error: ")
    return lines[0]


def test_bad_process_counts_are_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert "--nproc must be at least 1, got 0" in _one_line_error(capsys, ["train", "CartPole-v1", "--nproc", "0"])
    line = _one_line_error(capsys, ["train", "CartPole-v1", "--preset", "cartpole", "--nproc", "3"])
    assert "3 processes do not divide batch_size 256" in line and "--nproc 1, 2, 4, 8, 16, 32, 64" in line
    check_divides(96, 3)  # 32 samples per rank: fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert "under torchrun leave it out" in _one_line_error(capsys, ["train", "CartPole-v1", "--nproc", "2"])
    monkeypatch.setenv("PROXIMO_DIST_TIMEOUT_S", "soon")
    assert "PROXIMO_DIST_TIMEOUT_S='soon'" in _one_line_error(capsys, ["train", "CartPole-v1"])


# statistics over ranks ------------------------------------------------------------------------------------
STATS_SEED = 11


def _counter_collector(num_envs: int, seed: int, world=None):
    """A collector over counter envs (observations and rewards independent of the actions), with both
    statistics on."""
    from proximo.envs.make import make_vector_env
    from proximo.nn.policy import ActorCritic
    from proximo.rollout import RewardScaler, RolloutCollector
    from tests.envs import counter_env

    envs = make_vector_env(counter_env, num_envs)
    policy = ActorCritic(envs.single_observation_space, envs.single_action_space, normalize_obs=True)
    return RolloutCollector(envs, policy, 32, 0.99, normalize_obs=True, reward_scaler=RewardScaler(num_envs, 0.99, 10.0),
                            seed=seed, world=world)


def _statistics(collector) -> dict:
    rms = {"obs": collector.policy.obs_rms, "return": collector.reward_scaler.return_rms}
    return {f"{name}.{key}": getattr(stat, key).tolist() for name, stat in rms.items() for key in ("mean", "var", "count")}


def _statistics_worker(out: str) -> None:
    """Under torchrun: each rank steps 8 counter envs, seeded as its half of one process's 16 envs, for 2 rollouts."""
    world = init_world(torch.device("cpu"))
    collector = _counter_collector(8, STATS_SEED + 8 * world.rank, world)
    for _ in range(2):
        collector.collect()
    if world.is_main:
        Path(out).write_text(json.dumps(_statistics(collector)))
    world.close()


def test_two_ranks_of_n_envs_keep_the_statistics_of_one_process_with_2n(tmp_path):
    out = tmp_path / "stats.json"
    launch = Launch(_torchrun(2, "tests.test_distributed", str(out)), ROOT, "stats", logs=tmp_path)
    try:
        assert launch.wait(90) == 0, launch.stderr()[-3000:]
    finally:
        launch.close()
    alone = _counter_collector(16, STATS_SEED)
    for _ in range(2):
        alone.collect()
    ranks, one = json.loads(out.read_text()), _statistics(alone)
    assert one["obs.count"] > 1000 and one.keys() == ranks.keys()
    for key in one:  # the same numbers, summed in another order
        np.testing.assert_allclose(ranks[key], one[key], rtol=1e-12, atol=0, err_msg=key)


def test_batch_size_is_the_global_minibatch_of_every_process_rollout(capsys, monkeypatch):
    from proximo.config import make_config, planning_processes

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    # one process: its 4 envs x 32 steps = 128 samples cannot fill one minibatch of 256
    line = _one_line_error(capsys, ["train", "CartPole-v1", "--preset", "cartpole", "--num-envs", "4"])
    assert "batch_size 256 does not divide num_envs x n_steps = 4 x 32 = 128" in line
    with planning_processes(2):  # `--nproc 2`: 2 x 4 x 32 = 256 samples per update, one minibatch
        assert make_config("cartpole", "CartPole-v1", num_envs=4).batch_size == 256
    with pytest.raises(ConfigError, match=r"does not divide 3 processes x num_envs x n_steps = 3 x 4 x 32 = 384; "
                                          r"use a divisor such as 192"):
        with planning_processes(3):
            make_config("cartpole", "CartPole-v1", num_envs=4)
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun every rank knows the world it is in
    assert make_config("cartpole", "CartPole-v1", num_envs=4).num_envs == 4


def test_plain_torchrun_accepts_a_minibatch_of_both_ranks_rollouts(tmp_path):
    # The round-2 defect: torchrun --nproc-per-node 2 with 4 envs each was refused ("batch_size 256 does not
    # divide 4 x 32 = 128") although the two ranks' rollouts make 256 together.
    run_dir = tmp_path / "run"
    launch = Launch(_torchrun(2, "proximo", "train", "CartPole-v1", "--preset", "cartpole", "--num-envs", "4",
                              "--total-steps", "512", "--eval-episodes", "1", "--quiet", "--no-tensorboard",
                              "--run-dir", str(run_dir)), tmp_path, "global-batch", logs=tmp_path)
    try:
        assert launch.wait(120) == 0, launch.stderr()[-3000:]
    finally:
        launch.close()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 512
    rows = [json.loads(line) for line in (run_dir / "updates.jsonl").read_text().splitlines()]
    assert all(row["minibatches"] == 20 for row in rows)  # 20 epochs of one 256-sample minibatch (128 per rank)


# two processes -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A 2-process run under plain torchrun, stopped by SIGTERM to torchrun after a few updates."""
    cwd = tmp_path_factory.mktemp("dist")
    run_dir = cwd / "run"
    launch = Launch(_torchrun(2, "proximo", "train", "CartPole-v1", *SMALL, "--run-dir", str(run_dir)), cwd, "first")
    try:
        _wait_for(lambda: len(_metric_steps(run_dir)) >= 4, 90, launch, "4 logged updates")
        launch.proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
        code = launch.wait(60)
        assert not _tagged(launch.token), "a rank outlived torchrun"
    finally:
        launch.close()
    return run_dir, code, launch.stderr()


def test_sigterm_stops_every_rank_after_the_same_update_with_one_checkpoint(stopped_run):
    run_dir, code, stderr = stopped_run
    assert code != 0  # torchrun reports a stopped run as failed; the checkpoint is what matters
    assert stderr.count("proximo: stopped by SIGTERM") == 1, stderr  # rank 0 alone says it
    checkpoints = list_checkpoints(run_dir)
    assert len(checkpoints) == 1, checkpoints
    meta = json.loads((checkpoints[0] / "state.json").read_text())
    assert meta["world"] == {"size": 2, "backend": "gloo"} and len(meta["ranks"]) == 2
    assert meta["global_step"] == _metric_steps(run_dir)[-1] and meta["global_step"] % 512 == 0
    # Each rank's own envs: distinct seeds, so distinct simulator states.
    states = [part["envs"]["envs"][0]["base"]["sim"]["state"] for part in meta["ranks"]]
    assert states[0] != states[1]


@pytest.fixture(scope="module")
def resumed_run(stopped_run):
    run_dir = stopped_run[0]
    launch = Launch(_proximo("--resume", str(run_dir), "--nproc", "2", "--no-tensorboard"), run_dir.parent, "resumed")
    try:
        code = launch.wait(150)
        assert not _tagged(launch.token)
    finally:
        launch.close()
    return run_dir, code, launch.stderr(), launch.out.read_text()


def test_two_processes_resume_and_learn_with_rank_0_alone_writing(resumed_run):
    run_dir, code, stderr, stdout = resumed_run
    assert code == 0, stderr
    assert "on 2 processes (gloo)" in stderr and "re-seeded" not in stderr  # an exact resume
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert summary["global_step"] == TOTAL and summary["updates"] == TOTAL // 512  # both ranks' steps count
    assert summary["eval_return_mean"] >= LEARNED, summary
    # One writer: every update logged once, in order (two writers would append each row twice), and one
    # TensorBoard file (the first launch had TensorBoard on; each writer makes its own file).
    assert _metric_steps(run_dir) == list(range(512, TOTAL + 1, 512))
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1
    config = json.loads((run_dir / "config.json").read_text())
    assert config["world"] == {"size": 2, "backend": "gloo"} and config["batch_size"] == 256
    assert stdout.count("run: ") == 1


def test_resume_with_one_process_reseeds_and_keeps_the_weights(resumed_run, capsys):
    run_dir = resumed_run[0]
    assert main(["train", "--resume", str(run_dir), "--total-steps", str(TOTAL + 256), "--quiet",
                 "--no-tensorboard"]) == 0
    err = capsys.readouterr().err
    reseeded = [line for line in err.splitlines() if "re-seeded" in line]
    assert len(reseeded) == 1 and "written by 2 processes and this run has 1" in reseeded[0], err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == TOTAL + 256 and summary["world_size"] == 1
    assert summary["eval_return_mean"] >= LEARNED  # the learned weights carried over


def test_a_killed_rank_ends_the_run_with_one_line_and_a_loadable_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    launch = Launch(_proximo("CartPole-v1", "--preset", "cartpole", "--total-steps", "200000", "--save-every",
                             "1024", "--run-dir", str(run_dir), "--no-tensorboard", "--quiet", "--nproc", "2"),
                    tmp_path, "killed")
    try:
        _wait_for(lambda: list_checkpoints(run_dir), 90, launch, "a first checkpoint")
        os.kill(launch.worker(1), signal.SIGKILL)
        killed_at = time.monotonic()
        code = launch.wait(60)
        took = time.monotonic() - killed_at
        assert not _tagged(launch.token), "a process outlived the launcher"
    finally:
        launch.close()
    stderr = launch.stderr()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 1 and took < 30, (code, took, stderr)
    assert "Traceback" not in stderr, stderr
    assert lines[-1].startswith("proximo: error: rank 1 of 2") and "SIGKILL" in lines[-1], stderr
    assert "stays loadable" in lines[-1]
    trainer = Trainer("CartPole-v1", make_config("cartpole"), run_dir, verbose=False, tensorboard=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResumeWarning)  # one process now: its envs are re-seeded
        trainer.load_training_state(list_checkpoints(run_dir)[-1])
    assert trainer.global_step >= 1024 and trainer.global_step % 512 == 0


def test_a_format_1_checkpoint_still_resumes_exactly(tmp_path):
    # Before several processes, a checkpoint held one rank's part at top level; it loads as one rank.
    from safetensors.torch import load_file, save_file

    config = make_config(None, num_envs=2, n_steps=32, batch_size=32, n_epochs=2, eval_episodes=1, seed=7,
                         normalize_obs=True, normalize_reward=True, total_steps=128)
    Trainer("Pendulum-v1", config, tmp_path / "run", verbose=False, tensorboard=False).train()
    folder = list_checkpoints(tmp_path / "run")[-1]
    meta = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "state.safetensors"))
    old_meta = {key: value for key, value in meta.items() if key not in ("ranks", "world")}
    old_meta.update(meta["ranks"][0], format_version=1)
    old = {key: value for key, value in tensors.items() if not key.startswith("rank.0.")}
    old.update({"rng.torch": tensors["rank.0.rng.torch"], "collector.next_obs": tensors["rank.0.next_obs"],
                "reward_scaler.running_return": tensors["rank.0.running_return"]})
    legacy = tmp_path / "legacy" / "checkpoints" / folder.name
    legacy.mkdir(parents=True)
    (legacy / "state.json").write_text(json.dumps(old_meta))
    save_file(old, str(legacy / "state.safetensors"))
    longer = config.replace(total_steps=192)
    resumed = []
    for source in (folder, legacy):
        trainer = Trainer("Pendulum-v1", longer, None, verbose=False, tensorboard=False)
        trainer.load_training_state(source)
        trainer.train()
        resumed.append(trainer.training_state()[0])
    assert resumed[0].keys() == resumed[1].keys()
    assert all(torch.equal(resumed[0][key], resumed[1][key]) for key in resumed[0])


if __name__ == "__main__":  # the worker of the statistics test, started by torchrun
    _statistics_worker(sys.argv[1])


def test_a_recurrent_masked_run_over_two_processes_keeps_the_ranks_in_step(tmp_path):
    # Every update's checksum sync would stop the run if the ranks' policies differed after a step.
    run_dir = tmp_path / "run"
    launch = Launch(_proximo("proximo/TicTacToe-v0", "--policy", "gru", "--rnn-hidden", "16", "--num-envs", "2",
                             "--n-steps", "16", "--bptt-len", "8", "--batch-size", "32", "--total-steps", "256",
                             "--eval-episodes", "2", "--run-dir", str(run_dir), "--no-tensorboard", "--quiet",
                             "--nproc", "2"), tmp_path, "recurrent")
    try:
        code = launch.wait(150)
    finally:
        launch.close()
    assert code == 0, launch.stderr()[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 256
    tensors = load_tensors(list_checkpoints(run_dir)[-1] / "state.safetensors")
    assert {"rank.0.rnn_state", "rank.1.rnn_state", "rank.0.next_masks", "rank.1.next_masks"} <= set(tensors)
    assert not torch.equal(tensors["rank.0.rnn_state"], tensors["rank.1.rnn_state"])  # each rank's own envs
