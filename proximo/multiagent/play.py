"""Playing whole PettingZoo games with chosen players: a policy, a uniformly random player, or a scripted
look-ahead player; used by the end-of-run evaluation and by `proximo eval` (win/draw/loss with intervals).

The look-ahead player (two-player turn-based games whose state is plain Python and NumPy, as PettingZoo's
classic board games' is; see clone_env) takes a move that wins at once if there is one, else a move after which the
opponent has no winning reply (which blocks the opponent's open threats), else any legal move; ties
are broken at random. It beats a random connect-four player nearly always.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from proximo.envs.masks import MASK_KEY
from proximo.errors import ProximoError
from proximo.multiagent.envs import Layout, has_mask, is_parallel
from proximo.multiagent.league import wilson_interval
from proximo.nn.policy import ActorCritic


def legal_actions(layout: Layout, agent: str, obs: Any) -> np.ndarray:
    """The indices of agent's legal actions (every action of its space where the env gives no mask)."""
    space = layout.observation_spaces[agent]
    if has_mask(space):
        return np.flatnonzero(np.asarray(obs[MASK_KEY]).reshape(-1))
    return np.arange(int(layout.action_space.n))


class PolicyPlayer:
    """Acts for any agent with an ActorCritic trained on layout's lanes (deterministic: the mode)."""

    name = "policy"

    def __init__(self, policy: ActorCritic, layout: Layout, deterministic: bool = True) -> None:
        self.policy, self.layout, self.deterministic = policy, layout, deterministic
        self.vector = np.zeros((1, layout.width), dtype=np.float32)
        self.states: dict[str, torch.Tensor] = {}  # a recurrent actor's state per agent it plays this episode

    def begin_episode(self) -> None:
        """Forget every agent's recurrent state: the next observations begin an episode."""
        self.states = {}

    def act(self, env: Any, agent: str, obs: Any, rng: np.random.Generator) -> Any:
        """The policy's action for agent's observation (the critic's extra input left at zero: the actor
        does not read it); a recurrent actor carries each agent's own state through the episode."""
        self.layout.lane_vector(agent, obs, None, self.vector[0])
        masks = None
        if self.layout.mask_width is not None:
            masks = torch.from_numpy(self.layout.lane_mask(agent, obs)[None])
        policy = self.policy
        with torch.inference_mode():
            x = policy.prepare_encoded(torch.from_numpy(self.vector))
            masks = None if masks is None else masks.to(policy.device)
            if policy.is_recurrent:
                state = self.states.get(agent)
                starts = torch.tensor([state is None], device=policy.device)
                if state is None:
                    state = policy.initial_state(1)[:, :policy.actor_state_size]
                actions, self.states[agent] = policy.actor_step(x, state, starts, masks, self.deterministic)
            else:
                actions, _, _ = policy.act(x, deterministic=self.deterministic, masks=masks)
        action = policy.to_env_actions(actions)[0]
        return int(action) if isinstance(self.layout.action_space, spaces.Discrete) else action


class RandomPlayer:
    """Uniform over the legal actions."""

    name = "random"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def act(self, env: Any, agent: str, obs: Any, rng: np.random.Generator) -> Any:
        """A legal action drawn uniformly."""
        if not isinstance(self.layout.action_space, spaces.Discrete):
            return env.action_space(agent).sample()
        legal = legal_actions(self.layout, agent, obs)
        return int(legal[rng.integers(len(legal))])


def clone_env(env: Any) -> Any:
    """An independent copy of a PettingZoo env mid-game: each wrapper copied shallowly, the base env's
    attributes deeply (copy.deepcopy of the whole env would rebuild a fresh, unreset env through EzPickle)."""
    clone = object.__new__(type(env))
    state = dict(env.__dict__)
    if "env" in state and state["env"] is not env:
        state["env"] = clone_env(state["env"])
    else:
        state = copy.deepcopy(state)
    clone.__dict__.update(state)
    return clone


