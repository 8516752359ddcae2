"""The fast paths (flat parameters, fused rollout actor, NumPy tanh, one-pass update) compute the same math."""
from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

from proximo.config import make_config
from proximo.core.advantages import normalize
from proximo.core.objectives import policy_loss, value_loss
from proximo.nn.fast import FAST_TANH_MIN_ELEMENTS, fast_tanh
from proximo.learners.optimizer import FlatOptimizer
from proximo.learners.torch import TorchLearner
from proximo.nn.flat import is_flat_intact
from proximo.nn.policy import RolloutActor
from proximo.ppo import UpdateSettings, ppo_update
from proximo.rollout import RolloutBuffer
from proximo.train import build_policy, make_adam

SPACES = {
    "discrete": (gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(3)),
    "box": (gym.spaces.Box(-1, 1, (5,)), gym.spaces.Box(-1, 1, (2,))),
}


def _policy(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    obs_space, action_space = SPACES[kind]
    return build_policy(obs_space, action_space, make_config(net_arch=[16, 16]))


def _buffer(policy, n_steps: int = 8, num_envs: int = 4, seed: int = 1) -> RolloutBuffer:
    torch.manual_seed(seed)
    buf = RolloutBuffer.allocate(n_steps, num_envs, policy)
    buf.obs.normal_()
    with torch.no_grad():
        actions, log_probs, values = policy.act(buf.obs.flatten(0, 1))
    buf.actions.copy_(actions.view_as(buf.actions))
    # Old log-probs a little off the current policy, so ratios differ from 1 and some get clipped.
    buf.log_probs.copy_(log_probs.view_as(buf.log_probs) + 0.3 * torch.randn(n_steps, num_envs))
    buf.values.copy_(values.view_as(buf.values))
    buf.rewards.normal_()
    buf.compute_advantages(0.99, 0.95)
    return buf


def _settings(batch_size: int, n_epochs: int = 3) -> UpdateSettings:
    return UpdateSettings(n_epochs=n_epochs, batch_size=batch_size, objective="clip", clip_range=0.2,
                          clip_range_vf=None, kl_coef=0.0, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5,
                          target_kl=None, normalize_advantage=True)


def test_flat_parameters_alias_one_buffer_and_keep_state_dict_names():
    policy = _policy("box")
    names_before = list(policy.state_dict())
    values_before = [p.detach().clone() for p in policy.parameters()]
    optimizer = make_adam(policy, make_config())
    flat = optimizer.flat
    assert optimizer.param_groups[0]["params"] == [flat]
    assert is_flat_intact(list(policy.parameters()), flat)
    assert list(policy.state_dict()) == names_before  # the flat buffer is not a registered parameter
    assert all(torch.equal(a, b) for a, b in zip(values_before, policy.parameters()))
    assert flat.numel() == sum(p.numel() for p in policy.parameters())


@pytest.mark.parametrize("kind", ["discrete", "box"])
@pytest.mark.parametrize("batch_size", [8, 32])  # minibatches of a 32-sample rollout, and the whole of it
def test_flat_fused_update_matches_per_parameter_adam(kind, batch_size):
    flat_policy = _policy(kind)
    plain_policy = copy.deepcopy(flat_policy)
    buf = _buffer(flat_policy)
    flat_learner = TorchLearner(flat_policy, make_adam(flat_policy, make_config(learning_rate=1e-2)))
    plain_learner = TorchLearner(plain_policy, FlatOptimizer(plain_policy.parameters(), lr=1e-2, eps=1e-5, flat=False))
    for _ in range(2):
        a = ppo_update(flat_learner, buf, _settings(batch_size), torch.Generator().manual_seed(3))
        b = ppo_update(plain_learner, buf, _settings(batch_size), torch.Generator().manual_seed(3))
    for p, q in zip(flat_policy.parameters(), plain_policy.parameters()):
        assert torch.allclose(p, q, atol=1e-5), (p - q).abs().max()
    assert max(abs(p - q).max().item() for p, q in zip(flat_policy.parameters(), _policy(kind).parameters())) > 1e-3
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert a["ratio_hist"] == b["ratio_hist"] and sum(a["ratio_hist"]) > 0


def test_whole_batch_update_equals_a_plain_adam_loop():
    # With one minibatch per epoch the update skips shuffling; the result must equal plain full-batch Adam.
    policy = _policy("discrete")
    reference = copy.deepcopy(policy)
    buf = _buffer(policy)
    ppo_update(TorchLearner(policy, make_adam(policy, make_config(learning_rate=1e-2))), buf, _settings(32, n_epochs=4))
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2, eps=1e-5)
    obs, actions = buf.obs.flatten(0, 1), buf.actions.flatten(0, 1)
    adv = normalize(buf.advantages.flatten())
    for _ in range(4):
        log_probs, entropy, values = reference.evaluate(obs, actions)
        loss = (policy_loss(log_probs, buf.log_probs.flatten(), adv, "clip", 0.2).loss
                + 0.5 * value_loss(values, buf.values.flatten(), buf.returns.flatten()) - 0.01 * entropy.mean())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
        optimizer.step()
    for p, q in zip(policy.parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-5), (p - q).abs().max()


def test_update_repairs_parameters_whose_storage_was_replaced():
    policy = _policy("box")
    optimizer = make_adam(policy, make_config(learning_rate=1e-2))
    # assign=True swaps in new tensors: the flat buffer no longer backs the module.
    policy.load_state_dict({k: v.clone() + 0.1 for k, v in policy.state_dict().items()}, assign=True)
    assert not is_flat_intact(list(policy.parameters()), optimizer.flat)
    expected = [p.detach().clone() for p in policy.parameters()]
    ppo_update(TorchLearner(policy, optimizer), _buffer(policy), _settings(8, n_epochs=1))
    assert is_flat_intact(list(policy.parameters()), optimizer.flat)
    moved = [not torch.allclose(p, e) for p, e in zip(policy.parameters(), expected)]
    assert all(moved)  # every parameter was trained from its loaded value, none was left behind


