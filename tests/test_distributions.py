"""Action distributions: log-probs and entropies against torch.distributions, per action space."""
import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import distributions as D

from proximo.errors import ProximoError
from proximo.nn.distributions import make_action_head


def head_and_dist(space, batch=6, features=5, seed=0):
    torch.manual_seed(seed)
    head = make_action_head(space, features, log_std_init=-0.3)
    return head, head(torch.randn(batch, features))


def test_categorical_matches_torch():
    head, dist = head_and_dist(spaces.Discrete(4))
    logits = head.linear(torch.randn(1, 5))  # any logits
    ref = D.Categorical(logits=dist.log_probs)
    actions = dist.sample()
    assert actions.shape == (6,) and actions.dtype == torch.int64
    torch.testing.assert_close(dist.log_prob(actions), ref.log_prob(actions))
    torch.testing.assert_close(dist.entropy(), ref.entropy())
    assert logits.shape == (1, 4)


def test_diag_gaussian_matches_torch_and_uses_state_independent_std():
    head, dist = head_and_dist(spaces.Box(-1, 1, (3,)))
    ref = D.Independent(D.Normal(dist.mean, dist.log_std.exp()), 1)
    actions = dist.sample()
    torch.testing.assert_close(dist.log_prob(actions), ref.log_prob(actions))
    torch.testing.assert_close(dist.entropy(), ref.entropy())
    assert torch.all(dist.log_std == dist.log_std[0])  # same std for every state
    assert head.log_std.shape == (3,) and torch.allclose(head.log_std, torch.tensor(-0.3))


def test_log_std_is_bounded():
    head, _ = head_and_dist(spaces.Box(-1, 1, (2,)))
    with torch.no_grad():
        head.log_std.fill_(50.0)
    dist = head(torch.zeros(1, 5))
    assert torch.isfinite(dist.log_prob(torch.zeros(1, 2))).all()
    assert dist.log_std.max().item() <= 2.0


def test_multidiscrete_is_a_sum_of_categoricals():
    head, dist = head_and_dist(spaces.MultiDiscrete([3, 2, 4]))
    actions = dist.sample()
    assert actions.shape == (6, 3)
    logits = head.linear.weight.new_tensor(0)  # unused, keeps the head referenced
    parts = [D.Categorical(logits=p.log_probs) for p in dist.parts]
    expected = sum(p.log_prob(actions[:, i]) for i, p in enumerate(parts))
    torch.testing.assert_close(dist.log_prob(actions), expected)
    torch.testing.assert_close(dist.entropy(), sum(p.entropy() for p in parts))
    assert logits.item() == 0


def test_multibinary_matches_torch_bernoulli():
    _, dist = head_and_dist(spaces.MultiBinary(4))
    ref = D.Independent(D.Bernoulli(logits=dist.logits), 1)
    actions = dist.sample()
    torch.testing.assert_close(dist.log_prob(actions), ref.log_prob(actions))
    torch.testing.assert_close(dist.entropy(), ref.entropy())


def test_modes():
    _, dist = head_and_dist(spaces.Discrete(3))
    assert torch.equal(dist.mode(), dist.log_probs.argmax(-1))
    _, gauss = head_and_dist(spaces.Box(-1, 1, (2,)))
    assert torch.equal(gauss.mode(), gauss.mean)


def test_unsupported_action_space_is_named():
    with pytest.raises(ProximoError, match="Text"):
        make_action_head(spaces.Text(5), 4)


def test_box_actions_are_clipped_for_the_env_but_log_prob_is_of_the_raw_sample():
    from proximo.nn.policy import ActorCritic

    policy = ActorCritic(spaces.Box(-1, 1, (2,)), spaces.Box(-0.5, 0.5, (1,)), log_std_init=1.5)
    x = torch.zeros(256, 2)
    with torch.no_grad():
        actions, log_probs, _ = policy.act(x)
        env_actions = policy.to_env_actions(actions)
        assert np.abs(env_actions).max() <= 0.5
        assert actions.abs().max() > 0.5  # raw samples go outside the bounds with std e^1.5
        torch.testing.assert_close(log_probs, policy.distribution(x).log_prob(actions))
