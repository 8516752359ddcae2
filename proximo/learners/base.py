"""The learner boundary: what the PPO update loop asks of a gradient backend.

The update loop (proximo/ppo.py run_update, for classic PPO, GRPO and PPO-RLHF alike) owns epochs,
shuffling, minibatches, the target_kl stop and the statistics. A Learner owns one minibatch step: the
forward pass, the loss, its gradient, the all-reduce across ranks, the KL gate, the norm clipping and
the optimizer step. Backends:
- numpy (proximo/learners/numpy_mlp.py): the hand-written MLP backward, CPU only; for MinAtar's frames
  proximo/learners/numpy_cnn.py puts the NumPy conv kernel in front of it;
- torch (proximo/learners/torch.py): autograd, any device and any policy;
- the language-model learners (proximo/llm/learners.py): token losses in micro-batches under autocast.
All run over several processes the same way: the flat gradient is all-reduced through the learner's
World (proximo/distributed.py) before it is clipped and stepped, in _reduce_clip_step's tail.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from proximo.core.kl import kl_estimate
from proximo.distributed import World
from proximo.errors import NonFiniteError
from proximo.learners.optimizer import FlatOptimizer

if TYPE_CHECKING:  # annotations only: the LLM learners subclass Learner and need no gymnasium-space policy
    from proximo.nn.policy import ActorCritic


@dataclass
class Minibatch:
    """One (rank's share of a) minibatch, every tensor [B, ...] on the learner's device (rnn_states: one
    row per sequence); the optional fields are None where the run has no masks or no memory."""

    obs: torch.Tensor
    actions: torch.Tensor
    old_log_probs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor   # already normalized when the run normalizes advantages
    returns: torch.Tensor
    action_masks: torch.Tensor | None = None    # [B, mask_dim] bool, for a masked run
    episode_starts: torch.Tensor | None = None  # [B] bool, for a recurrent policy (B / L sequences of L steps)
    rnn_states: torch.Tensor | None = None      # [B / L, state_size]: each sequence's starting state

    PER_SAMPLE = ("obs", "actions", "old_log_probs", "old_values", "advantages", "returns", "action_masks",
                  "episode_starts")


@dataclass
class LossSettings:
    """The loss coefficients of one update (schedules already applied)."""

    objective: str
    clip_range: float
    clip_range_vf: float | None
    kl_coef: float
    ent_coef: float
    vf_coef: float
    max_grad_norm: float | None


@dataclass
class StepResult:
    """What one minibatch step reports; tensors stay on the device until the update ends."""

    stepped: bool | torch.Tensor  # False: the minibatch's KL passed kl_limit, no step was taken; a population's
                                  # learner reports [K] bool (and [K, ...] in every field below)
    log_ratio: torch.Tensor     # [B] log pi_new - log pi_old per sample at the parameters before the step
                                # (a language model's samples: its real response tokens, or its sequences)
    losses: torch.Tensor | None = None     # [3]: policy loss, value loss, mean entropy; this rank's additive
                                           # share (summed over the ranks it is the minibatch's value)
    grad_norm: torch.Tensor | None = None  # 0-d, before clipping (after the all-reduce); None: no step was
                                           # applied although the loop goes on (a float16 overflow)
    extra: dict[str, torch.Tensor] | None = None  # further 0-d statistics, additive shares like losses


class Learner:
    """One minibatch step of PPO on a policy; subclasses implement `step`."""

    name: ClassVar[str] = "base"

    def __init__(self, policy: ActorCritic, optimizer: FlatOptimizer, world: World | None = None) -> None:
        self.policy, self.optimizer = policy, optimizer
        self.world = world if world is not None else World.local()

    @classmethod
    def supports(cls, policy: ActorCritic, optimizer: FlatOptimizer) -> str | None:
        """None when this backend can train policy with optimizer, else the reason it declines."""
        return None

    def begin_update(self) -> None:
        """Called once before each update's first step (backends refresh their views here)."""
        self.optimizer.ensure_intact()

    def step(self, minibatch: Minibatch, settings: LossSettings, kl_limit: float | None = None) -> StepResult:
        """Loss, gradient, all-reduce, clipping and optimizer step on one minibatch.

        With kl_limit, a minibatch whose mean k3 KL (over all ranks) exceeds it is not stepped.
        """
        raise NotImplementedError

    # the shared tail of every backend's step --------------------------------------------------
    def _kl_exceeded_before_backward(self, log_ratio: torch.Tensor, kl_limit: float | None) -> bool:
        """In one process the KL gate runs before the backward (a stopped minibatch costs no gradient)."""
        return kl_limit is not None and self.world.size == 1 and float(mean_k3(log_ratio)) > kl_limit

    def _reduce_clip_step(self, log_ratio: torch.Tensor, settings: LossSettings,
                          kl_limit: float | None) -> torch.Tensor | None:
        """All-reduce the gradient (ranks > 1: the mean of the ranks' minibatch means), clip and step;
        returns the norm, or None when the global KL passed kl_limit (decided after the all-reduce, which
        carries it)."""
        if self.world.size > 1:  # (one process gated before its backward: _kl_exceeded_before_backward)
            kl = None if kl_limit is None else torch.stack([mean_k3(log_ratio), torch.ones_like(log_ratio[0])])
            if self._all_reduce_gradient(kl, average=True, kl_limit=kl_limit):
                return None
        return self._clip_and_step(settings.max_grad_norm)

    def _all_reduce_gradient(self, kl: torch.Tensor | None, average: bool, kl_limit: float | None) -> bool:
        """Sum the flat gradient over the ranks (average: then divide by their count), in one collective
        with kl, this rank's [sum, count] of per-sample k3 KL (or None); returns True when the pooled mean
        KL passed kl_limit (the step must not be taken). One process: no collective, the gate alone."""
        if self.world.size == 1:
            return kl is not None and float(kl[0] / kl[1]) > kl_limit
        grad = self.optimizer.grad
        if kl is None:
            self.world.all_reduce_sum_(grad)
            if average:
                grad.div_(self.world.size)
            return False
        packed = torch.cat([grad, kl.to(grad.dtype)])
        self.world.all_reduce_sum_(packed)
        if average:
            packed[:-2].div_(self.world.size)
        grad.copy_(packed[:-2])
        return float(packed[-2] / packed[-1]) > kl_limit

    def _clip_and_step(self, max_grad_norm: float | None) -> torch.Tensor | None:
        """The one tail of every step: clip the gradient's norm, take the optimizer step; returns the norm
        before clipping (language-model learners go through Precision.step, which unscales first)."""
        return self.optimizer.clip_and_step(max_grad_norm)

    def _share(self, losses: torch.Tensor) -> torch.Tensor:
        """A rank's minibatch means [3] as its additive share of the global ones (equal shares per rank)."""
        return losses / self.world.size if self.world.size > 1 else losses


def k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """Per-sample k3 estimate of KL(old || new) from log(pi_new / pi_old) [B] (see proximo.core.kl)."""
    return kl_estimate(torch.zeros_like(log_ratio), log_ratio, "k3")


def mean_k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """Mean k3 estimate of KL(old || new) from log(pi_new / pi_old) [B]."""
    return k3(log_ratio).mean()


def non_finite_loss(total: float, policy: float, value: float, entropy: float) -> NonFiniteError:
    """The error for a minibatch whose loss is NaN or infinite, naming its terms and the usual fixes."""
    return NonFiniteError(f"the loss became {total} (policy {policy}, value {value}, entropy {entropy}); "
                          "lower learning_rate or enable normalize_obs")
