"""Deterministic evaluation of a policy over whole episodes."""
from __future__ import annotations

import numpy as np
import torch

from proximo.envs.make import EnvLike, make_single_env
from proximo.nn.policy import ActorCritic


def evaluate_policy(policy: ActorCritic, env: EnvLike, episodes: int = 10, seed: int = 0,
                    deterministic: bool = True, env_kwargs: dict | None = None,
                    render_mode: str | None = None, wrap=None) -> tuple[list[float], list[int]]:
    """Run `episodes` full episodes; returns (true returns, lengths). Normalization stats stay frozen."""
    single = make_single_env(env, render_mode=render_mode, **(env_kwargs or {}))
    if wrap is not None:
        single = wrap(single)
    returns, lengths = [], []
    try:
        for episode in range(episodes):
            obs, _ = single.reset(seed=seed + episode)
            total, length, done = 0.0, 0, False
            while not done:
                obs, reward, terminated, truncated, _ = single.step(act_once(policy, obs, deterministic))
                total += float(reward)
                length += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(length)
    finally:
        single.close()
    return returns, lengths


def act_once(policy: ActorCritic, obs, deterministic: bool = True):
    """The env action for one unbatched observation (normalization frozen, Box actions clipped)."""
    with torch.inference_mode():
        x = policy.prepare(_batch_of_one(obs), 1)
        action, _, _ = policy.act(x, deterministic=deterministic)
    return policy.to_env_actions(action)[0]


def _batch_of_one(obs):
    if isinstance(obs, dict):
        return {key: np.asarray(value)[None] for key, value in obs.items()}
    return np.asarray(obs)[None]
