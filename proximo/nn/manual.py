"""PPO's minibatch loss and its exact gradient for an MLP actor-critic, written out by hand in NumPy.

Why: on CartPole-sized networks (64x64, minibatches of 64-256) autograd's per-op cost, not the
arithmetic, is most of an update. A [256, 64] x [64, 64] matmul takes ~10 us in NumPy and ~21 us
in torch on this CPU, an elementwise op ~1 us against ~6 us, and the hand-written backward needs
no graph. The gradient written here is the one autograd computes for
    policy_loss(objective) + vf_coef * value_loss(clip_range_vf) - ent_coef * mean(entropy)
(proximo.core.objectives), down to torch's conventions at ties (tests/test_manual_grad.py compares
the two to float32 rounding). Plain Linear + tanh/relu stacks, separate actor and critic, flat
observations, Discrete or Box actions; everything else stays on autograd (see supports()).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from proximo.nn.distributions import _HALF_LOG_2PI, LOG_STD_MAX, LOG_STD_MIN


@dataclass
class _Layer:
    """NumPy views of one Linear layer's weight [out, in], bias [out] and their gradients."""

    weight: np.ndarray
    bias: np.ndarray
    grad_weight: np.ndarray
    grad_bias: np.ndarray


def _layer(linear: nn.Linear) -> _Layer:
    return _Layer(linear.weight.detach().numpy(), linear.bias.detach().numpy(),
                  linear.weight.grad.numpy(), linear.bias.grad.numpy())


@dataclass
class MinibatchForward:
    """What the backward pass needs from the forward pass of one minibatch."""

    x: np.ndarray                    # [B, D] normalized observations
    actions: np.ndarray              # [B] int64 or [B, d] float32
    pi_hidden: list[np.ndarray]      # activations of the actor's hidden layers, each [B, W]
    vf_hidden: list[np.ndarray]      # the same for the critic
    head: np.ndarray                 # [B, n] logits (Discrete) or means (Box)
    values: np.ndarray               # [B]
    log_probs: np.ndarray            # [B] log pi_new(a|s)
    entropy: np.ndarray              # [B] (Discrete) or a scalar array (Box: state-independent)
    aux: tuple                       # Discrete: (log-softmax, probs, each [B, n]); Box: (z [B, d], clamped log-std [d])


