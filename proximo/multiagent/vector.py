"""Copies of one PettingZoo env as a gymnasium vector env whose entries are learning agents (lanes).

The rollout collector, buffer, masks and recurrent cores see an ordinary vector env of N = copies x
lanes entries, with SAME_STEP autoreset (proximo/envs/make.py): lane c * L + j is the j-th learning
agent of copy c. What this adapter adds:

- Turn-based (AEC) games: each vector step applies the acting lane's move in every copy, then plays
  the game on (the other seats' moves when self-play's opponents hold them, dead agents' steps) until
  a learning agent is to move or the game ends. A reward is read from PettingZoo's running sum for an
  agent (`last()`) when that agent is next selected, so a reward that arrives on another agent's turn
  is credited to the agent's own latest move, in the vector step where it is known.
- Lanes that do not act this step (another seat's turn, an agent that left the episode early) are
  logged as not acting (`rollout_acting`); proximo/multiagent/credit.py folds their rewards and ends
  into the lane's own steps and leaves them out of the update.
- Episode returns are per agent, reported as whole games (info GAME_KEY, the Atari convention of
  proximo.rollout), so a lane's idle steps never count as episodes.
- Self-play: the learner plays one seat per game (drawn at random); the other seats act inside the
  adapter through `opponents` (proximo/multiagent/league.py).
- A snapshot is each copy's reset seed and the moves since (plus the adapter's counters and random
  state): restoring resets with that seed and replays the moves, which puts any deterministic
  PettingZoo env back exactly (pickle-free JSON, see proximo/envs/snapshot.py).
"""
from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from proximo.checkpoint import CheckpointError
from proximo.envs.atari import GAME_KEY, GAME_SCORES
from proximo.envs.masks import MASK_KEY
from proximo.envs.snapshot import decode_value, encode_value, generator_from_state
from proximo.multiagent.envs import OBSERVATION_KEY, EnvMaker, Layout, env_state, is_parallel

SNAPSHOT_VERSION = 1


