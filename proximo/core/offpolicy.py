"""Off-policy correction between a sampler and the learner: importance weights w = pi_learner / pi_sampler
of the sampled tokens, truncated or masked, a staleness bound on policy versions, and the statistics of
the mismatch. Pure tensor functions on [B, R] log-probs with a mask that is 1 on real tokens.

Why: an outside engine (vLLM, say) or a generator running a few versions behind samples from a policy
mu that is not the learner's pi_old, even with the same weights (other kernels, other precision). The
clipped surrogate treats the samples as pi_old's; the weight w = pi_old / mu re-weights each token (or
sequence) to what pi_old would have sampled. Truncated IS caps w (bias for less variance); masked IS drops
the samples whose w passes the cap (Yao et al., "Your efficient RL framework secretly brings you off-policy
RL training", 2025; TRL 1.16's vllm_importance_sampling_mode, default sequence_mask with
vllm_importance_sampling_clip_max 3.0, trl/trainer/grpo_config.py)."""
from __future__ import annotations

from typing import NamedTuple

import torch

from proximo.core.kl import kl_estimate

OFFPOLICY_MODES = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


class OffPolicyStats(NamedTuple):
    """Sums and counts of one batch's mismatch statistics (pool them over ranks, then divide)."""

    kl_sum: float          # sum over real tokens of k3 KL(sampler || learner)
    abs_log_w_sum: float   # sum over real tokens of |log w_t|
    tokens: float          # real tokens
    clipped: float         # tokens (token modes) or sequences (sequence modes) whose w passed the cap
    units: float           # tokens (token modes) or sequences with a real token (sequence modes)


def log_importance_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                           level: str = "sequence") -> torch.Tensor:
    """log w: per token [B, R] (old_logp - sampler_logp) or per sequence [B, 1] (the sum over the row's real
    tokens: the log of the sequence's likelihood ratio, as TRL's sequence modes), 0 on padding."""
    log_w = (old_logp - sampler_logp) * mask.to(old_logp.dtype)
    if level == "token":
        return log_w
    if level == "sequence":
        return log_w.sum(1, keepdim=True)
    raise ValueError(f"unknown importance-weight level {level!r}; choose token or sequence")


def importance_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                       mode: str = "sequence_mask", cap: float = 3.0) -> torch.Tensor | None:
    """Weights [B, R] for the per-token loss (a sequence mode gives each token its row's weight):
    w = exp(old_logp - sampler_logp) per token, or exp(sum over the row) per sequence, then
    truncate: min(w, cap); mask: w where w <= cap, else 0 (the token or sequence is dropped). None for
    mode none (no correction)."""
    if mode == "none":
        return None
    if mode not in OFFPOLICY_MODES:
        raise ValueError(f"unknown off-policy correction {mode!r}; choose one of {OFFPOLICY_MODES}")
    level, kind = mode.split("_")
    w = torch.exp(log_importance_weights(old_logp, sampler_logp, mask, level))
    w = torch.clamp(w, max=cap) if kind == "truncate" else torch.where(w > cap, torch.zeros_like(w), w)
    return w.expand_as(old_logp) if level == "sequence" else w


def offpolicy_statistics(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                         mode: str = "sequence_mask", cap: float = 3.0) -> OffPolicyStats:
    """The mismatch of one batch as sums and counts: k3 KL(sampler || learner) and |log w| over real tokens
    (samples are the sampler's, so k3 with the sampler as the sampling side), and how many tokens (token
    modes) or sequences (sequence modes, and none, which counts sequences) have w above cap."""
    real = mask.to(torch.bool)
    old, sampler = old_logp.detach().double(), sampler_logp.detach().double()
    log_w_tokens = (old - sampler)[real]
    kl_sum = float(kl_estimate(sampler, old, "k3")[real].sum())
    level = "token" if mode.startswith("token") else "sequence"
    if level == "token":
        passed, units = log_w_tokens.exp() > cap, float(real.sum())
    else:
        rows = real.any(1)
        passed = log_importance_weights(old, sampler, mask, "sequence")[:, 0][rows].exp() > cap
        units = float(rows.sum())
    return OffPolicyStats(kl_sum, float(log_w_tokens.abs().sum()), float(real.sum()), float(passed.sum()), units)


def stale_rows(versions: torch.Tensor | None, current: int, max_staleness: int | None) -> torch.Tensor | None:
    """[B] bool: rows sampled by a policy more than max_staleness versions older than current (versions [B]:
    the learner version each row's sampler had); None when either is None (nothing is stale)."""
    if versions is None or max_staleness is None:
        return None
    return (current - versions) > max_staleness
