"""GAE against a slow per-element reference loop, with terminations and truncations apart."""
import pytest
import torch

from proximo.core.advantages import discounted_returns, gae, normalize


def reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Obviously-correct scalar loop: one env at a time, one step at a time."""
    T, N = rewards.shape
    adv = torch.zeros(T, N, dtype=torch.float64)
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            bootstrap = 0.0 if terminated[t, n] else float(next_values[t, n])
            delta = float(rewards[t, n]) + gamma * bootstrap - float(values[t, n])
            if terminated[t, n] or truncated[t, n]:
                running = delta
            else:
                running = delta + gamma * lam * running
            adv[t, n] = running
    return adv


def random_rollout(T=37, N=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, N, generator=g, dtype=torch.float64)
    values = torch.randn(T, N, generator=g, dtype=torch.float64)
    next_values = torch.randn(T, N, generator=g, dtype=torch.float64)
    terminated = torch.rand(T, N, generator=g) < 0.1
    truncated = (torch.rand(T, N, generator=g) < 0.1) & ~terminated
    return rewards, values, next_values, terminated, truncated


@pytest.mark.parametrize("num_envs", [1, 5, 40])  # per-env Python loop up to 16 envs, NumPy rows past it
def test_gae_matches_reference_loop(num_envs):
    rollout = random_rollout(N=num_envs)
    for gamma, lam in [(0.99, 0.95), (0.98, 0.8), (1.0, 1.0), (0.9, 0.0)]:
        adv, ret = gae(*rollout, gamma, lam)
        expected = reference_gae(*rollout, gamma, lam)
        torch.testing.assert_close(adv, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ret, expected + rollout[1])


def test_truncation_bootstraps_from_final_value_but_termination_does_not():
    # One env, two steps, the episode ends at t=1; only the end flag differs.
    rewards = torch.tensor([[1.0], [1.0]])
    values = torch.tensor([[0.5], [0.5]])
    next_values = torch.tensor([[0.5], [10.0]])  # V(final obs) = 10 at t=1
    none = torch.zeros(2, 1, dtype=torch.bool)
    end = torch.tensor([[False], [True]])
    gamma, lam = 0.9, 0.95
    adv_trunc, _ = gae(rewards, values, next_values, none, end, gamma, lam)
    adv_term, _ = gae(rewards, values, next_values, end, none, gamma, lam)
    # truncated: delta_1 = 1 + 0.9 * 10 - 0.5 = 9.5 ; terminated: delta_1 = 1 - 0.5 = 0.5
    assert torch.isclose(adv_trunc[1, 0], torch.tensor(9.5))
    assert torch.isclose(adv_term[1, 0], torch.tensor(0.5))
    # t=0 continues into t=1 in both cases: delta_0 = 1 + 0.9*0.5 - 0.5 = 0.95
    assert torch.isclose(adv_trunc[0, 0], torch.tensor(0.95 + 0.9 * 0.95 * 9.5))
    assert torch.isclose(adv_term[0, 0], torch.tensor(0.95 + 0.9 * 0.95 * 0.5))


def test_episode_end_stops_the_lambda_chain():
    rewards = torch.tensor([[0.0], [100.0]])
    values = torch.zeros(2, 1)
    next_values = torch.zeros(2, 1)
    end = torch.tensor([[True], [False]])
    none = torch.zeros(2, 1, dtype=torch.bool)
    adv, _ = gae(rewards, values, next_values, end, none, 0.99, 0.95)
    assert adv[0, 0] == 0.0  # the next row's reward belongs to another episode


def test_lambda_one_zero_values_gives_discounted_returns():
    rewards, _, next_values, terminated, truncated = random_rollout(seed=3)
    zeros = torch.zeros_like(rewards)
    # With V = 0 everywhere, GAE(lambda=1) is the discounted return bootstrapped only where next_values is used.
    adv, _ = gae(rewards, zeros, torch.zeros_like(rewards), terminated, truncated, 0.97, 1.0)
    expected = discounted_returns(rewards, terminated, truncated, torch.zeros_like(rewards), 0.97)
    torch.testing.assert_close(adv, expected)
    assert next_values.shape == rewards.shape


def test_discounted_returns_bootstrap_at_truncation_and_rollout_end():
    rewards = torch.tensor([[1.0], [1.0], [1.0]])
    bootstrap = torch.tensor([[5.0], [7.0], [3.0]])
    terminated = torch.tensor([[False], [False], [False]])
    truncated = torch.tensor([[False], [True], [False]])
    out = discounted_returns(rewards, terminated, truncated, bootstrap, 0.5)
    assert torch.allclose(out[:, 0], torch.tensor([1 + 0.5 * (1 + 0.5 * 7), 1 + 0.5 * 7, 1 + 0.5 * 3]))


def test_gae_rejects_mismatched_shapes_and_float_flags():
    r, v, nv, term, trunc = random_rollout()
    try:
        gae(r, v[:-1], nv, term, trunc, 0.99, 0.95)
    except ValueError as exc:
        assert "[T, N]" in str(exc)
    else:
        raise AssertionError("shape mismatch accepted")
    try:
        gae(r, v, nv, term.float(), trunc, 0.99, 0.95)
    except TypeError as exc:
        assert "bool" in str(exc)
    else:
        raise AssertionError("float flags accepted")


def test_normalize_has_zero_mean_unit_std():
    x = torch.randn(1000) * 7 + 3
    y = normalize(x)
    assert abs(y.mean().item()) < 1e-5 and abs(y.std().item() - 1) < 1e-3
    assert normalize(torch.tensor([4.0])).item() == 0.0


def test_gae_in_float32_stays_float32_and_close_to_float64():
    rollout = random_rollout(T=300, N=3)
    adv64, _ = gae(*rollout, 0.99, 0.95)
    single = [t.float() if t.is_floating_point() else t for t in rollout]
    adv32, ret32 = gae(*single, 0.99, 0.95)
    assert adv32.dtype == ret32.dtype == torch.float32
    torch.testing.assert_close(adv32.double(), adv64, rtol=1e-5, atol=1e-5)


def test_gae_keeps_the_graph_for_tensors_that_need_gradients():
    rewards, values, next_values, terminated, truncated = random_rollout(T=6, N=2)
    values = values.clone().requires_grad_()
    adv, _ = gae(rewards, values, next_values, terminated, truncated, 0.99, 0.95)
    adv.sum().backward()
    assert values.grad is not None and torch.isfinite(values.grad).all()
