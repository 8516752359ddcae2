"""Broken gymnasium envs for the checker, NaN-guard and crash tests."""
import gymnasium as gym
import numpy as np
from gymnasium import spaces


class BrokenEnv(gym.Env):
    """A 3-float Box obs, Discrete(2) env with 20-step episodes that misbehaves from global step `after` on.

    fault: "nan_obs", "nan_reward", "huge_reward" (finite in float64, inf in float32), "raise" (step()
    raises), or None (a healthy env).
    """

    metadata = {"render_modes": []}

    def __init__(self, fault: str | None = None, after: int = 10**9) -> None:
        self.observation_space = spaces.Box(-10.0, 10.0, (3,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.fault, self.after = fault, after
        self.steps, self.t = 0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        self.steps += 1
        self.t += 1
        obs = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        reward = float(action)
        if self.steps > self.after:
            if self.fault == "raise":
                raise RuntimeError("simulator exploded")
            if self.fault == "nan_obs":
                obs[1] = np.nan
            if self.fault == "nan_reward":
                reward = float("nan")
            if self.fault == "huge_reward":
                reward = 1e300
        return obs, reward, False, self.t >= 20, {}


class CrashOnceEnv(BrokenEnv):
    """Raises in step() once per process (the first instance to reach step `after`), then behaves."""

    crashes_left = 0

    def step(self, action):
        if self.steps + 1 > self.after and CrashOnceEnv.crashes_left > 0:
            CrashOnceEnv.crashes_left -= 1
            self.steps += 1
            raise ValueError("transient failure")
        return super().step(action)


class TextObsEnv(BrokenEnv):
    """A Text observation space, which proximo cannot encode."""

    def __init__(self) -> None:
        super().__init__()
        self.observation_space = spaces.Text(8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "hello", {}


class TupleActionEnv(BrokenEnv):
    """A Tuple action space, which proximo cannot act in."""

    def __init__(self) -> None:
        super().__init__()
        self.action_space = spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3)))


class WrongDtypeEnv(BrokenEnv):
    """Declares float32 observations but returns float64 ones."""

    def step(self, action):
        obs, *rest = super().step(action)
        return (obs.astype(np.float64), *rest)


class WrongShapeEnv(BrokenEnv):
    """Declares (3,) observations but returns (4,) ones."""

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed)
        return np.zeros(4, np.float32), info


class OldApiEnv(BrokenEnv):
    """step() returns gym 0.21's (obs, reward, done, info)."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated or truncated, info


class ArrayRewardEnv(BrokenEnv):
    """step() returns the reward as a length-1 array."""

    def step(self, action):
        obs, reward, *rest = super().step(action)
        return (obs, np.array([reward]), *rest)


class ObsOnlyResetEnv(BrokenEnv):
    """reset() returns only the observation, as gym 0.21 did."""

    def reset(self, *, seed=None, options=None):
        obs, _ = super().reset(seed=seed)
        return obs


class ResetCrashEnv(BrokenEnv):
    """reset() raises while the class-wide budget crashes_left lasts, from each instance's
    first_failing-th reset on (2: the vector env's first autoreset), then behaves."""

    crashes_left = 0
    first_failing = 2

    def __init__(self, fault: str | None = None, after: int = 10**9) -> None:
        super().__init__(fault, after)
        self.resets = 0

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        if self.resets >= ResetCrashEnv.first_failing and ResetCrashEnv.crashes_left > 0:
            ResetCrashEnv.crashes_left -= 1
            raise OSError("lost the connection to the simulator")
        return super().reset(seed=seed, options=options)
