"""GRPO and its variants: G completions per prompt, no critic. The math is proximo/llm/losses.py on
proximo.core (the clipped objective is proximo.core.policy_loss, the function the CartPole trainer
calls): advantages by grpo | rloo | reinforce++ | reinforce++-baseline, rewards scaled by group | batch | none, importance
ratios per token or per sequence (GSPO), the loss aggregated by grpo | bnpo | dr_grpo | dapo, DAPO's
dynamic sampling and overlong masking, the k3 KL to the frozen reference as a loss term."""
from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from proximo.errors import ProximoError
from proximo.llm.config import GRPOConfig
from proximo.llm.generation import Sampler, concat_rollouts, response_logprobs
from proximo.llm.losses import (  # noqa: F401 - grpo_token_loss is imported from here by callers
    aggregation_name, group_advantages, grpo_token_loss, informative_groups, loss_normalizer, pooled_moments,
    reinforce_pp_advantages, truncated_rows,
)
from proximo.llm.rl import RLTrainer, micro_batches, minibatch_indices
from proximo.llm.run import RewardFn
from proximo.learners.optimizer import FlatOptimizer


class GRPO(RLTrainer):
    """GRPO on a built-in task or your own data and rewards:
    GRPO("tiny" | model_dir | run_dir, reward_fn=f or [f, "proximo:exact_match", ...], reward_weights=[...],
    dataset=FILE | rows, eval_dataset=... | eval_fraction=F, **GRPOConfig fields).train(steps) -> summary.
    prompts=[...] (a list of strings) still works in place of dataset; sampler= an outside generation
    engine (proximo.llm.generation.Sampler), default the built-in KV-cache sampler."""

    kind = "grpo"

    def __init__(self, model: str | Path = "tiny", reward_fn: RewardFn | str | list | None = None,
                 prompts: list[str] | None = None, eval_prompts: list[str] | None = None,
                 run_dir: str | Path | None = None, verbose: bool = False, tensorboard: bool = True,
                 dataset: Any = None, eval_dataset: Any = None, eval_fraction: float | None = None,
                 reward_weights: list[float] | None = None, sampler: Sampler | None = None, **config: Any) -> None:
        if (reward_fn is not None or dataset is not None) and "task" not in config:
            config["task"] = ""
        if dataset is not None and reward_fn is None:
            raise ProximoError("a dataset needs reward functions: pass reward_fn=... (CLI: --reward module:function "
                               "or --reward proximo:exact_match)")
        super().__init__(model, GRPOConfig(**config), reward_fn, prompts, eval_prompts, run_dir, verbose,
                         tensorboard, dataset=dataset, eval_dataset=eval_dataset, eval_fraction=eval_fraction,
                         reward_weights=reward_weights, sampler=sampler)
        self.prepare_reward_models(self.rewards)

    def needs_reference_copy(self) -> bool:
        """A copy of the initial policy only when a KL term uses it, or keep_reference asks for the kl_ref
        metric: on a real model the copy doubles the weights in memory."""
        keep = self.config.keep_reference
        return self.config.kl_coef > 0 if keep is None else keep

    def _draw_groups(self, n: int) -> SimpleNamespace:
        """n prompts x group_size completions (rows grouped by prompt) with their rewards."""
        group = self.config.group_size
        unique, rows = self.draw_prompts(n)
        # Each prompt is encoded and prefilled once for its whole group (the rows come out grouped).
        rollout, completions, gen_s = self.rollout(unique, repeats=group)
        texts = [p for p in unique for _ in range(group)]
        rep_rows = None if rows is None else [r for r in rows for _ in range(group)]
        # A reward model that shares the policy's tokenizer scores the sampled ids (no decode and re-encode).
        rewards, per_fn = self.score(self.dataset, rep_rows, texts, completions, rollout=rollout)
        return SimpleNamespace(rollout=rollout, rewards=rewards, per_fn=per_fn, gen_s=gen_s, n=n)

    def collect(self) -> SimpleNamespace:
        """prompts_per_step groups of G completions (with dynamic sampling: groups whose rewards differ,
        drawing up to max_extra_draws more rounds), their advantages, loss mask and the reference's
        log-probs."""
        cfg: GRPOConfig = self.config
        started = time.perf_counter()
        group, wanted = cfg.group_size, self.prompts_per_rank  # this rank's share of prompts_per_step
        parts = [self._draw_groups(wanted)]
        informative = [informative_groups(torch.nan_to_num(parts[0].rewards), group, ~torch.isnan(parts[0].rewards))]
        if cfg.dynamic_sampling:
            while sum(int(k.sum()) for k in informative) < wanted and len(parts) <= cfg.max_extra_draws:
                parts.append(self._draw_groups(wanted))
                r = parts[-1].rewards
                informative.append(informative_groups(torch.nan_to_num(r), group, ~torch.isnan(r)))
        all_rewards = torch.cat([p.rewards for p in parts])
        keep_mask = torch.cat(informative)
        if cfg.dynamic_sampling:
            # Groups with a signal first, in the order drawn; when the draws ran out, all-equal groups
            # fill the batch (their advantages are 0: they add only the KL/entropy terms).
            order = torch.cat([torch.nonzero(keep_mask).flatten(), torch.nonzero(~keep_mask).flatten()])
            chosen = order[:wanted].sort().values
        else:
            chosen = torch.arange(wanted)
        filled = int((~keep_mask[chosen]).sum()) if cfg.dynamic_sampling else 0
        row_idx = (chosen[:, None] * group + torch.arange(group)).reshape(-1)
        rollout = concat_rollouts([p.rollout for p in parts], self.tokenizer.pad_id).select(row_idx)
        rewards = all_rewards[row_idx].to(rollout.response_ids.device)
        valid = ~torch.isnan(rewards)
        scores = torch.nan_to_num(rewards)
        input_ids, attention, response_mask = rollout.input_ids, rollout.attention_mask, rollout.response_mask
        truncated = truncated_rows(rollout.response_ids, response_mask, self.tokenizer.stop_ids)
        keep_rows = valid & ~truncated if cfg.mask_truncated else valid
        loss_mask = response_mask * keep_rows[:, None].to(response_mask.dtype)
        width = rollout.prompt_ids.shape[1]
        # Rows of one group share a prompt: forward passes run it once per group (same values, tested).
        groups = torch.arange(len(chosen), device=input_ids.device).repeat_interleave(group)
        # The built-in sampler's own log-probs serve as the old policy's in float32: they equal a full
        # forward pass to ~1e-6 (tested), and skipping that pass saves a quarter of the step's compute.
        # They stay fixed for every epoch and minibatch of this generation.
        old_logp = self.old_logprobs(rollout, self.shared_prompt_groups(groups))
        # With kl_coef 0 the reference only feeds the kl_ref metric: measure it every few steps, not every step.
        ref_logp = None
        if self.reference is not None and (cfg.kl_coef > 0 or self.step_count % max(1, cfg.eval_every or 10) in (0, 1)):
            with torch.inference_mode(), self.reference_mode(), self.precision.autocast():
                ref_logp, _, _ = response_logprobs(self.reference, input_ids, attention, width, cfg.temperature,
                                                   groups=groups)
            ref_logp = ref_logp.float().clone()
        if cfg.advantage_estimator.startswith("reinforce++"):
            if cfg.advantage_estimator == "reinforce++-baseline":
                # The paper's variant for outcome rewards: the group mean off each score first.
                scores = group_advantages(scores, group, "none", valid=valid)
            advantages = reinforce_pp_advantages(scores, old_logp, ref_logp, loss_mask, cfg.kl_coef,
                                                 global_sum=self.global_sum)  # whitened over every rank's tokens
        else:
            advantages = group_advantages(scores, group, cfg.scale_rewards, estimator=cfg.advantage_estimator,
                                          valid=valid, global_sum=self.global_sum)
        drawn_valid = ~torch.isnan(all_rewards)
        # The row describes the whole step: statistics over every rank's rollouts (each rank has as many rows).
        drawn = self.global_sum(float(drawn_valid.sum()))[0]
        mean, var = pooled_moments(all_rewards, drawn_valid, self.global_sum)
        size = self.world.size
        fractions = self.global_sum(float(truncated.float().mean()), self.prompt_truncated_fraction,
                                    float((~valid).float().mean()))
        counts = self.global_sum(sum(p.n for p in parts), int((~keep_mask).sum()) - filled if cfg.dynamic_sampling
                                 else 0, filled)
        stats = {
            "reward": mean if drawn else math.nan,
            "reward_std": math.sqrt(var),
            "truncated_fraction": fractions[0] / size,
            "prompt_truncated_fraction": fractions[1] / size,
            "skipped_fraction": fractions[2] / size,
            "groups_drawn": int(counts[0]),
            "groups_dropped": int(counts[1]),
            "groups_filled": int(counts[2]),
        }
        for name in parts[0].per_fn:
            values = [p.per_fn[name] for p in parts if not math.isnan(p.per_fn[name])]
            # the mean of each rank's mean (over its draws): ranks draw as many groups, up to dynamic sampling
            total, ranks = self.global_sum(sum(values) / len(values) if values else 0.0, 1.0 if values else 0.0)
            stats[f"reward_{name}"] = total / ranks if ranks else math.nan
        return SimpleNamespace(started=started, stats=stats, advantages=advantages, input_ids=input_ids,
                               attention=attention, mask=loss_mask, width=width, groups=groups,
                               old_logp=old_logp, ref_logp=ref_logp, gen_s=sum(p.gen_s for p in parts),
                               group=group, tokens=float(response_mask.sum()), batch=len(row_idx),
                               gen_tokens=sum(float(p.rollout.response_mask.sum()) for p in parts))

    def learn(self, batch_data: SimpleNamespace, optimizer: FlatOptimizer) -> dict[str, float]:
        """n_epochs x num_minibatches optimizer steps on one collected batch; returns the row of statistics."""
        cfg: GRPOConfig = self.config
        b = batch_data
        mask, ref_logp = b.mask, b.ref_logp
        constant = cfg.loss_constant or float(self.max_new_tokens)
        sequence = cfg.importance_sampling == "sequence"
        low, high = (cfg.seq_clip_range, cfg.seq_clip_range_high) if sequence else (cfg.clip_range, cfg.clip_range_high)
        # REINFORCE++ has the KL in its rewards already; the loss adds no second KL term.
        kl_coef = 0.0 if cfg.advantage_estimator.startswith("reinforce++") else cfg.kl_coef
        # dapo divides every minibatch by the whole batch's (loss-mask) tokens, over all ranks, over the
        # minibatch count.
        batch_tokens = self.global_sum(float(mask.sum()))[0]
        stats = {"policy_loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0, "entropy": 0.0, "kl_ref": 0.0}
        with self.learning_passes():
            count = self._optimizer_steps(b, optimizer, stats, batch_tokens, constant, low, high, kl_coef)
        seconds = time.perf_counter() - b.started
        # Each rank's parts are divided by the global minibatch's counts: their sum over ranks is the
        # whole minibatch's loss and token means. Rates add up: the ranks run at once.
        names = list(stats)
        totals = self.global_sum(*(stats[k] for k in names), b.tokens, b.batch,
                                 b.gen_tokens / max(b.gen_s, 1e-9), b.tokens / seconds)
        row = {key: value / count for key, value in zip(names, totals)}
        tokens, batch, gen_rate, rate = totals[len(names):]
        if ref_logp is None:
            row["kl_ref"] = None
        row.update(b.stats)
        row.update({
            "accuracy": row["reward"] if self.task is not None and self.reward_is_task else None,
            "optimizer_steps": count, "response_length": tokens / batch, "kl_coef": cfg.kl_coef,
            "learning_rate": cfg.learning_rate, "gen_tokens_per_s": gen_rate, "tokens_per_s": rate,
        })
        return row

    def _optimizer_steps(self, b: SimpleNamespace, optimizer: FlatOptimizer, stats: dict[str, float],
                         batch_tokens: float, constant: float, low: float, high: float | None,
                         kl_coef: float) -> int:
        """The n_epochs x num_minibatches optimizer steps of learn(), adding into stats; returns the count."""
        cfg: GRPOConfig = self.config
        mask, old_logp, ref_logp = b.mask, b.old_logp, b.ref_logp
        count = 0
        for idx in minibatch_indices(b.batch, cfg.num_minibatches, cfg.n_epochs, b.group):
            # One optimizer step per minibatch however many micro-batches (and ranks) it is computed in:
            # each part's loss is divided by the whole minibatch's count, so the summed gradients are
            # the minibatch's gradient exactly.
            if aggregation_name(cfg.loss_aggregation) == "dapo":
                normalizer = batch_tokens / cfg.num_minibatches
            else:
                normalizer = self.global_sum(loss_normalizer(mask[idx], cfg.loss_aggregation, constant))[0]
            minibatch_tokens = max(self.global_sum(float(mask[idx].sum()))[0], 1.0)
            optimizer.zero_grad()
            for part in micro_batches(idx, cfg.micro_batch_size):
                m = mask[part]
                with self.precision.autocast():
                    logp, entropy, _ = response_logprobs(self.model, b.input_ids[part], b.attention[part], b.width,
                                                         cfg.temperature, with_entropy=True,
                                                         groups=self.shared_prompt_groups(b.groups[part]))
                    loss, out, kl_ref = grpo_token_loss(
                        logp, old_logp[part], None if ref_logp is None else ref_logp[part], b.advantages[part], m,
                        low, high, kl_coef, cfg.loss_aggregation, constant, cfg.importance_sampling, batch_tokens,
                        cfg.num_minibatches, normalizer)
                    # The entropy bonus is a token mean over the minibatch, split the same way.
                    entropy_sum = (entropy * m).sum()
                    if cfg.ent_coef > 0:
                        loss = loss - cfg.ent_coef * entropy_sum / minibatch_tokens
                self.precision.backward(loss)
                share = float(m.sum()) / minibatch_tokens  # this part's weight in token-mean statistics
                stats["policy_loss"] += float(loss.detach())
                stats["clip_fraction"] += float(out.clip_fraction) * share
                stats["approx_kl"] += float(out.approx_kl_k3) * share
                stats["entropy"] += float(entropy_sum.detach()) / minibatch_tokens
                stats["kl_ref"] += float(kl_ref) * share
            self.sync_gradients(optimizer)
            self.precision.step(optimizer, cfg.max_grad_norm)
            count += 1
        return count
