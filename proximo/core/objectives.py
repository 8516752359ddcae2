"""PPO's losses as pure functions: the policy objectives, the value loss and the entropy bonus.

Losses are returned as quantities to minimize (the negated objectives of the paper).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from proximo.core.kl import kl_estimate
from proximo.core.masked import masked_mean

OBJECTIVES = ("clip", "adaptive_kl", "fixed_kl", "none")


class PolicyLossOutput(NamedTuple):
    """The policy loss (scalar), its per-sample values, and the statistics of the update."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    approx_kl_k1: torch.Tensor
    approx_kl_k3: torch.Tensor
    clip_fraction: torch.Tensor
    ratio: torch.Tensor


def policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    objective: str = "clip",
    clip_range: float = 0.2,
    clip_range_high: float | None = None,
    kl_coef: float = 0.0,
    mask: torch.Tensor | None = None,
    stats: bool = True,
) -> PolicyLossOutput:
    """PPO policy loss on per-sample log-probs of shape [*] (any shape, same for all inputs).

    clip:        -min(r A, clip(r, 1 - eps, 1 + eps_high) A)       (PPO-Clip; eps_high defaults to eps)
    adaptive_kl / fixed_kl: -(r A - beta KL(old || new))          (PPO-Penalty, KL by the k3 estimator)
    none:        -r A                                             (the paper's no-clip ablation)
    with r = exp(logp_new - logp_old). The scalar loss is the (masked) mean over samples.
    stats=False skips the statistics (approx_kl_k1, approx_kl_k3, clip_fraction come back as None),
    for callers that derive them later from the ratios in one pass.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    if not (logp_new.shape == logp_old.shape == advantages.shape):
        raise ValueError(
            f"shape mismatch: logp_new {tuple(logp_new.shape)}, logp_old {tuple(logp_old.shape)}, "
            f"advantages {tuple(advantages.shape)}")
    log_ratio = logp_new - logp_old
    ratio = torch.exp(log_ratio)
    eps_low = clip_range
    eps_high = clip_range if clip_range_high is None else clip_range_high
    surrogate = ratio * advantages
    if objective in ("adaptive_kl", "fixed_kl"):
        kl_k3 = kl_estimate(logp_old, logp_new, "k3")
    elif stats:
        with torch.no_grad():  # only a statistic here; keeping it out of the graph saves backward work
            kl_k3 = kl_estimate(logp_old, logp_new, "k3")
    if objective == "clip":
        clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
        per_sample = -torch.minimum(surrogate, clipped)
    elif objective == "none":
        per_sample = -surrogate
    else:
        per_sample = -(surrogate - kl_coef * kl_k3)
    if not stats:
        return PolicyLossOutput(masked_mean(per_sample, mask), per_sample, None, None, None, ratio.detach())
    with torch.no_grad():
        outside = (ratio < 1.0 - eps_low) | (ratio > 1.0 + eps_high)
        approx_kl_k1 = masked_mean(-log_ratio, mask)
        approx_kl_k3 = masked_mean(kl_k3, mask)
        clip_fraction = masked_mean(outside.to(ratio.dtype), mask)
    return PolicyLossOutput(masked_mean(per_sample, mask), per_sample, approx_kl_k1,
                            approx_kl_k3, clip_fraction, ratio.detach())


def value_loss(
    values_new: torch.Tensor,
    values_old: torch.Tensor,
    returns: torch.Tensor,
    clip_range_vf: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Squared error (V - R)^2, averaged; with clip_range_vf, the pessimistic max of the clipped and
    unclipped errors, where the clipped prediction is V_old + clip(V - V_old, -c, c)."""
    error = (values_new - returns).square()
    if clip_range_vf is not None:
        clipped = values_old + torch.clamp(values_new - values_old, -clip_range_vf, clip_range_vf)
        error = torch.maximum(error, (clipped - returns).square())
    return masked_mean(error, mask)


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean policy entropy (nats); the loss subtracts ent_coef times this."""
    return masked_mean(entropy, mask)
