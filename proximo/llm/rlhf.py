"""PPO-RLHF: the policy samples, a frozen reward model scores the whole completion (the reward at
the last token), a per-token KL penalty to the frozen reference is added to the reward, GAE runs
over tokens with a value head, and the update uses proximo.core's clipped policy and value losses
with an adaptive or fixed KL coefficient (proximo.core.kl controllers)."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from proximo.core import AdaptiveKLController, FixedKLController, masked_mean, policy_loss, value_loss
from proximo.errors import ProximoError
from proximo.learners.optimizer import FlatOptimizer
from proximo.llm.config import RLHFConfig
from proximo.llm.generation import response_logprobs
from proximo.distributed import broadcast_module_
from proximo.llm.losses import pooled_moments, pooled_whiten, rlhf_token_rewards, token_gae, truncated_rows
from proximo.llm.models import ScalarHead, forward_hidden, hidden_size
from proximo.llm.reward_model import RewardModel
from proximo.llm.rewards import RewardModelReward, RewardSet
from proximo.llm.learners import TokenLearner, TokenMinibatch
from proximo.llm.rl import RLTrainer
from proximo.llm.trainer import TrainedWeights
from proximo.llm.run import RewardFn
from proximo.nn.normalize import RunningMeanStd
from proximo.ppo import minibatch_rows, run_update

VALUE_HEAD = "value"


@dataclass
class RLHFSettings:
    """The values of one PPO-RLHF update a minibatch step takes (from RLHFConfig)."""

    clip_range: float
    clip_range_high: float | None
    clip_range_vf: float | None   # value clipping around the rollout's values (None: off)
    vf_coef: float
    ent_coef: float
    micro_batch_size: int
    temperature: float
    max_grad_norm: float | None


class RLHFLearner(TokenLearner):
    """PPO-RLHF's minibatch step: proximo.core's clipped policy loss and clipped value loss on tokens, minus
    the entropy bonus; every term a token mean over the minibatch."""

    name = "rlhf"

    def minibatch_counts(self, batch, rows: torch.Tensor, settings: RLHFSettings) -> dict[str, float]:
        """The minibatch's loss-mask tokens over every rank."""
        tokens, = self.global_sum(float(batch.mask[rows].sum()))
        return {"tokens": max(tokens, 1.0)}

    def part_loss(self, batch, part: torch.Tensor, counts: dict[str, float], settings: RLHFSettings):
        """The part's policy, value and entropy terms, weighted by its share of the minibatch's tokens."""
        b = batch
        m = b.mask[part]
        share = float(m.sum()) / counts["tokens"]
        logp, entropy, values = self.trainer._forward(b.input_ids[part], b.attention[part], b.width,
                                                      with_entropy=True)
        old = b.old_logp[part]
        out = policy_loss(logp, old, b.advantages[part], "clip", settings.clip_range, settings.clip_range_high,
                          mask=m, stats=False)
        v_loss = value_loss(values.float(), b.old_values[part], b.returns[part], settings.clip_range_vf, mask=m)
        mean_entropy = masked_mean(entropy, m)
        loss = out.loss + settings.vf_coef * v_loss - settings.ent_coef * mean_entropy
        with torch.no_grad():
            log_ratio = (logp.float() - old)[m.to(torch.bool)]
            losses = torch.stack([out.loss.float(), v_loss.float(), mean_entropy.float()]) * share
        return loss * share, log_ratio, losses, {}


