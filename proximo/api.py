"""The Python API, shaped like Stable-Baselines3's: PPO(env).learn(n).predict(obs)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from proximo.config import PPOConfig, make_config
from proximo.envs.make import EnvLike
from proximo.errors import ProximoError
from proximo.nn.policy import ActorCritic
from proximo.train import Trainer, load_policy, save_policy


class PPO:
    """A PPO agent for a gymnasium env id or env factory.

    PPO("CartPole-v1", preset="cartpole").learn(100_000); actions, _ = agent.predict(obs)
    """

    def __init__(self, env: EnvLike, preset: str | None = None, run_dir: str | Path | None = None,
                 env_kwargs: dict | None = None, verbose: bool = False, **config_overrides: Any) -> None:
        self.config: PPOConfig = make_config(preset, **config_overrides)
        self.env, self.env_kwargs = env, dict(env_kwargs or {})
        self._trainer: Trainer | None = Trainer(env, self.config, run_dir, self.env_kwargs, verbose=verbose)
        self.policy: ActorCritic = self._trainer.policy
        self.summary: dict[str, Any] = {}

    def learn(self, total_steps: int | None = None) -> "PPO":
        """Train for total_steps more env steps (default: config.total_steps); returns self."""
        if self._trainer is None:
            if not isinstance(self.env, str):
                raise ProximoError("this agent was loaded without an env; create PPO(env, ...) to train")
            trainer = Trainer(self.env, self.config, None, self.env_kwargs, verbose=False)
            trainer.policy.load_state_dict(self.policy.state_dict())
            self._trainer, self.policy = trainer, trainer.policy
        steps = total_steps if total_steps is not None else self.config.total_steps
        self.summary = self._trainer.train(self._trainer.global_step + steps)
        return self

    @property
    def num_timesteps(self) -> int:
        """Env steps trained so far."""
        return self._trainer.global_step if self._trainer is not None else 0

    def predict(self, observation, deterministic: bool = True) -> tuple[np.ndarray, None]:
        """Actions for one observation or a batch [B, ...]; returns (actions, None) as SB3 does."""
        policy = self.policy
        space = policy.observation_space
        single = _is_single(observation, space)
        batch = 1 if single else _batch_size(observation)
        obs = _add_batch_axis(observation) if single else observation
        with torch.inference_mode():
            x = policy.prepare(obs, batch)
            actions, _, _ = policy.act(x, deterministic=deterministic)
        env_actions = policy.to_env_actions(actions)
        return (env_actions[0] if single else env_actions), None

    def save(self, directory: str | Path) -> None:
        """Save the policy (weights, normalization statistics, spaces, config) to a folder."""
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
