"""Turning gymnasium observations (numpy, possibly Dict) into one tensor per batch."""
from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from proximo.errors import ProximoError


def is_image_space(space: spaces.Space) -> bool:
    """True for uint8 Box observations of rank 3 (frames, channel-first or channel-last)."""
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def flat_dim(space: spaces.Space) -> int:
    """Width of the flat float vector an observation of space is encoded into."""
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    if isinstance(space, spaces.MultiBinary):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Dict):
        return sum(flat_dim(sub) for sub in space.spaces.values())
    raise ProximoError(
        f"observation space {space} is not supported; proximo handles Box, Discrete, MultiDiscrete, "
        "MultiBinary and Dict of those (wrap the env to turn other spaces into one of them)")


def encode_flat(space: spaces.Space, obs, batch: int) -> torch.Tensor:
    """Encode a batch of observations of space into float32 [batch, flat_dim(space)]."""
    if isinstance(space, spaces.Box) or isinstance(space, spaces.MultiBinary):
        return torch.as_tensor(np.asarray(obs, dtype=np.float32)).reshape(batch, -1)
    if isinstance(space, spaces.Discrete):
        index = torch.as_tensor(np.asarray(obs, dtype=np.int64)).reshape(batch) - int(space.start)
        return torch.nn.functional.one_hot(index, int(space.n)).to(torch.float32)
    if isinstance(space, spaces.MultiDiscrete):
        values = torch.as_tensor(np.asarray(obs, dtype=np.int64)).reshape(batch, -1)
        nvec = np.asarray(space.nvec).ravel()
        return torch.cat([torch.nn.functional.one_hot(values[:, i], int(n)) for i, n in enumerate(nvec)],
                         dim=-1).to(torch.float32)
    if isinstance(space, spaces.Dict):
        return torch.cat([encode_flat(sub, obs[key], batch) for key, sub in space.spaces.items()], dim=-1)
    flat_dim(space)  # raises the unsupported-space error
    raise AssertionError("unreachable")


class NatureCNN(nn.Module):
    """The DQN/PPO-paper Atari torso: 3 conv layers then 512 ReLU units; input uint8 [B, C, 84, 84]."""

    def __init__(self, channels: int, height: int, width: int, out_features: int = 512) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            n_flat = self.conv(torch.zeros(1, channels, height, width)).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flat, out_features), nn.ReLU())

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Features [B, 512] from uint8 frames [B, C, H, W]."""
        return self.linear(self.conv(frames.to(torch.float32) / 255.0))
