"""The Python API, shaped like Stable-Baselines3's: PPO(env).learn(n).predict(obs)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from proximo.config import PPOConfig, describe_preset, make_config
from proximo.envs.make import EnvLike
from proximo.errors import ProximoError
from proximo.multiagent import trainer_class
from proximo.nn.policy import ActorCritic
from proximo.population.trainer import Population, population_configs
from proximo.train import Trainer, load_policy, save_policy


class PPO:
    """A PPO agent for a gymnasium env id or env factory.

    PPO("CartPole-v1", preset="cartpole").learn(100_000); actions, _ = agent.predict(obs)
    """

    def __init__(self, env: EnvLike, preset: str | None = None, run_dir: str | Path | None = None,
                 env_kwargs: dict | None = None, verbose: bool = False, seeds: list[int] | None = None,
                 **config_overrides: Any) -> None:
        # An env id picks the preset's per-env entry exactly as `proximo train ENV --preset P` does.
        env_id = env if isinstance(env, str) else None
        self.config: PPOConfig = make_config(preset, env_id, **config_overrides)
        self.preset_note: str | None = describe_preset(preset, env_id, config_overrides)
        if verbose and self.preset_note:
            print(self.preset_note)
        self.env, self.env_kwargs = env, dict(env_kwargs or {})
        self.summary: dict[str, Any] = {}
        self._population = None
        self._member_of: PPO | None = None
        if seeds is not None:
            # K agents, one per seed, as one batched population (proximo/population/): self.agents[k] is
            # agent k (its policy, predict, save), run_dir/s<seed> its run directory.
            if "seed" in config_overrides:
                raise ProximoError("seeds= sets every agent's seed; leave out seed=")
            self._population = Population(env, population_configs(self.config, list(seeds)), run_dir,
                                          self.env_kwargs, verbose)
            self._population.open()
            self._trainer = None
            self.policy = None
            self.agents = [self._member(member) for member in self._population.members]
            self.summaries: list[dict[str, Any]] = []
            return
        self._trainer: Trainer | None = trainer_class(env, self.env_kwargs)(env, self.config, run_dir, self.env_kwargs,
                                                                          verbose=verbose)
        self.policy: ActorCritic = self._trainer.policy

    def _member(self, member) -> "PPO":
        """Agent `member` of this population as a PPO object of its own (predict, save; training is the population's)."""
        agent = PPO.__new__(PPO)
        agent.config, agent.env, agent.env_kwargs = member.config, self.env, self.env_kwargs
        agent._trainer, agent.policy, agent.summary, agent._population, agent._member_of = None, member.policy, {}, \
            None, self
        agent.preset_note = self.preset_note
        return agent

    def learn(self, total_steps: int | None = None, callback: Any = None) -> "PPO":
        """Train for total_steps more env steps (default: config.total_steps); returns self.

        callback: a function of each update's metrics row, a proximo.callbacks.Callback, or a list of
        them; one returning False stops training after that update (self.summary["stopped_by"] says why).
        """
        if self._population is not None:
            steps = total_steps if total_steps is not None else self.config.total_steps
            self.summaries = self._population.train(self._population.global_step + steps)
            for agent, summary in zip(self.agents, self.summaries):
                agent.summary = summary
            return self
        if self._member_of is not None:
            raise ProximoError("this agent trains with its population: call learn() on the PPO(..., seeds=[...]) "
                               "object")
        if self._trainer is None:
            if not isinstance(self.env, str):
                raise ProximoError("this agent was loaded without an env; create PPO(env, ...) to train")
            trainer = trainer_class(self.env)(self.env, self.config, None, self.env_kwargs, verbose=False)
            trainer.policy.load_state_dict(self.policy.state_dict())
            self._trainer, self.policy = trainer, trainer.policy
        steps = total_steps if total_steps is not None else self.config.total_steps
        self.summary = self._trainer.train(self._trainer.global_step + steps, callback=callback)
        return self

    @property
    def num_timesteps(self) -> int:
        """Env steps trained so far (by each agent, for a population)."""
        if self._population is not None:
            return self._population.global_step
        if self._member_of is not None:
            return self._member_of.num_timesteps
        return self._trainer.global_step if self._trainer is not None else 0

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True,
                action_masks=None) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Actions for one observation or a batch [B, ...]; returns (actions, state) as SB3 does.

        A recurrent policy takes and returns its actor's state in SB3's shape, (h, c) for an LSTM and
        (h,) for a GRU, each [rnn_layers, B, rnn_hidden] (None: zeros); episode_start [B] bool zeroes
        it where an episode begins. A feedforward policy returns None as the state. action_masks
        [B, mask_dim] (or [mask_dim]) bool limits the choice to legal actions; a Dict observation
        holding an "action_mask" key supplies them itself.
        """
        if self._population is not None:
            raise ProximoError(f"this is a population of {len(self.agents)} agents: predict with one of them, "
                               "agent.agents[k].predict(...)")
        policy = self.policy
        space = policy.observation_space
        single = _is_single(observation, space)
        batch = 1 if single else _batch_size(observation)
        obs = _add_batch_axis(observation) if single else observation
        masks = action_masks
        if masks is None and policy.mask_key is not None:
            masks = obs[policy.mask_key]
        with torch.inference_mode():
            if masks is not None:
                masks = torch.as_tensor(np.asarray(masks, dtype=bool)).reshape(batch, -1).to(policy.device)
                if masks.shape[1] != policy.mask_dim:
                    raise ProximoError(f"action_masks has {masks.shape[1]} entries per observation, this policy's "
                                       f"action space needs {policy.mask_dim}")
            x = policy.prepare(obs, batch)
            if not policy.is_recurrent:
                actions, _, _ = policy.act(x, deterministic=deterministic, masks=masks)
                new_state = None
            else:
                core = policy.pi_core
                if state is None:
                    flat = torch.zeros(batch, core.state_size, device=policy.device)
                else:
                    parts = tuple(torch.as_tensor(np.asarray(part), dtype=torch.float32).to(policy.device)
                                  for part in state)
                    expected = (core.layers, batch, core.hidden)
                    if len(parts) != core.parts or any(tuple(part.shape) != expected for part in parts):
                        raise ProximoError(f"state must be {core.parts} array(s) of shape {expected} for this "
                                           f"{core.kind.upper()} policy, got {[tuple(p.shape) for p in parts]}")
                    flat = core.pack(parts)
                starts = torch.zeros(batch, dtype=torch.bool) if episode_start is None else \
                    torch.as_tensor(np.asarray(episode_start, dtype=bool)).reshape(batch)
                actions, flat = policy.actor_step(x, flat, starts.to(policy.device), masks, deterministic)
                new_state = tuple(part.cpu().numpy() for part in core.unpack(flat))
        env_actions = policy.to_env_actions(actions)
        return (env_actions[0] if single else env_actions), new_state

    def save(self, directory: str | Path) -> None:
        """Save the policy (weights, normalization statistics, spaces, config) to a folder."""
        if self._population is not None:
            raise ProximoError("this is a population: save one agent (agent.agents[k].save(...)); every agent's run "
                               "directory already holds its policy/")
        save_policy(Path(directory), self.policy, self.config, self.env, self.env_kwargs)

    @classmethod
    def load(cls, directory: str | Path, checkpoint: str | Path | None = None) -> "PPO":
        """Load a policy saved by save(), a run directory (a killed one: its newest intact checkpoint) or a checkpoint.

        checkpoint= (step_N, or a checkpoint folder) picks one checkpoint of the run instead; ready for predict().
        """
        policy, meta = load_policy(Path(directory), checkpoint=checkpoint)
        agent = cls.__new__(cls)
        agent.config = PPOConfig.from_dict(meta["config"])
        agent.env, agent.env_kwargs = meta.get("env_id"), meta.get("env_kwargs", {})
        agent._trainer, agent.policy, agent.summary = None, policy, {}
        agent._population, agent._member_of = None, None
        return agent


def _is_single(observation, space) -> bool:
    from gymnasium import spaces
    if isinstance(space, spaces.Dict):
        key, sub = next(iter(space.spaces.items()))
        return _is_single(observation[key], sub)
    shape = space.shape or ()
    return np.asarray(observation).shape == tuple(shape)


def _batch_size(observation) -> int:
    if isinstance(observation, dict):
        return _batch_size(next(iter(observation.values())))
    return int(np.asarray(observation).shape[0])


def _add_batch_axis(observation):
    if isinstance(observation, dict):
        return {key: np.asarray(value)[None] for key, value in observation.items()}
    return np.asarray(observation)[None]
