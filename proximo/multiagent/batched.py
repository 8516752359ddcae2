"""`env_backend batched`: a PettingZoo env's NumPy twin, all copies stepped at once, as the lanes' vector env.

The lanes, spaces, rewards, ends, final observations and per-game statistics are those AgentVectorEnv
(proximo/multiagent/vector.py) gives over the PettingZoo env itself; only the stepping differs. A twin
exists where proximo has one (TWINS); the run's evaluation still plays the PettingZoo env itself
(MultiAgentTrainer.evaluate_episodes), so a learned policy is measured on the real game.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from proximo.checkpoint import CheckpointError
from proximo.envs.atari import GAME_KEY, GAME_SCORES
from proximo.envs.mpe_spread import SpreadBatch
from proximo.envs.snapshot import decode_value, encode_value, generator_from_state
from proximo.errors import ConfigError
from proximo.multiagent.envs import Layout

SNAPSHOT_VERSION = 1
TWINS = "mpe2's simple_spread_v3 with discrete actions (pettingzoo:mpe2.simple_spread_v3)"


def spread_settings(env: Any) -> dict[str, Any] | None:
    """SpreadBatch's settings for a PettingZoo env that is mpe2's simple_spread with what the twin copies,
    else None (another env, or simple_spread with continuous actions, curriculum, early ends or neighbours)."""
    raw = getattr(env, "unwrapped", env)
    if type(raw).__module__ != "mpe2.simple_spread.simple_spread" or type(raw).__name__ != "raw_env":
        return None
    scenario = raw.scenario
    if (raw.continuous_actions or scenario.curriculum or scenario.terminate_on_success
            or scenario.num_agent_neighbors is not None or scenario.num_landmark_neighbors is not None):
        return None
    return {"n": len(raw.world.agents), "local_ratio": float(raw.local_ratio), "max_cycles": int(raw.max_cycles)}


def twin_maker(probe: Any) -> Callable[[int], SpreadBatch]:
    """A builder of probe's env's NumPy twin for a number of copies; ConfigError naming the env when proximo
    has none."""
    settings = spread_settings(probe)
    if settings is None:
        name = type(getattr(probe, "unwrapped", probe)).__module__
        raise ConfigError(f"env_backend batched needs a NumPy twin, and proximo has one only for {TWINS}; "
                          f"{name} has none: use --env-backend sync")
    return functools.partial(SpreadBatch, **settings)


class BatchedAgentVectorEnv(gym.vector.VectorEnv):
    """The copies of a twin as N = copies x agents lanes (lane c * A + i is agent i of copy c), SAME_STEP
    autoreset, every lane acting at every step."""

    def __init__(self, world: SpreadBatch, layout: Layout) -> None:
        if layout.agents != world.agents or layout.learners != world.agents or layout.mask_width is not None:
            raise ConfigError(f"the batched twin's agents {world.agents} do not match the layout's learners "
                              f"{layout.learners}; use --env-backend sync")
        if layout.own_dim != world.obs_dim or layout.critic not in ("own", "state", "joint"):
            raise ConfigError(f"the batched twin does not fit this layout (own_dim {layout.own_dim}, critic "
                              f"{layout.critic}); use --env-backend sync")
        self.world, self.layout, self.copies = world, layout, world.copies
        self.lanes = len(world.agents)
        self.num_envs = self.copies * self.lanes
        self.single_observation_space = layout.observation_space()
        self.single_action_space = layout.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = {GAME_SCORES: True, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.ids = np.eye(self.lanes, dtype=np.float32) if layout.id_dim else None
        self.returns = np.zeros(self.num_envs, dtype=np.float64)
        self.lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.rng = np.random.default_rng(0)
        self.rollout_acting: list[np.ndarray] = []  # as AgentVectorEnv's: here every lane acts at every step
        self.obs = np.zeros((self.num_envs, layout.width), dtype=np.float32)

    def _lanes(self, own: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Lane vectors [R x A, width] from own observations [R, A, D]: own part, agent id, critic's extra."""
        layout, r = self.layout, own.shape[0]
        out = np.zeros((r, self.lanes, layout.width), dtype=np.float32)
        out[:, :, :layout.own_dim] = own
        if self.ids is not None:
            out[:, :, layout.own_dim:layout.own_dim + layout.id_dim] = self.ids
        if layout.extra_dim:  # state and joint are both every agent's observation in agent order here
            out[:, :, layout.own_dim + layout.id_dim:] = own.reshape(r, 1, -1)
        return out.reshape(r * self.lanes, layout.width)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """New episodes in every copy (positions drawn from one generator seeded with seed)."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.world.reset(np.arange(self.copies), self.rng)
        self.returns[:], self.lengths[:] = 0.0, 0
        self.obs = self._lanes(self.world.observations())
        return self.obs.copy(), {}

    def step(self, actions):
        """Every lane's action [N]; (obs, rewards, terminated, truncated, infos) [N] with SAME_STEP autoreset."""
        n = self.num_envs
        self.rollout_acting.append(np.ones(n, dtype=bool))
        rewards, ended = self.world.step(np.asarray(actions).reshape(self.copies, self.lanes))
        rewards = rewards.reshape(n)
        self.returns += rewards
        self.lengths += 1
        obs = self._lanes(self.world.observations())
        truncated = np.repeat(ended, self.lanes)
        infos: dict[str, Any] = {}
        if ended.any():
            rows = np.flatnonzero(ended)
            final = np.empty(n, dtype=object)
            for lane in np.flatnonzero(truncated):
                final[lane] = obs[lane].copy()
            infos["final_obs"], infos["_final_obs"] = final, truncated.copy()
            infos["final_info"] = {GAME_KEY: {"r": np.where(truncated, self.returns, 0.0),
                                              "l": np.where(truncated, self.lengths, 0)},
                                   f"_{GAME_KEY}": truncated.copy()}
            self.returns[truncated], self.lengths[truncated] = 0.0, 0
            self.world.reset(rows, self.rng)
            fresh = self._lanes(self.world.observations()[rows])
            obs.reshape(self.copies, self.lanes, -1)[rows] = fresh.reshape(len(rows), self.lanes, -1)
        self.obs = obs
        return obs.copy(), rewards.copy(), np.zeros(n, dtype=bool), truncated, infos

    def close(self, **kwargs: Any) -> None:
        """Nothing to close (no subprocesses, no windows)."""

    # snapshots ----------------------------------------------------------------------------------------
    def proximo_vector_snapshot(self) -> dict[str, Any]:
        """The twin's arrays, the reset generator and the running returns, as JSON."""
        return {"version": SNAPSHOT_VERSION, "backend": "batched", "num_envs": self.num_envs,
                "rng": self.rng.bit_generator.state,
                "world": {k: encode_value(v) for k, v in self.world.state_dict().items()},
                "returns": encode_value(self.returns), "lengths": encode_value(self.lengths)}

    def proximo_vector_restore(self, snapshot: dict[str, Any]) -> None:
        """Put the copies back where proximo_vector_snapshot() was taken."""
        if (snapshot.get("version") != SNAPSHOT_VERSION or snapshot.get("backend") != "batched"
                or snapshot.get("num_envs") != self.num_envs):
            raise CheckpointError(f"the saved multi-agent env state ({snapshot.get('backend', 'sync')} backend, "
                                  f"{snapshot.get('num_envs')} lanes) does not fit this run (batched, "
                                  f"{self.num_envs} lanes); resume with the run's settings")
        self.rng = generator_from_state(snapshot["rng"])
        self.world.load_state_dict({k: decode_value(v) for k, v in snapshot["world"].items()})
        self.returns[...] = decode_value(snapshot["returns"])
        self.lengths[...] = decode_value(snapshot["lengths"])
        self.obs = self._lanes(self.world.observations())
        self.rollout_acting = []
