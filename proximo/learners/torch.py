"""The autograd learner: any policy, any device."""
from __future__ import annotations

import torch

from proximo.core.objectives import entropy_bonus, policy_loss, value_loss
from proximo.learners.base import Learner, LossSettings, Minibatch, StepResult, non_finite_loss


class TorchLearner(Learner):
    """PPO's loss from proximo.core, differentiated by autograd, on the policy's device."""

    name = "torch"

    def step(self, minibatch: Minibatch, settings: LossSettings, kl_limit: float | None = None) -> StepResult:
        """Loss, autograd backward, all-reduce, clipping and optimizer step on one minibatch."""
        mb = minibatch
        log_probs, entropy, values = self.policy.evaluate(mb.obs, mb.actions, mb.action_masks, mb.rnn_states,
                                                          mb.episode_starts)
        log_ratio = log_probs.detach() - mb.old_log_probs
        if self._kl_exceeded_before_backward(log_ratio, kl_limit):
            return StepResult(False, log_ratio)
        pg = policy_loss(log_probs, mb.old_log_probs, mb.advantages, settings.objective, settings.clip_range,
                         kl_coef=settings.kl_coef, stats=False)
        vf = value_loss(values, mb.old_values, mb.returns, settings.clip_range_vf)
        loss = pg.loss + settings.vf_coef * vf
        if settings.ent_coef != 0.0:
            ent = entropy_bonus(entropy)
            loss = loss - settings.ent_coef * ent
        else:
            # A zero coefficient adds nothing to the gradient; keep entropy out of the graph.
            ent = entropy_bonus(entropy.detach())
        losses = torch.stack([pg.loss.detach(), vf.detach(), ent.detach()])
        # On an accelerator this check would stall the queue every minibatch; there the trainer's
        # finite-parameter check after the update catches a non-finite loss instead.
        if loss.device.type == "cpu" and not bool(torch.isfinite(loss)):
            raise non_finite_loss(loss.item(), *losses.tolist())
        self.optimizer.zero_grad()
        loss.backward()
        norm = self._reduce_clip_step(log_ratio, settings, kl_limit)
        if norm is None:
            return StepResult(False, log_ratio)
        return StepResult(True, log_ratio, self._share(losses), norm)
