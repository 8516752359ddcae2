"""The LLM-specific pieces around proximo.core: group-relative (GRPO, RLOO) and REINFORCE++ advantages,
the GRPO/GSPO loss, the CISPO, GMPO and SAPO surrogates, the KL to the reference in the loss or in the
reward, the loss aggregations (grpo, bnpo, dr_grpo, dapo), DAPO's group filter and overlong mask,
per-token RLHF rewards, GAE over tokens, and the Bradley-Terry loss. Pure functions on tensors;
token batches are [B, L] with a mask that is 1 on real response tokens."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from proximo.core import PolicyLossOutput, gae, kl_estimate, masked_mean, policy_loss
from proximo.errors import ProximoError


LOSS_AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")
# The first spellings of the aggregations, still accepted (runs and configs written before the rename).
AGGREGATION_ALIASES = {"seq-mean": "grpo", "token-mean": "bnpo", "constant": "dr_grpo"}
ADVANTAGE_ESTIMATORS = ("grpo", "rloo", "reinforce++", "reinforce++-baseline")
REWARD_SCALINGS = ("group", "batch", "none")
IMPORTANCE_SAMPLING = ("token", "sequence")
# The per-token surrogate objectives grpo_token_loss computes (clip with sequence importance sampling is GSPO).
SURROGATES = ("clip", "cispo", "gmpo", "sapo")
# Where the KL to the reference enters: a loss term (GRPO paper) or a per-token penalty in the reward.
KL_PLACEMENTS = ("loss", "reward")
# Sums a list of floats over every rank of a run (RLTrainer.global_sum); None: this process alone.
GlobalSum = Callable[..., list]


def pooled_moments(values: torch.Tensor, mask: torch.Tensor | None = None,
                   global_sum: GlobalSum | None = None) -> tuple[float, float]:
    """(mean, unbiased variance) of values at mask over every rank's values: one pass sums the count and
    the values, a second the squared deviations from the pooled mean (float64, two passes: no
    cancellation). With global_sum None it is the statistics of these values alone; a single value (or
    none) has variance 0."""
    reduce = global_sum if global_sum is not None else (lambda *xs: list(xs))
    x = values.detach().double()
    keep = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    count, total = reduce(float(keep.sum()), float(x[keep].sum()))
    mean = total / count if count else 0.0
    squares, = reduce(float(((x[keep] - mean) ** 2).sum()))
    return mean, squares / (count - 1) if count > 1 else 0.0


def pooled_whiten(x: torch.Tensor, mask: torch.Tensor, global_sum: GlobalSum | None = None,
                  eps: float = 1e-8) -> torch.Tensor:
    """x standardized with the mean and unbiased std at mask over every rank's values (pooled_moments;
    masked_whiten's formula and eps); padding comes back as 0."""
    mean, var = pooled_moments(x, mask, global_sum)
    return (x - mean) * torch.rsqrt(torch.tensor(var + eps, dtype=x.dtype, device=x.device)) * mask.to(x.dtype)


def aggregation_name(mode: str) -> str:
    """The current name of a loss aggregation (old spellings mapped onto the new ones)."""
    name = AGGREGATION_ALIASES.get(mode, mode)
    if name not in LOSS_AGGREGATIONS:
        raise ProximoError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(LOSS_AGGREGATIONS)} "
                           f"(old spellings {', '.join(AGGREGATION_ALIASES)} still work)")
    return name


