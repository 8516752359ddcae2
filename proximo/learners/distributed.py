"""Ranks of one run: the World the learners and the update loop reduce through."""
from __future__ import annotations

import torch


class LocalWorld:
    """A run in one process: rank 0 of 1, every collective a no-op."""

    rank = 0
    size = 1
    local_rank = 0
    is_main = True
    backend = None

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum tensor over ranks in place (nothing to do alone); returns it."""
        return tensor
