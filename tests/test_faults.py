"""NaN guards and crashing envs: the run stops with a message saying where, and the last good checkpoint."""
import signal
import warnings

import gymnasium as gym
import pytest
import torch

from proximo import cli
from proximo.config import make_config
from proximo.envs.guard import EnvFaultError
from proximo.rollout import EnvFaultWarning, NonFiniteError
from proximo.train import ResumeWarning, Trainer, TrainingInterrupted, list_checkpoints
from tests.fault_envs import BrokenEnv, CrashOnceEnv, ResetCrashEnv

# 2 envs x 16 steps = 32 env steps per update; faults start after env step 40 of each env (update 3).
SMALL = dict(num_envs=2, n_steps=16, batch_size=16, n_epochs=2, eval_episodes=1, total_steps=320, seed=5)
NAN_ID = "ProximoTest/NaNReward-v0"
CRASH_ID = "ProximoTest/Crash-v0"
if NAN_ID not in gym.registry:
    gym.register(NAN_ID, entry_point=lambda: BrokenEnv("nan_reward", after=40), max_episode_steps=20)
    gym.register(CRASH_ID, entry_point=lambda: BrokenEnv("raise", after=40), max_episode_steps=20)
CLI_SMALL = ["--quiet", "--no-tensorboard", "--num-envs", "2", "--n-steps", "16", "--batch-size", "16",
             "--total-steps", "320"]


def _trainer(env, run_dir, **overrides):
    return Trainer(env, make_config(None, **{**SMALL, **overrides}), run_dir, verbose=False, tensorboard=False)


def _policy_from(folder):
    from safetensors.torch import load_file
    return {k[len("policy."):]: v for k, v in load_file(str(folder / "state.safetensors")).items()
            if k.startswith("policy.")}


