"""The NumPy learner: PPO's loss and its exact gradient for an MLP actor-critic, by hand.

Why: on CartPole-sized networks autograd's per-op cost, not the arithmetic, is most of an update
(proximo/nn/numpy_mlp.py has the figures), and a hand-written backward needs no graph. The chain
is the one autograd runs: the loss terms' gradients (proximo/core/objectives.py, *_np beside each
torch original), the distributions' (proximo/nn/distributions.py, *_np), then the MLP kernel's
backward. tests/test_learners.py compares it with autograd term by term and as a whole.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from proximo.core.objectives import entropy_bonus_np, policy_loss_np, value_loss_np
from proximo.learners.base import Learner, LossSettings, Minibatch, StepResult, non_finite_loss
from proximo.learners.optimizer import FlatOptimizer
from proximo.nn.distributions import (
    categorical_backward_np, categorical_np, diag_gaussian_backward_np, diag_gaussian_np,
)
from proximo.nn.numpy_mlp import NUMPY_ACTIVATIONS, head_backward, linear, mlp_backward, mlp_forward
from proximo.nn.policy import ActorCritic, plain_mlp_layers


@dataclass
class _Net:
    """NumPy views of a Linear stack's weights [out, in], biases [out] and their gradients."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    grad_weights: list[np.ndarray]
    grad_biases: list[np.ndarray]

    @classmethod
    def of(cls, linears: list[nn.Linear]) -> "_Net":
        return cls([m.weight.detach().numpy() for m in linears], [m.bias.detach().numpy() for m in linears],
                   [m.weight.grad.numpy() for m in linears], [m.bias.grad.numpy() for m in linears])


