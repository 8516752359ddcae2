"""The LLM-specific pieces around proximo.core: group-relative advantages, GRPO loss aggregation,
per-token RLHF rewards, GAE over tokens, and the Bradley-Terry loss. Pure functions on tensors;
token batches are [B, L] with a mask that is 1 on real response tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from proximo.core import gae, kl_estimate, masked_mean
from proximo.errors import ProximoError


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages [B] for rewards [B] laid out as consecutive groups of group_size completions
    of one prompt: reward minus its group mean, divided by the group std (unbiased) if scale."""
    if group_size < 2:
        raise ProximoError(f"group_size must be at least 2 for group-relative advantages, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ProximoError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}; "
                           f"pass a flat tensor with prompts x group_size entries")
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: str, constant: float | None = None) -> torch.Tensor:
    """Reduce a per-token loss [B, L] to a scalar.

    seq-mean:   mean over sequences of each sequence's mean over its tokens (GRPO paper)
    token-mean: sum over all real tokens / number of real tokens in the batch (DAPO)
    constant:   sum over all real tokens / (B x constant) (length-unbiased, Dr. GRPO)
    """
    if mode == "seq-mean":
        return masked_mean(per_token, mask, dim=1).mean()
    if mode == "token-mean":
        return masked_mean(per_token, mask)
    if mode == "constant":
        if constant is None or constant <= 0:
            raise ProximoError(f"the constant aggregation needs a positive constant, got {constant}")
        return (per_token * mask.to(per_token.dtype)).sum() / (per_token.shape[0] * constant)
    raise ProximoError(f"unknown loss aggregation {mode!r}; choose seq-mean, token-mean or constant")


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
