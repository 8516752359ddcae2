"""The actor-critic: observation encoding and normalization, policy and value networks."""
from __future__ import annotations

import math

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from proximo.nn.distributions import make_action_head
from proximo.nn.encoders import NatureCNN, encode_flat, flat_dim, is_image_space
from proximo.nn.normalize import RunningMeanStd

ACTIVATION_LAYERS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}


def mlp(in_features: int, widths: list[int], activation: str) -> nn.Sequential:
    """Linear + activation layers of the given widths."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_features, width), ACTIVATION_LAYERS[activation]()]
        in_features = width
    return nn.Sequential(*layers)


def orthogonal_init(module: nn.Module, gain: float) -> None:
    """Orthogonal weights with gain, zero biases, for every Linear/Conv2d inside module."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.orthogonal_(layer.weight, gain)
            nn.init.zeros_(layer.bias)


class ActorCritic(nn.Module):
    """Policy pi(a|s) and value V(s) for one observation and one action space.

    Observations go encode() -> normalize() -> the networks; rollouts store the normalized tensor.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space,
                 net_arch: list[int] = (64, 64), activation: str = "tanh", shared_network: bool = False,
                 ortho_init: bool = True, log_std_init: float = 0.0, normalize_obs: bool = False,
                 clip_obs: float = 10.0) -> None:
        super().__init__()
        self.observation_space = observation_space
        self.action_space = action_space
        self.image = is_image_space(observation_space)
        self.clip_obs = clip_obs
        net_arch = list(net_arch)
        if self.image:
            shape = observation_space.shape
            self.channels_last = shape[-1] < shape[0]
            c, h, w = (shape[2], shape[0], shape[1]) if self.channels_last else shape
            self.torso: nn.Module = NatureCNN(c, h, w)
            in_features = 512
            self.obs_shape: tuple[int, ...] = (c, h, w)
            self.obs_dtype = torch.uint8
        else:
            self.torso = nn.Identity()
            in_features = flat_dim(observation_space)
            self.obs_shape = (in_features,)
            self.obs_dtype = torch.float32
        self.obs_rms = RunningMeanStd((in_features,)) if normalize_obs and not self.image else None
        self.shared_network = shared_network
        self.pi_net = mlp(in_features, net_arch, activation)
        self.vf_net = nn.Identity() if shared_network else mlp(in_features, net_arch, activation)
        features = net_arch[-1]
        self.action_head = make_action_head(action_space, features, log_std_init)
        self.value_head = nn.Linear(features, 1)
        if ortho_init:
            orthogonal_init(self.torso, math.sqrt(2))
            orthogonal_init(self.pi_net, math.sqrt(2))
            orthogonal_init(self.vf_net, math.sqrt(2))
            orthogonal_init(self.action_head, 0.01)
            orthogonal_init(self.value_head, 1.0)

    # observation pipeline -------------------------------------------------------------------
    def encode(self, obs, batch: int) -> torch.Tensor:
        """Raw env observations of `batch` envs -> tensor [batch, *obs_shape] (uint8 frames or float)."""
        if self.image:
            frames = torch.as_tensor(np.asarray(obs, dtype=np.uint8))
            frames = frames.reshape(batch, *self.observation_space.shape)
            return frames.permute(0, 3, 1, 2) if self.channels_last else frames
        return encode_flat(self.observation_space, obs, batch)

    def normalize(self, x: torch.Tensor, update: bool = False) -> torch.Tensor:
        """Apply (and optionally update) the running observation normalization."""
        if self.obs_rms is None:
            return x
        if update:
            self.obs_rms.update(x)
        return self.obs_rms.normalize(x, self.clip_obs)

    # networks ----------------------------------------------------------------------------------
    def _latents(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.torso(x)
        latent_pi = self.pi_net(features)
        latent_vf = latent_pi if self.shared_network else self.vf_net(features)
        return latent_pi, latent_vf

    def distribution(self, x: torch.Tensor):
        """The action distribution for normalized observations x [B, *obs_shape]."""
        return self.action_head(self.pi_net(self.torso(x)))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """V(x) [B] for normalized observations."""
        features = self.torso(x)
        latent = self.pi_net(features) if self.shared_network else self.vf_net(features)
        return self.value_head(latent).squeeze(-1)

    def act(self, x: torch.Tensor, deterministic: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (or take the mode of) actions; returns (actions, log_probs [B], values [B])."""
        latent_pi, latent_vf = self._latents(x)
        dist = self.action_head(latent_pi)
        actions = dist.mode() if deterministic else dist.sample()
        return actions, dist.log_prob(actions), self.value_head(latent_vf).squeeze(-1)

    def evaluate(self, x: torch.Tensor, actions: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log_probs [B], entropy [B], values [B]) of stored actions under the current networks."""
        latent_pi, latent_vf = self._latents(x)
        dist = self.action_head(latent_pi)
        return dist.log_prob(actions), dist.entropy(), self.value_head(latent_vf).squeeze(-1)

    def to_env_actions(self, actions: torch.Tensor) -> np.ndarray:
        """Actions as the env wants them: Box actions clipped to bounds (log-probs keep the raw sample)."""
        array = actions.detach().cpu().numpy()
        if isinstance(self.action_space, spaces.Box):
            low, high = self.action_space.low, self.action_space.high
            array = np.clip(array, low, high).reshape(-1, *self.action_space.shape)
        elif isinstance(self.action_space, spaces.MultiBinary):
            array = array.astype(np.int8)
        return array

    def space_signature(self) -> dict[str, str]:
        """Text of the observation and action spaces, to detect a policy loaded for another env."""
        return {"observation_space": repr(self.observation_space), "action_space": repr(self.action_space)}
