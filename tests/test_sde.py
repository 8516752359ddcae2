"""gSDE (use_sde): the state-dependent Gaussian's math, its held noise, the collector's redraws, the backends
that decline it, exact resume, and bad input."""
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from proximo.config import ConfigError, make_config
from proximo.nn.distributions import ActionHead, StateDependentGaussianDist
from proximo.nn.policy import ActorCritic
from proximo.train import Trainer
from tests.test_resume import _assert_same_state, _one_go_vs_resumed

BOX = gym.spaces.Box(-1.0, 1.0, (3,))


def _dist(batch=5, features=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(batch, 3, generator=g)
    latent = torch.randn(batch, features, generator=g)
    log_std = 0.3 * torch.randn(features, 3, generator=g)
    exploration = torch.randn(batch, features, 3, generator=g)
    return mean, latent, log_std, exploration


def test_log_prob_and_entropy_are_the_gaussian_with_the_latent_weighted_variance():
    mean, latent, log_std, exploration = _dist()
    dist = StateDependentGaussianDist(mean, latent, log_std, exploration)
    std = torch.sqrt(latent.square() @ log_std.exp().square() + 1e-6)  # Var = sum_j latent_j^2 std_jk^2
    reference = torch.distributions.Normal(mean, std)
    actions = torch.randn(5, 3)
    torch.testing.assert_close(dist.log_prob(actions), reference.log_prob(actions).sum(-1))
    torch.testing.assert_close(dist.entropy(), reference.entropy().sum(-1))
    torch.testing.assert_close(dist.mode(), mean)


def test_matches_stable_baselines3s_state_dependent_noise_distribution():
    distributions = pytest.importorskip("stable_baselines3.common.distributions",
                                        reason="stable-baselines3 (the bench extra) is the reference")
    mean, latent, log_std, _ = _dist(batch=7, features=6)
    theirs = distributions.StateDependentNoiseDistribution(3)  # full_std, exp, features not learned
    theirs.latent_sde_dim = 6
    theirs.proba_distribution(mean, log_std, latent)
    torch.manual_seed(0)
    theirs.sample_weights(log_std, batch_size=7)
    mine = StateDependentGaussianDist(mean, latent, log_std, theirs.exploration_matrices)
    actions = torch.randn(7, 3)
    torch.testing.assert_close(mine.log_prob(actions), theirs.log_prob(actions))
    torch.testing.assert_close(mine.entropy(), theirs.entropy())
    torch.testing.assert_close(mine.sample(), theirs.sample())  # one matrix per row: the same noise


def test_the_noise_is_the_latent_times_each_envs_held_matrix():
    mean, latent, log_std, exploration = _dist()
    dist = StateDependentGaussianDist(mean, latent, log_std, exploration)
    expected = torch.stack([latent[i] @ exploration[i] for i in range(5)])
    torch.testing.assert_close(dist.sample(), mean + expected)
    torch.testing.assert_close(dist.sample(), dist.sample())  # held: no fresh noise per call
    one = StateDependentGaussianDist(mean[:2], latent[:2], log_std, exploration)  # 2 rows, 5 matrices
    torch.testing.assert_close(one.sample(), mean[:2] + latent[:2] @ exploration[0])


def test_fresh_matrices_give_actions_with_the_stated_variance():
    head = ActionHead(BOX, 4, log_std_init=-0.5, sde=True)
    with torch.no_grad():
        head.log_std.add_(0.2 * torch.randn_like(head.log_std))
    latent = torch.tensor([[0.5, -1.0, 2.0, 0.1]])
    torch.manual_seed(1)
    draws = []
    with torch.no_grad():
        for _ in range(20_000):
            head.reset_noise(1)
            draws.append(head(latent).noise()[0])
        draws = torch.stack(draws)
        dist = head(latent)
    # 20k draws: the sample variance's relative standard error is sqrt(2 / 20k) = 1%; 5% is 5 of them.
    torch.testing.assert_close(draws.var(0), dist.std[0].square(), rtol=0.05, atol=0)
    assert float(draws.mean(0).abs().max()) < 5 * float(dist.std.max()) / math.sqrt(20_000)


def test_log_std_learns_through_the_log_prob_and_the_latent_only_through_the_mean():
    head = ActionHead(BOX, 4, sde=True)
    head.reset_noise(6)
    latent = torch.randn(6, 4, requires_grad=True)
    actions = torch.randn(6, 3)
    dist = head(latent)
    dist.log_prob(actions).sum().backward()
    assert head.log_std.grad is not None and float(head.log_std.grad.abs().sum()) > 0
    # The same log-prob with the std a constant: the latent's gradient is the mean's alone.
    again = latent.detach().clone().requires_grad_(True)
    mean = torch.nn.functional.linear(again, head.linear.weight, head.linear.bias)
    (-0.5 * ((actions - mean) / dist.std.detach()).square()).sum().backward()
    torch.testing.assert_close(latent.grad, again.grad)


def test_the_collector_draws_at_each_rollouts_start_and_every_freq_steps(monkeypatch):
    draws = []
    original = ActorCritic.reset_noise

    def counting(self, num_envs):
        draws.append(num_envs)
        original(self, num_envs)
    monkeypatch.setattr(ActorCritic, "reset_noise", counting)
    for freq, expected in ((0, 1), (4, 4), (5, 4)):  # 16-step rollouts: t = 0; 0,4,8,12; 0,5,10,15
        draws.clear()
        config = make_config(None, num_envs=3, n_steps=16, batch_size=16, n_epochs=1, use_sde=True,
                             sde_sample_freq=freq, total_steps=16, eval_episodes=1, seed=0)
        trainer = Trainer("Pendulum-v1", config, None, verbose=False, tensorboard=False)
        trainer.collector.collect()
        assert draws == [3] * expected, (freq, draws)


def test_backends_that_cannot_run_gsde_decline_with_the_reason(tmp_path):
    config = make_config(None, num_envs=2, n_steps=32, batch_size=32, n_epochs=1, use_sde=True, total_steps=64,
                         eval_episodes=1, seed=0)
    trainer = Trainer("Pendulum-v1", config, tmp_path / "run", verbose=False, tensorboard=False)
    assert trainer.policy.rollout_actor() is None  # torch acts: the noise needs the latent
    assert trainer.learner_choice.startswith("torch") and "gSDE" in trainer.learner_choice
    from proximo.population.policy import population_support
    assert "gSDE" in population_support(trainer.policy)
    with pytest.raises(ValueError, match="gSDE"):
        Trainer("Pendulum-v1", config.replace(learner="numpy"), tmp_path / "numpy", verbose=False, tensorboard=False)


def test_gsde_resume_is_bitwise_exact(tmp_path):
    # The matrices are redrawn from torch's RNG at each rollout's start, so a checkpoint (taken between rollouts)
    # carries everything gSDE needs; a stop mid-episode with a matrix every 8 steps.
    config = make_config(None, num_envs=2, n_steps=64, batch_size=32, n_epochs=2, eval_episodes=1, seed=5,
                         use_sde=True, sde_sample_freq=8, log_std_init=-1.0)
    whole, resumed = _one_go_vs_resumed("Pendulum-v1", config, tmp_path, updates=2)
    _assert_same_state(whole, resumed)
    assert whole.policy.action_head.log_std.shape == (64, 1)


def test_bad_gsde_settings_are_one_clear_error():
    with pytest.raises(ConfigError, match="sde_sample_freq must be 0"):
        make_config(None, use_sde=True, sde_sample_freq=-1)
    with pytest.raises(Exception, match="use_sde .*Box actions"):
        ActorCritic(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), use_sde=True)


def test_cli_refuses_gsde_on_discrete_actions_in_one_line(capsys):
    from proximo.cli import main
    code = main(["train", "CartPole-v1", "--use-sde", "true", "--total-steps", "64"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "use_sde" in lines[0] and "Discrete" in lines[0]
