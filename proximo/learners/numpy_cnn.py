"""The NumPy learner for small convolutional policies: MinAtar's conv torso in front of the MLP learner.

Why: on MinAtar's 10x10 frames torch's per-op and convolution-layout costs, not the arithmetic, are
most of an update (proximo/nn/numpy_conv.py has the figures). Everything above the torso (the MLPs,
heads, loss terms and their gradients, the shared tail) is NumpyMLPLearner's; this adds the conv
forward in front and its backward at the end. tests/test_learners.py compares it with autograd.
"""
from __future__ import annotations

import numpy as np
import torch

from proximo.learners.numpy_mlp import NumpyMLPLearner
from proximo.nn.encoders import plain_conv
from proximo.nn.numpy_conv import conv_backward, conv_forward, frames_columns, patch_rows
from proximo.nn.policy import ActorCritic


class NumpyCNNLearner(NumpyMLPLearner):
    """NumpyMLPLearner behind MinAtar's conv torso: uint8 frames [B, C, H, W] -> conv -> the MLP(s).

    Takes the trunk shared by actor and critic (the minatar preset) or separate MLPs on the torso's
    features; the rollouts of a policy it trains act through ConvRolloutActor (proximo/nn/policy.py).
    """

    fits = "the hand-written backward fits this small CPU CNN"
    torso_grad = True

    @classmethod
    def _torso_declines(cls, policy: ActorCritic) -> str | None:
        """None for MinAtar's conv torso (encoders.plain_conv); else the reason."""
        if not policy.image:
            return "flat observations (the MLP learner's)"
        if plain_conv(policy.torso) is None:
            return (f"the {type(policy.torso).__name__} torso (this backend runs MinAtar's one stride-1 conv; "
                    "larger frames' torsos are autograd's)")
        return None

    def begin_update(self) -> None:
        """The MLP learner's views, plus the conv's weight [O, C, k, k], bias [O] and their grads."""
        super().begin_update()
        conv = plain_conv(self.policy.torso)
        self.conv_weight, self.conv_bias = conv.weight.detach().numpy(), conv.bias.detach().numpy()
        self.grad_conv_weight, self.grad_conv_bias = conv.weight.grad.numpy(), conv.bias.grad.numpy()
        c, h, w = self.policy.obs_shape
        self.rows = patch_rows(c, h, w, conv.kernel_size[0])

    def _features(self, obs: torch.Tensor) -> np.ndarray:
        """The conv torso's flattened features [B, O*P] (a transposed view) of uint8 frames [B, C, H, W];
        keeps what its backward needs."""
        self.patches, self.features_t = conv_forward(frames_columns(obs.numpy()), self.rows, self.conv_weight,
                                                     self.conv_bias)
        return self.features_t.T

    def _torso_backward(self, grad_features: np.ndarray) -> None:
        """The conv's weight and bias gradients from d(loss)/d(features) [B, O*P]."""
        conv_backward(self.patches, self.features_t, np.ascontiguousarray(grad_features.T), self.grad_conv_weight,
                      self.grad_conv_bias)
