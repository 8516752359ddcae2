"""K agents' state in stacked storage, each agent still a normal module or object of its own.

The K policies of a population have one shape, so their parameters can live in ONE flat buffer
[K * P] (agent k's at [k P, (k + 1) P), in the order of its own parameters()) and their observation
statistics in [K, ...] tensors. Every agent's modules keep their names and hold views into that
storage: agent k saves, evaluates and exports as a solo policy does, while the population reads
and writes all K at once through stacked views ([K, out, in] for a weight) with no copy.

Per-agent statistics that the collector merges every step (observations, returns) use one
RunningMeanStd whose "shape" has the agent axis first: a step's batch of K x N values is the batch
of N over the shape (K, ...), so each agent's moments are those of its own N envs, summed in the
same order as a solo run sums them.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import nn

from proximo.envs.atari import GAME_KEY
from proximo.nn.normalize import RunningMeanStd
from proximo.rollout import EpisodeTracker, RewardScaler


ALIGN_BYTES = 64  # torch's CPU allocator aligns every buffer to this


class StackedParameters:
    """The trainable parameters of K same-shaped modules in one flat buffer, with stacked views: agent k's
    parameters lie at [k S, k S + P) in the order of its named_parameters() (S: P rounded up to a
    64-byte line), their .grad at the same places of flat.grad."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.k = len(modules)
        per_agent = [[(name, p) for name, p in m.named_parameters() if p.requires_grad] for m in modules]
        shapes = [[(name, tuple(p.shape)) for name, p in agent] for agent in per_agent]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("a population's policies must all have one shape")
        self.names = [name for name, _ in per_agent[0]]
        self.shapes = dict(shapes[0])
        self.params = [p for agent in per_agent for _, p in agent]
        if len({(p.dtype, p.device) for p in self.params}) != 1:
            raise ValueError("a population's parameters must share one dtype and device")
        self.offsets: dict[str, int] = {}
        offset = 0
        for name in self.names:
            self.offsets[name] = offset
            offset += int(np.prod(self.shapes[name], dtype=np.int64))
        self.size = offset  # P: one agent's parameter count
        # Each agent's block starts on a 64-byte boundary, as a solo run's flat buffer does: torch's CPU
        # matmuls can round differently on differently aligned weights, and agent k must compute what a
        # solo run computes.
        first = self.params[0]
        per_line = max(1, ALIGN_BYTES // first.element_size())
        self.stride = -(-self.size // per_line) * per_line
        self.flat = nn.Parameter(torch.zeros(self.k * self.stride, dtype=first.dtype, device=first.device))
        self.flat.grad = torch.zeros_like(self.flat)
        with torch.no_grad():
            for k, agent in enumerate(per_agent):
                for name, p in agent:
                    start = k * self.stride + self.offsets[name]
                    piece = self.flat.data[start:start + p.numel()]
                    piece.copy_(p.detach().reshape(-1))
                    p.data = piece.view_as(p)
                    p.grad = self.flat.grad[start:start + p.numel()].view_as(p)

    def view(self, name: str, grad: bool = False) -> torch.Tensor:
        """Parameter `name` of every agent as one [K, *shape] view of the flat buffer (or its gradient)."""
        base = self.flat.grad if grad else self.flat.data
        shape = self.shapes[name]
        strides = [1] * len(shape)
        for axis in range(len(shape) - 2, -1, -1):
            strides[axis] = strides[axis + 1] * shape[axis + 1]
        return base.as_strided((self.k, *shape), (self.stride, *strides), self.offsets[name])

    def rows(self, grad: bool = False) -> torch.Tensor:
        """The flat buffer (or its gradient) as [K, P]: row k is agent k's parameters (a strided view)."""
        return (self.flat.grad if grad else self.flat.data).view(self.k, self.stride)[:, :self.size]


def share_buffers(modules: list[nn.Module], stacked: dict[str, torch.Tensor]) -> None:
    """Make buffer `name` of module k a view of stacked[name][k] (a 0-d stacked tensor is shared as it is)."""
    for k, module in enumerate(modules):
        for name, storage in stacked.items():
            with torch.no_grad():
                storage_k = storage if storage.dim() == 0 else storage[k]
                storage_k.copy_(module._buffers[name])
            module._buffers[name] = storage_k


class GroupedRunningMeanStd(RunningMeanStd):
    """Running statistics of K agents' streams at once: batches arrive as [K * N, *shape] (agent k's N
    rows together) and each agent's mean and variance are those of its own rows. The count is one for
    all agents (each sees N per step). Agent k's own RunningMeanStd shares its row (agent_view)."""

    def __init__(self, agents: int, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        super().__init__((agents, *shape), epsilon)
        self.agents = agents

    def _by_agent(self, batch: np.ndarray) -> np.ndarray:
        """[K * N, *shape] -> [N, K, *shape]: the batch of N over the stacked shape."""
        rows = batch.reshape(self.agents, -1, *self.mean.shape[1:])
        return np.swapaxes(rows, 0, 1)

    def moments(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Packed moments of each agent's rows of batch [K * N, *shape] (see RunningMeanStd.moments)."""
        if isinstance(batch, torch.Tensor):
            batch = batch.detach().numpy()
        return super().moments(self._by_agent(batch))

    def adopt(self, members: list[RunningMeanStd]) -> None:
        """Take the members' current statistics and make their buffers views of this one's rows."""
        with torch.no_grad():
            self.count.copy_(members[0].count)
        share_buffers(members, {"mean": self.mean, "var": self.var, "count": self.count})

    def normalize(self, x: torch.Tensor | np.ndarray, clip: float, eps: float = 1e-8) -> torch.Tensor | np.ndarray:
        """Each agent's rows of x [K * N, *shape] normalized by its own statistics, in x's type and dtype."""
        k = self.agents
        shaped = x.reshape(k, -1, *self.mean.shape[1:])
        if isinstance(x, np.ndarray):
            mean = self.mean.numpy().astype(x.dtype)[:, None]
            std = np.sqrt(self.var.numpy() + eps).astype(x.dtype)[:, None]
            return np.clip((shaped - mean) / std, -clip, clip).reshape(x.shape)
        mean = self.mean.to(x.device, x.dtype)[:, None]
        std = torch.sqrt(self.var + eps).to(x.device, x.dtype)[:, None]
        return torch.clamp((shaped - mean) / std, -clip, clip).reshape(x.shape)

    def rows_of(self, agents: np.ndarray, x: np.ndarray, clip: float, eps: float = 1e-8) -> np.ndarray:
        """Rows x [R, *shape] normalized each by its own agent's statistics (agents [R])."""
        mean = self.mean.numpy()[agents].astype(x.dtype)
        std = np.sqrt(self.var.numpy()[agents] + eps).astype(x.dtype)
        return np.clip((x - mean) / std, -clip, clip)


class PopulationRewardScaler(RewardScaler):
    """RewardScaler for K agents x N envs: running returns per env, the return statistics per agent."""

    def __init__(self, agents: int, num_envs: int, gamma: np.ndarray, clip: np.ndarray) -> None:
        super().__init__(agents * num_envs, 1.0, 1.0)
        self.agents, self.envs_per_agent = agents, num_envs
        # per env: agent k's gamma and clip on its N envs
        self.gamma = np.repeat(np.asarray(gamma, dtype=np.float64), num_envs)
        self.clip = np.repeat(np.asarray(clip, dtype=np.float64), num_envs)
        self.return_rms = GroupedRunningMeanStd(agents, ())

    def moments(self, returns: np.ndarray) -> np.ndarray:
        """Each agent's moments of its N envs' running returns [K * N]."""
        return self.return_rms.moments(returns)

    def scale(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """Rewards [K * N] divided by their agent's return std and clipped; dones reset their running returns."""
        std = np.repeat(np.sqrt(self.return_rms.var.numpy() + 1e-8), self.envs_per_agent)
        self.running_return.numpy()[dones] = 0.0
        return np.clip(rewards / std, -self.clip, self.clip)


class PopulationEpisodes(EpisodeTracker):
    """EpisodeTracker over K agents x N envs: finished episodes go to their agent's own history."""

    def __init__(self, agents: int, num_envs: int, history: int = 100) -> None:
        super().__init__(agents * num_envs, history)
        self.agents, self.envs_per_agent = agents, num_envs
        self.agent_returns = [deque(maxlen=history) for _ in range(agents)]
        self.agent_lengths = [deque(maxlen=history) for _ in range(agents)]
        self.agent_finished = np.zeros(agents, dtype=np.int64)

    def _close(self, env: int, ret: float, length: int) -> None:
        k = env // self.envs_per_agent
        self.agent_returns[k].append(ret)
        self.agent_lengths[k].append(length)
        self.agent_finished[k] += 1

    def step(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        """Add one step's raw rewards [K * N]; close the episodes where dones [K * N] is true."""
        self.current_return += rewards
        self.current_length += 1
        if dones.any():
            for i in np.flatnonzero(dones):
                self._close(int(i), float(self.current_return[i]), int(self.current_length[i]))
            self.finished += int(dones.sum())
            self.current_return[dones] = 0.0
            self.current_length[dones] = 0

    def record_games(self, infos: dict) -> None:
        """Whole games (Atari), each to its agent."""
        final = infos.get("final_info")
        if not final or GAME_KEY not in final:
            return
        game, ended = final[GAME_KEY], np.asarray(final[f"_{GAME_KEY}"], dtype=bool)
        for i in np.flatnonzero(ended):
            self._close(int(i), float(game["r"][i]), int(game["l"][i]))
        self.finished += int(ended.sum())

    def member(self, k: int) -> "MemberEpisodes":
        """Agent k's episodes as a solo EpisodeTracker sees them."""
        return MemberEpisodes(self, k)


class MemberEpisodes:
    """One agent's view of PopulationEpisodes with a solo EpisodeTracker's fields and state format."""

    def __init__(self, episodes: PopulationEpisodes, k: int) -> None:
        self.episodes, self.k = episodes, k
        n = episodes.envs_per_agent
        self.envs = slice(k * n, (k + 1) * n)

    @property
    def returns(self) -> deque:
        """The agent's last finished returns."""
        return self.episodes.agent_returns[self.k]

    @property
    def lengths(self) -> deque:
        """The agent's last finished lengths."""
        return self.episodes.agent_lengths[self.k]

    @property
    def finished(self) -> int:
        """Episodes the agent has finished."""
        return int(self.episodes.agent_finished[self.k])

    def mean_return(self) -> float:
        """Mean of the agent's last finished returns (NaN before the first)."""
        return float(np.mean(self.returns)) if self.returns else float("nan")

    def state_dict(self) -> dict:
        """The solo EpisodeTracker state of this agent."""
        e = self.episodes
        return {"returns": list(self.returns), "lengths": list(self.lengths), "finished": self.finished,
                "current_return": e.current_return[self.envs].tolist(),
                "current_length": e.current_length[self.envs].tolist()}

    def load_state_dict(self, state: dict, in_progress: bool = True) -> None:
        """Restore from a solo EpisodeTracker state."""
        e = self.episodes
        self.returns.clear()
        self.lengths.clear()
        self.returns.extend(state["returns"])
        self.lengths.extend(state["lengths"])
        e.agent_finished[self.k] = int(state["finished"])
        e.finished = int(e.agent_finished.sum())
        if in_progress:
            e.current_return[self.envs] = np.asarray(state["current_return"], dtype=np.float64)
            e.current_length[self.envs] = np.asarray(state["current_length"], dtype=np.int64)
        else:
            e.current_return[self.envs] = 0.0
            e.current_length[self.envs] = 0