def scaling_name(scale: bool | str) -> str:
    """The reward scaling group | batch | none; True and False (the old boolean) mean group and none."""
    if isinstance(scale, bool):
        return "group" if scale else "none"
    name = {"true": "group", "false": "none"}.get(str(scale).lower(), str(scale))
    if name not in REWARD_SCALINGS:
        raise ProximoError(f"unknown reward scaling {scale!r}; choose one of {', '.join(REWARD_SCALINGS)}")
    return name


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool | str = True, eps: float = 1e-4,
                     estimator: str = "grpo", valid: torch.Tensor | None = None,
                     global_sum: GlobalSum | None = None) -> torch.Tensor:
    """Sequence advantages [B] for rewards [B] laid out as consecutive groups of group_size completions
    of one prompt (prompt 0's G rows, then prompt 1's, ...).

    estimator grpo: A_i = r_i - mean_g(r)                       (group mean as the baseline)
    estimator rloo: A_i = r_i - (sum_g(r) - r_i) / (n_g - 1)    (mean of the other members, leave-one-out)
                        = n_g / (n_g - 1) x (r_i - mean_g(r))
    then scale group: A / (std_g(r) + eps), batch: A / (std(r over the whole batch) + eps), none: A
    (std unbiased; True/False mean group/none). valid [B] (bool, optional) marks the samples that have a
    reward: the others get A = 0 and are left out of every mean, count n_g and std (a group with fewer
    than two valid members gives all its members 0). Under data parallel the batch is every rank's rows:
    pass global_sum (pooled_moments) and batch scaling divides by the std over all of them."""
    if group_size < 2:
        raise ProximoError(f"group_size must be at least 2 for group-relative advantages, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ProximoError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}; "
                           f"pass a flat tensor with prompts x group_size entries")
    if estimator not in ("grpo", "rloo"):
        raise ProximoError(f"group_advantages computes grpo or rloo advantages, got {estimator!r}")
    scale = scaling_name(scale)
    ok = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.to(torch.bool)
    okf = ok.to(rewards.dtype).view(-1, group_size)
    grouped = torch.where(ok, rewards, 0.0).view(-1, group_size)
    count = okf.sum(1, keepdim=True)
    mean = grouped.sum(1, keepdim=True) / count.clamp(min=1.0)
    deviation = (grouped - mean) * okf
    # rloo: the leave-one-out baseline is the group mean moved away from r_i by a factor n / (n - 1).
    centred = deviation * count / (count - 1).clamp(min=1.0) if estimator == "rloo" else deviation
    # A lone valid member has no one to be compared with: no signal.
    centred = centred * (count >= 2)
    if scale == "group":
        std = ((deviation ** 2).sum(1, keepdim=True) / (count - 1).clamp(min=1.0)).sqrt()
        centred = centred / (std + eps)
    elif scale == "batch":
        centred = centred / (math.sqrt(pooled_moments(rewards, ok, global_sum)[1]) + eps)
    return centred.reshape(-1)


def reinforce_pp_advantages(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor | None,
                            mask: torch.Tensor, kl_coef: float, global_sum: GlobalSum | None = None) -> torch.Tensor:
    """REINFORCE++ token advantages [B, R]: per-token reward r_t = -kl_coef x (logp_t - ref_logp_t) (k1 KL
    of the sampling policy to the reference, folded into the reward), plus the sequence score [B] at the
    last real token; the return G_t = sum_{s >= t} r_s (no discount, no critic); advantages are G
    standardized over every real token of the batch (masked mean and unbiased std; with global_sum, of
    every rank's batch: pooled_moments). Zero on padding."""
    if ref_logp is None or kl_coef == 0:
        ref_logp = logp
    rewards, _ = rlhf_token_rewards(scores, logp, ref_logp, mask, kl_coef, "k1")
    maskf = mask.to(rewards.dtype)
    # Reward-to-go: a reversed cumulative sum along each row (padding carries 0).
    returns = (rewards * maskf).flip(1).cumsum(1).flip(1) * maskf
    return pooled_whiten(returns, mask, global_sum)


