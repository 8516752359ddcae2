"""GRPO and its variants: G completions per prompt, no critic. The math is proximo/llm/losses.py on
proximo.core (the clipped objective is proximo.core.policy_loss, the function the CartPole trainer
calls): advantages by grpo | rloo | reinforce++ | reinforce++-baseline, rewards scaled by group | batch | none, importance
ratios per token or per sequence (GSPO), the clip | cispo | gmpo | sapo surrogate, the loss aggregated by
grpo | bnpo | dr_grpo | dapo, DAPO's dynamic sampling and overlong masking, the KL to the frozen reference
(k1 | k2 | k3) as a loss term or a reward penalty, and the off-policy correction between an outside
sampler and the learner (proximo.core.offpolicy)."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from proximo.core import masked_mean
from proximo.core.offpolicy import importance_weights, offpolicy_statistics, stale_rows
from proximo.errors import ConfigError, ProximoError
from proximo.distributed import launched_by_torchrun
from proximo.llm.async_sampler import AsyncProcessSampler
from proximo.llm.multiturn import Environment, ToolEnvironment, add_environment_rewards, load_tools
from proximo.llm.config import GRPOConfig
from proximo.llm.precision import resolve_llm_device
from proximo.llm.generation import Sampler, concat_rollouts, response_logprobs
from proximo.llm.learners import TokenLearner, TokenMinibatch
from proximo.llm.losses import (
    aggregation_name, group_advantages, grpo_token_loss, informative_groups, kl_reward_advantages, loss_normalizer,
    pooled_moments, reinforce_pp_advantages, truncated_rows,
)
from proximo.llm.rl import RLTrainer
from proximo.llm.run import RewardFn
from proximo.learners.optimizer import FlatOptimizer
from proximo.ppo import minibatch_rows, run_update


@dataclass
class GRPOSettings:
    """The values of one GRPO update a minibatch step takes (from GRPOConfig and the collected batch)."""

    clip_range: float             # lower clip eps (GSPO: seq_clip_range; GMPO: gmpo_clip_range, in log space)
    clip_range_high: float | None  # upper clip eps (None: clip_range)
    kl_coef: float                # beta of the KL to the reference in the loss (0 for REINFORCE++ and
                                  # kl_placement reward: the KL is in the advantages then)
    ent_coef: float               # entropy bonus, a token mean over the minibatch
    loss_aggregation: str         # grpo | bnpo | dr_grpo | dapo (proximo.llm.losses.aggregate_loss)
    loss_constant: float          # dr_grpo's normalizer
    importance_sampling: str      # token | sequence (GSPO)
    num_minibatches: int          # minibatches per epoch (dapo divides the batch's tokens by it)
    batch_tokens: float           # loss-mask tokens of the whole generation batch, every rank's (dapo)
    micro_batch_size: int         # rows per forward/backward pass (0: the whole minibatch)
    temperature: float            # the sampling temperature the log-probs are taken at
    max_grad_norm: float | None   # clip the gradient to this norm (None: no clipping)
    surrogate: str = "clip"       # clip | cispo | gmpo | sapo (proximo.llm.losses.grpo_token_loss)
    cispo_max_weight: float = 5.0
    sapo_tau_pos: float = 1.0
    sapo_tau_neg: float = 1.05
    kl_estimator: str = "k3"      # k1 | k2 | k3 of the KL loss term
    kl_ratio_weighted: bool = False  # the KL loss term times pi/pi_old (TRL's use_bias_correction_kl)


class GRPOLearner(TokenLearner):
    """GRPO's minibatch step: proximo.llm.losses.grpo_token_loss (clipped token or sequence ratio, k3 KL to
    the reference, the grpo | bnpo | dr_grpo | dapo aggregation) minus the entropy bonus."""

    name = "grpo"

    def minibatch_counts(self, batch, rows: torch.Tensor, settings: GRPOSettings) -> dict[str, float]:
        """The aggregation's normalizer and the loss-mask tokens of the minibatch, over every rank."""
        mask = batch.mask[rows]
        tokens = float(mask.sum())
        if aggregation_name(settings.loss_aggregation) == "dapo":
            normalizer = settings.batch_tokens / settings.num_minibatches
            tokens, = self.global_sum(tokens)
        else:
            normalizer, tokens = self.global_sum(
                loss_normalizer(mask, settings.loss_aggregation, settings.loss_constant), tokens)
        return {"normalizer": normalizer, "tokens": max(tokens, 1.0)}

    def part_loss(self, batch, part: torch.Tensor, counts: dict[str, float], settings: GRPOSettings):
        """The part's GRPO loss; its samples are its real tokens (its sequences under GSPO)."""
        b, trainer = batch, self.trainer
        m = b.mask[part]
        old = b.old_logp[part]
        logp, entropy, _ = response_logprobs(trainer.model, b.input_ids[part], b.attention[part], b.width,
                                             settings.temperature, with_entropy=True,
                                             groups=trainer.shared_prompt_groups(b.groups[part]))
        loss, _, kl_ref = grpo_token_loss(
            logp, old, None if b.ref_logp is None else b.ref_logp[part], b.advantages[part], m,
            settings.clip_range, settings.clip_range_high, settings.kl_coef, settings.loss_aggregation,
            settings.loss_constant, settings.importance_sampling, settings.batch_tokens,
            settings.num_minibatches, counts["normalizer"], surrogate=settings.surrogate,
            cispo_max_weight=settings.cispo_max_weight, sapo_tau_pos=settings.sapo_tau_pos,
            sapo_tau_neg=settings.sapo_tau_neg, kl_estimator=settings.kl_estimator,
            kl_ratio_weighted=settings.kl_ratio_weighted,
            sample_weights=None if b.sample_weights is None else b.sample_weights[part])
        # The entropy bonus is a token mean over the minibatch, split the same way.
        entropy_sum = (entropy * m).sum()
        total = loss - settings.ent_coef * entropy_sum / counts["tokens"] if settings.ent_coef > 0 else loss
        with torch.no_grad():
            if settings.importance_sampling == "sequence":
                rows = m.sum(1) > 0
                log_ratio = (masked_mean(logp.float(), m, dim=1) - masked_mean(old, m, dim=1))[rows]
            else:
                log_ratio = (logp.float() - old)[m.to(torch.bool)]
        share = float(m.sum()) / counts["tokens"]  # this part's weight in token means over the minibatch
        losses = torch.stack([loss.detach().float(), loss.new_zeros((), dtype=torch.float32),
                              (entropy_sum.detach() / counts["tokens"]).float()])
        return total, log_ratio, losses, {"kl_ref": (kl_ref.float() * share).reshape(())}


