"""One policy per group of agents: an actor-critic whose rows are routed to their group's own networks.

The observation carries a one-hot agent index at columns [id_start, id_start + len(group_of_agent))
(proximo/multiagent/envs.py writes it); group_of_agent maps each agent index to its group. Group 0's
networks are this module's own (it is an ActorCritic), every other group's a member ActorCritic of the
same shape. Observation normalization is shared and leaves the index columns as they are, so a row's
group is the argmax of its raw index. Each method splits its batch by group, runs the group's networks
and puts the results back in row order, so the rollout, GAE and the update see one policy; every group's
parameters get gradients from its own agents' rows only. Feedforward only (a recurrent state per group
would need its own layout), trained by the torch learner.
"""
from __future__ import annotations

import torch
from gymnasium import spaces
from torch import nn

from proximo.nn.policy import ActorCritic


class GroupedActorCritic(ActorCritic):
    """ActorCritic with one set of networks per agent group (see the module doc)."""

    routes_by_group = True

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, group_of_agent: list[int],
                 id_start: int, **kwargs) -> None:
        if kwargs.get("recurrent", "none") != "none":
            raise ValueError("one policy per agent group supports feedforward policies only (recurrent=none)")
        if kwargs.get("use_sde", False):
            raise ValueError("one policy per agent group explores with plain Gaussian noise; turn use_sde off")
        super().__init__(observation_space, action_space, **kwargs)
        count = max(group_of_agent) + 1
        if sorted(set(group_of_agent)) != list(range(count)):
            raise ValueError(f"group_of_agent {group_of_agent} must use the groups 0..{count - 1} each at least once")
        self.id_start, self.n_agents, self.group_count = int(id_start), len(group_of_agent), count
        self.group_of_agent_list = [int(g) for g in group_of_agent]
        self.register_buffer("group_of_agent", torch.tensor(group_of_agent, dtype=torch.long), persistent=False)
        self.extra = nn.ModuleList([ActorCritic(observation_space, action_space, **{**kwargs, "normalize_obs": False})
                                    for _ in range(count - 1)])

    def groups_of(self, x: torch.Tensor) -> torch.Tensor:
        """The group [B] of each row of (normalized) observations x [B, D]."""
        index = x[:, self.id_start:self.id_start + self.n_agents].argmax(1)
        return self.group_of_agent.to(index.device)[index]

    def normalize(self, x, update: bool = False):
        """The shared normalization, with the agent-index columns left raw (they route the rows)."""
        out = super().normalize(x, update)
        if out is not x:
            index = slice(self.id_start, self.id_start + self.n_agents)
            out[..., index] = x[..., index]
        return out

    def _group_call(self, group: int, name: str, *args, **kwargs):
        if group == 0:
            return getattr(ActorCritic, name)(self, *args, **kwargs)
        return getattr(self.extra[group - 1], name)(*args, **kwargs)

    def _routed(self, name: str, x: torch.Tensor, per_row: dict, **kwargs) -> tuple[torch.Tensor, ...]:
        """Run method `name` of each row's group on its rows (per_row: keyword arguments [B, ...] or None)."""
        groups = self.groups_of(x)
        outputs: list[torch.Tensor] | None = None
        for group in torch.unique(groups).tolist():
            rows = torch.nonzero(groups == group).squeeze(1)
            args = {key: None if value is None else value[rows] for key, value in per_row.items()}
            result = self._group_call(group, name, x[rows], **args, **kwargs)
            result = result if isinstance(result, tuple) else (result,)
            if outputs is None:
                outputs = [r.new_empty((x.shape[0], *r.shape[1:])) for r in result]
            for out, r in zip(outputs, result):
                out[rows] = r
        return tuple(outputs)

    def act(self, x: torch.Tensor, deterministic: bool = False, masks: torch.Tensor | None = None):
        """ActorCritic.act (actions, log_probs, values), each row by its group's networks."""
        return self._routed("act", x, {"masks": masks}, deterministic=deterministic)

    def evaluate(self, x: torch.Tensor, actions: torch.Tensor, masks: torch.Tensor | None = None,
                 states: torch.Tensor | None = None, episode_starts: torch.Tensor | None = None):
        """ActorCritic.evaluate (log_probs, entropy, values), each row by its group's networks."""
        return self._routed("evaluate", x, {"actions": actions, "masks": masks})

    def value(self, x: torch.Tensor, state: torch.Tensor | None = None,
              episode_starts: torch.Tensor | None = None) -> torch.Tensor:
        """V(x) [B], each row by its group's critic."""
        return self._routed("value", x, {})[0]

    def distribution(self, x: torch.Tensor, masks: torch.Tensor | None = None):
        """The action distribution of rows that all belong to one group (one agent's, as export asks)."""
        groups = torch.unique(self.groups_of(x)).tolist()
        if len(groups) != 1:
            raise ValueError(f"rows of groups {groups} in one call; distribution() takes one group's rows")
        return self._group_call(groups[0], "distribution", x, masks)


def group_info(policy: ActorCritic) -> dict | None:
    """What rebuilds a grouped policy (its group per agent and where the agent index sits), or None."""
    if not getattr(policy, "routes_by_group", False):
        return None
    return {"group_of_agent": policy.group_of_agent_list, "id_start": policy.id_start}