@pytest.mark.parametrize("fault, where", [
    ("nan_obs", "env 0 returned a non-finite observation at rollout step 8"),
    ("nan_reward", "env 0 returned a non-finite reward nan at rollout step 8"),
    pytest.param("huge_reward", "env 0 returned a reward beyond float32's range (3.4e38) at rollout step 8",
                 marks=pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")),
])
def test_non_finite_stops_with_the_last_good_checkpoint(tmp_path, fault, where):
    trainer = _trainer(lambda: BrokenEnv(fault, after=40), tmp_path)
    before = {}

    original = trainer.collector.collect

    def collect():
        before.update({k: v.clone() for k, v in trainer.policy.state_dict().items()})
        return original()
    trainer.collector.collect = collect
    with pytest.raises(NonFiniteError) as caught:
        trainer.train()
    message = str(caught.value)
    assert where in message
    # Updates 1 and 2 (64 steps) were fine; the third rollout hit the fault at its step 8 (env step 41).
    assert "the last good checkpoint (step 64, from before the failing update)" in message
    folders = list_checkpoints(tmp_path)
    assert [f.name for f in folders] == ["step_000000000064"]
    saved = _policy_from(folders[0])
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert all(torch.equal(saved[k], before[k]) for k in before)
    # It is a real checkpoint: a fresh trainer loads it (BrokenEnv has no snapshot, hence the warning).
    with pytest.warns(ResumeWarning):
        _trainer(lambda: BrokenEnv(fault, after=40), None).load_training_state(folders[0])


def test_cli_nan_env_is_one_line(tmp_path, capsys):
    code = cli.main(["train", NAN_ID, "--run-dir", str(tmp_path), *CLI_SMALL])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("proximo: error: env 0 returned a non-finite reward nan")
    assert "step_000000000064" in err[0]


def test_crashing_env_is_restarted_then_the_run_stops(tmp_path):
    trainer = _trainer(lambda: BrokenEnv("raise", after=40), tmp_path)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(EnvFaultError) as stopped:
        warnings.simplefilter("always")
        trainer.train()
    restarts = [w for w in caught if issubclass(w.category, EnvFaultWarning)]
    # Both envs crash at their step 41 (restarts 1, 2), the re-made ones again 41 steps later (3, then stop).
    assert len(restarts) == 3
    assert "raised in step() (RuntimeError: simulator exploded); re-made and reset it (restart 1 of 3)" \
        in str(restarts[0].message)
    assert "4 env faults, more than the 3 restarts allowed" in str(stopped.value)
    assert "last good checkpoint" in str(stopped.value)
    assert list_checkpoints(tmp_path), "the run must leave a checkpoint"


def test_cli_crashing_env_gives_one_line_per_restart_and_one_error(tmp_path, capsys):
    assert cli.main(["train", CRASH_ID, "--run-dir", str(tmp_path), *CLI_SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(" raised")[0] for line in err] == [
        "proximo: warning: env 0", "proximo: warning: env 1", "proximo: warning: env 0", "proximo: error: env 1"]
    assert err[-1].endswith("is in " + str(list_checkpoints(tmp_path)[-1]))


def test_one_crash_is_survived_without_polluting_episode_stats(tmp_path):
    CrashOnceEnv.crashes_left = 1
    trainer = _trainer(lambda: CrashOnceEnv(None, after=25), tmp_path, total_steps=128)
    with pytest.warns(EnvFaultWarning, match="env 0 raised in step"):
        summary = trainer.train()
    assert summary["global_step"] == 128 and trainer.collector.env_faults == 1
    # Healthy episodes last exactly 20 steps; the crashed one (cut at its step 6) is not recorded.
    assert set(trainer.collector.episodes.lengths) == {20}


def test_a_crash_in_autoreset_is_survived_and_counted(tmp_path):
    trainer = _trainer(lambda: ResetCrashEnv(None), tmp_path, total_steps=128)
    ResetCrashEnv.crashes_left = 1  # armed after construction: the env check and first resets pass
    with pytest.warns(EnvFaultWarning, match=r"env 0 raised in reset\(\) \(OSError: lost the connection"):
        summary = trainer.train()
    assert summary["global_step"] == 128 and trainer.collector.env_faults == 1
    # The episode before the failed reset had ended normally, so it is recorded like the others.
    assert set(trainer.collector.episodes.lengths) == {20} and len(trainer.collector.episodes.lengths) == 6


def test_an_env_whose_reset_keeps_failing_stops_the_run_with_a_checkpoint(tmp_path):
    trainer = _trainer(lambda: ResetCrashEnv(None), tmp_path, total_steps=128)
    # The first autoreset fails, and so does the first reset of the env made to replace it.
    ResetCrashEnv.crashes_left, ResetCrashEnv.first_failing = 2, 1
    try:
        with pytest.raises(EnvFaultError, match=r"raised in reset\(\) .*could not be restarted"):
            trainer.train()
    finally:
        ResetCrashEnv.crashes_left, ResetCrashEnv.first_failing = 0, 2
    assert list_checkpoints(tmp_path), "the run must leave a checkpoint"


def test_sigterm_in_process_stops_after_the_update_with_a_checkpoint(tmp_path):
    before = signal.getsignal(signal.SIGTERM)  # the default, or a test runner's own handler
    trainer = _trainer(lambda: BrokenEnv(None), tmp_path)
    original = trainer.collector.collect

    def collect():
        if trainer.global_step == 64:
            signal.raise_signal(signal.SIGTERM)  # arrives mid-update; the update must still finish
        return original()
    trainer.collector.collect = collect
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.train()
    assert stopped.value.signum == signal.SIGTERM and stopped.value.step == 96
    assert [f.name for f in list_checkpoints(tmp_path)] == ["step_000000000096"]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_non_finite_parameters_stop_the_run_before_they_are_saved(tmp_path, monkeypatch):
    import proximo.train
    real_update = proximo.train.ppo_update
    calls = []

    def update_that_breaks_on_the_third_call(learner, buffer, settings, *args, **kwargs):
        stats = real_update(learner, buffer, settings, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(learner.policy.parameters()).view(-1)[0] = float("inf")  # as a non-finite gradient step would
        return stats
    monkeypatch.setattr(proximo.train, "ppo_update", update_that_breaks_on_the_third_call)
    trainer = _trainer(lambda: BrokenEnv(None), tmp_path, save_every=32)
    with pytest.raises(NonFiniteError, match=r"update 3 left non-finite values in the parameters \['pi_net.0.weight'\]"
                                             r".*last good checkpoint \(step 64, from before the failing update\)"):
        trainer.train()
    # The periodic checkpoints before the bad update stay; nothing with the inf parameter was written.
    assert [f.name for f in list_checkpoints(tmp_path)] == ["step_000000000032", "step_000000000064"]
    for folder in list_checkpoints(tmp_path):
        assert all(torch.isfinite(v).all() for v in _policy_from(folder).values())
    assert not (tmp_path / "policy").exists()


def test_a_second_signal_abandons_the_update_without_saving(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    trainer = _trainer(lambda: BrokenEnv(None), tmp_path, save_every=32)
    original = trainer.collector.collect

    def collect():
        if trainer.global_step == 64:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # impatient: stop now
        return original()
    trainer.collector.collect = collect
    with pytest.raises(KeyboardInterrupt) as stopped:
        trainer.train()
    assert not isinstance(stopped.value, TrainingInterrupted)
    assert [f.name for f in list_checkpoints(tmp_path)] == ["step_000000000032", "step_000000000064"]
    assert signal.getsignal(signal.SIGINT) is before  # put back as it was


def test_stop_request_without_a_run_directory_stops_without_saving():
    trainer = _trainer(lambda: BrokenEnv(None), None)
    original = trainer.collector.collect

    def collect():
        trainer.request_stop()
        return original()
    trainer.collector.collect = collect
    with pytest.raises(TrainingInterrupted, match="at step 32; no run directory, so nothing was saved") as stopped:
        trainer.train()
    assert stopped.value.checkpoint is None
    trainer.collector.collect = original
    assert trainer.train(64)["global_step"] == 64  # the old request does not stop the next train()