def check_async_generation(config: GRPOConfig, sampler: Sampler | None = None, processes: int | None = None,
                           multiturn: bool = False) -> None:
    """ConfigError in one line when async_generation cannot serve the run: an outside sampler, more than one
    process (processes, else torchrun's WORLD_SIZE), a device other than the CPU, or multi-turn episodes."""
    if multiturn:
        # The generator process samples one turn per prompt; tool and environment turns run in the learner.
        raise ConfigError("async_generation samples single-turn completions; with tools or an environment "
                          "(several turns) leave async_generation off")
    if sampler is not None:
        raise ConfigError(f"async_generation runs its own generator process; it cannot drive the outside sampler "
                          f"{type(sampler).__name__} (pipeline that engine through its own Sampler.prefetch), so "
                          "pass sampler=... or async_generation=True, not both")
    if processes is None:
        processes = int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1
    if processes > 1:
        raise ConfigError(f"async_generation runs one generator beside one learner; with {processes} processes "
                          "(--nproc / torchrun) leave async_generation off, or train in one process")
    device = resolve_llm_device(config.device)
    if device.type != "cpu":
        raise ConfigError(f"async_generation shares the weights through CPU shared memory; device {config.device} "
                          f"resolves to {device}: set device cpu, or leave async_generation off")