@pytest.mark.parametrize("shape", [(4, 8), (256, 64)])
def test_fast_tanh_matches_torch_values_and_gradients(shape):
    x = (3 * torch.randn(shape)).requires_grad_()
    weights = torch.randn(shape)
    y = fast_tanh(x)
    (y * weights).sum().backward()
    reference = x.detach().clone().requires_grad_()
    (torch.tanh(reference) * weights).sum().backward()
    assert torch.allclose(y, torch.tanh(x.detach()), atol=1e-6)
    # float32 tanh is exact to ~1e-7, so 1 - y^2 near saturation differs by ~1e-6 at most
    assert torch.allclose(x.grad, reference.grad, atol=1e-5)
    assert (x.numel() >= FAST_TANH_MIN_ELEMENTS) == (y.grad_fn.name() != "TanhBackward0")


@pytest.mark.parametrize("kind", ["discrete", "box"])
def test_rollout_actor_matches_evaluate_and_value(kind):
    policy = _policy(kind, seed=4)
    assert RolloutActor.supports(policy)
    x = torch.randn(64, SPACES[kind][0].shape[0])
    actor = RolloutActor(policy)
    torch.manual_seed(9)
    actor.draw(2, 64)
    noise = actor.noise[1]
    actions, log_probs, values = actor(x.numpy(), 1)
    with torch.inference_mode():
        reference_log_probs, _, reference_values = policy.evaluate(x, torch.from_numpy(actions))
        dist = policy.distribution(x)
    torch.testing.assert_close(torch.from_numpy(log_probs), reference_log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(values), reference_values, atol=1e-5, rtol=1e-5)
    if kind == "box":
        expected = dist.mean + dist.log_std.exp() * torch.from_numpy(noise)
        torch.testing.assert_close(torch.from_numpy(actions), expected, atol=1e-5, rtol=1e-5)
    else:
        # Inverse CDF: action a is the one with cdf[a - 1] <= u < cdf[a].
        cdf = dist.log_probs.double().exp().cumsum(-1)
        u = torch.from_numpy(noise)
        index = torch.from_numpy(actions)
        above = cdf.gather(1, index[:, None])[:, 0]
        below = torch.where(index > 0, cdf.gather(1, (index - 1).clamp(min=0)[:, None])[:, 0], 0.0)
        assert ((below <= u + 1e-6) & (u < above + 1e-6)).all()


def test_rollout_actor_discrete_draws_follow_the_policy():
    policy = _policy("discrete", seed=2)
    x = torch.randn(1, 4).expand(20000, 4).contiguous()
    actor = RolloutActor(policy)
    torch.manual_seed(3)
    actor.draw(1, 20000)
    actions, _, _ = actor(x.numpy(), 0)
    with torch.inference_mode():
        probs = policy.distribution(x[:1]).log_probs.exp()[0].double()
    frequencies = torch.bincount(torch.from_numpy(actions), minlength=3).double() / 20000
    # 4 standard errors of a binomial proportion at n = 20000: at most ~0.014
    assert torch.allclose(frequencies, probs, atol=4 * 0.5 / 20000 ** 0.5)


def test_rollout_actor_declines_what_it_does_not_fuse():
    shared = build_policy(*SPACES["box"], make_config(shared_network=True))
    multi = build_policy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.MultiDiscrete([2, 3]), make_config())
    assert not RolloutActor.supports(shared) and not RolloutActor.supports(multi)


@pytest.mark.parametrize("kind", ["discrete", "box"])
def test_sample_with_log_prob_agrees_with_log_prob(kind):
    policy = _policy(kind)
    with torch.no_grad():
        dist = policy.distribution(torch.randn(32, SPACES[kind][0].shape[0]))
        actions, log_probs = dist.sample_with_log_prob()
    assert torch.allclose(log_probs, dist.log_prob(actions), atol=1e-5)
    assert np.isfinite(log_probs.numpy()).all()


@pytest.mark.parametrize("kind,shared", [("discrete", True), ("discrete", False), ("box", True)])
def test_conv_rollout_actor_matches_evaluate_and_value(kind, shared):
    from proximo.nn.policy import ConvRolloutActor

    torch.manual_seed(6)
    action_space = gym.spaces.Discrete(4) if kind == "discrete" else gym.spaces.Box(-1, 1, (2,))
    config = make_config("minatar", shared_network=shared, net_arch=[128] if shared else [32, 16])
    policy = build_policy(gym.spaces.Box(0, 255, (10, 10, 4), np.uint8), action_space, config)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert ConvRolloutActor.supports(policy)
    assert policy.rollout_actor() is None  # until the NumPy CNN learner trains it (choose_learner sets the flag)
    policy.numpy_frames = True
    actor = policy.rollout_actor()
    assert isinstance(actor, ConvRolloutActor)
    # channel-last env frames, as the collector holds them: a permuted (non-contiguous) view
    frames = ((torch.rand(32, 10, 10, 4) < 0.2).to(torch.uint8) * 255).permute(0, 3, 1, 2)
    actor.draw(1, 32)
    actions, log_probs, values = actor(frames.numpy(), 0)
    with torch.inference_mode():
        reference_log_probs, _, reference_values = policy.evaluate(frames, torch.from_numpy(actions))
    torch.testing.assert_close(torch.from_numpy(log_probs), reference_log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(values), reference_values, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # a frozen copy: later updates do not reach the actor of this rollout
        next(policy.torso.parameters()).add_(1.0)
    assert np.array_equal(actor(frames.numpy(), 0)[2], values)
