"""PPO's losses as pure functions: the policy objectives, the value loss and the entropy bonus.

Losses are returned as quantities to minimize (the negated objectives of the paper).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
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
    clip_kl:     -(min(r A, clip(r, ...) A) - beta KL)            (both; each of the above for its eps and
                 beta, which may be tensors broadcasting against the samples: a population's per-agent
                 [K, 1] values, eps inf for no clip, beta 0 for no KL term)
    with r = exp(logp_new - logp_old). The scalar loss is the (masked) mean over samples.
    stats=False skips the statistics (approx_kl_k1, approx_kl_k3, clip_fraction come back as None),
    for callers that derive them later from the ratios in one pass.
    """
    if objective not in OBJECTIVES and objective != "clip_kl":
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
    if objective in ("adaptive_kl", "fixed_kl", "clip_kl"):
        kl_k3 = kl_estimate(logp_old, logp_new, "k3")
    elif stats:
        with torch.no_grad():  # only a statistic here; keeping it out of the graph saves backward work
            kl_k3 = kl_estimate(logp_old, logp_new, "k3")
    if objective == "clip":
        clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
        per_sample = -torch.minimum(surrogate, clipped)
    elif objective == "none":
        per_sample = -surrogate
    elif objective == "clip_kl":
        clipped = torch.clamp(ratio, 1.0 - torch.as_tensor(eps_low), 1.0 + torch.as_tensor(eps_high)) * advantages
        beta = torch.as_tensor(kl_coef, dtype=ratio.dtype, device=ratio.device)
        # a zero beta adds an exact 0 (never 0 x an infinite KL)
        per_sample = -(torch.minimum(surrogate, clipped) - torch.where(beta > 0, beta * kl_k3, 0.0))
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


def policy_loss_np(logp_new: np.ndarray, logp_old: np.ndarray, advantages: np.ndarray, objective: str = "clip",
                   clip_range: float | np.ndarray = 0.2, clip_range_high: float | None = None,
                   kl_coef: float | np.ndarray = 0.0) -> tuple[float | np.ndarray, np.ndarray]:
    """policy_loss (unmasked mean) in NumPy on [B] arrays: (loss, d loss / d logp_new [B]).

    [K, B] arrays are K agents at once (proximo/population.py), with clip_range and kl_coef floats or
    [K, 1] arrays; the loss is then [K], each agent's mean over its own B samples. objective
    clip_kl is the form every objective takes there: -min(r A, clip(r, 1 - eps, 1 + eps) A) + beta k3,
    which is clip with beta 0, and none or a KL objective with eps = inf (the same floating-point
    operations as those objectives: a zero beta adds an exact 0, an infinite eps clips nothing).

    The gradient is autograd's for policy_loss, ties included: where r A equals the clipped term
    inside the band, torch's split of the tie plus clamp's pass-through add up to the full -A r / B;
    outside the band the clipped term is constant and carries none.
    """
    batch = logp_new.shape[-1]
    log_ratio = logp_new - logp_old
    ratio = np.exp(log_ratio)
    surrogate = ratio * advantages
    if objective in ("clip", "clip_kl"):
        high = clip_range if clip_range_high is None else clip_range_high
        # The band in the ratio's dtype, as a Python float's would be: per-agent float64 bounds must not
        # promote the float32 terms.
        low_bound = np.asarray(1.0 - clip_range, dtype=ratio.dtype)
        high_bound = np.asarray(1.0 + high, dtype=ratio.dtype)
        clipped = np.clip(ratio, low_bound, high_bound) * advantages
        terms = np.minimum(surrogate, clipped)
        grad = np.where(surrogate <= clipped, -surrogate, 0.0)
        if objective == "clip_kl":
            penalized = np.asarray(kl_coef) > 0  # a zero beta adds an exact 0 (never 0 x an infinite KL)
            with np.errstate(invalid="ignore", over="ignore"):
                kl = np.expm1(log_ratio) - log_ratio
                terms = terms - np.where(penalized, kl_coef * kl, 0.0)
                grad = grad + np.where(penalized, kl_coef * (ratio - 1.0), 0.0)
        loss = -terms.mean(-1)
    elif objective == "none":
        loss = -surrogate.mean(-1)
        grad = -surrogate
    elif objective in ("adaptive_kl", "fixed_kl"):
        # k3 = (r - 1) - log r, so d k3 / d log pi_new = r - 1
        kl = np.expm1(log_ratio) - log_ratio
        loss = -(surrogate - kl_coef * kl).mean(-1)
        grad = -surrogate + kl_coef * (ratio - 1.0)
    else:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    return _scalar_or_per_agent(loss), (grad / batch).astype(logp_new.dtype, copy=False)


