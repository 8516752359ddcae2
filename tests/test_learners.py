"""The learner boundary: NumPy gradients term by term against autograd, the two backends against
each other, supports() reasons, and the policy forward running every module it holds."""
from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from proximo.config import make_config
from proximo.core.objectives import (
    entropy_bonus, entropy_bonus_np, policy_loss, policy_loss_np, value_loss, value_loss_np,
)
from proximo.learners.base import LossSettings, Minibatch
from proximo.learners.choose import choose_learner
from proximo.learners.numpy_mlp import NumpyMLPLearner
from proximo.learners.optimizer import FlatOptimizer
from proximo.learners.torch import TorchLearner
from proximo.nn.distributions import (
    LOG_STD_MAX, CategoricalDist, DiagGaussianDist, categorical_backward_np, categorical_np,
    diag_gaussian_backward_np, diag_gaussian_np,
)
from proximo.ppo import UpdateSettings, ppo_update
from proximo.rollout import RolloutBuffer
from proximo.train import build_policy, make_adam

SPACES = {
    "discrete": (gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(3)),
    "box": (gym.spaces.Box(-1, 1, (5,)), gym.spaces.Box(-1, 1, (2,))),
}
OBJECTIVES = ["clip", "none", "adaptive_kl", "fixed_kl"]