def informative_groups(rewards: torch.Tensor, group_size: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[P] bool for rewards [P x G] in groups: True where the group's valid rewards are not all equal
    (a group whose members all score the same has zero advantage everywhere: DAPO's dynamic sampling
    drops it)."""
    ok = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.to(torch.bool)
    grouped = rewards.view(-1, group_size)
    okg = ok.view(-1, group_size)
    high = torch.where(okg, grouped, -torch.inf).max(1).values
    low = torch.where(okg, grouped, torch.inf).min(1).values
    return (okg.sum(1) >= 2) & (high > low)


def truncated_rows(response_ids: torch.Tensor, response_mask: torch.Tensor, eos_id: int | Sequence[int]
                   ) -> torch.Tensor:
    """[B] bool: rows of right-padded responses [B, R] whose last real token (response_mask 1) is no stop id
    (cut at max_new_tokens; in a multi-turn episode, its last policy turn was cut); eos_id: one id or several
    stop ids (a tokenizer's stop_ids). A row without tokens counts as cut."""
    stops = torch.as_tensor(eos_id, device=response_ids.device)
    final = response_ids.gather(1, last_token_index(response_mask)[:, None]).squeeze(1)
    ended = torch.isin(final, stops) & response_mask.to(torch.bool).any(dim=1)
    return ~ended


def loss_normalizer(mask: torch.Tensor, mode: str, constant: float | None = None,
                    batch_tokens: float | None = None, num_minibatches: int = 1) -> float:
    """The count aggregate_loss divides by for the rows of mask [B, L] (see aggregate_loss): rows with a
    real token (grpo), real tokens (bnpo), B x constant (dr_grpo) or batch_tokens / num_minibatches
    (dapo). Summed over micro-batches (and ranks) it is the count of the minibatch they make up."""
    mode = aggregation_name(mode)
    maskf = mask.to(torch.float32)
    if mode == "grpo":
        return float((maskf.sum(1) > 0).sum())
    if mode == "bnpo":
        return float(maskf.sum())
    if mode == "dr_grpo":
        if constant is None or constant <= 0:
            raise ProximoError(f"the dr_grpo aggregation needs a positive constant, got {constant}")
        return mask.shape[0] * float(constant)
    if batch_tokens is None:
        return float(maskf.sum())
    if num_minibatches < 1:
        raise ProximoError(f"num_minibatches must be at least 1, got {num_minibatches}")
    return float(batch_tokens) / num_minibatches


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: str, constant: float | None = None,
                   batch_tokens: float | None = None, num_minibatches: int = 1,
                   normalizer: float | None = None) -> torch.Tensor:
    """Reduce a per-token loss l [B, L] (mask [B, L], |o_i| = real tokens of row i) to a scalar.

    grpo:    (1/B') sum_i (1/|o_i|) sum_t l_it   mean over each sequence, then over the B' rows that have
                                                  a real token (GRPO paper; alias seq-mean)
    bnpo:    sum_it l_it / sum_i |o_i|           token mean over this (mini)batch (alias token-mean)
    dr_grpo: sum_it l_it / (B x constant)        constant = the max completion length (Dr. GRPO; alias
                                                  constant)
    dapo:    sum_it l_it / (N / M)               N = batch_tokens, the real tokens of the whole generation
                                                  batch, M = num_minibatches it is split into per pass: the
                                                  mean of one pass's M minibatch losses is then the token
                                                  mean over the whole batch however its tokens fall (DAPO).
                                                  batch_tokens None: this batch is the whole batch (= bnpo)

    Each is a sum over rows divided by a count (loss_normalizer). normalizer, when given, replaces this
    batch's own count: pass the count of the whole minibatch when these rows are one micro-batch or one
    rank's share of it, and the losses (their gradients) summed over the parts equal the minibatch's.
    """
    mode = aggregation_name(mode)
    maskf = mask.to(per_token.dtype)
    if mode == "grpo":
        numerator = masked_mean(per_token, mask, dim=1).sum()  # a row without real tokens adds 0
    else:
        numerator = (per_token * maskf).sum()
    if normalizer is None:
        normalizer = loss_normalizer(mask, mode, constant, batch_tokens, num_minibatches)
    floor = 1.0 if mode in ("grpo", "bnpo") else 1e-8  # an all-padding batch gives 0, not NaN
    return numerator / max(float(normalizer), floor)


def cispo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                     max_weight: float) -> torch.Tensor:
    """CISPO per-token loss [B, R] (MiniMax-M1, arXiv 2506.13585): -sg(min(r, max_weight)) A log pi,
    r = exp(logp - old_logp), sg = stop-gradient; advantages broadcast against logp. The clip is on the
    importance weight only, so every token keeps the gradient w A grad log pi. The paper defines
    clip(r, 1 - eps_low, 1 + eps_high) but sets eps_low so large that no lower bound acts, and tunes
    only the upper one: max_weight is that upper bound 1 + eps_high (TRL's epsilon_high for cispo)."""
    weight = torch.clamp(torch.exp(logp - old_logp), max=max_weight).detach()
    return -weight * advantages * logp