class Opponents(Protocol):
    """What a self-play adapter asks of its opponent pool (proximo/multiagent/league.py)."""

    def assign(self, rng: np.random.Generator) -> int:
        """The opponent (an index into the pool) of a new game."""

    def act(self, opponents: np.ndarray, x: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        """Actions [B] of opponents [B] for lane vectors x [B, width] and masks [B, width] (or None)."""

    def game_over(self, opponent: int, learner_return: float) -> None:
        """Record a finished game's result from the learner's side."""


class AgentVectorEnv(gym.vector.VectorEnv):
    """`copies` copies of a PettingZoo env, each learning agent one entry of the vector (see module doc)."""

    def __init__(self, maker: EnvMaker, copies: int, layout: Layout, opponents: Opponents | None = None) -> None:
        self.maker, self.copies, self.layout, self.opponents = maker, copies, layout, opponents
        self.envs = [maker() for _ in range(copies)]
        self.parallel = is_parallel(self.envs[0])
        self.lanes = 1 if opponents is not None else len(layout.learners)
        self.num_envs = copies * self.lanes
        self.single_observation_space = layout.observation_space()
        self.single_action_space = layout.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = {GAME_SCORES: True, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.masked = layout.mask_width is not None
        n, width = self.num_envs, layout.width
        self.obs = np.zeros((n, width), dtype=np.float32)
        self.masks = np.ones((n, layout.mask_width or 1), dtype=bool)
        self.acting = np.zeros(n, dtype=bool)       # the lane's current observation awaits its action
        self.acted = np.zeros(n, dtype=bool)        # the lane has moved in the current game (rewards now count)
        self.ended = np.zeros(n, dtype=bool)        # the lane's agent has left the current game
        self.returns = np.zeros(n, dtype=np.float64)
        self.lengths = np.zeros(n, dtype=np.int64)
        self.lane_agent: list[list[str]] = [list(layout.learners if opponents is None else layout.learners[:1])
                                            for _ in range(copies)]
        self.opponent = np.full(copies, -1, dtype=np.int64)
        self.seeds = [0] * copies
        self.logs: list[list[Any]] = [[] for _ in range(copies)]
        self.rng = np.random.default_rng(0)
        self.rollout_acting: list[np.ndarray] = []  # per vector step: which lanes' actions were real moves
        self._last_parallel: dict[int, dict[str, Any]] = {}  # each parallel copy's latest observations

    # lanes ------------------------------------------------------------------------------------------
    def lane_of(self, c: int, agent: str) -> int | None:
        """The lane index of agent in copy c, or None where the agent is not learning (an opponent)."""
        agents = self.lane_agent[c]
        return c * self.lanes + agents.index(agent) if agent in agents else None

    def _extra(self, c: int, observations: dict[str, Any] | None = None) -> np.ndarray | None:
        layout, env = self.layout, self.envs[c]
        if layout.critic == "state":
            return env_state(env)
        if layout.critic == "joint":
            if observations is None:  # AEC: every live agent's own view
                observations = {a: env.observe(a) for a in env.agents}
            return layout.joint_extra(observations)
        return None

    def _write(self, lane: int, agent: str, obs: Any, extra: np.ndarray | None, acting: bool) -> None:
        """Set a lane's observation (and mask); idle lanes get zeros and an all-legal mask."""
        if acting:
            self.layout.lane_vector(agent, obs, extra, self.obs[lane])
            if self.masked:
                self.masks[lane] = self.layout.lane_mask(agent, obs)
        else:
            self.obs[lane] = 0.0
            self.masks[lane] = True
        self.acting[lane] = acting

    def _lane_obs(self, lane: int) -> Any:
        vector = self.obs[lane].copy()
        return {OBSERVATION_KEY: vector, MASK_KEY: self.masks[lane].astype(np.int8)} if self.masked else vector

    def _batch_obs(self) -> Any:
        if self.masked:
            return {OBSERVATION_KEY: self.obs.copy(), MASK_KEY: self.masks.astype(np.int8)}
        return self.obs.copy()

    # gymnasium API ----------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset every copy (copy games seeded from one generator seeded with seed)."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._begin_step()
        for c in range(self.copies):
            self._new_game(c)
        self._settle_all(set(range(self.copies)))
        return self._batch_obs(), {}

    def _begin_step(self) -> None:
        n = self.num_envs
        self._rewards = np.zeros(n, dtype=np.float64)
        self._terminated = np.zeros(n, dtype=bool)
        self._truncated = np.zeros(n, dtype=bool)
        self._final: dict[int, Any] = {}
        self._game_r: dict[int, float] = {}
        self._game_l: dict[int, int] = {}

    def step(self, actions):
        """Apply every acting lane's action; returns (obs, rewards, terminated, truncated, infos) [N]."""
        actions = np.asarray(actions)
        self.rollout_acting.append(self.acting.copy())
        self._begin_step()
        if self.parallel:
            self._step_parallel(actions)
        else:
            pending = set()
            for c in range(self.copies):
                agent = self.envs[c].agent_selection
                lane = self.lane_of(c, agent)
                if lane is None or not self.acting[lane]:
                    raise AssertionError(f"copy {c}: {agent} is to move, and no acting lane holds it")
                self._move(c, self._env_action(actions[lane]), lane)
                pending.add(c)
            self._settle_all(pending)
        infos: dict[str, Any] = {}
        if self._final:
            final = np.empty(self.num_envs, dtype=object)
            has_final = np.zeros(self.num_envs, dtype=bool)
            for lane, obs in self._final.items():
                final[lane], has_final[lane] = obs, True
            infos["final_obs"], infos["_final_obs"] = final, has_final
        if self._game_r:
            ended = np.zeros(self.num_envs, dtype=bool)
            r = np.zeros(self.num_envs, dtype=np.float64)
            l = np.zeros(self.num_envs, dtype=np.int64)
            for lane, value in self._game_r.items():
                ended[lane], r[lane], l[lane] = True, value, self._game_l[lane]
            infos["final_info"] = {GAME_KEY: {"r": r, "l": l}, f"_{GAME_KEY}": ended}
        return self._batch_obs(), self._rewards.copy(), self._terminated.copy(), self._truncated.copy(), infos

    def close(self, **kwargs: Any) -> None:
        """Close every copy."""
        for env in self.envs:
            env.close()

    # games --------------------------------------------------------------------------------------------
    def _env_action(self, action: Any) -> Any:
        if isinstance(self.layout.action_space, spaces.Discrete):
            return int(action)
        return np.asarray(action, dtype=self.layout.action_space.dtype)

    def _new_game(self, c: int) -> None:
        """Reset copy c with a fresh seed; in self-play draw the learner's seat and the opponent."""
        seed = int(self.rng.integers(2**31 - 1))
        self.seeds[c], self.logs[c] = seed, []
        env = self.envs[c]
        observations = env.reset(seed=seed)
        if self.opponents is not None:
            seats = self.layout.learners
            self.lane_agent[c] = [seats[int(self.rng.integers(len(seats)))]]
            self.opponent[c] = self.opponents.assign(self.rng)
        lanes = slice(c * self.lanes, (c + 1) * self.lanes)
        self.acted[lanes] = self.ended[lanes] = False
        self.returns[lanes], self.lengths[lanes] = 0.0, 0
        if self.parallel:
            obs = observations[0] if isinstance(observations, tuple) else observations
            self._last_parallel[c] = obs
            extra = self._extra(c, obs)
            for j, agent in enumerate(self.lane_agent[c]):
                self._write(c * self.lanes + j, agent, obs.get(agent), extra, agent in obs)
        else:
            for j in range(self.lanes):
                self._write(c * self.lanes + j, "", None, None, False)

    def _end_lane(self, c: int, lane: int, agent: str, final_obs: Any, terminated: bool, truncated: bool,
                  extra: np.ndarray | None) -> None:
        """The lane's agent left the game at this step: flags, final observation, its game's statistics."""
        self._terminated[lane] |= terminated
        self._truncated[lane] |= truncated and not terminated
        if final_obs is not None:
            vector = np.zeros(self.layout.width, dtype=np.float32)
            self.layout.lane_vector(agent, final_obs, extra, vector)
            mask = self.layout.lane_mask(agent, final_obs) if self.masked else None
            self._final[lane] = {OBSERVATION_KEY: vector, MASK_KEY: mask.astype(np.int8)} if self.masked else vector
        self.ended[lane] = True
        self._game_r[lane], self._game_l[lane] = float(self.returns[lane]), int(self.lengths[lane])
        if self.opponents is not None:
            self.opponents.game_over(int(self.opponent[c]), float(self.returns[lane]))

    def _credit(self, lane: int, reward: float) -> None:
        if self.acted[lane]:  # rewards before the agent's first move of a game answer no move of it
            self._rewards[lane] += reward
            self.returns[lane] += reward

    def _move(self, c: int, action: Any, lane: int | None) -> None:
        """One AEC move of copy c's selected agent (lane None: an opponent's or a dead agent's step)."""
        self.envs[c].step(action)
        self.logs[c].append(action if action is None or isinstance(action, int) else np.asarray(action).tolist())
        if lane is not None:
            self.acted[lane], self.acting[lane] = True, False
            self.lengths[lane] += 1

    def _settle_all(self, pending: set[int]) -> None:
        """Play AEC copies on until a learning agent is to move in each (opponents moved in batches)."""
        if self.parallel:
            return
        while pending:
            waiting = [c for c in sorted(pending) if not self._settle(c)]
            pending = set(waiting)
            if waiting:
                self._opponents_move(waiting)

    def _settle(self, c: int) -> bool:
        """Advance copy c through dead agents' steps and game ends; True once a learner is to move
        (its lane then acting), False when an opponent is."""
        env = self.envs[c]
        while True:
            if not env.agents:
                self._new_game(c)
                continue
            agent = env.agent_selection
            obs, reward, terminated, truncated, _ = env.last()
            lane = self.lane_of(c, agent)
            if lane is not None and not self.ended[lane]:
                self._credit(lane, float(reward))
            if terminated or truncated:
                if lane is not None and not self.ended[lane]:
                    extra = self._extra(c) if truncated and not terminated else None
                    self._end_lane(c, lane, agent, obs if truncated and not terminated else None, terminated,
                                   truncated, extra)
                self._move(c, None, None)
                continue
            if lane is None:
                return False
            self._write(lane, agent, obs, self._extra(c), True)
            return True

    def _opponents_move(self, copies: list[int]) -> None:
        """One move of the selected opponent in each of copies, in one batch per call."""
        x = np.zeros((len(copies), self.layout.width), dtype=np.float32)
        masks = np.ones((len(copies), self.layout.mask_width or 1), dtype=bool) if self.masked else None
        for i, c in enumerate(copies):
            env = self.envs[c]
            agent = env.agent_selection
            obs = env.observe(agent)
            self.layout.lane_vector(agent, obs, self._extra(c), x[i])
            if masks is not None:
                masks[i] = self.layout.lane_mask(agent, obs)
        actions = self.opponents.act(self.opponent[copies], x, masks)
        for c, action in zip(copies, actions):
            self._move(c, self._env_action(action), None)

    def _step_parallel(self, actions: np.ndarray) -> None:
        """One simultaneous step of every copy (self-play opponents' actions computed in one batch)."""
        opponent_actions: dict[tuple[int, str], Any] = {}
        if self.opponents is not None:
            keys, rows = [], []
            for c, env in enumerate(self.envs):
                for agent in env.agents:
                    if self.lane_of(c, agent) is None:
                        keys.append((c, agent))
            if keys:
                x = np.zeros((len(keys), self.layout.width), dtype=np.float32)
                masks = np.ones((len(keys), self.layout.mask_width or 1), dtype=bool) if self.masked else None
                for i, (c, agent) in enumerate(keys):
                    obs = self._last_parallel[c][agent]
                    self.layout.lane_vector(agent, obs, self._extra(c, self._last_parallel[c]), x[i])
                    if masks is not None:
                        masks[i] = self.layout.lane_mask(agent, obs)
                    rows.append(c)
                chosen = self.opponents.act(self.opponent[rows], x, masks)
                opponent_actions = {key: self._env_action(a) for key, a in zip(keys, chosen)}
        for c, env in enumerate(self.envs):
            joint = {}
            for agent in env.agents:
                lane = self.lane_of(c, agent)
                joint[agent] = opponent_actions[(c, agent)] if lane is None else self._env_action(actions[lane])
            obs, rewards, terminations, truncations, _ = env.step(joint)
            self.logs[c].append({a: (v if isinstance(v, int) else np.asarray(v).tolist()) for a, v in joint.items()})
            extra = self._extra(c, obs)
            for j, agent in enumerate(self.lane_agent[c]):
                lane = c * self.lanes + j
                if self.ended[lane]:
                    self._write(lane, agent, None, None, False)
                    continue
                self.acted[lane] = True
                self.lengths[lane] += 1
                self._credit(lane, float(rewards.get(agent, 0.0)))
                term, trunc = bool(terminations.get(agent, False)), bool(truncations.get(agent, False))
                if term or trunc:
                    self._end_lane(c, lane, agent, obs.get(agent) if trunc and not term else None, term, trunc,
                                   extra)
                    self._write(lane, agent, None, None, False)
                else:
                    self._write(lane, agent, obs[agent], extra, True)
            self._last_parallel[c] = obs
            if not env.agents:
                self._new_game(c)

    # snapshots ----------------------------------------------------------------------------------------
    def proximo_vector_snapshot(self) -> dict[str, Any]:
        """The adapter's whole state as JSON: per copy its seed and moves since reset, plus the counters."""
        return {"version": SNAPSHOT_VERSION, "num_envs": self.num_envs, "rng": self.rng.bit_generator.state,
                "seeds": list(self.seeds), "logs": self.logs, "lane_agent": self.lane_agent,
                "opponent": self.opponent.tolist(),
                **{name: encode_value(getattr(self, name)) for name in
                   ("obs", "masks", "acting", "acted", "ended", "returns", "lengths")}}

    def proximo_vector_restore(self, snapshot: dict[str, Any]) -> None:
        """Put every copy back where proximo_vector_snapshot() was taken (reset with its seed, replay)."""
        if (snapshot.get("version") != SNAPSHOT_VERSION or snapshot.get("num_envs") != self.num_envs
                or snapshot.get("backend", "sync") != "sync"):
            raise CheckpointError(f"the saved multi-agent env state (version {snapshot.get('version')}, "
                                  f"{snapshot.get('backend', 'sync')} backend, {snapshot.get('num_envs')} lanes) does "
                                  f"not fit this run (sync, {self.num_envs} lanes); "
                                  "resume with the run's settings")
        self.rng = generator_from_state(snapshot["rng"])
        self.seeds = [int(s) for s in snapshot["seeds"]]
        self.logs = [list(log) for log in snapshot["logs"]]
        self.lane_agent = [list(agents) for agents in snapshot["lane_agent"]]
        self.opponent = np.asarray(snapshot["opponent"], dtype=np.int64)
        for name in ("obs", "masks", "acting", "acted", "ended", "returns", "lengths"):
            value = decode_value(snapshot[name])
            getattr(self, name)[...] = value
        self._last_parallel = {}
        for c, env in enumerate(self.envs):
            observations = env.reset(seed=self.seeds[c])
            obs = observations[0] if isinstance(observations, tuple) else observations
            for move in self.logs[c]:
                if self.parallel:
                    joint = {a: (v if isinstance(v, int) else np.asarray(v, dtype=self.layout.action_space.dtype))
                             for a, v in move.items()}
                    obs = env.step(joint)[0]
                else:
                    env.step(move if move is None or isinstance(move, int)
                             else np.asarray(move, dtype=self.layout.action_space.dtype))
            if self.parallel:
                self._last_parallel[c] = obs
        self.rollout_acting = []
