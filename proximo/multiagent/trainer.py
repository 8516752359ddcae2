"""PPO on a PettingZoo env: proximo's Trainer with the agents as lanes of its vector env.

What differs from a single-agent run is small and lives here: the vector env (proximo/multiagent/vector.py),
the policy's split input for a centralized critic (ActorCritic's actor_dim), each agent's own moves
out of the rollout (proximo/multiagent/credit.py), the self-play league (proximo/multiagent/league.py)
and the evaluation by whole games (proximo/multiagent/play.py). The collector, the buffer, GAE, the
update, masks, normalization, recurrent cores, checkpoints and the health monitor are the ones every
run uses. config.num_envs counts lanes (copies x learning agents per copy) and steps count agent steps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from proximo.envs.masks import ActionMaskSource
from proximo.errors import ConfigError
from proximo.multiagent.batched import BatchedAgentVectorEnv, twin_maker
from proximo.multiagent.credit import OpenMoves, own_moves
from proximo.multiagent.envs import EnvMaker, build_layout, is_parallel, make_checked
from proximo.multiagent.league import League
from proximo.multiagent.play import PolicyPlayer, RandomPlayer, play_episode, play_match
from proximo.multiagent.vector import AgentVectorEnv
from proximo.nn.policy import ActorCritic
from proximo.saved import build_policy, save_policy
from proximo.train import Trainer


def layout_for(env: Any, env_kwargs: dict, config) -> tuple[EnvMaker, Any]:
    """(the env maker, the lane layout) a config gives a PettingZoo env id or factory."""
    maker = EnvMaker(env, dict(env_kwargs))
    probe = make_checked(maker)
    try:
        return maker, build_layout(probe, config.critic, config.agent_id, policy_map=config.policy_map)
    finally:
        probe.close()


class MultiAgentTrainer(Trainer):
    """A Trainer whose env is a PettingZoo env (see the module doc); the same API and run directory."""

    def __init__(self, env: Any, config, run_dir: str | Path | None = None, env_kwargs: dict | None = None,
                 verbose: bool = True, tensorboard: bool = True, world=None) -> None:
        self._league_dir = Path(run_dir) / "league" if run_dir is not None else None  # needed before super() ends
        super().__init__(env, config, run_dir, env_kwargs, verbose, tensorboard, world)

    def _check_env(self) -> None:
        """Build one copy, reset it, and check the run's settings fit the game."""
        config, world = self.config, self.world
        self.maker, self.layout = layout_for(self.env, self.env_kwargs, config)
        probe = make_checked(self.maker)
        self.parallel_api = is_parallel(probe)
        agents = list(probe.possible_agents)
        lanes = 1 if config.selfplay else len(self.layout.learners)
        try:  # with env_backend batched, the NumPy twin's builder (refusing an env that has none)
            self.twin = twin_maker(probe) if config.env_backend == "batched" else None
        finally:
            probe.close()
        if config.selfplay and len(agents) != 2:
            raise ConfigError(f"self-play needs a two-player game; {self.maker.env} has {len(agents)} agents "
                              f"({', '.join(agents)}); leave out --selfplay")
        if self.layout.groups and (config.selfplay or config.recurrent != "none"):
            raise ConfigError("one policy per agent group (--policy-map) trains feedforward policies without "
                              "self-play; leave out --policy-map, or --selfplay / --recurrent")
        if config.selfplay and world.size > 1:
            raise ConfigError("self-play runs in one process (its league lives there); leave out --nproc")
        if config.num_envs % lanes:
            raise ConfigError(f"num_envs counts lanes, {lanes} per copy of this env (its learning agents); "
                              f"{config.num_envs} is not a multiple: use {lanes * max(1, config.num_envs // lanes)}")
        idle_lanes = not self.parallel_api and not config.selfplay and lanes > 1
        if config.recurrent != "none" and (idle_lanes or config.selfplay):
            why = "self-play opponents act without memory" if config.selfplay else \
                "in a turn-based game each agent waits for the others' moves"
            raise ConfigError(f"recurrent policies need every learning agent to move at every step, and here {why}; "
                              "train a feedforward policy (--recurrent none)")
        self.copies = config.num_envs // lanes

    def _make_envs(self) -> AgentVectorEnv | BatchedAgentVectorEnv:
        """The lanes of num_envs / lanes copies (stepped by the env's NumPy twin with env_backend batched); in
        self-play, the league the other seat plays from."""
        self.league = None
        if self.config.selfplay:
            config = self.config
            self.league = League(self._fresh_policy, config.opponent_latest, config.opponent_sampling,
                                 config.opponent_window, self._league_dir, self._save_snapshot, seed=config.seed)
        if self.twin is not None:
            return BatchedAgentVectorEnv(self.twin(self.copies), self.layout)
        return AgentVectorEnv(self.maker, self.copies, self.layout, self.league)

    def _find_masks(self) -> ActionMaskSource | None:
        """The lanes' own action_mask observation key, when the agents have masks."""
        if self.layout.mask_width is None or self.config.action_masking == "off":
            return None
        return ActionMaskSource("observation", self.layout.mask_width, str(self.maker.env))

    def _fresh_policy(self) -> ActorCritic:
        try:
            layout = self.layout
            groups = {"group_of_agent": layout.group_of, "id_start": layout.own_dim} if layout.groups else None
            return build_policy(layout.observation_space(), layout.action_space, self.config, layout.actor_dim, groups)
        except ValueError as exc:
            raise ConfigError(f"critic={self.config.critic}: {exc}; set --shared-network false") from None

    def _build_policy(self) -> ActorCritic:
        """The actor-critic over the lanes' spaces (the actor reads actor_dim inputs with a centralized critic);
        the league's first snapshot is its initial weights."""
        policy = self._fresh_policy()
        self.open_moves: OpenMoves | None = None
        if self.league is not None:
            self.league.add(policy, 0)
            self.next_snapshot = self.config.snapshot_every
        return policy

    def _save_snapshot(self, folder: Path, policy: ActorCritic) -> None:
        save_policy(folder, policy, self.config, self.env, self.env_kwargs)

    # the loop ----------------------------------------------------------------------------------------
    def _collect(self):
        """One rollout; each agent's own moves out of it when some lanes idled (credit.py), else the buffer."""
        self.envs.rollout_acting.clear()
        buffer = super()._collect()
        acting = np.stack(self.envs.rollout_acting)
        self._selfplay_row = self.league.rate() if self.league is not None else {}
        if self.open_moves is None:
            if acting.all():
                return buffer  # every lane moved at every step: the buffer is the agents' moves already
            self.open_moves = OpenMoves.empty(buffer)
        config = self.config
        return own_moves(buffer, acting, self.open_moves, config.gamma, config.gae_lambda)

    def _learn(self, buffer) -> dict[str, Any]:
        """The update, then the self-play figures of the rollout and (past snapshot_every) a new snapshot."""
        row = super()._learn(buffer)
        row["agent_moves"] = int(buffer.rewards.numel())
        row.update(self._selfplay_row)
        if self.league is not None and self.global_step >= self.next_snapshot:
            self.league.add(self.policy, self.global_step)
            while self.next_snapshot <= self.global_step:
                self.next_snapshot += self.config.snapshot_every
        return row

    def evaluate_episodes(self, episodes: int, seed: int) -> tuple[list[float], list[int]]:
        """Self-play: results (+1 win, 0 draw, -1 loss) against a random player, seats alternating; else each
        episode's mean return over the learning agents, all played by the deterministic policy."""
        player = PolicyPlayer(self.policy, self.layout)
        if self.config.selfplay:
            match = play_match(self.maker, player, RandomPlayer(self.layout), episodes, seed)
            results = [1.0] * match.wins + [0.0] * match.draws + [-1.0] * match.losses
            return results, [0] * len(results)
        env = self.maker()
        rng = np.random.default_rng(seed)
        returns = []
        for episode in range(episodes):
            totals = play_episode(env, {a: player for a in env.possible_agents}, seed + episode, rng)
            returns.append(float(np.mean([totals[a] for a in self.layout.learners])))
        env.close()
        return returns, [0] * len(returns)

    # checkpoints --------------------------------------------------------------------------------------------
    def state_parts(self, source: Path | None = None) -> dict[str, Any]:
        """The single-agent parts, the league and the moves still open at the last rollout's end."""
        parts = super().state_parts(source)
        if self.league is not None:
            parts["league"] = _LeagueState(self)
        if getattr(self, "open_moves", None) is not None or self._idle_lanes_possible():
            parts["open_moves"] = _OpenMovesState(self)
        return parts

    def _idle_lanes_possible(self) -> bool:
        return not self.parallel_api and not self.config.selfplay and len(self.layout.learners) > 1


class _LeagueState:
    """The league with its next snapshot step, as one checkpoint component."""

    def __init__(self, trainer: MultiAgentTrainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        """The league's state and the step of the next snapshot."""
        return {**self.trainer.league.state_dict(), "next_snapshot": self.trainer.next_snapshot}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore both."""
        self.trainer.next_snapshot = int(state["next_snapshot"])
        self.trainer.league.load_state_dict(state)


class _OpenMovesState:
    """The open moves carried between rollouts (none yet: an empty marker)."""

    def __init__(self, trainer: MultiAgentTrainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        """The carried moves' tensors, or a flag that there are none yet."""
        moves = self.trainer.open_moves
        return {"present": moves is not None, **(moves.state_dict() if moves is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the carried moves from their tensors."""
        if not state.get("present"):
            self.trainer.open_moves = None
            return
        keys = ("open", "reward", "obs", "actions", "log_probs", "values", "action_masks")
        self.trainer.open_moves = OpenMoves(*(state[k].clone() if k in state else None for k in keys))
