"""The Python API: PPO(env).learn().predict(), save/load, factories and every supported space."""
import numpy as np
import pytest
from gymnasium import spaces

import proximo
from proximo import PPO, ProximoError
from tests.envs import MixedSpacesEnv


def test_factory_env_learn_predict_and_save_load(tmp_path):
    agent = PPO(lambda: __import__("gymnasium").make("CartPole-v1"), n_steps=64, num_envs=2, batch_size=64,
                n_epochs=2, eval_episodes=2, seed=5)
    agent.learn(512)
    assert agent.num_timesteps == 512
    obs = np.zeros(4, dtype=np.float32)
    action, state = agent.predict(obs)
    assert state is None and np.asarray(action).shape == () and int(action) in (0, 1)
    batch = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    actions, _ = agent.predict(batch)
    assert actions.shape == (7,)
    agent.save(tmp_path / "agent")
    loaded = PPO.load(tmp_path / "agent")
    np.testing.assert_array_equal(loaded.predict(batch)[0], actions)


def test_continuous_with_normalization_saves_its_statistics(tmp_path):
    agent = PPO("Pendulum-v1", n_steps=128, num_envs=2, batch_size=64, n_epochs=1, normalize_obs=True,
                normalize_reward=True, eval_episodes=1)
    agent.learn(512)
    rms = agent.policy.obs_rms
    assert rms.count > 500 and not np.allclose(rms.mean.numpy(), 0)
    agent.save(tmp_path / "pend")
    loaded = PPO.load(tmp_path / "pend")
    np.testing.assert_array_equal(loaded.policy.obs_rms.mean.numpy(), rms.mean.numpy())
    obs = np.array([[0.3, -0.9, 2.0], [1.0, 0.0, -5.0]], dtype=np.float32)
    a1, _ = agent.predict(obs)
    a2, _ = loaded.predict(obs)
    np.testing.assert_allclose(a1, a2)
    assert a1.shape == (2, 1) and np.all(np.abs(a1) <= 2.0)  # clipped to Pendulum's torque bounds


@pytest.mark.parametrize("action_space", [spaces.MultiDiscrete([3, 2]), spaces.MultiBinary(3),
                                          spaces.Box(-1, 1, (2,), np.float32), spaces.Discrete(3)])
def test_dict_observations_with_each_action_space(action_space):
    agent = PPO(lambda: MixedSpacesEnv(action_space), n_steps=32, num_envs=2, batch_size=32, n_epochs=2,
                eval_episodes=1)
    agent.learn(128)
    obs = MixedSpacesEnv(action_space).observation_space.sample()
    action, _ = agent.predict(obs)
    assert action_space.contains(np.asarray(action, dtype=action_space.dtype))


def test_loaded_agent_without_env_refuses_to_learn_with_a_clear_message(tmp_path):
    agent = PPO(lambda: MixedSpacesEnv(), n_steps=32, num_envs=1, batch_size=32, n_epochs=1, eval_episodes=1)
    agent.save(tmp_path / "m")
    loaded = PPO.load(tmp_path / "m")
    with pytest.raises(ProximoError, match="loaded without an env"):
        loaded.learn(32)


def test_bad_factory_and_bad_env_argument():
    with pytest.raises(ProximoError, match="neither a gymnasium.Env nor a PettingZoo"):
        PPO(lambda: 42)
    with pytest.raises(ProximoError, match="env must be"):
        PPO(3.5)
    assert proximo.__version__


def test_api_picks_the_same_per_env_entry_as_the_cli():
    from proximo.config import PRESET_ENVS, make_config

    env_id = next(e for e, entry in PRESET_ENVS["mujoco"].items() if entry["values"])
    agent = PPO(env_id, preset="mujoco", total_steps=64)
    assert agent.config == make_config("mujoco", env_id, total_steps=64)
    assert agent.preset_note.startswith(f"preset mujoco + {env_id} entry:")
