"""Running mean and variance kept as module buffers, so they are saved with the policy."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class RunningMeanStd(nn.Module):
    """Mean/variance of a stream of [B, *shape] batches (parallel-merge update, float64)."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: torch.Tensor | np.ndarray) -> None:
        """Merge the statistics of batch [B, *shape] (a CPU tensor or a NumPy array) into the running ones.

        NumPy on views of the buffers: per rollout step this runs once, and ~10 torch ops cost ~50 us.
        """
        if isinstance(batch, torch.Tensor):
            batch = batch.detach().numpy()
        batch = batch.astype(np.float64, copy=False)
        mean, var, count = self.mean.numpy(), self.var.numpy(), self.count.numpy()
        batch_count = batch.shape[0]
        batch_mean = batch.mean(0)
        batch_var = batch.var(0) if batch_count > 1 else np.zeros_like(batch_mean)
        delta = batch_mean - mean
        total = count + batch_count
        m2 = var * count + batch_var * batch_count + np.square(delta) * count * batch_count / total
        mean += delta * batch_count / total
        var[...] = m2 / total
        count[...] = total

    def _apply(self, fn, recurse=True):
        # .to(device) / .float() of the policy leave the statistics float64 on the host: observations
        # arrive from the envs there, and are normalized there before one copy to the device.
        return self

    def normalize(self, x: torch.Tensor | np.ndarray, clip: float, eps: float = 1e-8) -> torch.Tensor | np.ndarray:
        """(x - mean) / sqrt(var + eps), clipped to [-clip, clip], in x's type and dtype."""
        if isinstance(x, np.ndarray):
            mean = self.mean.numpy().astype(x.dtype)
            std = np.sqrt(self.var.numpy() + eps).astype(x.dtype)
            return np.clip((x - mean) / std, -clip, clip)
        mean = self.mean.to(x.device, x.dtype)
        std = torch.sqrt(self.var + eps).to(x.device, x.dtype)
        return torch.clamp((x - mean) / std, -clip, clip)
