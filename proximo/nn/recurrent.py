"""The recurrent core of a memory policy: an LSTM or GRU whose state is one flat tensor per env.

A flat [B, state_size] state is what the rollout stores, the update replays, a checkpoint saves and
episode starts zero, whichever the cell (LSTM: h and c; GRU: h) and however many layers.
"""
from __future__ import annotations

import torch
from torch import nn

RECURRENT_KINDS = ("none", "lstm", "gru")


class RecurrentCore(nn.Module):
    """An LSTM or GRU over features [L, B, F]; the state is zeroed for each sequence where an episode starts."""

    def __init__(self, kind: str, in_features: int, hidden: int, layers: int) -> None:
        super().__init__()
        if kind not in ("lstm", "gru"):
            raise ValueError(f"recurrent core must be lstm or gru, got {kind!r}")
        self.kind, self.hidden, self.layers = kind, hidden, layers
        self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(in_features, hidden, layers)
        self.parts = 2 if kind == "lstm" else 1
        self.state_size = self.parts * layers * hidden
        for name, param in self.rnn.named_parameters():
            # Orthogonal weights and zero biases, as for the Linear layers (gain 1: the cell's gates squash).
            if name.startswith("weight"):
                nn.init.orthogonal_(param, 1.0)
            else:
                nn.init.zeros_(param)

    def unpack(self, state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Flat state [B, state_size] -> the cell's (h, c) or (h,), each [layers, B, hidden]."""
        batch = state.shape[0]
        parts = state.view(batch, self.parts, self.layers, self.hidden).permute(1, 2, 0, 3)
        return tuple(part.contiguous() for part in parts)

    def pack(self, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The cell's (h, c) or (h,) [layers, B, hidden] -> flat state [B, state_size]."""
        return torch.stack(parts).permute(2, 0, 1, 3).reshape(parts[0].shape[1], self.state_size)

    def forward(self, features: torch.Tensor, state: torch.Tensor, starts: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs [L, B, hidden] and the final flat state [B, state_size] for features [L, B, F] from
        state [B, state_size]; starts [L, B] bool marks the steps whose observation begins an episode.

        The state of sequence b is zeroed just before step t where starts[t, b]. The cell runs once
        per stretch of steps with no start in any sequence, rather than once per step.
        """
        length, batch = starts.shape
        parts = self.unpack(state)
        cuts = (torch.nonzero(starts[1:].any(dim=1)).flatten() + 1).tolist()
        outputs = []
        for begin, end in zip([0] + cuts, cuts + [length]):
            keep = (~starts[begin]).to(features.dtype).view(1, batch, 1)
            parts = tuple(part * keep for part in parts)
            out, new = self.rnn(features[begin:end], parts[0] if self.parts == 1 else parts)
            parts = (new,) if self.parts == 1 else tuple(new)
            outputs.append(out)
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0], self.pack(parts)
