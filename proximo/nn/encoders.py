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
    """The DQN/PPO-paper Atari conv stack (32x8x8 s4, 64x4x4 s2, 64x3x3 s1, ReLU), flattened: [B, 3136] at 84x84.

    The 512-unit layer of the paper's network is the first entry of the policy's net_arch (the
    paper-atari preset sets net_arch [512], ReLU, shared), so the torso holds the convolutions only.
    Input uint8 [B, C, H, W]; the division by 255 happens here, on the fly, so nothing stores floats.
    """

    min_size = 36  # the smallest H and W the three convolutions leave a 1x1 map of

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten())
        self.out_features = _flat_size(self.conv, channels, height, width)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Features [B, out_features] from uint8 frames [B, C, H, W]."""
        return self.conv(frames.to(torch.float32) / 255.0)


class MinAtarCNN(nn.Module):
    """MinAtar's torso (Young & Tian 2019): one 16x3x3 conv, stride 1, ReLU, flattened: [B, 1024] at 10x10.

    NatureCNN's 8x8 stride-4 first layer leaves nothing of a 10x10 frame; the paper's 128-unit
    layer is net_arch [128] of the minatar preset. Input uint8 [B, C, H, W], divided by 255 here.
    """

    min_size = 3

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, 16, 3, stride=1), nn.ReLU(), nn.Flatten())
        self.out_features = _flat_size(self.conv, channels, height, width)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Features [B, out_features] from uint8 frames [B, C, H, W]."""
        return self.conv(frames.to(torch.float32) / 255.0)


def plain_conv(torso: nn.Module) -> nn.Conv2d | None:
    """The Conv2d of a MinAtarCNN torso as built (one square, stride-1, unpadded conv with a bias, then ReLU
    and Flatten): the layout proximo/nn/numpy_conv.py computes; None for any other torso."""
    if type(torso) is not MinAtarCNN or len(torso.conv) != 3:
        return None
    conv, relu, flatten = torso.conv
    if type(conv) is not nn.Conv2d or type(relu) is not nn.ReLU or type(flatten) is not nn.Flatten:
        return None
    plain = (conv.kernel_size[0] == conv.kernel_size[1] and conv.stride == (1, 1) and conv.padding == (0, 0)
             and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is not None
             and conv.padding_mode == "zeros" and flatten.start_dim == 1 and flatten.end_dim == -1)
    return conv if plain else None


def _flat_size(conv: nn.Module, channels: int, height: int, width: int) -> int:
    with torch.no_grad():
        return int(conv(torch.zeros(1, channels, height, width)).shape[1])


def image_torso(channels: int, height: int, width: int) -> nn.Module:
    """The conv torso for frames of this size: NatureCNN from 36x36 up (Atari's 84x84), MinAtarCNN below."""
    if min(height, width) >= NatureCNN.min_size:
        return NatureCNN(channels, height, width)
    if min(height, width) >= MinAtarCNN.min_size:
        return MinAtarCNN(channels, height, width)
    raise ProximoError(f"image observations of {height}x{width} are too small for a conv torso (at least "
                       f"{MinAtarCNN.min_size}x{MinAtarCNN.min_size}); flatten them into a vector instead")