class NumpyMLPLearner(Learner):
    """Forward pass, PPO loss and hand-written backward of an MLP ActorCritic, in NumPy on the CPU.

    Works on NumPy views of the parameters and of their .grad (slices of the optimizer's flat
    buffers), so the optimizer steps what this writes; the views are rebuilt at every update.
    The observations reach the MLPs through _features (here: as they are); a subclass with a torso
    (proximo/learners/numpy_cnn.py) computes them there and takes their gradient in _torso_backward.
    """

    name = "numpy"
    fits = "the hand-written backward fits this CPU MLP"  # why choose_learner's auto picks it
    torso_grad = False  # whether step() forms the gradient with respect to the MLPs' input

    @classmethod
    def supports(cls, policy: ActorCritic, optimizer: FlatOptimizer) -> str | None:
        """None for flat observations, no recurrent core, separate tanh/relu Linear stacks for actor and
        critic, Discrete (masked or not) or Box actions and a float32 flat buffer on the CPU; else the
        reason it declines."""
        flat = optimizer.flat
        if flat is None:
            return "the parameters do not share one flat buffer"
        if flat.device.type != "cpu":
            return f"the policy is on {flat.device}, and this backend runs on the CPU only"
        if flat.dtype != torch.float32:
            return f"the parameters are {flat.dtype}, not float32"
        declined = cls._torso_declines(policy)
        if declined is not None:
            return declined
        if policy.is_recurrent:
            return "a recurrent core (its backward through time is autograd's)"
        if getattr(policy, "routes_by_group", False):
            return "one set of networks per agent group (proximo/nn/groups.py)"
        if policy.action_head.kind not in ("discrete", "box"):
            return f"{policy.action_head.kind} actions"
        if policy.action_head.sde:
            return "gSDE exploration (use_sde: its std depends on the latent, autograd's)"
        if policy.activation not in NUMPY_ACTIVATIONS:
            return f"activation {policy.activation!r} (it has {', '.join(NUMPY_ACTIVATIONS)})"
        for name in ("pi_net",) if policy.shared_network else ("pi_net", "vf_net"):
            if plain_mlp_layers(policy, getattr(policy, name)) is None:
                return f"{name} holds modules other than Linear and {policy.activation}"
        covered = {id(p) for p in policy.parameters() if p.requires_grad}
        if covered != {id(p) for p in optimizer.params}:
            return "the optimizer steps parameters other than the policy's"
        return None

    @classmethod
    def _torso_declines(cls, policy: ActorCritic) -> str | None:
        """The reason this backend declines the policy's observations and trunk layout, or None."""
        if policy.image:
            return "image observations need the CNN torso"
        if policy.shared_network:
            return "the actor and critic share a trunk"
        return None

    def begin_update(self) -> None:
        """Re-home the parameters if needed and take fresh NumPy views of them and their grads."""
        super().begin_update()
        policy = self.policy
        self.activation = policy.activation
        self.shared = policy.shared_network
        self.pi = _Net.of(plain_mlp_layers(policy, policy.pi_net))
        self.vf = None if self.shared else _Net.of(plain_mlp_layers(policy, policy.vf_net))
        head = policy.action_head
        self.kind = head.kind
        self.head = _Net.of([head.linear])
        self.value_head = _Net.of([policy.value_head])
        if self.kind == "box":
            self.log_std = head.log_std.detach().numpy()
            self.grad_log_std = head.log_std.grad.numpy()
        self.flat_grad = self.optimizer.grad

    def _features(self, obs: torch.Tensor) -> np.ndarray:
        """What the MLPs read, [B, in]: the flat observations themselves."""
        return obs.numpy()

    def _torso_backward(self, grad_features: np.ndarray) -> None:
        """Take d(loss)/d(features) [B, in] into the torso's parameters (none here)."""

    def step(self, minibatch: Minibatch, settings: LossSettings, kl_limit: float | None = None) -> StepResult:
        """Forward, the loss terms' and distribution's NumPy gradients, MLP backward, then the shared tail."""
        x, actions = self._features(minibatch.obs), minibatch.actions.numpy()
        old_log_probs = minibatch.old_log_probs.numpy()
        # A centralized critic (actor_dim) reads the whole input; the actor only its first actor_dim columns.
        x_pi = x if self.policy.actor_dim is None else x[:, :self.policy.actor_dim]
        pi_hidden = mlp_forward(self.pi.weights, self.pi.biases, x_pi, self.activation)
        vf_hidden = pi_hidden if self.shared else mlp_forward(self.vf.weights, self.vf.biases, x, self.activation)
        head = linear(pi_hidden[-1], self.head.weights[0], self.head.biases[0])
        values = vf_hidden[-1] @ self.value_head.weights[0][0]
        values += self.value_head.biases[0][0]
        if self.kind == "discrete":
            masks = None if minibatch.action_masks is None else minibatch.action_masks.numpy()
            log_probs, entropy, cache = categorical_np(head, actions, masks)
        else:
            log_probs, entropy, cache = diag_gaussian_np(head, self.log_std, actions)
        log_ratio = torch.from_numpy((log_probs - old_log_probs).astype(np.float32, copy=False))
        if self._kl_exceeded_before_backward(log_ratio, kl_limit):
            return StepResult(False, log_ratio)

        pg_loss, grad_log_probs = policy_loss_np(log_probs, old_log_probs, minibatch.advantages.numpy(),
                                                 settings.objective, settings.clip_range, kl_coef=settings.kl_coef)
        vf_loss, grad_values = value_loss_np(values, minibatch.old_values.numpy(), minibatch.returns.numpy(),
                                             settings.clip_range_vf)
        ent_mean, grad_entropy = entropy_bonus_np(entropy)
        total = pg_loss + settings.vf_coef * vf_loss - settings.ent_coef * ent_mean
        if not math.isfinite(total):
            raise non_finite_loss(total, pg_loss, vf_loss, ent_mean)
        grad_entropy *= -settings.ent_coef
        if self.kind == "discrete":
            grad_head = categorical_backward_np(cache, actions, grad_log_probs, grad_entropy)
        else:
            grad_head, grad_log_std = diag_gaussian_backward_np(cache, self.log_std, grad_log_probs, grad_entropy)
            self.grad_log_std[:] = grad_log_std
        grad_values = (grad_values * settings.vf_coef)[:, None]
        grad_pi = head_backward(self.head.weights[0], self.head.grad_weights[0], self.head.grad_biases[0],
                                pi_hidden[-1], grad_head)
        grad_vf = head_backward(self.value_head.weights[0], self.value_head.grad_weights[0],
                                self.value_head.grad_biases[0], vf_hidden[-1], grad_values)
        if self.shared:  # one trunk under both heads: its top gradient is the sum of theirs
            grad_pi += grad_vf
        grad_x = mlp_backward(self.pi.weights, self.pi.grad_weights, self.pi.grad_biases, x_pi, pi_hidden, grad_pi,
                              self.activation, self.torso_grad)
        if not self.shared:
            grad_x_vf = mlp_backward(self.vf.weights, self.vf.grad_weights, self.vf.grad_biases, x, vf_hidden,
                                     grad_vf, self.activation, self.torso_grad)
            if self.torso_grad:  # the torso's features feed both networks (actor_dim needs flat inputs)
                grad_x = grad_x + grad_x_vf
        if self.torso_grad:
            self._torso_backward(grad_x)
        norm = self._reduce_clip_step(log_ratio, settings, kl_limit)
        if norm is None:
            return StepResult(False, log_ratio)
        return StepResult(True, log_ratio, self._share(torch.tensor((pg_loss, vf_loss, ent_mean))), norm)
