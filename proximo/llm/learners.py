"""The language-model learner: one minibatch step on token batches behind proximo's Learner boundary.

proximo/ppo.py run_update is the one update loop of every proximo trainer: the epochs, the shuffle (a
GRPO group's completions kept together), the target_kl stop and the statistics. A learner here owns one
minibatch's step, as the classic learners do (proximo/learners/base.py): the minibatch's rows in
micro-batches (gradients accumulate; one optimizer step per minibatch), each forward pass under the
run's autocast, each part's loss divided by the whole minibatch's count (so the parts' gradients, summed
over micro-batches and ranks, are the minibatch's exactly), the float16 loss scaling, the gradient
all-reduce carrying the KL gate (Learner._all_reduce_gradient), then Precision.step: unscale, clip, Adam
(FlatOptimizer.clip_and_step, the tail of every proximo step).

TokenLearner holds what every language-model step shares; each algorithm's learner sits beside its
trainer and adds only its counts and its loss: GRPOLearner (proximo/llm/grpo.py), RLHFLearner
(proximo/llm/rlhf.py). Why not in proximo/learners/: these steps need the token forward passes, the
losses and the precision of proximo.llm; proximo/learners/ stays free of language models, so the
dependence runs one way (the LLM side builds on the boundary, the boundary knows nothing of them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from proximo.learners.base import Learner, StepResult, k3
from proximo.learners.optimizer import FlatOptimizer


@dataclass
class TokenMinibatch:
    """One minibatch of a language-model update: the rows (indices into this rank's batch) and the batch."""

    batch: Any            # the trainer's collected batch (input_ids, attention, mask, width, old_logp, ...)
    rows: torch.Tensor    # [b] row indices


def micro_batches(idx: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The rows idx [K] of a minibatch in consecutive parts of at most size rows (size 0: one part).
    Consecutive, so the rows of a group (laid out together) stay together as far as size allows."""
    if size <= 0 or size >= len(idx):
        return [idx]
    return list(torch.split(idx, size))


class TokenLearner(Learner):
    """A minibatch step on token batches [B, R]: micro-batches, autocast, loss scaling, all-reduce, KL gate,
    Precision.step. Subclasses give the minibatch's counts and each part's loss."""

    name = "tokens"

    def __init__(self, trainer, optimizer: FlatOptimizer) -> None:
        super().__init__(trainer.model, optimizer, trainer.world)
        self.trainer = trainer
        self.precision = trainer.precision

    def step(self, minibatch: TokenMinibatch, settings: Any, kl_limit: float | None = None) -> StepResult:
        """Every micro-batch's forward and backward, then the all-reduce with the KL gate and the step."""
        batch, rows = minibatch.batch, minibatch.rows
        counts = self.minibatch_counts(batch, rows, settings)
        self.optimizer.zero_grad()
        log_ratios, shares, extras = [], [], []
        for part in micro_batches(rows, settings.micro_batch_size):
            with self.precision.autocast():
                loss, log_ratio, share, extra = self.part_loss(batch, part, counts, settings)
            self.precision.backward(loss)
            log_ratios.append(log_ratio)
            shares.append(share)
            extras.append(extra)
        log_ratio = torch.cat(log_ratios)
        kl = None
        if kl_limit is not None:
            kl = torch.stack([k3(log_ratio).sum(), torch.tensor(float(log_ratio.numel()), device=log_ratio.device)])
        # Each part's loss is already divided by the global minibatch's count: the ranks' gradients add up.
        if self._all_reduce_gradient(kl, average=False, kl_limit=kl_limit):
            return StepResult(False, log_ratio)
        norm = self._clip_and_step(settings.max_grad_norm)
        extra = ({key: torch.stack([e[key].to(log_ratio.device) for e in extras]).sum() for key in extras[0]}
                 if extras[0] else None)
        return StepResult(True, log_ratio, torch.stack(shares).sum(0), norm, extra)

    def _clip_and_step(self, max_grad_norm: float | None) -> torch.Tensor | None:
        """Precision.step: unscale (float16), clip, step; None when an overflow skipped the step."""
        if not self.precision.step(self.optimizer, max_grad_norm):
            return None
        return self.precision.last_grad_norm

    def minibatch_counts(self, batch, rows: torch.Tensor, settings) -> dict[str, float]:
        """The minibatch's counts over every rank, which each part's loss is divided by."""
        raise NotImplementedError

    def part_loss(self, batch, part: torch.Tensor, counts: dict[str, float], settings):
        """(loss to backward, per-sample log-ratios [n], additive [3] policy/value/entropy share, extras)."""
        raise NotImplementedError

    def global_sum(self, *values: float) -> list[float]:
        """values summed over every rank (float64, one collective)."""
        return self.trainer.global_sum(*values)
