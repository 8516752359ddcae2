"""Populations (proximo/population/): agent k of a batched population is bitwise a solo run of its seed
and settings, writes a normal run directory, and the population resumes as a whole."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from proximo.config import make_config
from proximo.errors import ConfigError
from proximo.population.trainer import (
    Population, is_population, pack_obstacle, parse_seeds, population_configs, resume_population,
)
from proximo.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _solo(env: str, config, steps: int) -> Trainer:
    trainer = Trainer(env, config, None, verbose=False, tensorboard=False)
    trainer.train(steps)
    return trainer


def _first_rollout_actions(population: Population) -> torch.Tensor:
    return population.collector.collect().actions.clone()


def _assert_members_equal_solo(env: str, configs, steps: int) -> Population:
    population = Population(env, configs, None, verbose=False, tensorboard=False)
    population.rows = {member.name: [] for member in population.members}
    for member in population.members:
        member.on_update = population.rows[member.name].append  # each member's rows, as a sweep watches them
    population.train(steps)
    for member, config in zip(population.members, configs):
        solo = _solo(env, config, steps)
        mine, theirs = member.policy.state_dict(), solo.policy.state_dict()
        assert mine.keys() == theirs.keys()
        for name in mine:
            # Bitwise: every matmul, loss term, shuffle and Adam step of agent k is the solo run's own.
            assert torch.equal(mine[name], theirs[name]), f"agent seed {config.seed}: {name} differs"
        assert member.last_stats["episode_return_mean"] == solo.last_stats["episode_return_mean"]
        assert member.last_stats["approx_kl"] == solo.last_stats["approx_kl"]
    return population


def test_the_first_rollout_acts_as_each_solo_run_does():
    config = make_config("cartpole", "CartPole-v1")
    seeds = [4, 7, 9]
    population = Population("CartPole-v1", population_configs(config, seeds), None, verbose=False, tensorboard=False)
    actions = _first_rollout_actions(population)
    n = config.num_envs
    for k, seed in enumerate(seeds):
        solo = Trainer("CartPole-v1", config.replace(seed=seed), None, verbose=False, tensorboard=False)
        assert torch.equal(actions[:, k * n:(k + 1) * n], solo.collector.collect().actions)


def test_discrete_agents_equal_solo_runs_bitwise_after_several_updates():
    # cartpole preset: 8 envs x 32 steps, 20 epochs of one 256-sample minibatch, linear lr and clip schedules
    config = make_config("cartpole", "CartPole-v1", total_steps=2048)
    _assert_members_equal_solo("CartPole-v1", population_configs(config, [1, 2, 3]), 2048)


def test_box_agents_with_observation_and_reward_normalization_equal_solo_runs_bitwise():
    config = make_config(None, "Pendulum-v1", num_envs=2, n_steps=64, batch_size=32, n_epochs=3, normalize_obs=True,
                         normalize_reward=True, net_arch=[32, 32], total_steps=512)
    _assert_members_equal_solo("Pendulum-v1", population_configs(config, [5, 6]), 512)


def test_agents_with_mixed_settings_each_equal_their_solo_run():
    # Every number that may differ per agent differs here, across all four objectives (the PPO paper's
    # Table 1 settings), with a KL stop that fires for some agents and not others.
    base = make_config(None, "CartPole-v1", num_envs=2, n_steps=64, batch_size=32, n_epochs=4, total_steps=512)
    configs = [
        base.replace(seed=1, objective="clip", clip_range=0.1, learning_rate=1e-3),
        base.replace(seed=2, objective="none", ent_coef=0.01, gamma=0.95),
        base.replace(seed=3, objective="adaptive_kl", kl_target=0.003, gae_lambda=0.8, target_kl=0.00005),
        base.replace(seed=4, objective="fixed_kl", kl_coef=3.0, vf_coef=1.0, max_grad_norm=None),
        base.replace(seed=5, objective="clip", clip_range_vf=0.2, lr_schedule="linear", adam_eps=1e-7),
    ]
    population = _assert_members_equal_solo("CartPole-v1", configs, 512)
    stopped = {name: sum(row["early_stopped"] for row in rows) for name, rows in population.rows.items()}
    assert stopped["s3"] > 0 and stopped["s1"] == 0  # the KL stop fired for the agent that has one, only there
    assert population.members[2].kl_controller.value != base.kl_coef  # adaptive beta moved


def test_a_member_directory_is_a_solo_run_directory(tmp_path, capsys):
    from proximo.cli import main
    from proximo.saved import load_policy

    run = tmp_path / "pop"
    flags = ["--preset", "cartpole", "--lr-schedule", "constant", "--clip-schedule", "constant", "--eval-episodes",
             "2", "--no-tensorboard", "--quiet"]
    assert main(["train", "CartPole-v1", "--seeds", "1-2", "--total-steps", "512", "--run-dir", str(run), *flags]) == 0
    out = capsys.readouterr().out
    assert "s1: eval return" in out and "s2: eval return" in out
    assert is_population(run)
    for command in (["eval", str(run / "s1"), "--episodes", "2"], ["doctor", str(run / "s2")],
                    ["plot", str(run / "s1"), "-o", str(tmp_path / "curve.png")],
                    ["export", str(run / "s2"), "--format", "torchscript", "-o", str(tmp_path / "s2.pt")]):
        assert main(command) == 0, command
    # A member continues alone, bitwise as the solo run of its seed would have.
    assert main(["train", "--resume", str(run / "s2"), "--total-steps", "1024", "--quiet", "--no-tensorboard"]) == 0
    solo = _solo("CartPole-v1", make_config("cartpole", "CartPole-v1", seed=2, lr_schedule="constant",
                                            clip_schedule="constant", total_steps=1024), 1024)
    policy, _ = load_policy(run / "s2")
    for name, value in policy.state_dict().items():
        assert torch.equal(value, solo.policy.state_dict()[name]), name


def test_an_interrupted_population_resumes_bitwise(tmp_path):
    config = make_config("cartpole", "CartPole-v1", total_steps=1024, save_every=512, eval_episodes=1)
    configs = population_configs(config, [1, 2])
    whole = Population("CartPole-v1", configs, tmp_path / "whole", verbose=False, tensorboard=False)
    whole.open()
    whole.train(1024)
    first = Population("CartPole-v1", configs, tmp_path / "cut", verbose=False, tensorboard=False)
    first.open()
    original = first._update

    def update_then_stop(total, progress):
        original(total, progress)
        if first.global_step == 512:
            first.request_stop()
    first._update = update_then_stop
    from proximo.train import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        first.train(1024)
    again = resume_population(tmp_path / "cut", verbose=False, tensorboard=False)
    assert again.global_step == 512
    again.train(1024)
    for a, b in zip(whole.members, again.members):
        for name, value in a.policy.state_dict().items():
            assert torch.equal(value, b.policy.state_dict()[name]), name


def test_seed_lists_parse_and_bad_ones_are_one_line():
    assert parse_seeds("1-4") == [1, 2, 3, 4]
    assert parse_seeds("1,3,5") == [1, 3, 5]
    assert parse_seeds("1-2,9") == [1, 2, 9]
    for bad, message in (("4-1", "is empty"), ("1-", "not a seed list"), ("a", "not a seed list"),
                         ("1,1", "names a seed twice"), ("", "not a seed list")):
        with pytest.raises(ConfigError, match=message):
            parse_seeds(bad)


def test_agents_that_cannot_share_a_population_are_named():
    base = make_config("cartpole", "CartPole-v1")
    assert pack_obstacle([base, base.replace(seed=2, learning_rate=1e-4, objective="none")]) is None
    assert "net_arch differs" in pack_obstacle([base, base.replace(net_arch=[32])])
    assert "n_steps differs" in pack_obstacle([base, base.replace(n_steps=64, batch_size=512)])


def test_cli_bad_population_input_is_one_line_with_exit_2(tmp_path, capsys):
    from proximo.cli import main

    cases = [
        (["--seeds", "5-2"], "--seeds range '5-2' is empty"),
        (["--seeds", "1-2", "--nproc", "2"], "leave out --nproc"),
        (["--seeds", "1-2", "--seed", "3"], "leave out --seed"),
        (["--seeds", "1-2", "--activation", "gelu"], "cannot be batched in a population: the gelu activation"),
    ]
    for flags, message in cases:
        assert main(["train", "CartPole-v1", *flags, "--run-dir", str(tmp_path / "x")]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_population_larger_than_memory_is_refused_before_allocating(monkeypatch):
    import proximo.population.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "_available_bytes", lambda: 64 * 2**20)  # 64 MiB
    config = make_config("cartpole", "CartPole-v1")
    with pytest.raises(ConfigError, match=r"64 agents need about .* GiB .* use at most \d+ seeds"):
        Population("CartPole-v1", population_configs(config, list(range(64))), None, verbose=False)


def test_population_agent_steps_counts(tmp_path):
    # The summary file of a population says what ran: its agents, their configs and results.
    population = Population("CartPole-v1", population_configs(make_config("cartpole", "CartPole-v1",
                                                                          eval_episodes=1), [1, 2]),
                            tmp_path, verbose=False, tensorboard=False)
    population.open()
    population.train(256)
    data = __import__("json").loads((tmp_path / "population.json").read_text())
    assert data["members"] == ["s1", "s2"] and len(data["results"]) == 2
    assert data["agent_steps_per_s"] > 0 and np.isfinite(data["results"][0]["eval_return_mean"])


def test_a_packed_sweep_trial_is_the_trial_run_alone(tmp_path):
    # run_pack (one Ray task of `proximo sweep --pack`) trains trials as one population, each in its own run
    # directory; a trial's result is the one run_trial gives it alone.
    from proximo.sweep.runner import RunOptions, make_packs
    from proximo.sweep.spec import SweepSpec
    from proximo.sweep.trial import read_summary, run_pack, run_trial

    spec = SweepSpec(envs=["CartPole-v1"], preset="cartpole", base={"total_steps": 512, "eval_episodes": 1},
                     grid={"clip_range": [0.1, 0.3]}, seeds=[1, 2])
    options = RunOptions(pack="auto", max_pack=3)
    trials = spec.trials()
    packs, alone = make_packs(trials, spec, options)
    assert [len(p.trials) for p in packs] == [2, 2] and not alone  # 4 trials, at most 3 a pack: split evenly
    configs = [t.config for t in packs[0].trials]
    dirs = [str(tmp_path / "packed" / t.name) for t in packs[0].trials]
    run_pack("CartPole-v1", configs, dirs, str(tmp_path / "pack"))
    for trial, run_dir in zip(packs[0].trials, dirs):
        alone_dir = tmp_path / "alone" / trial.name
        run_trial("CartPole-v1", trial.config, str(alone_dir))
        packed, solo = read_summary(Path(run_dir)), read_summary(alone_dir)
        assert packed["train_return_last100_mean"] == solo["train_return_last100_mean"]
        assert packed["eval_return_mean"] == solo["eval_return_mean"]
        assert packed["population"]["agents"] == 2
    with pytest.raises(ConfigError, match="--pack force: trial .* cannot train in a population"):
        lstm = SweepSpec(envs=["CartPole-v1"], base={"recurrent": "lstm", "n_steps": 64, "batch_size": 64},
                         seeds=[1, 2])
        make_packs(lstm.trials(), lstm, RunOptions(pack="force"))


@pytest.mark.parametrize("env,extra", [("CartPole-v1", {}), ("Pendulum-v1", {"normalize_obs": True})])
def test_the_torch_population_learner_matches_the_numpy_one(env, extra):
    # The torch path (a GPU's, here on the CPU with learner=torch) against the NumPy reference: the same
    # agents, rollouts and shuffles; parameters agree to float32 rounding (autograd and BLAS sum in other
    # orders), mixed per-agent settings included.
    from proximo.population.policy import PopulationActor, TorchPopulationActor

    base = make_config(None, env, num_envs=2, n_steps=32, batch_size=16, n_epochs=2, net_arch=[16, 16],
                       total_steps=128, **extra)
    configs = [base.replace(seed=1, objective="clip", ent_coef=0.01),
               base.replace(seed=2, objective="fixed_kl", kl_coef=0.5, clip_range_vf=0.3, learning_rate=1e-3)]
    numpy_pop = Population(env, configs, None, verbose=False, tensorboard=False)
    torch_pop = Population(env, [c.replace(learner="torch") for c in configs], None, verbose=False, tensorboard=False)
    assert torch_pop.learner.name == "population-torch" and numpy_pop.learner.name == "population-numpy"
    x = np.random.default_rng(0).standard_normal((4, numpy_pop.policy.obs_shape[0])).astype(np.float32)
    np.testing.assert_allclose(TorchPopulationActor(torch_pop.policy).outputs(x),
                               PopulationActor(numpy_pop.policy).outputs(x), rtol=1e-5, atol=1e-6)
    numpy_pop.train(64)  # one update: the same rollout, so any difference is the learners'
    torch_pop.train(64)
    for a, b in zip(numpy_pop.members, torch_pop.members):
        for name, value in a.policy.state_dict().items():
            torch.testing.assert_close(b.policy.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_auto_takes_a_gpu_for_a_population_wide_enough(monkeypatch):
    import proximo.devices as devices
    from proximo.population.trainer import population_device

    assert population_device("auto", 16, 64)[0].type == "cpu"  # no GPU on this machine
    monkeypatch.setattr(devices, "accelerator", lambda: "cuda")
    device, why = population_device("auto", 16, 64)
    assert device.type == "cuda" and "16 agents x 64 units batch like one 1024-unit MLP" in why
    device, why = population_device("auto", 4, 64)
    assert device.type == "cpu" and "4 agents x 64 units stay under 1024" in why


def test_a_population_of_a_multiagent_env_is_one_line(capsys):
    pytest.importorskip("pettingzoo", reason="the multiagent extra is not installed")
    from proximo.cli import main

    assert main(["train", "pettingzoo:classic.tictactoe_v3", "--seeds", "1-2"]) == 2
    err = capsys.readouterr().err
    assert "is a multi-agent (PettingZoo) env: populations batch gymnasium envs" in err and "Traceback" not in err
