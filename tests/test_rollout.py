"""The collector: no transition mixes two episodes, truncations bootstrap from the final observation."""
import numpy as np
import pytest
import torch

from proximo.envs.make import make_vector_env
from proximo.nn.policy import ActorCritic
from proximo.rollout import RolloutCollector
from tests.envs import counter_env


@pytest.fixture
def collected():
    torch.manual_seed(0)
    envs = make_vector_env(counter_env, num_envs=4)
    policy = ActorCritic(envs.single_observation_space, envs.single_action_space)
    collector = RolloutCollector(envs, policy, n_steps=64, gamma=0.99, normalize_obs=False,
                                 reward_scaler=None, seed=3)
    buffer = collector.collect()
    yield buffer, policy, collector
    envs.close()


def test_no_transition_mixes_two_episodes(collected):
    buffer, _, _ = collected
    obs = buffer.obs.numpy()  # [T, N, 2] = (episode id, step index)
    done = (buffer.terminated | buffer.truncated).numpy()
    ends = 0
    for t in range(obs.shape[0] - 1):
        for n in range(obs.shape[1]):
            episode, step = obs[t, n]
            next_episode, next_step = obs[t + 1, n]
            if done[t, n]:
                ends += 1
                assert next_step == 0 and next_episode == episode + 1
            else:
                assert next_episode == episode and next_step == step + 1
    assert ends > 20  # the test saw many episode boundaries


def test_flags_say_how_each_episode_ended(collected):
    buffer, _, _ = collected
    obs = buffer.obs.numpy()
    assert buffer.terminated.any() and buffer.truncated.any()
    # The time limit is 6: a truncation happens on the step from step index 5 (the 6th step).
    assert np.all(obs[buffer.truncated.numpy()][:, 1] == 5)
    # A termination on the limit step sets both flags (gymnasium's TimeLimit); GAE lets termination win.
    both = (buffer.terminated & buffer.truncated).numpy()
    assert np.all(obs[both][:, 1] == 5)


def test_truncation_bootstraps_from_the_final_observation(collected):
    buffer, policy, _ = collected
    obs = buffer.obs.numpy()
    t_idx, n_idx = torch.nonzero(buffer.truncated & ~buffer.terminated, as_tuple=True)
    assert len(t_idx) > 5
    final = torch.tensor(np.stack([obs[t, n] + np.array([0, 1], np.float32) for t, n in zip(t_idx, n_idx)]))
    with torch.no_grad():
        expected = policy.value(final)
    torch.testing.assert_close(buffer.next_values[t_idx, n_idx], expected)
    # Inside an episode, next_values is V of the next stored observation.
    inside = ~(buffer.terminated | buffer.truncated)
    inside[-1] = False
    t_in, n_in = torch.nonzero(inside, as_tuple=True)
    torch.testing.assert_close(buffer.next_values[t_in, n_in], buffer.values[t_in + 1, n_in])


def test_episode_statistics_use_true_rewards(collected):
    _, _, collector = collected
    episodes = collector.episodes
    assert episodes.finished > 20
    assert list(episodes.returns) == [float(length) for length in episodes.lengths]  # reward 1 per step
    assert all(3 <= length <= 6 for length in episodes.lengths)


def test_reward_scaling_keeps_episode_returns_unscaled():
    from proximo.rollout import RewardScaler

    envs = make_vector_env(counter_env, num_envs=2)
    policy = ActorCritic(envs.single_observation_space, envs.single_action_space, normalize_obs=True)
    collector = RolloutCollector(envs, policy, 32, 0.99, normalize_obs=True,
                                 reward_scaler=RewardScaler(2, 0.99, 10.0), seed=0)
    buffer = collector.collect()
    assert not torch.allclose(buffer.rewards, torch.ones_like(buffer.rewards))  # scaled
    assert list(collector.episodes.returns) == [float(n) for n in collector.episodes.lengths]  # true returns
    assert policy.obs_rms.count > 60  # obs statistics were updated
    envs.close()


def test_running_mean_std_matches_the_whole_stream_for_tensors_and_arrays():
    from proximo.nn.normalize import RunningMeanStd
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)).astype(np.float32) for n in (1, 7, 64, 5)]
    rms = RunningMeanStd((4,), epsilon=1e-12)  # a negligible prior, so the stream's moments must come out
    for i, batch in enumerate(batches):
        rms.update(torch.from_numpy(batch) if i % 2 else batch)  # either type feeds the same statistics
    stream = np.concatenate(batches).astype(np.float64)
    np.testing.assert_allclose(rms.mean.numpy(), stream.mean(0), rtol=1e-10)
    np.testing.assert_allclose(rms.var.numpy(), stream.var(0), rtol=1e-9)
    assert float(rms.count) == pytest.approx(len(stream))
    x = rng.normal(3.0, 20.0, size=(6, 4)).astype(np.float32)
    as_array, as_tensor = rms.normalize(x, clip=5.0), rms.normalize(torch.from_numpy(x), clip=5.0)
    assert as_array.dtype == np.float32 and as_tensor.dtype == torch.float32
    np.testing.assert_allclose(as_array, as_tensor.numpy(), rtol=1e-6, atol=1e-6)
    assert np.abs(as_array).max() <= 5.0