def sapo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                    tau_pos: float, tau_neg: float) -> torch.Tensor:
    """SAPO per-token loss [B, R] (Qwen, arXiv 2511.20347): -f(r) A with the soft gate
    f(r) = sigmoid(tau (r - 1)) x 4 / tau, tau = tau_pos where A > 0, else tau_neg; r = exp(logp - old).
    The gradient is 4 sigmoid(.)(1 - sigmoid(.)) r A grad log pi: exactly A grad log pi at r = 1 and
    decaying smoothly as r leaves 1 (faster for larger tau), in place of the hard clip. The gate and its
    defaults (tau_pos 1.0, tau_neg 1.05) as Trinity-RFT's and ms-swift's docs quote the paper and TRL 1.16
    implements them (four sources that agree; the paper's own text was not read here)."""
    ratio = torch.exp(logp - old_logp)
    tau = torch.where(advantages > 0, torch.full_like(ratio, tau_pos), torch.full_like(ratio, tau_neg))
    return -(torch.sigmoid(tau * (ratio - 1)) * 4 / tau) * advantages


def gmpo_sequence_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                       clip_low: float, clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GMPO per-sequence loss [B] (arXiv 2507.20673) for advantages [B]: -A_i x the geometric mean
    over the real tokens of row i of the token ratios, each clipped in log space PPO's pessimistic way:
    l_it = log r_it, c_it = clip(l_it, -clip_low, clip_high), then min(l_it, c_it) where A_i > 0 and
    max(l_it, c_it) otherwise (the paper's |max(r A, clip(r) A)| x sgn(A) written in logs); the loss is
    -A_i exp(mean_t of those). Paper's range: (e^-0.4, e^0.4). Returns (loss [B], token log-ratios [B, R])."""
    log_ratio = logp - old_logp
    clamped = torch.clamp(log_ratio, min=-clip_low, max=clip_high)
    pessimistic = torch.where(advantages[:, None] > 0, torch.minimum(log_ratio, clamped),
                              torch.maximum(log_ratio, clamped))
    return -torch.exp(masked_mean(pessimistic, mask, dim=1)) * advantages, log_ratio


def _loss_output(per_token: torch.Tensor, logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor,
                 outside: torch.Tensor) -> PolicyLossOutput:
    """PolicyLossOutput of a surrogate that is not PPO's clip: its statistics over the real tokens."""
    with torch.no_grad():
        log_ratio = logp.detach() - old_logp
        ratio = torch.exp(log_ratio)
        return PolicyLossOutput(masked_mean(per_token, mask), per_token, masked_mean(-log_ratio, mask),
                                masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
                                masked_mean(outside.to(ratio.dtype), mask), ratio)


def grpo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                    advantages: torch.Tensor, mask: torch.Tensor, clip_range: float,
                    clip_range_high: float | None, kl_coef: float, aggregation: str,
                    constant: float | None = None, importance_sampling: str = "token",
                    batch_tokens: float | None = None, num_minibatches: int = 1,
                    normalizer: float | None = None, surrogate: str = "clip", cispo_max_weight: float = 5.0,
                    sapo_tau_pos: float = 1.0, sapo_tau_neg: float = 1.05, kl_estimator: str = "k3",
                    kl_ratio_weighted: bool = False, sample_weights: torch.Tensor | None = None):
    """GRPO loss (scalar) on [B, R] log-probs; returns (loss, PolicyLossOutput, mean k3 KL to the reference).

    advantages: [B] (one per sequence, broadcast over its tokens) or [B, R] (per token, REINFORCE++).
    surrogate clip, importance_sampling token:
                                  l_it = -min(r_it A_it, clip(r_it, 1 - eps, 1 + eps_high) A_it),
                                  r_it = exp(logp_it - old_it)                            (PPO / GRPO)
    surrogate clip, importance_sampling sequence:
                                  l_it = -min(s_i A_i, clip(s_i, 1 - eps, 1 + eps_high) A_i) at every
                                  token of row i, s_i = exp(mean over real tokens t of (logp_it - old_it))
                                  (GSPO; advantages must be [B]; with grpo aggregation this is the
                                  paper's objective (1/B) sum_i min(...); clip ranges are the caller's)
    surrogate cispo:              cispo_token_loss (weight capped at cispo_max_weight; token ratios)
    surrogate sapo:               sapo_token_loss (soft gate, temperatures sapo_tau_pos / sapo_tau_neg)
    surrogate gmpo:               gmpo_sequence_loss at every token of row i (advantages [B]; clip_range and
                                  clip_range_high are its log-space bounds; grpo aggregation gives the
                                  paper's (1/B) sum_i)
    then l_it += kl_coef x k(policy || ref)_it with k the kl_estimator (k1 | k2 | k3 of proximo.core.kl),
    times the importance ratio (the token's r_it, GSPO's s_i) when kl_ratio_weighted (DeepSeek-V3.2's
    correction, TRL's use_bias_correction_kl: E_old[r k] = E_theta[k], so its gradient is that of the
    KL itself; the ratio carries gradient), then l_it *= sample_weights_it when given (the off-policy
    correction's weights, proximo.core.offpolicy: 0 drops a token), reduced by aggregate_loss(aggregation,
    ..., normalizer). The returned KL is always k3's (the kl_ref metric), whatever the penalty's estimator."""
    if surrogate != "clip":
        per_token, out = _frontier_surrogate(logp, old_logp, advantages, mask, surrogate, clip_range,
                                             clip_range_high, cispo_max_weight, sapo_tau_pos, sapo_tau_neg,
                                             importance_sampling)
        ratio = None
    elif importance_sampling == "token":
        adv = advantages[:, None].expand_as(logp) if advantages.dim() == 1 else advantages
        out = policy_loss(logp, old_logp, adv, "clip", clip_range, clip_range_high, mask=mask)
        per_token = out.per_sample
        ratio = None
    elif importance_sampling == "sequence":
        if advantages.dim() != 1:
            raise ProximoError("sequence-level importance sampling (GSPO) needs one advantage per sequence [B]; "
                               "use advantage_estimator grpo or rloo")
        # exp(mean(logp) - mean(old)) is exp of the mean token log-ratio: the GSPO sequence ratio.
        seq_new, seq_old = masked_mean(logp, mask, dim=1), masked_mean(old_logp, mask, dim=1)
        out = policy_loss(seq_new, seq_old, advantages, "clip", clip_range, clip_range_high, mask=mask.sum(1) > 0)
        per_token = out.per_sample[:, None].expand_as(logp)
        ratio = None if not kl_ratio_weighted else torch.exp(seq_new - seq_old)[:, None]
    else:
        raise ProximoError(f"importance_sampling must be one of {', '.join(IMPORTANCE_SAMPLING)}; "
                           f"got {importance_sampling!r}")
    kl_ref = torch.zeros(())
    if ref_logp is not None:
        kl_tokens = kl_estimate(logp, ref_logp, "k3")
        kl_ref = masked_mean(kl_tokens.detach(), mask)
        if kl_coef > 0:
            if kl_estimator != "k3":
                kl_tokens = kl_estimate(logp, ref_logp, kl_estimator)
            if kl_ratio_weighted:
                # The ratio keeps its gradient: d(r k) = k d r + r d k, whose expectation under the old
                # policy is the gradient of E_theta[k] (the KL when k is k1 or k3).
                kl_tokens = kl_tokens * (torch.exp(logp - old_logp) if ratio is None else ratio)
            per_token = per_token + kl_coef * kl_tokens
    if sample_weights is not None:
        per_token = per_token * sample_weights
    loss = aggregate_loss(per_token, mask, aggregation, constant, batch_tokens, num_minibatches, normalizer)
    return loss, out, kl_ref


