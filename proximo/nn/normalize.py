"""Running mean and variance kept as module buffers, so they are saved with the policy."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class RunningMeanStd(nn.Module):
    """Mean/variance of a stream of [B, *shape] batches (parallel-merge update, float64).

    A batch enters as its moments (count, sum and sum of squares of x - running mean), so the
    moments of batches seen by several processes can be summed (one all-reduce) and merged once:
    K processes with N envs each then keep the statistics one process with K x N envs would.
    """

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))

    @property
    def moments_size(self) -> int:
        """Length of the packed vector moments() returns: 1 + 2 x the number of elements of shape."""
        return 1 + 2 * self.mean.numel()

    def moments(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Packed float64 [count, sum(x - mean), sum((x - mean)^2)] of batch [B, *shape], flattened.

        Centred on the running mean, not on zero: a sum of squares about zero loses the variance to
        cancellation once |mean| >> std; every process holds the same running mean, so the centred
        sums of several processes still add up to the centred sums of their union.
        """
        if isinstance(batch, torch.Tensor):
            batch = batch.detach().numpy()
        centred = batch.astype(np.float64, copy=False).reshape(batch.shape[0], -1) - self.mean.numpy().reshape(-1)
        return np.concatenate(([float(batch.shape[0])], centred.sum(0), np.square(centred).sum(0)))

    @torch.no_grad()
    def update_from_moments(self, moments: np.ndarray) -> None:
        """Merge packed moments (of one batch, or summed over processes) taken about the current mean.

        NumPy on views of the buffers: per rollout step this runs once, and ~10 torch ops cost ~50 us.
        """
        batch_count = float(moments[0])
        if batch_count <= 0:
            return
        mean, var, count = self.mean.numpy(), self.var.numpy(), self.count.numpy()
        size = mean.size
        centred_sum = moments[1:1 + size].reshape(mean.shape)
        delta = centred_sum / batch_count  # batch mean - running mean
        # The batch's own sum of squared deviations; rounding can take it a hair below zero.
        batch_m2 = np.maximum(moments[1 + size:].reshape(mean.shape) - centred_sum * delta, 0.0)
        total = count + batch_count
        m2 = var * count + batch_m2 + np.square(delta) * count * batch_count / total
        mean += delta * batch_count / total
        var[...] = m2 / total
        count[...] = total

    def update(self, batch: torch.Tensor | np.ndarray) -> None:
        """Merge the statistics of batch [B, *shape] (a CPU tensor or a NumPy array) into the running ones."""
        self.update_from_moments(self.moments(batch))

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
