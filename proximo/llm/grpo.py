"""GRPO: G completions per prompt, advantages relative to the group, no critic; the clipped objective
is proximo.core.policy_loss (the same function the CartPole trainer calls), the KL to the frozen
reference is a k3 loss term, and the per-token loss is aggregated by seq-mean, token-mean or constant."""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from proximo.core import kl_estimate, masked_mean, policy_loss
from proximo.llm.config import GRPOConfig
from proximo.llm.generation import response_logprobs
from proximo.llm.losses import aggregate_loss, group_advantages
from proximo.llm.rl import RLTrainer, minibatch_indices
from proximo.llm.run import RewardFn, call_reward
from proximo.learners.optimizer import FlatOptimizer


def grpo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                    advantages: torch.Tensor, mask: torch.Tensor, clip_range: float,
                    clip_range_high: float | None, kl_coef: float, aggregation: str,
                    constant: float | None = None):
    """GRPO loss (scalar) on [B, R] log-probs and per-sequence advantages [B]; returns (loss,
    PolicyLossOutput, mean k3 KL to the reference)."""
    adv = advantages[:, None].expand_as(logp)
    out = policy_loss(logp, old_logp, adv, "clip", clip_range, clip_range_high, mask=mask)
    per_token = out.per_sample
    kl_ref = torch.zeros(())
    if ref_logp is not None:
        kl_tokens = kl_estimate(logp, ref_logp, "k3")
        kl_ref = masked_mean(kl_tokens.detach(), mask)
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl_tokens
    return aggregate_loss(per_token, mask, aggregation, constant), out, kl_ref


class GRPO(RLTrainer):
    """GRPO on a built-in task or your own reward: GRPO("tiny" | model_dir | run_dir, reward_fn=...,
    prompts=[...], **GRPOConfig fields).train(steps) -> summary dict."""

    kind = "grpo"

    def __init__(self, model: str | Path = "tiny", reward_fn: RewardFn | None = None,
                 prompts: list[str] | None = None, eval_prompts: list[str] | None = None,
                 run_dir: str | Path | None = None, verbose: bool = False, tensorboard: bool = True,
                 **config: Any) -> None:
        if reward_fn is not None and "task" not in config:
            config["task"] = ""
        super().__init__(model, GRPOConfig(**config), reward_fn, prompts, eval_prompts, run_dir, verbose,
                         tensorboard)

    def collect(self) -> SimpleNamespace:
        """Sample G completions for each of prompts_per_step prompts; their rewards, group advantages and
        the reference's log-probs."""
        cfg: GRPOConfig = self.config
        started = time.perf_counter()
        group = cfg.group_size
        unique = self.sample_prompts(cfg.prompts_per_step)
        prompts = [p for p in unique for _ in range(group)]
        # Each prompt is encoded and prefilled once for its whole group (the rows come out grouped).
        rollout, completions, gen_s = self.rollout(unique, repeats=group)
        rewards = call_reward(self.reward_fn, prompts, completions)
        advantages = group_advantages(rewards, group, cfg.scale_rewards)
        input_ids, attention, mask = rollout.input_ids, rollout.attention_mask, rollout.response_mask
        width = rollout.prompt_ids.shape[1]
        # Rows of one group share a prompt: forward passes run it once per group (same values, tested).
        groups = torch.arange(len(unique)).repeat_interleave(group)
        # The sampler's own log-probs serve as the old policy's: they equal a full forward pass to ~1e-6
        # (tested), and skipping that pass saves a quarter of the step's compute.
        old_logp = rollout.logprobs
        # With kl_coef 0 the reference only feeds the kl_ref metric: measure it every few steps, not every step.
        ref_logp = None
        if cfg.kl_coef > 0 or self.step_count % max(1, cfg.eval_every or 10) in (0, 1):
            with torch.inference_mode(), self.reference_mode():
                ref_logp, _, _ = response_logprobs(self.reference, input_ids, attention, width, cfg.temperature,
                                                   groups=groups)
            ref_logp = ref_logp.clone()
        return SimpleNamespace(started=started, prompts=prompts, rewards=rewards, advantages=advantages,
                               input_ids=input_ids, attention=attention, mask=mask, width=width, groups=groups,
                               old_logp=old_logp, ref_logp=ref_logp, gen_s=gen_s, group=group)

    def learn(self, batch_data: SimpleNamespace, optimizer: FlatOptimizer) -> dict[str, float]:
        """K epochs of minibatch updates on one collected batch; returns the row of statistics."""
        cfg: GRPOConfig = self.config
        b = batch_data
        started, prompts, rewards, advantages, gen_s, group = b.started, b.prompts, b.rewards, b.advantages, b.gen_s, b.group
        input_ids, attention, mask, width, groups = b.input_ids, b.attention, b.mask, b.width, b.groups
        old_logp, ref_logp = b.old_logp, b.ref_logp
        constant = cfg.loss_constant or float(self.max_new_tokens)
        batch = len(prompts)
        stats = {"policy_loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0, "entropy": 0.0, "kl_ref": 0.0}
        count = 0
        for idx in minibatch_indices(batch, cfg.num_minibatches, cfg.n_epochs, group):
            logp, entropy, _ = response_logprobs(self.model, input_ids[idx], attention[idx], width,
                                                 cfg.temperature, with_entropy=True, groups=groups[idx])
            loss, out, kl_ref = grpo_token_loss(
                logp, old_logp[idx], None if ref_logp is None else ref_logp[idx], advantages[idx], mask[idx], cfg.clip_range,
                cfg.clip_range_high, cfg.kl_coef, cfg.loss_aggregation, constant)
            mean_entropy = masked_mean(entropy, mask[idx])
            if cfg.ent_coef > 0:
                loss = loss - cfg.ent_coef * mean_entropy
            optimizer.zero_grad()
            loss.backward()
            optimizer.clip_grad_norm_(cfg.max_grad_norm)
            optimizer.step()
            count += 1
            stats["policy_loss"] += float(loss.detach())
            stats["clip_fraction"] += float(out.clip_fraction)
            stats["approx_kl"] += float(out.approx_kl_k3)
            stats["entropy"] += float(mean_entropy.detach())
            stats["kl_ref"] += float(kl_ref)
        tokens = float(mask.sum())
        seconds = time.perf_counter() - started
        row = {key: value / count for key, value in stats.items()}
        if ref_logp is None:
            row["kl_ref"] = None
        row.update({
            "reward": float(rewards.mean()), "reward_std": float(rewards.std()),
            "accuracy": float(rewards.mean()) if self.task is not None and self.reward_fn == self.task.reward else None,
            "response_length": tokens / batch, "kl_coef": cfg.kl_coef, "learning_rate": cfg.learning_rate,
            "gen_tokens_per_s": tokens / max(gen_s, 1e-9), "tokens_per_s": tokens / seconds,
        })
        return row