def _frontier_surrogate(logp, old_logp, advantages, mask, surrogate, clip_range, clip_range_high, cispo_max_weight,
                        sapo_tau_pos, sapo_tau_neg, importance_sampling):
    """(per-token loss [B, R], PolicyLossOutput) of the cispo, sapo and gmpo surrogates; their clip
    statistic counts the tokens where a bound acts."""
    if importance_sampling != "token":
        raise ProximoError(f"the {surrogate} surrogate defines its own importance ratios; use it with "
                           f"importance_sampling token (sequence is GSPO's, for the clip surrogate)")
    adv = advantages[:, None].expand_as(logp) if advantages.dim() == 1 else advantages
    log_ratio = logp.detach() - old_logp
    if surrogate == "cispo":
        per_token = cispo_token_loss(logp, old_logp, adv, cispo_max_weight)
        outside = torch.exp(log_ratio) > cispo_max_weight
    elif surrogate == "sapo":
        per_token = sapo_token_loss(logp, old_logp, adv, sapo_tau_pos, sapo_tau_neg)
        outside = torch.zeros_like(log_ratio, dtype=torch.bool)  # a soft gate: no bound ever acts
    elif surrogate == "gmpo":
        if advantages.dim() != 1:
            raise ProximoError("the gmpo surrogate needs one advantage per sequence [B] (the geometric mean runs "
                               "over a sequence); use advantage_estimator grpo or rloo")
        high = clip_range if clip_range_high is None else clip_range_high
        per_sequence, _ = gmpo_sequence_loss(logp, old_logp, advantages, mask, clip_range, high)
        per_token = per_sequence[:, None].expand_as(logp)
        outside = ((log_ratio < -clip_range) & (adv < 0)) | ((log_ratio > high) & (adv > 0))
    else:
        raise ProximoError(f"surrogate must be one of {', '.join(SURROGATES)}; got {surrogate!r}")
    return per_token, _loss_output(per_token, logp, old_logp, mask, outside)


