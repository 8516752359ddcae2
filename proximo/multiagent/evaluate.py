"""`proximo eval` for runs on PettingZoo envs: whole episodes, or a match against another player.

    proximo eval RUN                          every agent played by the run's policy: returns per agent
    proximo eval RUN --against random         two-player games: win / draw / loss with 95% intervals
    proximo eval RUN --against lookahead      ... against the scripted look-ahead player
    proximo eval RUN --against OTHER_RUN      ... against another saved policy (a run, policy or snapshot folder)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from proximo.config import PPOConfig
from proximo.errors import ProximoError
from proximo.multiagent.play import LookaheadPlayer, PolicyPlayer, RandomPlayer, play_episode, play_match
from proximo.multiagent.trainer import layout_for
from proximo.saved import load_policy

SCRIPTED = ("random", "lookahead")


def player_for(name: str, layout, env_id: str, deterministic: bool):
    """A player by name: random, lookahead, or a saved policy's folder (trained on the same env)."""
    if name == "random":
        return RandomPlayer(layout)
    if name == "lookahead":
        return LookaheadPlayer(layout)
    if not Path(name).exists():
        raise ProximoError(f"--against {name!r} is neither random, lookahead nor a saved policy folder")
    policy, meta = load_policy(Path(name))
    if meta.get("env_id") != env_id:
        raise ProximoError(f"--against {name} was trained on {meta.get('env_id')}, not {env_id}; pit policies of one "
                           "game against each other")
    _, other_layout = layout_for(env_id, meta.get("env_kwargs") or {}, PPOConfig.from_dict(meta["config"]))
    return PolicyPlayer(policy, other_layout, deterministic)


def evaluate_run(policy, meta: dict[str, Any], against: str | None, games: int, seed: int,
                 deterministic: bool = True) -> dict[str, Any]:
    """The evaluation `proximo eval` prints, as JSON."""
    env_id = meta["env_id"]
    maker, layout = layout_for(env_id, meta.get("env_kwargs") or {}, PPOConfig.from_dict(meta["config"]))
    player = PolicyPlayer(policy, layout, deterministic)
    if against is None:
        env = maker()
        rng = np.random.default_rng(seed)
        totals = [play_episode(env, {a: player for a in env.possible_agents}, seed + i, rng) for i in range(games)]
        env.close()
        per_agent = {a: float(np.mean([t[a] for t in totals])) for a in layout.agents}
        team = [sum(t.values()) for t in totals]
        return {"env_id": env_id, "episodes": games, "return_per_agent": per_agent,
                "team_return_mean": float(np.mean(team)), "team_return_std": float(np.std(team))}
    opponent = player_for(against, layout, env_id, deterministic)
    result = play_match(maker, player, opponent, games, seed)
    return {"env_id": env_id, "against": against, **result.summary()}


def print_evaluation(result: dict[str, Any]) -> None:
    """One readable block of an evaluate_run() result."""
    if "against" not in result:
        agents = ", ".join(f"{a} {r:.2f}" for a, r in result["return_per_agent"].items())
        print(f"{result['env_id']}: {result['episodes']} episodes; return per agent: {agents}; team return "
              f"{result['team_return_mean']:.2f} +- {result['team_return_std']:.2f}")
        return
    print(f"{result['env_id']}: {result['games']} games against {result['against']} (seats alternating)")
    for name in ("win", "draw", "loss"):
        low, high = result[f"{name}_ci95"]
        print(f"  {name:<5} {result[f'{name}_rate']:.3f}  95% CI [{low:.3f}, {high:.3f}]")
    print(json.dumps({k: result[k] for k in ("wins", "draws", "losses")}))
