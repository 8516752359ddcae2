"""Deterministic evaluation of a policy over whole episodes."""
from __future__ import annotations

import numpy as np
import torch

from proximo.envs.make import EnvLike, make_single_env
from proximo.envs.masks import ActionMaskSource, mask_width
from proximo.nn.policy import ActorCritic


def evaluate_policy(policy: ActorCritic, env: EnvLike, episodes: int = 10, seed: int = 0,
                    deterministic: bool = True, env_kwargs: dict | None = None,
                    render_mode: str | None = None, wrap=None, action_masking: str = "auto"
                    ) -> tuple[list[float], list[int]]:
    """Run `episodes` full episodes; returns (true returns, lengths). Normalization stats stay frozen;
    a recurrent policy's state starts at zero each episode, and the env's action masks are obeyed."""
    single = make_single_env(env, render_mode=render_mode, **(env_kwargs or {}))
    if wrap is not None:
        single = wrap(single)
    returns, lengths = [], []
    try:
        actor = EpisodeActor(policy, single, action_masking, deterministic)
        for episode in range(episodes):
            obs, info = single.reset(seed=seed + episode)
            actor.begin_episode()
            total, length, done = 0.0, 0, False
            while not done:
                obs, reward, terminated, truncated, info = single.step(actor(obs, info))
                total += float(reward)
                length += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(length)
    finally:
        single.close()
    return returns, lengths


class EpisodeActor:
    """Plays one (non-vector) env with a policy: carries a recurrent policy's state through an episode
    and restricts actions to the env's legal ones when it exposes masks (proximo/envs/masks.py)."""

    def __init__(self, policy: ActorCritic, env, action_masking: str = "auto", deterministic: bool = True) -> None:
        self.policy, self.env, self.deterministic = policy, env, deterministic
        masked = action_masking != "off" and mask_width(env.action_space) is not None
        # detect() resets the env once; the caller resets it again, with its own seed, before each episode.
        self.masks = ActionMaskSource.detect(env, action_masking, "the env") if masked else None
        self.begin_episode()

    def begin_episode(self) -> None:
        """Forget the recurrent state: the next observation begins an episode."""
        self.state = self.policy.initial_state(1)[:, :self.policy.actor_state_size]
        self.start = True

    def __call__(self, obs, info) -> np.ndarray:
        """The env action for one unbatched observation and its info (normalization frozen)."""
        policy = self.policy
        masks = None
        if self.masks is not None:
            mask = self.masks.single(self.env, obs, info)
            self.masks.check(mask, "during evaluation")
            masks = torch.from_numpy(mask[None]).to(policy.device)
        with torch.inference_mode():
            x = policy.prepare(_batch_of_one(obs), 1)
            if policy.is_recurrent:
                starts = torch.tensor([self.start], device=policy.device)
                action, self.state = policy.actor_step(x, self.state, starts, masks, self.deterministic)
            else:
                action, _, _ = policy.act(x, deterministic=self.deterministic, masks=masks)
        self.start = False
        return policy.to_env_actions(action)[0]


def _batch_of_one(obs):
    if isinstance(obs, dict):
        return {key: np.asarray(value)[None] for key, value in obs.items()}
    return np.asarray(obs)[None]