class GRPO(RLTrainer):
    """GRPO on a built-in task or your own data and rewards:
    GRPO("tiny" | model_dir | run_dir, reward_fn=f or [f, "proximo:exact_match", ...], reward_weights=[...],
    dataset=FILE | rows, eval_dataset=... | eval_fraction=F, **GRPOConfig fields).train(steps) -> summary.
    prompts=[...] (a list of strings) still works in place of dataset; sampler= an outside generation
    engine (proximo.llm.generation.Sampler), default the built-in KV-cache sampler. environment= a
    proximo.llm.multiturn.Environment (ToolEnvironment([f, g]) for your tool functions; or tools="module:f"
    with max_turns) makes every rollout an episode of several turns; only the policy's tokens are trained."""

    kind = "grpo"
    learner_class = GRPOLearner

    def __init__(self, model: str | Path = "tiny", reward_fn: RewardFn | str | list | None = None,
                 prompts: list[str] | None = None, eval_prompts: list[str] | None = None,
                 run_dir: str | Path | None = None, verbose: bool = False, tensorboard: bool = True,
                 dataset: Any = None, eval_dataset: Any = None, eval_fraction: float | None = None,
                 reward_weights: list[float] | None = None, sampler: Sampler | None = None,
                 environment: Environment | None = None, **config: Any) -> None:
        if (reward_fn is not None or dataset is not None) and "task" not in config:
            config["task"] = ""
        if dataset is not None and reward_fn is None:
            raise ProximoError("a dataset needs reward functions: pass reward_fn=... (CLI: --reward module:function "
                               "or --reward proximo:exact_match)")
        cfg = GRPOConfig(**config)
        if cfg.async_generation:
            check_async_generation(cfg, sampler, multiturn=environment is not None or bool(cfg.tools))
        # Tools load before the run directory is made: a bad --tools spec leaves nothing behind.
        tools = load_tools(cfg.tools) if environment is None and cfg.tools else None
        if tools is not None or isinstance(environment, ToolEnvironment):
            # read when the chat prompts are rendered (RLTrainer._render), before the environment is set
            self.tool_schemas = [t.schema for t in tools] if tools is not None else environment.schemas
        super().__init__(model, cfg, reward_fn, prompts, eval_prompts, run_dir, verbose,
                         tensorboard, dataset=dataset, eval_dataset=eval_dataset, eval_fraction=eval_fraction,
                         reward_weights=reward_weights, sampler=sampler)
        if cfg.async_generation:
            # Started on the first rollout (a resume loads the weights first).
            threads = cfg.torch_threads if cfg.generator_threads is None else cfg.generator_threads
            self.sampler = AsyncProcessSampler(cfg.seed, threads, cfg.async_timeout_s,
                                               self.precision.dtype if self.precision.mixed else None)
        self.prepare_reward_models(self.rewards)
        # Several turns: the caller's environment, or the tools of config.tools answering tool calls.
        if tools is not None:
            environment = ToolEnvironment(tools, self.tokenizer, self.config.tool_timeout_s)
        elif isinstance(environment, ToolEnvironment) and environment.tokenizer is None:
            environment.tokenizer = self.tokenizer  # tool turns rendered by the policy's own chat template
        self.environment = environment

    def needs_reference_copy(self) -> bool:
        """A copy of the initial policy only when a KL term uses it, or keep_reference asks for the kl_ref
        metric: on a real model the copy doubles the weights in memory."""
        keep = self.config.keep_reference
        return self.config.kl_coef > 0 if keep is None else keep

    def start_pipeline(self) -> None:
        """A pipelined sampler starts on the first step's prompts (drawn now, unless a step ahead already drew
        them) while train() evaluates the initial policy."""
        if not self.sampler.pipelined:
            return
        if self._prompts_ahead is None:
            self._prompts_ahead = self.draw_prompts(self.prompts_per_rank)
        self.prefetch(self._prompts_ahead[0], repeats=self.config.group_size)

    def _draw_groups(self, n: int, first: bool = False) -> SimpleNamespace:
        """n prompts x group_size completions (rows grouped by prompt) with their rewards. first: the step's
        first draw, whose prompts a pipelined sampler was handed a step ahead."""
        group = self.config.group_size
        ahead, self._prompts_ahead = (self._prompts_ahead, None) if first else (None, self._prompts_ahead)
        unique, rows = ahead if ahead is not None else self.draw_prompts(n)
        # Each prompt is encoded and prefilled once for its whole group (the rows come out grouped).
        rollout, completions, gen_s = self.rollout(unique, repeats=group)
        if first and self.sampler.pipelined and (self._last_step is None or self.step_count < self._last_step):
            # The next step's prompts go to the generator now: it samples them, one update behind, while
            # this step scores, learns and evaluates.
            self._prompts_ahead = self.draw_prompts(n)
            self.prefetch(self._prompts_ahead[0], repeats=group)
        texts = [p for p in unique for _ in range(group)]
        rep_rows = None if rows is None else [r for r in rows for _ in range(group)]
        # A reward model that shares the policy's tokenizer scores the sampled ids (no decode and re-encode).
        rewards, per_fn = self.score(self.dataset, rep_rows, texts, completions, rollout=rollout)
        episodes = self.last_episodes if self.environment is not None else None
        if episodes is not None:
            rewards = add_environment_rewards(rewards, episodes.rewards)
        return SimpleNamespace(rollout=rollout, rewards=rewards, per_fn=per_fn, gen_s=gen_s, n=n, episodes=episodes)

    def collect(self) -> SimpleNamespace:
        """prompts_per_step groups of G completions (with dynamic sampling: groups whose rewards differ,
        drawing up to max_extra_draws more rounds), their advantages, loss mask and the reference's
        log-probs."""
        cfg: GRPOConfig = self.config
        started = time.perf_counter()
        group, wanted = cfg.group_size, self.prompts_per_rank  # this rank's share of prompts_per_step
        parts = [self._draw_groups(wanted, first=True)]
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
        # Rows sampled too many policy versions ago leave the loss (their rewards still count in the groups).
        stale = stale_rows(rollout.policy_version, self.learner_version, cfg.max_staleness)
        if stale is not None:
            keep_rows = keep_rows & ~stale.to(keep_rows.device)
        loss_mask = response_mask * keep_rows[:, None].to(response_mask.dtype)
        width = rollout.prompt_ids.shape[1]
        # Rows of one group share a prompt: forward passes run it once per group (same values, tested).
        groups = torch.arange(len(chosen), device=input_ids.device).repeat_interleave(group)
        # The built-in sampler's own log-probs serve as the old policy's in float32: they equal a full
        # forward pass to ~1e-6 (tested), and skipping that pass saves a quarter of the step's compute.
        # They stay fixed for every epoch and minibatch of this generation.
        old_logp = self.old_logprobs(rollout, self.shared_prompt_groups(groups))
        # An outside engine's log-probs against the learner's: the loss is weighted by their ratio. The
        # built-in sampler is the learner itself (its float32 log-probs are the old ones; in bfloat16 the two
        # passes differ by rounding alone): not corrected, its mismatch only reported. With old_logprobs
        # sampler the ratio itself is taken against the sampling policy, so there is nothing left to weight,
        # and no learner pass to measure the gap against.
        unmeasured = self.takes_sampler_logprobs() and not self.sampler.exact_logprobs
        sample_weights = None if self.sampler.exact_logprobs or unmeasured else importance_weights(
            old_logp, rollout.logprobs, loss_mask, cfg.offpolicy_correction, cfg.offpolicy_cap)
        offpolicy = offpolicy_statistics(old_logp, rollout.logprobs, loss_mask, cfg.offpolicy_correction,
                                         cfg.offpolicy_cap)
        if unmeasured:
            offpolicy = type(offpolicy)(math.nan, math.nan, offpolicy[2], math.nan, offpolicy[4])
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
            if cfg.kl_placement == "reward" and cfg.kl_coef > 0:
                # Sequence-level objectives (GSPO, GMPO) take the whole sequence's penalty in their one advantage.
                per_token = cfg.importance_sampling == "token" and cfg.surrogate != "gmpo"
                advantages = kl_reward_advantages(advantages, old_logp, ref_logp, loss_mask, cfg.kl_coef,
                                                  cfg.kl_estimator, per_token)
        drawn_valid = ~torch.isnan(all_rewards)
        # The row describes the whole step: statistics over every rank's rollouts (each rank has as many rows).
        drawn = self.global_sum(float(drawn_valid.sum()))[0]
        mean, var = pooled_moments(all_rewards, drawn_valid, self.global_sum)
        size = self.world.size
        fractions = self.global_sum(float(truncated.float().mean()), self.prompt_truncated_fraction,
                                    float((~valid).float().mean()))
        # Groups of the trained batch whose rewards are all equal: zero advantage, no reward signal (the doctor's
        # zero_std_groups rule reads the fraction).
        zero_std = int((~keep_mask[chosen]).sum())
        counts = self.global_sum(sum(p.n for p in parts), int((~keep_mask).sum()) - filled if cfg.dynamic_sampling
                                 else 0, filled, zero_std)
        # Versions behind the learner, summed over rows (a row of the live policy, version None, is 0 behind).
        lag = 0.0 if rollout.policy_version is None else float(
            (self.learner_version - rollout.policy_version.double()).clamp(min=0).sum())
        mismatch = self.global_sum(*offpolicy, float(stale.sum()) if stale is not None else 0.0, float(len(row_idx)),
                                   lag)
        stats = {
            "reward": mean if drawn else math.nan,
            "reward_std": math.sqrt(var),
            "truncated_fraction": fractions[0] / size,
            "prompt_truncated_fraction": fractions[1] / size,
            "skipped_fraction": fractions[2] / size,
            "groups_drawn": int(counts[0]),
            "groups_dropped": int(counts[1]),
            "groups_filled": int(counts[2]),
            "zero_std_fraction": counts[3] / (wanted * size),
            # sampler vs learner: k3 KL(sampler || learner) and mean |log w| per real token, the fraction of
            # tokens (sequences, in a sequence mode) whose weight passed offpolicy_cap, of rows too stale
            "offpolicy/kl": mismatch[0] / max(mismatch[2], 1.0),
            "offpolicy/abs_log_w": mismatch[1] / max(mismatch[2], 1.0),
            "offpolicy/clipped_frac": mismatch[3] / max(mismatch[4], 1.0),
            "offpolicy/stale_frac": mismatch[5] / max(mismatch[6], 1.0),
            "offpolicy/version_lag": mismatch[7] / max(mismatch[6], 1.0),  # mean updates behind, per row
        }
        if parts[0].episodes is not None:
            # Multi-turn episodes: mean turns, tool calls and failed calls per episode over this step's draws.
            for key in parts[0].episodes.stats():
                stats[key] = sum(p.episodes.stats()[key] for p in parts) / len(parts)
        for name in parts[0].per_fn:
            values = [p.per_fn[name] for p in parts if not math.isnan(p.per_fn[name])]
            # the mean of each rank's mean (over its draws): ranks draw as many groups, up to dynamic sampling
            total, ranks = self.global_sum(sum(values) / len(values) if values else 0.0, 1.0 if values else 0.0)
            stats[f"reward_{name}"] = total / ranks if ranks else math.nan
        return SimpleNamespace(started=started, stats=stats, advantages=advantages, input_ids=input_ids,
                               attention=attention, mask=loss_mask, width=width, groups=groups,
                               old_logp=old_logp, ref_logp=ref_logp, sample_weights=sample_weights,
                               gen_s=sum(p.gen_s for p in parts),
                               group=group, tokens=float(response_mask.sum()), batch=len(row_idx),
                               gen_tokens=sum(float(p.rollout.response_mask.sum()) for p in parts))

    def learn(self, batch_data: SimpleNamespace, optimizer: FlatOptimizer) -> dict[str, float]:
        """n_epochs x num_minibatches optimizer steps on one collected batch (proximo.ppo.run_update, the
        loop every proximo trainer updates through, with a GRPOLearner); returns the row of statistics."""
        cfg: GRPOConfig = self.config
        b = batch_data
        sequence = cfg.importance_sampling == "sequence"
        low, high = (cfg.seq_clip_range, cfg.seq_clip_range_high) if sequence else (cfg.clip_range, cfg.clip_range_high)
        # The clip_fraction statistic counts ratios outside [1 - stat_low, 1 + stat_high]: where each
        # surrogate's bound acts (CISPO: above its cap; GMPO: outside (e^-x, e^x); SAPO: nowhere, a soft gate).
        stat_low, stat_high = low, high
        if cfg.surrogate == "cispo":
            stat_low, stat_high = 1.0, cfg.cispo_max_weight - 1.0
        elif cfg.surrogate == "gmpo":
            low = high = cfg.gmpo_clip_range
            stat_low, stat_high = -math.expm1(-low), math.expm1(high)
        elif cfg.surrogate == "sapo":
            stat_low, stat_high = 1.0, math.inf
        settings = GRPOSettings(
            clip_range=low, clip_range_high=high,
            # REINFORCE++ has the KL in its rewards already, as has kl_placement reward: no second KL term.
            kl_coef=0.0 if cfg.advantage_estimator.startswith("reinforce++") or cfg.kl_placement == "reward"
            else cfg.kl_coef,
            ent_coef=cfg.ent_coef, loss_aggregation=cfg.loss_aggregation,
            loss_constant=cfg.loss_constant or float(self.max_new_tokens),
            importance_sampling=cfg.importance_sampling, num_minibatches=cfg.num_minibatches,
            # dapo divides every minibatch by the whole batch's (loss-mask) tokens, over all ranks, over the
            # minibatch count.
            batch_tokens=self.global_sum(float(b.mask.sum()))[0],
            micro_batch_size=cfg.micro_batch_size, temperature=cfg.temperature, max_grad_norm=cfg.max_grad_norm,
            surrogate=cfg.surrogate, cispo_max_weight=cfg.cispo_max_weight, sapo_tau_pos=cfg.sapo_tau_pos,
            sapo_tau_neg=cfg.sapo_tau_neg, kl_estimator=cfg.kl_estimator, kl_ratio_weighted=cfg.kl_ratio_weighted)
        size = b.batch // cfg.num_minibatches

        def minibatches(epoch: int) -> list[TokenMinibatch]:
            # Whole groups per minibatch (their rows then share one prompt pass) where they split evenly.
            return [TokenMinibatch(b, rows) for rows in minibatch_rows(b.batch, size, b.group)]
        kl_limit = None if cfg.target_kl is None else 1.5 * cfg.target_kl
        with self.learning_passes():
            row = run_update(self.learner_for(optimizer), settings, cfg.n_epochs, minibatches, kl_limit, stat_low,
                             stat_high)
        row.pop("value_loss")  # no critic
        seconds = time.perf_counter() - b.started
        # Rates add up: the ranks run at once.
        tokens, batch, gen_rate, rate = self.global_sum(b.tokens, b.batch, b.gen_tokens / max(b.gen_s, 1e-9),
                                                        b.tokens / seconds)
        if b.ref_logp is None:
            row["kl_ref"] = None
        row.update(b.stats)
        row.update({
            "accuracy": row["reward"] if self.task is not None and self.reward_is_task else None,
            "optimizer_steps": int(row["minibatches"]), "response_length": tokens / batch, "kl_coef": cfg.kl_coef,
            "learning_rate": cfg.learning_rate, "gen_tokens_per_s": gen_rate, "tokens_per_s": rate,
        })
        return row