class ManualGradActorCritic:
    """Forward pass, PPO loss and hand-written backward for an MLP ActorCritic, in NumPy.

    Holds NumPy views of the policy's parameters and of their .grad (the flat buffers of
    proximo.nn.flat), so the optimizer steps what this writes. Build a new one when the parameters
    were re-homed (realias_parameters), as ppo_update does once per update.
    """

    def __init__(self, policy: nn.Module) -> None:
        if not self.supports(policy):
            raise ValueError("ManualGradActorCritic needs an MLP actor-critic with flat parameters (see supports())")
        self.relu = policy._activation is torch.relu
        self.pi_layers = [_layer(m) for m in policy.pi_net if isinstance(m, nn.Linear)]
        self.vf_layers = [_layer(m) for m in policy.vf_net if isinstance(m, nn.Linear)]
        head = policy.action_head
        self.kind = head.kind
        self.head = _layer(head.linear)
        self.value_head = _layer(policy.value_head)
        if self.kind == "box":
            self.log_std = head.log_std.detach().numpy()
            self.grad_log_std = head.log_std.grad.numpy()
        covered = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        if covered != policy._proximo_flat.numel():
            raise ValueError("the flat buffer holds parameters this backward pass does not know")

    @staticmethod
    def supports(policy: nn.Module) -> bool:
        """True for flat observations, separate Linear+tanh/relu actor and critic, Discrete or Box
        actions, and parameters (with grads) living in one flat float32 CPU buffer."""
        flat = getattr(policy, "_proximo_flat", None)
        if flat is None or flat.dtype != torch.float32 or flat.device.type != "cpu" or flat.grad is None:
            return False
        if policy.image or policy.shared_network or policy.action_head.kind not in ("discrete", "box"):
            return False
        if policy._activation is not torch.relu and getattr(policy._activation, "__name__", "") != "fast_tanh":
            return False
        for net in (policy.pi_net, policy.vf_net):
            kinds = [type(m) for m in net]
            if not kinds or any(k not in (nn.Linear, nn.Tanh, nn.ReLU) for k in kinds):
                return False
        return all(p.grad is not None for p in policy.parameters() if p.requires_grad)

    # forward ---------------------------------------------------------------------------------
    def _mlp(self, layers: list[_Layer], x: np.ndarray) -> list[np.ndarray]:
        hidden = []
        for layer in layers:
            z = x @ layer.weight.T
            z += layer.bias
            x = np.maximum(z, 0.0, out=z) if self.relu else np.tanh(z, out=z)
            hidden.append(x)
        return hidden

    def forward(self, x: np.ndarray, actions: np.ndarray) -> MinibatchForward:
        """Log-probs, entropy and values of a minibatch: x [B, D] float32, actions [B] or [B, d]."""
        pi_hidden = self._mlp(self.pi_layers, x)
        vf_hidden = self._mlp(self.vf_layers, x)
        head = pi_hidden[-1] @ self.head.weight.T
        head += self.head.bias
        values = vf_hidden[-1] @ self.value_head.weight[0]
        values += self.value_head.bias[0]
        if self.kind == "discrete":
            shifted = head - head.max(axis=1, keepdims=True)
            exp_shifted = np.exp(shifted)
            sum_exp = exp_shifted.sum(axis=1, keepdims=True)
            log_softmax = shifted - np.log(sum_exp)
            probs = exp_shifted / sum_exp
            log_probs = log_softmax[np.arange(len(actions)), actions]
            entropy = -np.einsum("ij,ij->i", probs, log_softmax)
            aux: tuple = (log_softmax, probs)
        else:
            log_std = np.clip(self.log_std, LOG_STD_MIN, LOG_STD_MAX)
            z = (actions - head) * np.exp(-log_std)
            d = head.shape[1]
            log_probs = -0.5 * np.einsum("ij,ij->i", z, z) - (log_std.sum() + _HALF_LOG_2PI * d)
            entropy = np.asarray(d * (0.5 + _HALF_LOG_2PI) + log_std.sum(), dtype=np.float32)
            aux = (z, log_std)
        return MinibatchForward(x, actions, pi_hidden, vf_hidden, head, values,
                                log_probs.astype(np.float32, copy=False), entropy, aux)

    # loss and backward -----------------------------------------------------------------------
    def backward(self, fwd: MinibatchForward, old_log_probs: np.ndarray, old_values: np.ndarray,
                 advantages: np.ndarray, returns: np.ndarray, objective: str, clip_range: float,
                 clip_range_vf: float | None, kl_coef: float, ent_coef: float, vf_coef: float
                 ) -> tuple[float, float, float]:
        """Write d(loss)/d(parameters) into the grads; returns (policy loss, value loss, mean entropy).

        All per-sample inputs are [B]; the loss is the one ppo_update minimizes with autograd.
        """
        batch = fwd.log_probs.shape[0]
        log_ratio = fwd.log_probs - old_log_probs
        ratio = np.exp(log_ratio)
        surrogate = ratio * advantages
        if objective == "clip":
            clipped = np.clip(ratio, 1.0 - clip_range, 1.0 + clip_range) * advantages
            # The unclipped term carries the gradient where it is the smaller one; inside the band both
            # terms are the same number, and torch's split of that tie plus clamp's pass-through add
            # up to the same full -A r. Outside the band the clipped term is constant.
            unclipped_active = surrogate <= clipped
            policy_loss = -np.minimum(surrogate, clipped).mean()
            grad_log_probs = np.where(unclipped_active, -surrogate, 0.0)
        elif objective == "none":
            policy_loss = -surrogate.mean()
            grad_log_probs = -surrogate
        else:  # adaptive_kl / fixed_kl: -(r A - beta k3), k3 = (r - 1) - log r, d k3 / d log pi = r - 1
            kl = np.expm1(log_ratio) - log_ratio
            policy_loss = -(surrogate - kl_coef * kl).mean()
            grad_log_probs = -surrogate + kl_coef * (ratio - 1.0)
        grad_log_probs = (grad_log_probs / batch).astype(np.float32, copy=False)

        error = fwd.values - returns
        squared = np.square(error)
        if clip_range_vf is None:
            value_loss = squared.mean()
            grad_values = error
        else:
            delta = fwd.values - old_values
            clipped_error = old_values + np.clip(delta, -clip_range_vf, clip_range_vf) - returns
            squared_clipped = np.square(clipped_error)
            value_loss = np.maximum(squared, squared_clipped).mean()
            # Inside the band both errors are equal and their gradients add up to the full one;
            # outside it the clipped error is constant and only a larger unclipped error counts.
            inside = np.abs(delta) <= clip_range_vf
            grad_values = np.where(inside | (squared > squared_clipped), error,
                                   np.where(squared == squared_clipped, 0.5 * error, 0.0))
        grad_values = (grad_values * (2.0 * vf_coef / batch)).astype(np.float32, copy=False)

        if self.kind == "discrete":
            log_softmax, probs = fwd.aux
            # d log pi(a) / d logits = onehot(a) - p;  d H / d logits = -p (log p + H)
            grad_head = probs * -grad_log_probs[:, None]
            rows = np.arange(batch)
            grad_head[rows, fwd.actions] += grad_log_probs
            entropy_mean = float(fwd.entropy.mean())
            if ent_coef != 0.0:
                grad_head += (ent_coef / batch) * probs * (log_softmax + fwd.entropy[:, None])
        else:
            z, log_std = fwd.aux
            inv_std = np.exp(-log_std)
            # d log pi / d mean = z / std;  d log pi / d log_std = z^2 - 1;  d H / d log_std = 1
            grad_head = (grad_log_probs[:, None] * z) * inv_std
            grad_log_std = grad_log_probs @ (np.square(z) - 1.0) - ent_coef
            # torch.clamp passes the gradient only inside [min, max]
            grad_log_std *= (self.log_std >= LOG_STD_MIN) & (self.log_std <= LOG_STD_MAX)
            self.grad_log_std[:] = grad_log_std
            entropy_mean = float(fwd.entropy)

        self._backprop(self.pi_layers, self.head, fwd.x, fwd.pi_hidden, grad_head)
        self._backprop(self.vf_layers, self.value_head, fwd.x, fwd.vf_hidden, grad_values[:, None])
        return float(policy_loss), float(value_loss), entropy_mean

    def _backprop(self, layers: list[_Layer], out: _Layer, x: np.ndarray, hidden: list[np.ndarray],
                  grad_out: np.ndarray) -> None:
        # Column sums as ones @ grad: one BLAS call, ~1 us against ~4 us for sum(axis=0) here.
        ones = np.ones(x.shape[0], dtype=x.dtype)
        np.matmul(grad_out.T, hidden[-1], out=out.grad_weight)
        np.matmul(ones, grad_out, out=out.grad_bias)
        # A one-column grad_out (the value head) makes the matmul an outer product, which BLAS does
        # ~3x slower than broadcasting.
        grad = grad_out * out.weight if grad_out.shape[1] == 1 else grad_out @ out.weight
        for k in range(len(layers) - 1, -1, -1):
            h = hidden[k]
            if self.relu:
                grad *= h > 0
            else:
                grad *= 1.0 - np.square(h)
            layer = layers[k]
            np.matmul(grad.T, hidden[k - 1] if k else x, out=layer.grad_weight)
            np.matmul(ones, grad, out=layer.grad_bias)
            if k:
                grad = grad @ layer.weight


def manual_grad_for(policy: nn.Module) -> ManualGradActorCritic | None:
    """A ManualGradActorCritic for policy, or None when it needs autograd (see supports())."""
    return ManualGradActorCritic(policy) if ManualGradActorCritic.supports(policy) else None
