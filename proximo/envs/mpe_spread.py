"""mpe2's simple_spread_v3 (discrete actions) as many copies stepped at once in NumPy.

mpe2 steps one copy's world in Python, entity by entity: in a MAPPO run on simple_spread about nine
tenths of the time goes there (proximo/multiagent/vector.py over mpe2, profiled in
benchmarks/results/multiagent-mpe-batched.md). SpreadBatch keeps C copies' positions and velocities
in arrays and does the same arithmetic, in the same order, for all copies at once, so that its
observations, rewards and ends equal mpe2's to float rounding (tests/test_mpe_batched.py steps both from
the same positions with the same actions). What it copies from mpe2 1.x (mpe2/_mpe_utils/core.py,
simple_env.py, simple_spread/simple_spread.py):

- N agents (size 0.15, collide, silent) and N landmarks (no collisions), positions drawn uniform in
  [-1, 1]^2 at reset, velocities 0; world dt 0.1, damping 0.25, mass 1, contact force 100 with margin
  1e-3 (a softplus penetration), accel sensitivity 5;
- action a in 0..4: none, -x, +x, -y, +y;
- reward of agent i: (1 - local_ratio) x (-sum over landmarks of the nearest agent's distance)
  + local_ratio x (-1 per other agent within 0.3);
- observation of agent i: its velocity, its position, each landmark's and each other agent's position
  relative to it, and the silent agents' 2-d communication (zeros), float32; the global state is every
  agent's observation in agent order;
- every copy is truncated after max_cycles steps (simple_spread never terminates by default).

What it does not copy: continuous actions, the curriculum, terminate_on_success and the nearest-neighbour
observations (proximo/multiagent/batched.py refuses an env with any of them set), and rendering.
"""
from __future__ import annotations

from typing import Any

import numpy as np

DT, DAMPING, CONTACT_FORCE, CONTACT_MARGIN, SENSITIVITY = 0.1, 0.25, 100.0, 1e-3, 5.0
AGENT_SIZE = 0.15
DIM_C = 2
# action index -> (axis, sign) of the unit push (0 is no push)
MOVES = np.array([[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])


class SpreadBatch:
    """C copies of simple_spread with N agents: arrays [C, N, 2] of positions and velocities."""

    def __init__(self, copies: int, n: int = 3, local_ratio: float = 0.5, max_cycles: int = 25) -> None:
        if copies < 1 or n < 2 or not 0.0 <= local_ratio <= 1.0 or max_cycles < 1:
            raise ValueError(f"SpreadBatch needs copies >= 1, n >= 2, 0 <= local_ratio <= 1 and max_cycles >= 1; "
                             f"got {copies}, {n}, {local_ratio}, {max_cycles}")
        self.copies, self.n, self.local_ratio, self.max_cycles = copies, n, float(local_ratio), max_cycles
        self.agents = [f"agent_{i}" for i in range(n)]
        self.obs_dim = 4 + 2 * n + 2 * (n - 1) + DIM_C * (n - 1)
        self.pos = np.zeros((copies, n, 2))
        self.vel = np.zeros((copies, n, 2))
        self.landmarks = np.zeros((copies, n, 2))
        self.steps = np.zeros(copies, dtype=np.int64)
        self.others = [[j for j in range(n) if j != i] for i in range(n)]  # each agent's others, ascending
        # the agent pairs (i < j) in mpe2's order: it adds each pair's force to i and its negation to j, so each
        # agent's contact forces arrive in ascending order of the other agent, which float sums depend on
        self.pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]

    def reset(self, rows: np.ndarray, rng: np.random.Generator) -> None:
        """New episodes in copies rows [R] (ints): agents then landmarks drawn as mpe2's reset_world draws them."""
        draws = rng.uniform(-1.0, 1.0, (len(rows), 2 * self.n, 2))
        self.pos[rows] = draws[:, :self.n]
        self.landmarks[rows] = draws[:, self.n:]
        self.vel[rows] = 0.0
        self.steps[rows] = 0

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move every copy by actions [C, N] (ints 0..4); (rewards [C, N] float64, truncated [C] bool)."""
        force = MOVES[np.asarray(actions, dtype=np.int64)] * SENSITIVITY
        for i, j in self.pairs:
            push = self._contact(self.pos[:, i] - self.pos[:, j])  # on i; -push on j, to the bit (delta negated)
            force[:, i] = push + force[:, i]
            force[:, j] = -push + force[:, j]
        self.pos += self.vel * DT
        self.vel = self.vel * (1 - DAMPING)
        self.vel += force * DT  # force / mass with mass 1
        self.steps += 1
        return self._rewards(), self.steps >= self.max_cycles

    @staticmethod
    def _contact(delta: np.ndarray) -> np.ndarray:
        """mpe2's contact force [C, 2] on an agent from another at offset delta [C, 2] (a softplus penetration)."""
        dist = np.sqrt(np.sum(np.square(delta), axis=-1, keepdims=True))
        penetration = np.logaddexp(0, -(dist - 2 * AGENT_SIZE) / CONTACT_MARGIN) * CONTACT_MARGIN
        return CONTACT_FORCE * delta / dist * penetration

    def _rewards(self) -> np.ndarray:
        """Each agent's reward [C, N]: the shared coverage term and its own collisions, mixed by local_ratio."""
        to_landmarks = self.pos[:, :, None, :] - self.landmarks[:, None, :, :]          # [C, agent, landmark, 2]
        nearest = np.sqrt(np.sum(np.square(to_landmarks), axis=-1)).min(axis=1)         # [C, landmark]
        coverage = np.zeros(self.copies)
        for k in range(self.n):  # mpe2 subtracts landmark by landmark
            coverage = coverage - nearest[:, k]
        between = self.pos[:, :, None, :] - self.pos[:, None, :, :]
        close = np.sqrt(np.sum(np.square(between), axis=-1)) < 2 * AGENT_SIZE           # [C, N, N]
        close[:, np.arange(self.n), np.arange(self.n)] = False
        collisions = -1.0 * close.sum(axis=2)
        return coverage[:, None] * (1 - self.local_ratio) + collisions * self.local_ratio

    def observations(self) -> np.ndarray:
        """Every agent's observation [C, N, obs_dim] float32 (mpe2's order: vel, pos, landmarks, others, comm)."""
        c, n = self.copies, self.n
        out = np.zeros((c, n, self.obs_dim))
        out[:, :, 0:2] = self.vel
        out[:, :, 2:4] = self.pos
        out[:, :, 4:4 + 2 * n] = (self.landmarks[:, None, :, :] - self.pos[:, :, None, :]).reshape(c, n, 2 * n)
        start = 4 + 2 * n
        for i in range(n):
            others = self.pos[:, self.others[i]] - self.pos[:, i:i + 1]
            out[:, i, start:start + 2 * (n - 1)] = others.reshape(c, 2 * (n - 1))
        return out.astype(np.float32)  # the communication slots stay 0: the agents are silent

    def state_dict(self) -> dict[str, Any]:
        """The copies' arrays (positions, velocities, landmarks, step counters)."""
        return {"pos": self.pos.copy(), "vel": self.vel.copy(), "landmarks": self.landmarks.copy(),
                "steps": self.steps.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put the arrays of state_dict() back (shapes must match)."""
        for name in ("pos", "vel", "landmarks", "steps"):
            value = np.asarray(state[name])
            if value.shape != getattr(self, name).shape:
                raise ValueError(f"saved {name} has shape {value.shape}, this batch {getattr(self, name).shape}")
            getattr(self, name)[...] = value
