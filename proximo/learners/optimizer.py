"""One optimizer object for every proximo trainer: Adam/AdamW over a flat parameter buffer.

The classic PPO trainer and the LLM trainers (GRPO, PPO-RLHF, SFT, reward model) all step their
parameters through FlatOptimizer: zero-grad, the gradient norm and its clipping, and the fused
Adam step each touch one tensor (proximo/nn/flat.py says why that is ~5x cheaper for small nets).
Parameters that cannot share one buffer (mixed dtypes or devices) fall back to torch's per-tensor
foreach kernels behind the same methods.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from proximo.nn.flat import flatten_parameters, is_flat_intact, realias_parameters


class FlatOptimizer:
    """Adam (weight_decay 0) or AdamW over the trainable parameters, kept in one flat buffer when possible.

    `flat` is that buffer (None in the per-tensor fallback) and `grad` its gradient [P]; backends
    that compute gradients by hand write into `grad` (or the parameters' .grad views of it).
    `params` is a module, a function returning the parameters, or a fixed list of them; with the first
    two, parameters a load_state_dict(assign=True) replaced are found again by ensure_intact().
    """

    def __init__(self, params: nn.Module | Callable[[], Iterable[nn.Parameter]] | Iterable[nn.Parameter],
                 lr: float, eps: float = 1e-8, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, flat: bool = True) -> None:
        if isinstance(params, nn.Module):
            self._source: Callable[[], Iterable[nn.Parameter]] | None = params.parameters
        elif callable(params):
            self._source = params
        else:
            self._source, fixed = None, list(params)
        self.params = [p for p in (self._source() if self._source is not None else fixed) if p.requires_grad]
        if not self.params:
            raise ValueError("FlatOptimizer got no trainable parameters")
        self.flat = flatten_parameters(self.params) if flat else None
        kind = torch.optim.AdamW if decoupled_weight_decay else torch.optim.Adam
        # weight_decay is always passed: AdamW's own default (0.01) would otherwise creep in.
        options: dict[str, Any] = dict(lr=lr, eps=eps, betas=betas, weight_decay=weight_decay)
        if self.flat is not None:
            self.optimizer = kind([self.flat], fused=True, **options)
        else:
            self.optimizer = kind(self.params, foreach=True, **options)

    @property
    def grad(self) -> torch.Tensor | None:
        """The flat gradient [P] (None in the per-tensor fallback)."""
        return None if self.flat is None else self.flat.grad

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped torch optimizer's param groups (learning rate and friends)."""
        return self.optimizer.param_groups

    @property
    def num_parameters(self) -> int:
        """How many scalars the optimizer steps."""
        return sum(p.numel() for p in self.params)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every param group."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def ensure_intact(self) -> None:
        """Make the parameters views of the flat buffer again if something re-homed or replaced them."""
        if self._source is not None:
            self.params = [p for p in self._source() if p.requires_grad]
        if self.flat is not None and not is_flat_intact(self.params, self.flat):
            realias_parameters(self.params, self.flat)

    def zero_grad(self) -> None:
        """Zero the gradient (in place for the flat buffer: the parameters' .grad are views of it)."""
        if self.flat is not None:
            self.flat.grad.zero_()
        else:
            self.optimizer.zero_grad(set_to_none=True)

    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the gradient, a 0-d tensor on the parameters' device."""
        if self.flat is not None:
            return torch.linalg.vector_norm(self.flat.grad)
        norms = [torch.linalg.vector_norm(p.grad) for p in self.params if p.grad is not None]
        if not norms:
            return torch.zeros((), device=self.params[0].device)
        return torch.linalg.vector_norm(torch.stack([n.to(torch.float32) for n in norms]))

    def clip_grad_norm_(self, max_norm: float | None) -> torch.Tensor:
        """Scale the gradient to norm at most max_norm (None: leave it); returns the norm before clipping."""
        if self.flat is not None and self.flat.device.type == "cpu":
            # NumPy on the CPU buffer: ~2 us against ~15 us for the three torch ops, once per minibatch.
            grad = self.flat.grad.numpy()
            norm = math.sqrt(float(np.dot(grad, grad)))
            if max_norm is not None:
                grad *= min(max_norm / (norm + 1e-6), 1.0)
            return torch.tensor(norm)
        norm = self.grad_norm()
        if max_norm is not None:
            # The same factor as torch.nn.utils.clip_grad_norm_, without its per-call bookkeeping.
            scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
            if self.flat is not None:
                self.flat.grad.mul_(scale)
            else:
                torch._foreach_mul_([p.grad for p in self.params if p.grad is not None], scale)
        return norm

    def step(self) -> None:
        """One Adam/AdamW step on the current gradient."""
        self.optimizer.step()

    def clip_and_step(self, max_norm: float | None) -> torch.Tensor:
        """The tail of every proximo optimizer step (classic learners, LLM learners through Precision.step,
        SFT, the reward model): clip the gradient to max_norm, step; returns the norm before clipping."""
        norm = self.clip_grad_norm_(max_norm)
        self.step()
        return norm

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state_dict (moments and step counts)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state_dict saved by state_dict()."""
        self.optimizer.load_state_dict(state)
