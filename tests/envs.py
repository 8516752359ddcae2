"""Tiny gymnasium envs built for tests: every observation says which episode and step it is."""
import gymnasium as gym
import numpy as np
from gymnasium import spaces


class CounterEnv(gym.Env):
    """obs = [episode id, step in episode]; reward 1 per step; terminates at a random step in [3, 9]."""

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-1e6, 1e6, (2,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.episode = -1
        self.step_index = 0
        self.terminal_step = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        # Episode ids stay unique across envs: draw a big random offset once per env.
        if self.episode < 0:
            self.episode = int(self.np_random.integers(0, 1000)) * 1000
        self.episode += 1
        self.step_index = 0
        self.terminal_step = int(self.np_random.integers(3, 10))
        return self._obs(), {}

    def step(self, action):
        self.step_index += 1
        terminated = self.step_index >= self.terminal_step
        return self._obs(), 1.0, terminated, False, {}

    def _obs(self):
        return np.array([self.episode, self.step_index], dtype=np.float32)


def counter_env(max_episode_steps: int = 6):
    """CounterEnv under a TimeLimit, so some episodes truncate and some terminate."""
    return gym.wrappers.TimeLimit(CounterEnv(), max_episode_steps=max_episode_steps)


class TextObsEnv(gym.Env):
    """An env with a Text observation space, which proximo does not support."""

    def __init__(self) -> None:
        self.observation_space = spaces.Text(8)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "hello", {}

    def step(self, action):
        return "hello", 0.0, True, False, {}


class MixedSpacesEnv(gym.Env):
    """Dict observation (Box + Discrete) and a configurable action space; reward for action agreement."""

    def __init__(self, action_space=None) -> None:
        self.observation_space = spaces.Dict({"position": spaces.Box(-1, 1, (3,), np.float32),
                                              "mode": spaces.Discrete(4)})
        self.action_space = action_space if action_space is not None else spaces.MultiDiscrete([3, 2])
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        assert self.action_space.contains(np.asarray(action, dtype=self.action_space.dtype)), action
        reward = float(np.sum(np.asarray(action, dtype=np.float64) == 0))
        return self.observation_space.sample(), reward, False, self.t >= 20, {}
