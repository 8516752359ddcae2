"""The LLM-specific pieces around proximo.core: group-relative (GRPO, RLOO) and REINFORCE++ advantages,
the GRPO/GSPO loss and its aggregations (grpo, bnpo, dr_grpo, dapo), DAPO's group filter and overlong
mask, per-token RLHF rewards, GAE over tokens, and the Bradley-Terry loss. Pure functions on tensors;
token batches are [B, L] with a mask that is 1 on real response tokens."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from proximo.core import gae, kl_estimate, masked_mean, policy_loss
from proximo.errors import ProximoError


LOSS_AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")
# The first spellings of the aggregations, still accepted (runs and configs written before the rename).
AGGREGATION_ALIASES = {"seq-mean": "grpo", "token-mean": "bnpo", "constant": "dr_grpo"}
ADVANTAGE_ESTIMATORS = ("grpo", "rloo", "reinforce++", "reinforce++-baseline")
REWARD_SCALINGS = ("group", "batch", "none")
IMPORTANCE_SAMPLING = ("token", "sequence")
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
    """[B] bool: rows of right-padded responses [B, R] that end without an <eos> (cut at max_new_tokens);
    eos_id: one id or several stop ids (a tokenizer's stop_ids)."""
    stops = torch.as_tensor(eos_id, device=response_ids.device)
    ended = (torch.isin(response_ids, stops) & response_mask.to(torch.bool)).any(dim=1)
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


def grpo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                    advantages: torch.Tensor, mask: torch.Tensor, clip_range: float,
                    clip_range_high: float | None, kl_coef: float, aggregation: str,
                    constant: float | None = None, importance_sampling: str = "token",
                    batch_tokens: float | None = None, num_minibatches: int = 1,
                    normalizer: float | None = None):
    """GRPO loss (scalar) on [B, R] log-probs; returns (loss, PolicyLossOutput, mean k3 KL to the reference).

    advantages: [B] (one per sequence, broadcast over its tokens) or [B, R] (per token, REINFORCE++).
    importance_sampling token:    l_it = -min(r_it A_it, clip(r_it, 1 - eps, 1 + eps_high) A_it),
                                  r_it = exp(logp_it - old_it)                            (PPO / GRPO)
    importance_sampling sequence: l_it = -min(s_i A_i, clip(s_i, 1 - eps, 1 + eps_high) A_i) at every
                                  token of row i, s_i = exp(mean over real tokens t of (logp_it - old_it))
                                  (GSPO; advantages must be [B]; with grpo aggregation this is the
                                  paper's objective (1/B) sum_i min(...); clip ranges are the caller's)
    then l_it += kl_coef x k3(policy || ref)_it, reduced by aggregate_loss(aggregation, ..., normalizer)."""
    if importance_sampling == "token":
        adv = advantages[:, None].expand_as(logp) if advantages.dim() == 1 else advantages
        out = policy_loss(logp, old_logp, adv, "clip", clip_range, clip_range_high, mask=mask)
        per_token = out.per_sample
    elif importance_sampling == "sequence":
        if advantages.dim() != 1:
            raise ProximoError("sequence-level importance sampling (GSPO) needs one advantage per sequence [B]; "
                               "use advantage_estimator grpo or rloo")
        # exp(mean(logp) - mean(old)) is exp of the mean token log-ratio: the GSPO sequence ratio.
        out = policy_loss(masked_mean(logp, mask, dim=1), masked_mean(old_logp, mask, dim=1), advantages, "clip",
                          clip_range, clip_range_high, mask=mask.sum(1) > 0)
        per_token = out.per_sample[:, None].expand_as(logp)
    else:
        raise ProximoError(f"importance_sampling must be one of {', '.join(IMPORTANCE_SAMPLING)}; "
                           f"got {importance_sampling!r}")
    kl_ref = torch.zeros(())
    if ref_logp is not None:
        kl_tokens = kl_estimate(logp, ref_logp, "k3")
        kl_ref = masked_mean(kl_tokens.detach(), mask)
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl_tokens
    loss = aggregate_loss(per_token, mask, aggregation, constant, batch_tokens, num_minibatches, normalizer)
    return loss, out, kl_ref


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
