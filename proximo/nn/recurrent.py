"""The recurrent core of a memory policy: an LSTM or GRU whose state is one flat tensor per env.

A flat [B, state_size] state is what the rollout stores, the update replays, a checkpoint saves and
episode starts zero, whichever the cell (LSTM: h and c; GRU: h) and however many layers.
"""
from __future__ import annotations

import torch
from torch import nn

RECURRENT_KINDS = ("none", "lstm", "gru")
# How ortho_init treats the core: orthogonal weights and zero biases, or PyTorch's own LSTM/GRU init
# (every weight and bias uniform in +-1/sqrt(hidden)), which sb3-contrib's RecurrentPPO keeps: its
# policy builds the LSTMs after ActorCriticPolicy's orthogonal init has run (sb3_contrib/common/recurrent/
# policies.py, RecurrentActorCriticPolicy.__init__).
RNN_INITS = ("orthogonal", "torch_default")


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

    def initialize(self, scheme: str) -> None:
        """Apply an RNN_INITS scheme: orthogonal_init(), or keep the PyTorch default drawn at construction."""
        if scheme == "orthogonal":
            self.orthogonal_init()
        elif scheme != "torch_default":
            raise ValueError(f"recurrent init must be one of {RNN_INITS}, got {scheme!r}")

    def orthogonal_init(self) -> None:
        """Orthogonal weights (gain 1: the gates squash) and zero biases, as the Linear layers get with ortho_init."""
        for name, param in self.rnn.named_parameters():
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

    def forward(self, features: torch.Tensor, state: torch.Tensor, starts: torch.Tensor, final: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Outputs [L, B, hidden] and the final flat state [B, state_size] (None unless final) for features
        [L, B, F] from state [B, state_size]; starts [L, B] bool marks the steps whose observation begins an
        episode. The state of sequence b is zeroed just before step t where starts[t, b].

        Sequences holding an episode start after their first step are cut there into segments. Without
        final (the update's replay) the segments run as one batch, each padded at its end, in one call
        of the cell; with final, the cell runs once per stretch of steps free of starts.
        """
        parts = self.unpack(state)
        keep = (~starts[0]).to(features.dtype).view(1, -1, 1)
        parts = tuple(part * keep for part in parts)
        if starts.shape[0] == 1 or not bool(starts[1:].any()):
            out, new = self._run(features, parts)
            return out, self.pack(new) if final else None
        if not final:
            return self._segments(features, parts, starts), None
        cuts = (torch.nonzero(starts[1:].any(dim=1)).flatten() + 1).tolist()
        outputs = []
        for begin, end in zip([0] + cuts, cuts + [starts.shape[0]]):
            if begin > 0:
                keep = (~starts[begin]).to(features.dtype).view(1, -1, 1)
                parts = tuple(part * keep for part in parts)
            out, parts = self._run(features[begin:end], parts)
            outputs.append(out)
        return torch.cat(outputs), self.pack(parts)

    def _run(self, features: torch.Tensor, parts: tuple[torch.Tensor, ...]
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        out, new = self.rnn(features, parts[0] if self.parts == 1 else parts)
        return out, ((new,) if self.parts == 1 else tuple(new))

    def _segments(self, features: torch.Tensor, parts: tuple[torch.Tensor, ...], starts: torch.Tensor
                  ) -> torch.Tensor:
        """The outputs [L, B, hidden] of forward() for sequences holding episode starts, in one call."""
        length, batch = starts.shape
        begins = starts.t().clone()  # [B, L], sequence-major like the segments below
        begins[:, 0] = True          # every sequence opens a segment at its first step
        flat_begins = begins.flatten()
        first = torch.nonzero(flat_begins).flatten()           # where each segment starts, in b * L + t
        segment = torch.cumsum(flat_begins.long(), 0) - 1      # the segment of each step
        lengths = torch.diff(first, append=first.new_tensor([batch * length]))
        position = torch.arange(batch * length, device=first.device) - first[segment]
        # Padding sits after each segment's last step, so it never reaches the outputs read back.
        padded = features.new_zeros(int(lengths.max()), len(first), features.shape[-1])
        padded[position, segment] = features.transpose(0, 1).reshape(batch * length, -1)
        # A sequence's first segment continues from its state (zeroed above if it starts an episode);
        # every later segment begins an episode, from zeros.
        owner = first // length
        carries = (first % length == 0).to(features.dtype).view(1, -1, 1)
        out, _ = self._run(padded, tuple(part[:, owner] * carries for part in parts))
        return out[position, segment].view(batch, length, -1).transpose(0, 1)