class RLHF(RLTrainer):
    """PPO-RLHF: RLHF("tiny" | model_dir | run_dir, reward_model=RM_DIR and/or reward_fn=[...],
    reward_weights=[...], prompts=[...] or dataset=FILE [eval_dataset= | eval_fraction=], **RLHFConfig
    fields).train(steps) -> summary dict.

    The training reward is the weighted sum (reward_weights, one per source, the reward model first) of
    reward_model (a `proximo llm rm` run, a transformers sequence classifier with num_labels 1 such as
    TRL's RewardTrainer writes, or a RewardModel) and reward_fn (functions, `module:function` specs,
    built-ins or more reward-model folders, called as GRPO calls them). A reward model that shares the
    policy's tokenizer scores the sampled token ids; another scores the decoded text through its own
    tokenizer. A sample no source scores (a function's None) gets loss mask 0.

    Held-out evaluation uses the task's exact-match reward when there is a task, else eval_reward_fn (a
    function, a `module:function` spec or a list of them), else the training reward. With a task or
    eval_reward_fn each step's row also has the true reward of its training samples as `accuracy`, so
    that a rising score over a falling accuracy (reward over-optimization) is visible."""

    kind = "rlhf"
    learner_class = RLHFLearner

    def __init__(self, model: str | Path = "tiny", reward_model: str | Path | RewardModel | None = None,
                 prompts: list[str] | None = None, eval_prompts: list[str] | None = None,
                 eval_reward_fn: RewardFn | str | list | None = None, run_dir: str | Path | None = None,
                 verbose: bool = False, tensorboard: bool = True, dataset: Any = None, eval_dataset: Any = None,
                 eval_fraction: float | None = None, reward_fn: RewardFn | str | list | None = None,
                 reward_weights: list[float] | None = None, **config: Any) -> None:
        sources: list = []
        if reward_model is not None:
            model_reward = reward_model if isinstance(reward_model, RewardModel) else RewardModel.load(reward_model)
            sources.append(RewardModelReward(model_reward, source=None if isinstance(reward_model, RewardModel)
                                             else str(reward_model)))
        if reward_fn is not None:
            sources += [reward_fn] if callable(reward_fn) or isinstance(reward_fn, (str, Path)) else list(reward_fn)
        if not sources:
            raise ProximoError("RLHF needs a reward: reward_model=DIR (train one with `proximo llm rm`) and/or "
                               "reward_fn=... (functions, module:function specs, reward-model folders)")
        self.train_rewards = RewardSet(sources, reward_weights)
        models = self.train_rewards.reward_models()
        self.reward_model: RewardModel | None = models[0].model if models else None
        if (prompts is not None or dataset is not None) and "task" not in config:
            config["task"] = ""
        # True rewards (the task's or the user's) are measured on training samples too; the training reward
        # itself, the fallback, already is the `score` column.
        self.true_reward = bool(config.get("task", "add")) or eval_reward_fn is not None
        if eval_reward_fn is None and not config.get("task", "add"):
            eval_reward_fn = self.train_rewards
        super().__init__(model, RLHFConfig(**config), eval_reward_fn, prompts, eval_prompts, run_dir, verbose,
                         tensorboard, extra={"reward_model": None if reward_model is None else str(reward_model)},
                         dataset=dataset, eval_dataset=eval_dataset, eval_fraction=eval_fraction)
        self.value_head = ScalarHead(hidden_size(self.model))
        broadcast_module_(self.value_head, self.world)  # each rank drew its own initial head: rank 0's for all
        self.value_head.to(self.device)
        self.critic: RewardModel | None = None
        critic_source = next((m.model for m in models if m.reads_tokens_of(self.tokenizer)), None)
        if self.config.critic == "reward_model" and critic_source is None:
            raise ProximoError("critic reward_model starts the value model from a reward model that reads the "
                               "policy's tokens, and no reward here is one (none, or another tokenizer); use "
                               "critic head (or auto)")
        if self.config.critic == "reward_model" or (self.config.critic == "auto" and critic_source is not None):
            # A critic that starts out knowing the reward: its early advantages are signal, not noise.
            self.critic = _critic_from(critic_source).to(self.device)
            for p in self.critic.parameters():
                p.requires_grad_(True)
        # Copied before this: the critic trains in float32 while the frozen scorers are stored in the low dtype.
        self.prepare_reward_models(self.train_rewards)
        if self.rewards is not self.train_rewards:
            self.prepare_reward_models(self.rewards)
        cfg = self.config
        # Running (not per-batch) score statistics, from no prior (count 0): the first batch's own moments.
        self.score_stats = RunningMeanStd((), epsilon=0.0)
        self.kl_controller = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target) if cfg.kl_controller == "adaptive"
                              else FixedKLController(cfg.kl_coef))

    def trainable_parameters(self):
        """The policy and its critic (value head or separate value model)."""
        critic = self.critic if self.critic is not None else self.value_head
        return super().trainable_parameters() + list(critic.parameters())

    def heads(self) -> dict:
        """The value head, saved as value_head.safetensors (none with a separate critic model)."""
        return {VALUE_HEAD: self.value_head} if self.critic is None else {}

    def state_parts(self) -> dict:
        """The policy's, and the critic's trained weights, the KL controller and the score normalizer too."""
        critic = ("critic", self.critic) if self.critic is not None else ("value_head", self.value_head)
        return {**super().state_parts(), critic[0]: TrainedWeights(critic[1]), "kl_controller": self.kl_controller,
                "score_stats": self.score_stats}

    def _values(self, input_ids: torch.Tensor, attention: torch.Tensor, width: int) -> torch.Tensor:
        """Values [B, R] of the states before each response token, from the separate critic."""
        _, hidden = forward_hidden(self.critic.backbone, input_ids, attention, with_logits=False)
        return self.critic.head(hidden[:, width - 1:-1, :]).float()

    def _forward(self, input_ids, attention, width, with_entropy=False):
        head = self.value_head if self.critic is None else None
        logp, entropy, values = response_logprobs(self.model, input_ids, attention, width, self.config.temperature,
                                                  with_entropy=with_entropy, head=head)
        if self.critic is not None:
            values = self._values(input_ids, attention, width)
        return logp, entropy, values

    def _sequence_rewards(self, prompts: list[str], rows: list[int] | None, completions: list[str],
                          rollout) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """(rewards [B] float32 with 0 where no source scored the sample, valid [B] bool, {reward_<name>: the
        mean over ranks of each rank's mean score of that source}) of the training reward for one rollout."""
        rewards, means = self.score(self.dataset, rows, prompts, completions, self.train_rewards, rollout)
        valid = ~torch.isnan(rewards)
        stats = {}
        for name, value in means.items():
            scored = not math.isnan(value)
            total, ranks = self.global_sum(value if scored else 0.0, float(scored))
            stats[f"reward_{name}"] = total / ranks if ranks else math.nan
        return torch.nan_to_num(rewards).to(self.device), valid.to(self.device), stats

    def collect(self) -> SimpleNamespace:
        """Sample one completion per prompt; score it, per-token rewards with the KL penalty, GAE."""
        cfg: RLHFConfig = self.config
        started = time.perf_counter()
        # This rank's share of prompts_per_step; dataset rows are kept for the true-reward columns.
        if self.dataset is not None:
            prompts, rows = self.draw_prompts(self.prompts_per_rank)
        else:
            prompts, rows = self.sample_prompts(self.prompts_per_rank), None
        rollout, completions, gen_s = self.rollout(prompts)
        input_ids, attention, mask = rollout.input_ids, rollout.attention_mask, rollout.response_mask
        width = rollout.prompt_ids.shape[1]
        beta = self.kl_controller.value
        # The training reward, weighted over its sources; a sample none scored trains nothing (loss mask 0).
        scores, valid, reward_stats = self._sequence_rewards(prompts, rows, completions, rollout)
        # completions cut at max_new_tokens without a stop token (the doctor's response_length_runaway rule)
        truncated = float(truncated_rows(rollout.response_ids, mask, self.tokenizer.stop_ids).sum())
        mask = mask * valid[:, None].to(mask.dtype)
        with torch.inference_mode(), self.precision.autocast():
            old_logp, _, old_values = self._forward(input_ids, attention, width)
            with self.reference_mode():
                ref_logp, _, _ = response_logprobs(self.reference, input_ids, attention, width, cfg.temperature)
        scores, old_logp, old_values, ref_logp = (t.float().clone() for t in (scores, old_logp, old_values, ref_logp))
        rewards_seq = scores
        if cfg.normalize_scores:
            # Running (not per-batch) statistics: a batch that is better on the whole still earns more.
            # over every rank's scores: the moments about the shared running mean add up over ranks
            moments = torch.from_numpy(self.score_stats.moments(scores[valid].detach().double().cpu()))
            self.score_stats.update_from_moments(self.world.all_reduce_sum_(moments).numpy())
            rewards_seq = (scores - float(self.score_stats.mean)) / (float(self.score_stats.var.sqrt()) + 1e-6)
        rewards, kl_tokens = rlhf_token_rewards(rewards_seq, old_logp, ref_logp, mask, beta, cfg.kl_estimator)
        advantages, returns = token_gae(rewards, old_values, mask, cfg.gamma, cfg.gae_lambda)
        if cfg.whiten_advantages:
            advantages = pooled_whiten(advantages, mask, self.global_sum)  # over every rank's tokens
        return SimpleNamespace(started=started, prompts=prompts, rows=rows, completions=completions, scores=scores,
                               input_ids=input_ids, attention=attention, mask=mask, width=width, old_logp=old_logp,
                               old_values=old_values, advantages=advantages, returns=returns, kl_tokens=kl_tokens,
                               beta=beta, gen_s=gen_s, valid=valid, reward_stats=reward_stats,
                               truncated=truncated)

    def learn(self, batch_data: SimpleNamespace, optimizer: FlatOptimizer) -> dict[str, float]:
        """K epochs of clipped policy and value updates on one collected batch; returns the row."""
        cfg: RLHFConfig = self.config
        b = batch_data
        started, prompts, completions, scores, gen_s, beta = b.started, b.prompts, b.completions, b.scores, b.gen_s, b.beta
        mask, kl_tokens = b.mask, b.kl_tokens
        batch = len(prompts)
        settings = RLHFSettings(clip_range=cfg.clip_range, clip_range_high=cfg.clip_range_high,
                                clip_range_vf=cfg.clip_range_vf, vf_coef=cfg.vf_coef, ent_coef=cfg.ent_coef,
                                micro_batch_size=cfg.micro_batch_size, temperature=cfg.temperature,
                                max_grad_norm=cfg.max_grad_norm)
        size = batch // cfg.num_minibatches

        def minibatches(epoch: int) -> list[TokenMinibatch]:
            return [TokenMinibatch(b, rows) for rows in minibatch_rows(batch, size)]
        kl_limit = None if cfg.target_kl is None else 1.5 * cfg.target_kl
        with self.learning_passes():
            # proximo.ppo.run_update: the loop every proximo trainer updates through, with an RLHFLearner.
            row = run_update(self.learner_for(optimizer), settings, cfg.n_epochs, minibatches, kl_limit,
                             cfg.clip_range, cfg.clip_range_high)
        # Statistics of the whole step, over every rank's rollouts (run_update's are pooled already); rates add
        # up (the ranks run at once). The true reward (the task's or the --reward functions') of the step's samples, unscored (NaN) ones out.
        true_sum, true_count = 0.0, 0.0
        if self.true_reward:
            true = self.score(self.dataset, b.rows, prompts, completions)[0]
            scored = true[~torch.isnan(true)]
            true_sum, true_count = float(scored.sum()), float(len(scored))
        tokens = float(mask.sum())
        kl_sum, rows, tokens, true_sum, true_count, gen_rate, rate, truncated = self.global_sum(
            float(kl_tokens.sum()), batch, tokens, true_sum, true_count, tokens / max(gen_s, 1e-9),
            tokens / (time.perf_counter() - started), b.truncated)
        # KL per sequence (sum over its tokens), the quantity the adaptive controller targets: the same on every rank.
        sequence_kl = kl_sum / rows
        self.kl_controller.update(sequence_kl)
        score_mean, score_var = pooled_moments(scores, b.valid, self.global_sum)
        row.update({
            "score": score_mean, "reward": score_mean, "reward_std": score_var ** 0.5,
            "accuracy": true_sum / true_count if true_count else None,
            "kl_ref": kl_sum / max(tokens, 1.0), "kl_ref_sequence": sequence_kl, "kl_coef": beta,
            "response_length": tokens / rows, "truncated_fraction": truncated / rows,
            "learning_rate": cfg.learning_rate, "gen_tokens_per_s": gen_rate,
            "tokens_per_s": rate,
        })
        row.update(b.reward_stats)  # each reward source's mean score
        return row


def _critic_from(reward_model: RewardModel) -> RewardModel:
    """A trainable copy of reward_model to serve as the value model; its head gains a zero bias when it has
    none (a sequence classifier's score layer): values then start as the scores and can shift as a whole."""
    critic = copy.deepcopy(reward_model)
    linear = critic.head.linear
    if linear.bias is None:
        biased = torch.nn.Linear(linear.in_features, 1, device=linear.weight.device)
        with torch.no_grad():
            biased.weight.copy_(linear.weight.float())
            biased.bias.zero_()
        critic.head = ScalarHead(linear.in_features, linear=biased)
    return critic.float()