def _scalar_or_per_agent(value: np.ndarray) -> float | np.ndarray:
    """A float for one network's loss, the [K] array of a stack's."""
    return float(value) if np.ndim(value) == 0 else value


def value_loss(
    values_new: torch.Tensor,
    values_old: torch.Tensor,
    returns: torch.Tensor,
    clip_range_vf: float | torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    dim: int | None = None,
) -> torch.Tensor:
    """Squared error (V - R)^2, averaged (over dim only, if given: a population's [K, B] per agent); with
    clip_range_vf, the pessimistic max of the clipped and unclipped errors, where the clipped prediction is
    V_old + clip(V - V_old, -c, c) (c may be a tensor broadcasting against the samples)."""
    error = (values_new - returns).square()
    if clip_range_vf is not None:
        c = torch.as_tensor(clip_range_vf, dtype=values_new.dtype, device=values_new.device)
        clipped = values_old + torch.clamp(values_new - values_old, -c, c)
        error = torch.maximum(error, (clipped - returns).square())
    return masked_mean(error, mask, dim)


def value_loss_np(values_new: np.ndarray, values_old: np.ndarray, returns: np.ndarray,
                  clip_range_vf: float | np.ndarray | None = None) -> tuple[float | np.ndarray, np.ndarray]:
    """value_loss (unmasked mean) in NumPy on [B] arrays: (loss, d loss / d values_new [B]); [K, B] arrays
    are K agents (clip_range_vf then also a [K, 1] array, inf for an agent without the clip)."""
    batch = values_new.shape[-1]
    error = values_new - returns
    squared = np.square(error)
    if clip_range_vf is None:
        loss = squared.mean(-1)
        grad = error
    else:
        delta = values_new - values_old
        clipped_error = values_old + np.clip(delta, -clip_range_vf, clip_range_vf) - returns
        squared_clipped = np.square(clipped_error)
        loss = np.maximum(squared, squared_clipped).mean(-1)
        # Inside the band both errors are equal and their gradients add up to the full one; outside
        # it the clipped error is constant and only a larger unclipped error counts (half at a tie).
        inside = np.abs(delta) <= clip_range_vf
        grad = np.where(inside | (squared > squared_clipped), error,
                        np.where(squared == squared_clipped, 0.5 * error, 0.0))
    return _scalar_or_per_agent(loss), (grad * (2.0 / batch)).astype(values_new.dtype, copy=False)


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor | None = None, dim: int | None = None) -> torch.Tensor:
    """Mean policy entropy (nats), over dim only if given; the loss subtracts ent_coef times this."""
    return masked_mean(entropy, mask, dim)


def entropy_bonus_np(entropy: np.ndarray) -> tuple[float | np.ndarray, float]:
    """entropy_bonus (unmasked mean) in NumPy: (mean entropy, d mean / d entropy_i = 1 / B).

    A scalar entropy (a state-independent Gaussian's) counts as that value for every sample. [K, B]
    (or [K, 1] for K Gaussians) is K agents: the mean is then [K].
    """
    batch = entropy.shape[-1] if entropy.ndim else 1
    return _scalar_or_per_agent(entropy.mean(-1) if entropy.ndim else entropy), 1.0 / batch