def kl_reward_advantages(advantages: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float, estimator: str = "k1",
                         per_token: bool = True) -> torch.Tensor:
    """Advantages with the KL to the reference as a penalty in the reward: -kl_coef x k_t at every real
    token (k the estimator on the rollout policy's log-probs old_logp against ref_logp, no gradient).
    per_token: [B, R] advantages A_it = A_i - kl_coef x sum_{s >= t} k_s (the penalty's reward-to-go:
    a token's choice changes only the KL of the tokens from it on); else [B] A_i - kl_coef x sum_t k_t
    (one advantage per sequence, for GSPO). With k1 the policy gradient of the penalty is, in
    expectation under the rollout policy, exactly -kl_coef x grad KL(policy || ref) (k2 or k3 in the
    reward are biased for that gradient). advantages: [B] or [B, R] (then per_token must be True)."""
    maskf = mask.to(old_logp.dtype)
    penalty = kl_estimate(old_logp, ref_logp, estimator).detach() * maskf
    if not per_token:
        if advantages.dim() != 1:
            raise ProximoError("a per-sequence KL penalty needs one advantage per sequence [B]")
        return advantages - kl_coef * penalty.sum(1)
    to_go = penalty.flip(1).cumsum(1).flip(1) * maskf
    base = advantages[:, None] if advantages.dim() == 1 else advantages
    return (base - kl_coef * to_go) * maskf


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index [B] of the last real token of each row of a mask [B, L] (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask.long()).argmax(dim=1)


def rlhf_token_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                       kl_coef: float, estimator: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards [B, R]: -kl_coef x KL(policy || ref) at every response token, plus the
    sequence score [B] at the last real token. Returns (rewards, per-token KL) with padding at 0."""
    maskf = mask.to(logp.dtype)
    kl = kl_estimate(logp, ref_logp, estimator) * maskf
    rewards = -kl_coef * kl
    rows = torch.arange(scores.shape[0])
    rewards[rows, last_token_index(mask)] += scores
    return rewards * maskf, kl


def token_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
              gae_lambda: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over response tokens with proximo.core.gae: rows [B, R] become the core's [T, N] layout;
    each sequence terminates at its last real token (no bootstrap past it). Returns (advantages,
    returns), both [B, R], zero on padding."""
    maskf = mask.to(values.dtype)
    values = values * maskf
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    terminated = torch.zeros_like(mask, dtype=torch.bool)
    terminated[torch.arange(mask.shape[0]), last_token_index(mask)] = True
    truncated = torch.zeros_like(terminated)
    advantages, returns = gae((rewards * maskf).T, values.T, next_values.T, terminated.T, truncated.T,
                              gamma, gae_lambda)
    return advantages.T * maskf, returns.T * maskf


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(s_chosen - s_rejected) over pairs [B]."""
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()