class LookaheadPlayer:
    """Win now, else never leave the opponent a winning reply, else any legal move (see module doc)."""

    name = "lookahead"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def act(self, env: Any, agent: str, obs: Any, rng: np.random.Generator) -> Any:
        """The look-ahead choice for agent, to move in env (an AEC env, not changed)."""
        legal = legal_actions(self.layout, agent, obs)
        safe = []
        for action in legal:
            after = clone_env(env)
            after.step(int(action))
            if after.terminations.get(agent) or after.truncations.get(agent) or not after.agents:
                if after.rewards.get(agent, 0.0) > 0:
                    return int(action)  # wins at once
                safe.append(int(action))
                continue
            if not self._opponent_wins(after, agent):
                safe.append(int(action))
        choices = safe or [int(a) for a in legal]
        return choices[rng.integers(len(choices))]

    def _opponent_wins(self, env: Any, agent: str) -> bool:
        """True when the agent to move in env has a move that makes `agent` lose."""
        opponent = env.agent_selection
        for reply in legal_actions(self.layout, opponent, env.observe(opponent)):
            after = clone_env(env)
            after.step(int(reply))
            if after.rewards.get(agent, 0.0) < 0:
                return True
        return False


def play_episode(env: Any, players: dict[str, Any], seed: int, rng: np.random.Generator) -> dict[str, float]:
    """One whole episode of env (reset with seed), each agent acting through players[agent]; returns each
    agent's total reward."""
    totals = {agent: 0.0 for agent in env.possible_agents}
    for player in {id(p): p for p in players.values()}.values():
        if hasattr(player, "begin_episode"):
            player.begin_episode()
    if is_parallel(env):
        observations, _ = env.reset(seed=seed)
        while env.agents:
            joint = {agent: players[agent].act(env, agent, observations[agent], rng) for agent in env.agents}
            observations, rewards, _, _, _ = env.step(joint)
            for agent, reward in rewards.items():
                totals[agent] += float(reward)
        return totals
    env.reset(seed=seed)
    for agent in env.agent_iter():
        obs, reward, terminated, truncated, _ = env.last()
        totals[agent] += float(reward)
        env.step(None if terminated or truncated else players[agent].act(env, agent, obs, rng))
    return totals


@dataclass
class MatchResult:
    """Games between two players from the first one's side: counts and 95% Wilson intervals."""

    games: int
    wins: int
    draws: int
    losses: int

    def rate(self, count: int) -> tuple[float, float, float]:
        """(proportion, low, high) of count among the games."""
        low, high = wilson_interval(count, self.games)
        return count / max(self.games, 1), low, high

    def summary(self) -> dict[str, Any]:
        """The counts, rates and intervals as JSON."""
        out: dict[str, Any] = {"games": self.games, "wins": self.wins, "draws": self.draws, "losses": self.losses}
        for name in ("wins", "draws", "losses"):
            rate, low, high = self.rate(getattr(self, name))
            out[f"{name[:-1] if name != 'losses' else 'loss'}_rate"] = rate
            out[f"{name[:-1] if name != 'losses' else 'loss'}_ci95"] = [low, high]
        return out


def play_match(make_env, first: Any, second: Any, games: int, seed: int = 0) -> MatchResult:
    """games games of a two-player env between first and second, seats alternating; from first's side."""
    env = make_env()
    agents = list(env.possible_agents)
    if len(agents) != 2:
        raise ProximoError(f"a match needs a two-player game; this env has {len(agents)} agents "
                           f"({', '.join(agents)}): evaluate it without --against")
    rng = np.random.default_rng(seed)
    wins = draws = losses = 0
    for game in range(games):
        seat = game % 2
        players = {agents[seat]: first, agents[1 - seat]: second}
        totals = play_episode(env, players, seed + game, rng)
        result = totals[agents[seat]] - totals[agents[1 - seat]]
        wins, draws, losses = wins + (result > 0), draws + (result == 0), losses + (result < 0)
    env.close()
    return MatchResult(games, wins, draws, losses)
