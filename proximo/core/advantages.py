"""Generalized Advantage Estimation with terminations and truncations kept apart."""
from __future__ import annotations

import numpy as np
import torch


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"expected tensors of one shape [T, N], got {shapes}")


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over a [T, N] rollout; returns (advantages [T, N], returns [T, N] = advantages + values).

    next_values[t] is V of the observation that followed step t: V(s_{t+1}) inside an episode and
    V(final observation) when step t was a time-limit truncation. A true termination ignores it
    (no bootstrap); both terminations and truncations stop the lambda-chain, because the next row
    of the buffer belongs to a new episode.
    """
    _check_same_shape(rewards=rewards, values=values, next_values=next_values,
                      terminated=terminated, truncated=truncated)
    if rewards.dim() != 2:
        raise ValueError(f"expected [T, N] tensors, got shape {tuple(rewards.shape)}")
    if terminated.dtype != torch.bool or truncated.dtype != torch.bool:
        raise TypeError("terminated and truncated must be bool tensors")
    not_terminal = (~terminated).to(values.dtype)
    not_end = (~(terminated | truncated)).to(values.dtype)
    deltas = rewards + gamma * next_values * not_terminal - values
    chain = gamma * gae_lambda * not_end
    advantages = _backward_recursion(deltas, chain)
    return advantages, advantages + values


# Up to this many envs the recursion runs as plain Python floats per env (~0.1 us a step), past it
# as NumPy rows (~1 us a step whatever N is); a torch op per step costs ~5 us, ~10 ms per 2048 steps.
_PYTHON_LOOP_MAX_ENVS = 16


def _backward_recursion(deltas: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
    """x[t] = deltas[t] + chain[t] * x[t + 1] backwards over [T, N], with x[T] = 0."""
    if deltas.device.type != "cpu" or deltas.requires_grad or chain.requires_grad:
        out = torch.empty_like(deltas)
        running = torch.zeros_like(deltas[0])
        for t in range(deltas.shape[0] - 1, -1, -1):
            running = deltas[t] + chain[t] * running
            out[t] = running
        return out
    d, c = deltas.detach().numpy(), chain.detach().numpy()
    if d.shape[1] <= _PYTHON_LOOP_MAX_ENVS:
        out_np = np.empty(d.shape, dtype=np.float64)
        for env in range(d.shape[1]):
            column = []
            running = 0.0
            for delta, link in zip(reversed(d[:, env].tolist()), reversed(c[:, env].tolist())):
                running = delta + link * running
                column.append(running)
            out_np[::-1, env] = column
    else:
        out_np = np.empty_like(d)
        running_row = np.zeros_like(d[0])
        for t in range(d.shape[0] - 1, -1, -1):
            running_row = d[t] + c[t] * running_row
            out_np[t] = running_row
    return torch.from_numpy(out_np).to(deltas.dtype)


def discounted_returns(
    rewards: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor,
    bootstrap: torch.Tensor, gamma: float,
) -> torch.Tensor:
    """Discounted returns [T, N]; bootstrap[t] (e.g. V of the final observation) is added where
    the episode is truncated at t or where the rollout ends (t = T-1) and it was not terminated."""
    _check_same_shape(rewards=rewards, terminated=terminated, truncated=truncated, bootstrap=bootstrap)
    returns = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    last = rewards.shape[0] - 1
    for t in range(last, -1, -1):
        cut = truncated[t] | terminated[t] if t < last else torch.ones_like(terminated[t])
        tail = torch.where(cut, bootstrap[t] * (~terminated[t]).to(rewards.dtype), running)
        running = rewards[t] + gamma * tail
        returns[t] = running
    return returns


def normalize(x: torch.Tensor, eps: float = 1e-8, dim: int | None = None, all_reduce=None) -> torch.Tensor:
    """(x - mean) / (std + eps) over all elements, or along dim (each slice on its own);
    a single element (or slices of one) is only centred.

    all_reduce (an in-place sum over processes, e.g. World.all_reduce_sum_) makes the moments those
    of the union of every process's x: count, sum and sum of squares in float64, one call.
    """
    if all_reduce is not None:
        return _normalize_global(x, eps, dim, all_reduce)
    if dim is None:
        if x.numel() < 2:
            return x - x.mean()
        return (x - x.mean()) / (x.std() + eps)
    if x.shape[dim] < 2:
        return x - x.mean(dim, keepdim=True)
    return (x - x.mean(dim, keepdim=True)) / (x.std(dim, keepdim=True) + eps)


def _normalize_global(x: torch.Tensor, eps: float, dim: int | None, all_reduce) -> torch.Tensor:
    x64 = x.to(torch.float64)
    if dim is None:
        count = torch.full((1,), float(x.numel()), dtype=torch.float64, device=x.device)
        moments = torch.cat([count, x64.sum().view(1), x64.square().sum().view(1)])
    else:
        count = torch.full_like(x64.sum(dim, keepdim=True), float(x.shape[dim]))
        moments = torch.cat([count, x64.sum(dim, keepdim=True), x64.square().sum(dim, keepdim=True)], dim)
    all_reduce(moments)
    if dim is None:
        n, total, squares = moments.unbind()
    else:
        n, total, squares = moments.chunk(3, dim)
    mean = total / n
    if bool((n < 2).all()):
        return (x64 - mean).to(x.dtype)
    # unbiased, as torch.std: sum((x - mean)^2) / (n - 1) = (sum x^2 - n mean^2) / (n - 1)
    std = ((squares - n * mean.square()).clamp(min=0.0) / (n - 1)).sqrt()
    return ((x64 - mean) / (std + eps)).to(x.dtype)