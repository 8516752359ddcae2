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


class CueEnv(gym.Env):
    """Memory: the first observation shows a cue (+1 or -1), the next `delay` show none, and the last
    asks for the answer; the action there earns +1 if it names the cue (1 for +1, 0 for -1), else -1.

    obs = [cue or 0, 1 on the step that asks]. A policy without memory can score 0 at best.
    """

    metadata = {"render_modes": []}

    def __init__(self, delay: int = 3) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.delay = delay
        self.cue = 1
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cue = int(self.np_random.choice([-1, 1]))
        self.t = 0
        return np.array([self.cue, 0.0], dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t <= self.delay:
            asks = float(self.t == self.delay)
            return np.array([0.0, asks], dtype=np.float32), 0.0, False, False, {}
        reward = 1.0 if int(action) == int(self.cue > 0) else -1.0
        return np.array([0.0, 0.0], dtype=np.float32), reward, True, False, {}


class MaskedGridEnv(gym.Env):
    """MultiDiscrete([4, 3]) actions with masks: the legal choices of each dimension change every step.

    mask_in: "method" | "info"; bad="shape" gives masks of the wrong length, bad="empty" one with no
    legal choice in dimension 1 at step 2. Reward +1 for any legal action pair (never illegal when masked).
    """

    metadata = {"render_modes": []}

    def __init__(self, mask_in: str = "method", bad: str | None = None) -> None:
        self.observation_space = spaces.Box(0.0, 1.0, (7,), np.float32)
        self.action_space = spaces.MultiDiscrete([4, 3])
        self.mask_in, self.bad = mask_in, bad
        self.t = 0
        self.mask = np.ones(7, dtype=bool)

    def _new_mask(self) -> None:
        first = self.np_random.random(4) < 0.5
        first[self.np_random.integers(4)] = True
        second = self.np_random.random(3) < 0.5
        second[self.np_random.integers(3)] = True
        if self.bad == "empty" and self.t == 2:
            second[:] = False
        self.mask = np.concatenate([first, second])

    def _masks(self):
        return self.mask[:5] if self.bad == "shape" else self.mask

    @property
    def action_masks(self):
        """The masks method exists only with mask_in="method" (detection prefers a method to info)."""
        if self.mask_in != "method":
            raise AttributeError("action_masks")
        return self._masks

    def _out(self):
        info = {"action_mask": self._masks()} if self.mask_in == "info" else {}
        return self.mask.astype(np.float32), info

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self._new_mask()
        return self._out()

    def step(self, action):
        legal = bool(self.mask[int(action[0])] and self.mask[4 + int(action[1])])
        self.t += 1
        self._new_mask()
        obs, info = self._out()
        return obs, 1.0 if legal else -1.0, self.t >= 8, False, {**info, "legal": legal}


class TinyFramesEnv(gym.Env):
    """uint8 frames [36, 36, 1] (the smallest the Nature CNN takes), 3 actions, episodes of 4 to 9 steps."""

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0, 255, (36, 36, 1), np.uint8)
        self.action_space = spaces.Discrete(3)
        self.t, self.end = 0, 5

    def _frame(self):
        return self.np_random.integers(0, 256, (36, 36, 1), dtype=np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.end = 0, int(self.np_random.integers(4, 10))
        return self._frame(), {}

    def step(self, action):
        self.t += 1
        return self._frame(), float(action == 1), self.t >= self.end, False, {}