def _ratios_batch(n: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logp_old = torch.randn(n, generator=g).double()
    logp_new = logp_old + 0.3 * torch.randn(n, generator=g).double()  # ratios on both sides of the band
    # Exact ties: ratio 1 (inside the band) on a few samples.
    logp_new[:8] = logp_old[:8]
    advantages = torch.randn(n, generator=g).double()
    return logp_new, logp_old, advantages


# --- each loss term's NumPy gradient against autograd of its torch original ---------------------
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("clip_range_high", [None, 0.28])
def test_policy_loss_np_value_and_gradient(objective, clip_range_high):
    logp_new, logp_old, advantages = _ratios_batch()
    leaf = logp_new.clone().requires_grad_()
    out = policy_loss(leaf, logp_old, advantages, objective, 0.2, clip_range_high, kl_coef=0.7)
    out.loss.backward()
    loss, grad = policy_loss_np(logp_new.numpy(), logp_old.numpy(), advantages.numpy(), objective, 0.2,
                                clip_range_high, kl_coef=0.7)
    assert loss == pytest.approx(float(out.loss.detach()), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(grad, leaf.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("clip_range_vf", [None, 0.2])
def test_value_loss_np_value_and_gradient(clip_range_vf):
    g = torch.Generator().manual_seed(1)
    old = torch.randn(200, generator=g).double()
    new = old + 0.4 * torch.randn(200, generator=g).double()
    returns = old + torch.randn(200, generator=g).double()
    new[:5] = old[:5]  # inside the band
    new[5:10] = old[5:10] + 0.2  # on the band's edge
    returns[10:15] = new[10:15] - (new[10:15] - old[10:15]).clamp(-0.2, 0.2) * 0.5  # tie cases nearby
    leaf = new.clone().requires_grad_()
    expected = value_loss(leaf, old, returns, clip_range_vf)
    expected.backward()
    loss, grad = value_loss_np(new.numpy(), old.numpy(), returns.numpy(), clip_range_vf)
    assert loss == pytest.approx(float(expected), rel=1e-12)
    np.testing.assert_allclose(grad, leaf.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_entropy_bonus_np_value_and_gradient():
    entropy = torch.rand(64, dtype=torch.float64, requires_grad=True)
    entropy_bonus(entropy).backward()
    mean, grad = entropy_bonus_np(entropy.detach().numpy())
    assert mean == pytest.approx(float(entropy.mean()))
    assert torch.allclose(entropy.grad, torch.full_like(entropy, grad))


def test_categorical_np_matches_autograd():
    g = torch.Generator().manual_seed(2)
    logits = (2 * torch.randn(64, 5, generator=g)).double().requires_grad_()
    actions = torch.randint(0, 5, (64,), generator=g)
    w_logp, w_ent = torch.randn(64, generator=g).double(), -0.03
    dist = CategoricalDist(logits)
    ((w_logp * dist.log_prob(actions)).sum() + w_ent * dist.entropy().sum()).backward()
    log_probs, entropy, cache = categorical_np(logits.detach().numpy(), actions.numpy())
    np.testing.assert_allclose(log_probs, dist.log_prob(actions).detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(entropy, dist.entropy().detach().numpy(), rtol=1e-12)
    grad = categorical_backward_np(cache, actions.numpy(), w_logp.numpy(), w_ent)
    np.testing.assert_allclose(grad, logits.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_diag_gaussian_np_matches_autograd_inside_and_outside_the_clamp():
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(64, 3, generator=g).double().requires_grad_()
    log_std = torch.tensor([-0.5, 0.3, LOG_STD_MAX + 1.0], dtype=torch.float64, requires_grad=True)
    actions = mean.detach() + torch.randn(64, 3, generator=g).double()
    w_logp, w_ent = torch.randn(64, generator=g).double(), -0.05
    dist = DiagGaussianDist(mean, log_std)
    # The 0-d NumPy entropy stands for every row's (identical) entropy: weight it once, as the mean does.
    ((w_logp * dist.log_prob(actions)).sum() + w_ent * dist.entropy().mean()).backward()
    log_probs, entropy, cache = diag_gaussian_np(mean.detach().numpy(), log_std.detach().numpy(), actions.numpy())
    np.testing.assert_allclose(log_probs, dist.log_prob(actions).detach().numpy(), rtol=1e-12)
    assert float(entropy) == pytest.approx(float(dist.entropy()[0]))
    grad_mean, grad_log_std = diag_gaussian_backward_np(cache, log_std.detach().numpy(), w_logp.numpy(), w_ent)
    np.testing.assert_allclose(grad_mean, mean.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grad_log_std, log_std.grad.numpy(), rtol=1e-10, atol=1e-14)
    assert grad_log_std[2] == 0.0  # clamped: no gradient, as torch.clamp


# --- whole backends ------------------------------------------------------------------------------
def _policy(kind: str, activation: str = "tanh", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    obs_space, action_space = SPACES[kind]
    policy = build_policy(obs_space, action_space, make_config(net_arch=[16, 12], activation=activation,
                                                               **overrides))
    with torch.no_grad():  # heads away from their near-zero init, so every gradient term matters
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy


def _minibatch(policy, n: int = 64, seed: int = 1) -> Minibatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, policy.obs_shape[0], generator=g)
    with torch.no_grad():
        actions, log_probs, values = policy.act(x)
    old_log_probs = log_probs + 0.4 * torch.randn(n, generator=g)  # ratios spread over both clip edges
    old_values = values + 0.5 * torch.randn(n, generator=g)
    return Minibatch(x, actions, old_log_probs, old_values, torch.randn(n, generator=g),
                     old_values + torch.randn(n, generator=g))


def _one_step(learner_cls, policy, minibatch, settings):
    optimizer = make_adam(policy, make_config(learning_rate=1e-3))
    learner = learner_cls(policy, optimizer)
    learner.begin_update()
    optimizer.grad.fill_(float("nan"))  # every entry must be written, none accumulated
    result = learner.step(minibatch, settings)
    return result, optimizer.grad.clone(), optimizer.flat.detach().clone()


@pytest.mark.parametrize("kind", ["discrete", "box"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("objective,clip_range_vf,ent_coef", [
    ("clip", None, 0.0), ("clip", 0.2, 0.01), ("none", None, 0.05), ("adaptive_kl", 0.3, 0.0),
    ("fixed_kl", None, 0.01)])
def test_numpy_learner_step_equals_the_torch_learner(kind, activation, objective, clip_range_vf, ent_coef):
    policy = _policy(kind, activation)
    minibatch = _minibatch(policy)
    settings = LossSettings(objective, 0.2, clip_range_vf, 0.7, ent_coef, 0.5, max_grad_norm=None)
    torch_result, torch_grad, torch_params = _one_step(TorchLearner, copy.deepcopy(policy), minibatch, settings)
    numpy_result, numpy_grad, numpy_params = _one_step(NumpyMLPLearner, copy.deepcopy(policy), minibatch, settings)
    assert torch.isfinite(numpy_grad).all()
    torch.testing.assert_close(numpy_grad, torch_grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(numpy_result.losses.float(), torch_result.losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(numpy_result.log_ratio, torch_result.log_ratio, rtol=1e-5, atol=1e-6)
    assert float(numpy_result.grad_norm) == pytest.approx(float(torch_result.grad_norm), rel=1e-4)
    torch.testing.assert_close(numpy_params, torch_params, rtol=1e-4, atol=1e-6)


def test_clipped_samples_carry_no_policy_gradient():
    # All ratios far above 1 + eps with positive advantages: the clipped branch wins everywhere, so
    # the actor gets no gradient from the policy loss (only the critic moves).
    policy = _policy("discrete")
    mb = _minibatch(policy)
    mb = Minibatch(mb.obs, mb.actions, mb.old_log_probs - 2.0, mb.old_values, mb.advantages.abs() + 0.1, mb.returns)
    _one_step(NumpyMLPLearner, policy, mb, LossSettings("clip", 0.2, None, 0.0, 0.0, 0.5, None))
    actor = torch.cat([p.grad.flatten() for p in [*policy.pi_net.parameters(), *policy.action_head.parameters()]])
    critic = torch.cat([p.grad.flatten() for p in [*policy.vf_net.parameters(), *policy.value_head.parameters()]])
    assert actor.abs().max() == 0.0
    assert critic.abs().max() > 0.0


@pytest.mark.parametrize("kind", ["discrete", "box"])
@pytest.mark.parametrize("batch_size", [32, 20, 512])  # even split, ragged last minibatch, whole rollout
@pytest.mark.parametrize("target_kl", [None, 0.005])
def test_ppo_update_on_the_numpy_learner_matches_the_torch_learner(kind, batch_size, target_kl):
    results = []
    # With target_kl: old log-probs nearer the policy and a larger step, so the gate trips mid-update.
    noise, lr = (0.2, 1e-3) if target_kl is None else (0.05, 1e-2)
    for learner_cls in (TorchLearner, NumpyMLPLearner):
        policy = _policy(kind, seed=3)
        optimizer = make_adam(policy, make_config(learning_rate=lr))
        torch.manual_seed(5)
        buf = RolloutBuffer.allocate(16, 8, policy)
        buf.obs.normal_()
        with torch.no_grad():
            actions, log_probs, values = policy.act(buf.obs.flatten(0, 1))
        buf.actions.copy_(actions.view_as(buf.actions))
        buf.log_probs.copy_(log_probs.view_as(buf.log_probs) + noise * torch.randn(16, 8))
        buf.values.copy_(values.view_as(buf.values))
        buf.rewards.normal_()
        buf.compute_advantages(0.99, 0.95)
        settings = UpdateSettings(n_epochs=3, batch_size=batch_size, objective="clip", clip_range=0.2,
                                  clip_range_vf=0.5, kl_coef=0.0, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5,
                                  target_kl=target_kl, normalize_advantage=True)
        stats = ppo_update(learner_cls(policy, optimizer), buf, settings, generator=torch.Generator().manual_seed(9))
        results.append((stats, optimizer.flat.detach().clone()))
    (stats_a, flat_a), (stats_m, flat_m) = results
    torch.testing.assert_close(flat_m, flat_a, rtol=1e-4, atol=2e-6)
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm", "epochs",
                "minibatches"):
        assert stats_m[key] == pytest.approx(stats_a[key], rel=1e-3, abs=1e-5), key
    if target_kl is not None:
        # the KL gate tripped after some steps, at the same minibatch on both backends
        assert stats_a["early_stopped"] == stats_m["early_stopped"] == 1.0 and stats_a["minibatches"] >= 1


# --- choosing a backend ----------------------------------------------------------------------------
def _declined(policy) -> str | None:
    return NumpyMLPLearner.supports(policy, make_adam(policy, make_config()))


def test_numpy_learner_declines_with_a_reason():
    obs_space, action_space = SPACES["discrete"]
    assert _declined(build_policy(obs_space, action_space, make_config())) is None
    assert "share a trunk" in _declined(build_policy(obs_space, action_space, make_config(shared_network=True)))
    assert "'elu'" in _declined(build_policy(obs_space, action_space, make_config(activation="elu")))
    assert "multidiscrete" in _declined(build_policy(obs_space, gym.spaces.MultiDiscrete([2, 3]), make_config()))
    normed = build_policy(obs_space, action_space, make_config())
    normed.pi_net.insert(1, nn.LayerNorm(64))
    assert "other than Linear" in _declined(normed)
    plain = build_policy(obs_space, action_space, make_config())
    unflat = FlatOptimizer(plain.parameters(), lr=1e-3, flat=False)
    assert "flat buffer" in NumpyMLPLearner.supports(plain, unflat)


def test_choose_learner_records_its_reason_and_refuses_an_impossible_request():
    obs_space, action_space = SPACES["box"]
    plain = build_policy(obs_space, action_space, make_config())
    learner, why = choose_learner(plain, make_adam(plain, make_config()))
    assert learner.name == "numpy" and why.startswith("numpy:")
    learner, why = choose_learner(plain, make_adam(plain, make_config()), "torch")
    assert learner.name == "torch" and "requested" in why
    shared = build_policy(obs_space, action_space, make_config(shared_network=True))
    learner, why = choose_learner(shared, make_adam(shared, make_config()))
    assert learner.name == "torch" and "numpy declined: the actor and critic share a trunk" in why
    with pytest.raises(ValueError, match="learner=numpy cannot train this policy"):
        choose_learner(shared, make_adam(shared, make_config()), "numpy")


def test_policy_forward_runs_every_module_it_holds():
    # A LayerNorm (or any module) put into the networks is run, not skipped: the fast forward equals
    # the modules' own forward, and the update goes through autograd.
    obs_space, action_space = SPACES["discrete"]
    policy = build_policy(obs_space, action_space, make_config(net_arch=[32, 32]))
    policy.pi_net.insert(1, nn.LayerNorm(32))
    policy.vf_net.append(nn.Dropout(0.0))
    x = torch.randn(10, 4)
    with torch.no_grad():
        expected_logits = policy.action_head.linear(policy.pi_net(x))
        torch.testing.assert_close(policy.distribution(x).log_probs, torch.log_softmax(expected_logits, -1))
        torch.testing.assert_close(policy.value(x), policy.value_head(policy.vf_net(x)).squeeze(-1))


# --- the NumPy CNN learner (MinAtar's torso) against autograd --------------------------------------
# Tolerances: the kernel alone in float64 agrees with autograd to rtol 1e-10; the learner runs in float32
# (as torch does), where the two sides sum the same products in different orders, so every parameter's
# gradient is held to rtol 1e-4 / atol 1e-6 (the largest difference seen is ~2e-7), as the MLP learner's.
def _frames_space(channels: int = 4, height: int = 10, width: int = 10) -> gym.spaces.Box:
    return gym.spaces.Box(0, 255, (height, width, channels), np.uint8)  # channel-last, as MinAtar's wrapper


def _frames(n: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    # MinAtar's frames are 0 or 255; a few other values check the division by 255 too.
    frames = (torch.rand(n, *shape, generator=generator) < 0.2).to(torch.uint8) * 255
    frames[0] = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    return frames


@pytest.mark.parametrize("height,width,channels", [(10, 10, 4), (7, 9, 6)])
def test_conv_kernel_matches_autograd_in_float64(height, width, channels):
    from proximo.nn.numpy_conv import conv_backward, conv_forward, patch_rows

    g = torch.Generator().manual_seed(4)
    frames = _frames(5, (channels, height, width), g)
    weight = torch.randn(16, channels, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(16, generator=g, dtype=torch.float64, requires_grad=True)
    features = torch.relu(torch.nn.functional.conv2d(frames.double() / 255.0, weight, bias)).flatten(1)
    upstream = torch.randn(features.shape, generator=g, dtype=torch.float64)
    (features * upstream).sum().backward()
    columns = (frames.reshape(5, -1).double() / 255.0).T.contiguous().numpy()
    patches, features_t = conv_forward(columns, patch_rows(channels, height, width, 3),
                                       weight.detach().numpy(), bias.detach().numpy())
    np.testing.assert_allclose(features_t.T, features.detach().numpy(), rtol=1e-12, atol=1e-14)
    grad_weight, grad_bias = np.full((16, channels, 3, 3), np.nan), np.full(16, np.nan)
    conv_backward(patches, features_t, np.ascontiguousarray(upstream.numpy().T), grad_weight, grad_bias)
    np.testing.assert_allclose(grad_weight, weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad_bias, bias.grad.numpy(), rtol=1e-10, atol=1e-12)


def _cnn_policy(kind: str, shared: bool, seed: int = 0, channels: int = 4):
    from proximo.learners.numpy_cnn import NumpyCNNLearner

    torch.manual_seed(seed)
    action_space = gym.spaces.Discrete(5) if kind == "discrete" else gym.spaces.Box(-1, 1, (2,))
    config = make_config("minatar") if shared else make_config("minatar", shared_network=False, net_arch=[32, 16])
    policy = build_policy(_frames_space(channels), action_space, config)
    with torch.no_grad():  # heads away from their near-zero init, so every gradient term matters
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert NumpyCNNLearner.supports(policy, make_adam(policy, config)) is None
    return policy


def _cnn_minibatch(policy, n: int = 48, seed: int = 1, masked: bool = False) -> Minibatch:
    g = torch.Generator().manual_seed(seed)
    x = _frames(n, policy.obs_shape, g)
    masks = None
    if masked:
        masks = torch.rand(n, 5, generator=g) < 0.6
        masks[torch.arange(n), torch.randint(0, 5, (n,), generator=g)] = True  # at least one legal action
    with torch.no_grad():
        actions, log_probs, values = policy.act(x, masks=masks)
    old_log_probs = log_probs + 0.4 * torch.randn(n, generator=g)  # ratios over both clip edges
    old_values = values + 0.5 * torch.randn(n, generator=g)
    return Minibatch(x, actions, old_log_probs, old_values, torch.randn(n, generator=g),
                     old_values + torch.randn(n, generator=g), action_masks=masks)


@pytest.mark.parametrize("kind,shared,masked", [("discrete", True, False), ("discrete", True, True),
                                                ("discrete", False, False), ("box", True, False)])
@pytest.mark.parametrize("objective,clip_range_vf,ent_coef", [("clip", None, 0.01), ("clip", 0.2, 0.0),
                                                              ("adaptive_kl", 0.3, 0.05)])
def test_numpy_cnn_learner_gradient_equals_autograd_for_every_parameter(kind, shared, masked, objective,
                                                                        clip_range_vf, ent_coef):
    from proximo.learners.numpy_cnn import NumpyCNNLearner

    policy = _cnn_policy(kind, shared)
    minibatch = _cnn_minibatch(policy, masked=masked)
    settings = LossSettings(objective, 0.2, clip_range_vf, 0.7, ent_coef, 0.5, max_grad_norm=None)
    torch_policy, numpy_policy = copy.deepcopy(policy), copy.deepcopy(policy)
    torch_result, torch_grad, torch_params = _one_step(TorchLearner, torch_policy, minibatch, settings)
    numpy_result, numpy_grad, numpy_params = _one_step(NumpyCNNLearner, numpy_policy, minibatch, settings)
    assert torch.isfinite(numpy_grad).all()  # every entry written (the buffer was NaN before the step)
    names = [name for name, _ in policy.named_parameters()]
    assert any(name.startswith("torso.conv.0.") for name in names)
    for name, mine, theirs in zip(names, numpy_policy.parameters(), torch_policy.parameters()):
        assert mine.grad.abs().max() > 0, name  # a gradient that could differ
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(numpy_grad, torch_grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(numpy_result.losses.float(), torch_result.losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(numpy_result.log_ratio, torch_result.log_ratio, rtol=1e-5, atol=1e-6)
    assert float(numpy_result.grad_norm) == pytest.approx(float(torch_result.grad_norm), rel=1e-4)
    torch.testing.assert_close(numpy_params, torch_params, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("batch_size,target_kl", [(32, None), (20, None), (32, 0.005)])
def test_ppo_update_on_the_numpy_cnn_learner_matches_the_torch_learner(shared, batch_size, target_kl):
    from proximo.learners.numpy_cnn import NumpyCNNLearner

    results = []
    noise, lr = (0.2, 1e-3) if target_kl is None else (0.05, 1e-2)
    for learner_cls in (TorchLearner, NumpyCNNLearner):
        policy = _cnn_policy("discrete", shared, seed=3)
        optimizer = make_adam(policy, make_config(learning_rate=lr))
        g = torch.Generator().manual_seed(5)
        buf = RolloutBuffer.allocate(16, 4, policy)
        assert buf.obs.dtype == torch.uint8
        buf.obs.copy_(_frames(64, policy.obs_shape, g).view_as(buf.obs))
        with torch.no_grad():
            actions, log_probs, values = policy.act(buf.obs.flatten(0, 1))
        buf.actions.copy_(actions.view_as(buf.actions))
        buf.log_probs.copy_(log_probs.view_as(buf.log_probs) + noise * torch.randn(16, 4, generator=g))
        buf.values.copy_(values.view_as(buf.values))
        buf.rewards.normal_(generator=g)
        buf.compute_advantages(0.99, 0.95)
        settings = UpdateSettings(n_epochs=3, batch_size=batch_size, objective="clip", clip_range=0.2,
                                  clip_range_vf=None, kl_coef=0.0, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5,
                                  target_kl=target_kl, normalize_advantage=True)
        stats = ppo_update(learner_cls(policy, optimizer), buf, settings, generator=torch.Generator().manual_seed(9))
        results.append((stats, optimizer.flat.detach().clone()))
    (stats_a, flat_a), (stats_m, flat_m) = results
    torch.testing.assert_close(flat_m, flat_a, rtol=1e-4, atol=2e-6)
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm", "epochs",
                "minibatches"):
        assert stats_m[key] == pytest.approx(stats_a[key], rel=1e-3, abs=1e-5), key
    if target_kl is not None:
        assert stats_a["early_stopped"] == stats_m["early_stopped"] == 1.0 and stats_a["minibatches"] >= 1


def test_choose_learner_takes_the_numpy_cnn_learner_for_minatar_frames_only():
    from proximo.learners.numpy_cnn import NumpyCNNLearner

    config = make_config("minatar")
    small = build_policy(_frames_space(), gym.spaces.Discrete(3), config)
    learner, why = choose_learner(small, make_adam(small, config))
    assert isinstance(learner, NumpyCNNLearner) and why == "numpy: the hand-written backward fits this small CPU CNN"
    assert small.numpy_frames  # its rollouts act through NumPy too
    learner, why = choose_learner(small, make_adam(small, config), "torch")
    assert learner.name == "torch" and not small.numpy_frames  # learner=torch: torch everywhere
    atari = build_policy(_frames_space(1, 36, 36), gym.spaces.Discrete(3), make_config("paper-atari"))
    learner, why = choose_learner(atari, make_adam(atari, config))
    assert learner.name == "torch" and "numpy declined: the NatureCNN torso" in why and not atari.numpy_frames
    recurrent = build_policy(_frames_space(), gym.spaces.Discrete(3), make_config("minatar", recurrent="lstm"))
    with pytest.raises(ValueError, match="learner=numpy cannot train this policy: a recurrent core"):
        choose_learner(recurrent, make_adam(recurrent, config), "numpy")
    flat = build_policy(*SPACES["discrete"], make_config())
    assert "flat observations" in NumpyCNNLearner.supports(flat, make_adam(flat, make_config()))
