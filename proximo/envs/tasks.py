"""Small built-in tasks that need memory or action masks, registered as proximo/... gymnasium ids.

- proximo/CartPoleNoVel-v1: CartPole-v1 showing cart position and pole angle only, so a policy must
  infer the velocities from the past: a feedforward policy cannot balance it for long.
- proximo/PendulumNoVel-v1: Pendulum-v1 (200-step limit) showing [cos theta, sin theta] without the
  angular velocity. rl-baselines3-zoo's PendulumNoVel-v1 (its MaskVelocityWrapper) zeroes that entry
  instead of dropping it; the information a policy gets is the same.
- proximo/TicTacToe-v0: tic-tac-toe as X against a uniformly random O; an occupied cell is an
  illegal move. The legal moves come by `action_masks()` (default), `info["action_mask"]` or a
  Dict observation (mask_in="method" | "info" | "observation"). An illegal move ends the game with
  reward -1 and info["illegal"] = True, so an unmasked policy can be scored on the same task.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
MASK_CONVENTIONS = ("method", "info", "observation")


class HideVelocities(gym.ObservationWrapper):
    """CartPole's observation without the two velocities: [cart position, pole angle]."""

    proximo_stateless_wrapper = True  # nothing to save on resume (proximo/envs/snapshot.py)

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        low, high = env.observation_space.low[[0, 2]], env.observation_space.high[[0, 2]]
        self.observation_space = spaces.Box(low, high, dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """[x, x_dot, theta, theta_dot] -> [x, theta]."""
        return observation[[0, 2]].astype(np.float32)


def make_cartpole_no_velocity(**kwargs) -> gym.Env:
    """CartPole-v1 (500-step limit) with the velocities hidden."""
    return HideVelocities(gym.make("CartPole-v1", **kwargs))


class HideAngularVelocity(gym.ObservationWrapper):
    """Pendulum's observation without the angular velocity: [cos theta, sin theta]."""

    proximo_stateless_wrapper = True  # nothing to save on resume (proximo/envs/snapshot.py)

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        low, high = env.observation_space.low[:2], env.observation_space.high[:2]
        self.observation_space = spaces.Box(low, high, dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """[cos theta, sin theta, theta_dot] -> [cos theta, sin theta]."""
        return observation[:2].astype(np.float32)


def make_pendulum_no_velocity(**kwargs) -> gym.Env:
    """Pendulum-v1 (200-step limit) with the angular velocity hidden."""
    return HideAngularVelocity(gym.make("Pendulum-v1", **kwargs))


class TicTacToe(gym.Env):
    """X (the agent) against a random O. Observation: 27 floats, per cell one-hot (empty, X, O)."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, mask_in: str = "method", render_mode: str | None = None) -> None:
        if mask_in not in MASK_CONVENTIONS:
            raise ValueError(f"mask_in must be one of {', '.join(MASK_CONVENTIONS)}, got {mask_in!r}")
        self.mask_in, self.render_mode = mask_in, render_mode
        board = spaces.Box(0.0, 1.0, (27,), dtype=np.float32)
        self.observation_space = (spaces.Dict({"board": board, "action_mask": spaces.MultiBinary(9)})
                                  if mask_in == "observation" else board)
        self.action_space = spaces.Discrete(9)
        self.board = np.zeros(9, dtype=np.int8)  # 0 empty, 1 X, 2 O

    def action_masks(self) -> np.ndarray:
        """Legal moves [9] bool: the empty cells."""
        return self.board == 0

    def _observe(self):
        board = np.eye(3, dtype=np.float32)[self.board].reshape(27)
        if self.mask_in == "observation":
            return {"board": board, "action_mask": self.action_masks().astype(np.int8)}
        return board

    def _info(self, **extra) -> dict:
        if self.mask_in == "info":
            extra["action_mask"] = self.action_masks()
        return extra

    def _wins(self, player: int) -> bool:
        return any(all(self.board[i] == player for i in line) for line in LINES)

    def reset(self, *, seed: int | None = None, options=None):
        """An empty board; X moves first."""
        super().reset(seed=seed)
        self.board[:] = 0
        return self._observe(), self._info()

    def step(self, action):
        """X plays `action`, then O a random empty cell; +1 for a win, -1 for a loss or an illegal move."""
        action = int(action)
        if self.board[action] != 0:
            return self._observe(), -1.0, True, False, self._info(illegal=True)
        self.board[action] = 1
        if self._wins(1):
            return self._observe(), 1.0, True, False, self._info(illegal=False, outcome="win")
        empty = np.flatnonzero(self.board == 0)
        if len(empty) == 0:
            return self._observe(), 0.0, True, False, self._info(illegal=False, outcome="draw")
        self.board[self.np_random.choice(empty)] = 2
        if self._wins(2):
            return self._observe(), -1.0, True, False, self._info(illegal=False, outcome="loss")
        if not (self.board == 0).any():
            return self._observe(), 0.0, True, False, self._info(illegal=False, outcome="draw")
        return self._observe(), 0.0, False, False, self._info(illegal=False)

    def render(self):
        """The board as text (ansi)."""
        rows = ["".join(".XO"[v] for v in self.board[r * 3:r * 3 + 3]) for r in range(3)]
        return "\n".join(rows)


def register() -> None:
    """Register the proximo/... ids with gymnasium (idempotent)."""
    if "proximo/CartPoleNoVel-v1" not in gym.registry:
        gym.register("proximo/CartPoleNoVel-v1", entry_point=make_cartpole_no_velocity)
    if "proximo/PendulumNoVel-v1" not in gym.registry:
        gym.register("proximo/PendulumNoVel-v1", entry_point=make_pendulum_no_velocity)
    if "proximo/TicTacToe-v0" not in gym.registry:
        gym.register("proximo/TicTacToe-v0", entry_point=TicTacToe)


register()
