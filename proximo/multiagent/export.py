"""One agent's policy out of a multi-agent run, for `proximo export RUN --agent NAME`.

The exported graph takes that agent's own observation, flattened (float32 [batch, own width]), and
builds the lane vector the policy was trained on (zero padding, the agent's one-hot index when the run
used agent_id, zeros for a centralized critic's input, which the actor does not read) before the
policy's normalization, actor and mode. Policies of games with action masks are not exported: the
mask would be a second input.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from proximo.config import PPOConfig
from proximo.errors import ProximoError
from proximo.multiagent.trainer import layout_for


class AgentInput(nn.Module):
    """agent's flat own observation [B, own] -> the lane vector [B, width] -> the wrapped exported policy."""

    def __init__(self, inner: nn.Module, agent: str, layout) -> None:
        super().__init__()
        self.inner, self.agent = inner, agent
        self.own, self.width = layout.own_dims[agent], layout.width
        template = torch.zeros(layout.width)
        if layout.id_dim:
            template[layout.own_dim + layout.agents.index(agent)] = 1.0
        self.register_buffer("template", template)

    def example(self) -> torch.Tensor:
        """One observation of the agent (zeros)."""
        return torch.zeros(1, self.own)

    def describe(self) -> dict[str, str]:
        """Metadata lines for the exported file."""
        return {"agent": self.agent, "input": f"obs: float32 [batch, {self.own}] the agent's own observation, "
                                              "flattened"}

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The agent's deterministic actions for a batch of its observations."""
        lane = self.template.expand(obs.shape[0], self.width).clone()
        lane[:, :self.own] = obs.reshape(obs.shape[0], -1)
        return self.inner(lane)


def agent_input(meta: dict[str, Any], agent: str | None) -> Callable[[nn.Module], nn.Module]:
    """The wrapper that feeds agent's observation to a multi-agent run's exported policy (see the module doc)."""
    if not str(meta.get("env_id") or "").startswith("pettingzoo:"):
        raise ProximoError("--agent exports one agent of a multi-agent run; this run's env is a gymnasium env")
    _, layout = layout_for(meta["env_id"], meta.get("env_kwargs") or {}, PPOConfig.from_dict(meta["config"]))
    if agent is None or agent not in layout.learners:
        raise ProximoError(f"name the agent to export with --agent, one of {', '.join(layout.learners)}")
    if layout.mask_width is not None:
        raise ProximoError("this game's policy acts on action masks, which the exported graph cannot take as a "
                           "second input; export supports multi-agent policies without masks")
    return lambda inner: AgentInput(inner, agent, layout)
