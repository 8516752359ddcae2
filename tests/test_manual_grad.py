"""The hand-written NumPy backward (proximo/nn/manual.py) gives autograd's loss and gradient."""
from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

from proximo.config import make_config
from proximo.core.objectives import entropy_bonus, policy_loss, value_loss
from proximo.nn.manual import ManualGradActorCritic, manual_grad_for
from proximo.ppo import UpdateSettings, ppo_update
from proximo.rollout import RolloutBuffer
from proximo.train import build_policy, make_adam

SPACES = {
    "discrete": (gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(3)),
    "box": (gym.spaces.Box(-1, 1, (5,)), gym.spaces.Box(-1, 1, (2,))),
}


def _policy(kind: str, activation: str = "tanh", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    obs_space, action_space = SPACES[kind]
    policy = build_policy(obs_space, action_space, make_config(net_arch=[16, 12], activation=activation,
                                                               **overrides))
    make_adam(policy, make_config())  # puts the parameters into the flat buffer
    with torch.no_grad():  # heads away from their near-zero init, so every gradient term matters
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy


def _batch(policy, n: int = 64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, policy.obs_shape[0], generator=g)
    with torch.no_grad():
        actions, log_probs, values = policy.act(x)
    old_log_probs = log_probs + 0.4 * torch.randn(n, generator=g)  # ratios spread over both clip edges
    old_values = values + 0.5 * torch.randn(n, generator=g)
    advantages = torch.randn(n, generator=g)
    returns = old_values + torch.randn(n, generator=g)
    return x, actions, old_log_probs, old_values, advantages, returns


def _autograd(policy, batch, objective, clip_range, clip_range_vf, kl_coef, ent_coef, vf_coef):
    x, actions, old_log_probs, old_values, advantages, returns = batch
    log_probs, entropy, values = policy.evaluate(x, actions)
    pg = policy_loss(log_probs, old_log_probs, advantages, objective, clip_range, kl_coef=kl_coef)
    vf = value_loss(values, old_values, returns, clip_range_vf)
    ent = entropy_bonus(entropy)
    loss = pg.loss + vf_coef * vf - ent_coef * ent
    flat = policy._proximo_flat
    flat.grad.zero_()
    loss.backward()
    return float(pg.loss.detach()), float(vf.detach()), float(ent.detach()), flat.grad.clone()


def _manual(policy, batch, objective, clip_range, clip_range_vf, kl_coef, ent_coef, vf_coef):
    x, actions, old_log_probs, old_values, advantages, returns = (t.numpy() for t in batch)
    manual = ManualGradActorCritic(policy)
    flat = policy._proximo_flat
    flat.grad.fill_(float("nan"))  # every entry must be written, none accumulated
    forward = manual.forward(x, actions)
    losses = manual.backward(forward, old_log_probs, old_values, advantages, returns, objective, clip_range,
                             clip_range_vf, kl_coef, ent_coef, vf_coef)
    return (*losses, flat.grad.clone())


@pytest.mark.parametrize("kind", ["discrete", "box"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("objective,clip_range_vf,ent_coef", [
    ("clip", None, 0.0), ("clip", 0.2, 0.01), ("none", None, 0.05), ("adaptive_kl", 0.3, 0.0),
    ("fixed_kl", None, 0.01)])
def test_manual_gradient_equals_autograd(kind, activation, objective, clip_range_vf, ent_coef):
    policy = _policy(kind, activation)
    batch = _batch(policy)
    args = (objective, 0.2, clip_range_vf, 0.7, ent_coef, 0.5)
    pg_a, vf_a, ent_a, grad_a = _autograd(policy, batch, *args)
    pg_m, vf_m, ent_m, grad_m = _manual(policy, batch, *args)
    assert torch.isfinite(grad_m).all()
    assert pg_m == pytest.approx(pg_a, rel=1e-5, abs=1e-6)
    assert vf_m == pytest.approx(vf_a, rel=1e-5, abs=1e-6)
    assert ent_m == pytest.approx(ent_a, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(grad_m, grad_a, rtol=1e-4, atol=1e-6)


def test_clipped_samples_carry_no_policy_gradient():
    # All ratios far above 1 + eps with positive advantages: the clipped branch wins everywhere, so
    # the actor gets no gradient from the policy loss (only the critic moves).
    policy = _policy("discrete")
    x, actions, old_log_probs, old_values, advantages, returns = _batch(policy)
    batch = (x, actions, old_log_probs - 2.0, old_values, advantages.abs() + 0.1, returns)
    *_, grad = _manual(policy, batch, "clip", 0.2, None, 0.0, 0.0, 0.5)
    actor = torch.cat([p.grad.flatten() for p in list(policy.pi_net.parameters()) +
                       list(policy.action_head.parameters())])
    critic = torch.cat([p.grad.flatten() for p in list(policy.vf_net.parameters()) +
                        list(policy.value_head.parameters())])
    assert actor.abs().max() == 0.0
    assert critic.abs().max() > 0.0


def test_log_std_outside_its_clamp_gets_no_gradient():
    policy = _policy("box")
    with torch.no_grad():
        policy.action_head.log_std[0] = 3.0  # above LOG_STD_MAX = 2
    batch = _batch(policy)
    *_, grad_a = _autograd(policy, batch, "clip", 0.2, None, 0.0, 0.01, 0.5)
    *_, grad_m = _manual(policy, batch, "clip", 0.2, None, 0.0, 0.01, 0.5)
    assert float(policy.action_head.log_std.grad[0]) == 0.0
    torch.testing.assert_close(grad_m, grad_a, rtol=1e-4, atol=1e-6)


def test_unsupported_policies_stay_on_autograd():
    torch.manual_seed(0)
    obs_space, action_space = SPACES["discrete"]
    shared = build_policy(obs_space, action_space, make_config(shared_network=True))
    make_adam(shared, make_config())
    assert manual_grad_for(shared) is None
    elu = build_policy(obs_space, action_space, make_config(activation="elu"))
    make_adam(elu, make_config())
    assert manual_grad_for(elu) is None
    multi = build_policy(obs_space, gym.spaces.MultiDiscrete([2, 3]), make_config())
    make_adam(multi, make_config())
    assert manual_grad_for(multi) is None
    unflat = build_policy(obs_space, action_space, make_config())  # no flat buffer yet
    assert manual_grad_for(unflat) is None


@pytest.mark.parametrize("kind", ["discrete", "box"])
@pytest.mark.parametrize("batch_size", [32, 20, 512])  # even split, ragged last minibatch, whole rollout
def test_ppo_update_with_the_manual_backward_matches_autograd(kind, batch_size):
    policy_a = _policy(kind, seed=3)
    policy_m = copy.deepcopy(policy_a)
    results = []
    for policy, use_manual in ((policy_a, False), (policy_m, True)):
        optimizer = make_adam(policy, make_config(learning_rate=1e-3))
        torch.manual_seed(5)
        buf = RolloutBuffer.allocate(16, 8, policy)
        buf.obs.normal_()
        with torch.no_grad():
            actions, log_probs, values = policy.act(buf.obs.flatten(0, 1))
        buf.actions.copy_(actions.view_as(buf.actions))
        buf.log_probs.copy_(log_probs.view_as(buf.log_probs) + 0.2 * torch.randn(16, 8))
        buf.values.copy_(values.view_as(buf.values))
        buf.rewards.normal_()
        buf.compute_advantages(0.99, 0.95)
        settings = UpdateSettings(n_epochs=3, batch_size=batch_size, objective="clip", clip_range=0.2,
                                  clip_range_vf=0.5, kl_coef=0.0, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5,
                                  target_kl=None, normalize_advantage=True, use_manual_grad=use_manual)
        stats = ppo_update(policy, optimizer, buf, settings, generator=torch.Generator().manual_seed(9))
        results.append((stats, policy._proximo_flat.detach().clone()))
    (stats_a, flat_a), (stats_m, flat_m) = results
    torch.testing.assert_close(flat_m, flat_a, rtol=1e-4, atol=2e-6)
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm"):
        assert stats_m[key] == pytest.approx(stats_a[key], rel=1e-3, abs=1e-5), key
