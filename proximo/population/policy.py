"""The K policies of a population as the one policy a RolloutCollector steps K x N envs with.

The collector sees one vector env of K * N sub-envs (agent k's N envs at rows k N ... k N + N - 1)
and one policy. PopulationPolicy answers for all K agents: observations are normalized by each
agent's own statistics, and one fused NumPy forward per vector step acts for every agent
(PopulationActor, K stacked copies of RolloutActor's network). The randomness of agent k is drawn
from agent k's own torch generator, in the shapes a solo rollout draws it, so agent k acts exactly
as a solo run of its seed would.
"""
from __future__ import annotations

import numpy as np
import torch

from proximo.nn.distributions import _HALF_LOG_2PI, LOG_STD_MAX, LOG_STD_MIN
from proximo.nn.numpy_mlp import NUMPY_ACTIVATIONS, linear, mlp_forward
from proximo.nn.policy import ActorCritic, RolloutActor, plain_mlp_layers
from proximo.population.stack import GroupedRunningMeanStd, StackedParameters


def population_support(policy: ActorCritic) -> str | None:
    """None when a population can batch this policy (the fused NumPy actor supports it: CPU, flat
    observations, separate tanh/relu MLPs, Discrete or Box actions, no memory), else the reason."""
    if RolloutActor.supports(policy):
        return None
    if policy.device.type != "cpu":
        return f"the policy is on {policy.device}; populations run on the CPU"
    if policy.image:
        return "image observations (the CNN torso)"
    if policy.is_recurrent:
        return "a recurrent core"
    if policy.shared_network:
        return "a shared actor-critic trunk"
    if policy.action_head.sde:
        return "gSDE exploration (use_sde)"
    if policy.activation not in NUMPY_ACTIVATIONS:
        return f"the {policy.activation} activation (the batched path has {', '.join(NUMPY_ACTIVATIONS)})"
    return f"{policy.action_head.kind} actions (the batched path has Discrete and Box)"


class PopulationPolicy:
    """K same-shaped ActorCritics (members) acting as one policy over K x N envs (see the module docstring)."""

    def __init__(self, members: list[ActorCritic], stack: StackedParameters, envs_per_agent: int,
                 generators: list[torch.Generator]) -> None:
        self.members, self.stack, self.n = members, stack, envs_per_agent
        self.k = len(members)
        self.generators = generators
        first = members[0]
        self.obs_rms: GroupedRunningMeanStd | None = None
        if first.obs_rms is not None:
            self.obs_rms = GroupedRunningMeanStd(self.k, tuple(first.obs_rms.mean.shape))
            self.obs_rms.adopt([m.obs_rms for m in members])
        self.clip_obs = first.clip_obs
        # What the collector and the buffer read off a policy: the same for every member.
        self.device, self.obs_shape, self.obs_dtype = first.device, first.obs_shape, first.obs_dtype
        self.action_head, self.mask_dim, self.action_space = first.action_head, first.mask_dim, first.action_space
        self.is_recurrent, self.state_size, self.image = False, 0, first.image

    def encode(self, obs, batch: int) -> torch.Tensor:
        """Raw observations of `batch` envs -> [batch, *obs_shape] (as a solo policy encodes them)."""
        return self.members[0].encode(obs, batch)

    def encode_np(self, obs, batch: int) -> np.ndarray:
        """encode() as a NumPy array."""
        return self.members[0].encode_np(obs, batch)

    def normalize(self, x: torch.Tensor | np.ndarray, update: bool = False) -> torch.Tensor | np.ndarray:
        """Each agent's rows [K * N, ...] normalized by its own running statistics (frozen)."""
        return x if self.obs_rms is None else self.obs_rms.normalize(x, self.clip_obs)

    def prepare_encoded(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded observations [K * N, ...] (on the host) -> normalized, on the population's device."""
        return self.normalize(x).to(self.device)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """V [K * N] of normalized observations, each agent's rows by its own critic.

        Once per rollout (its last step), through each member's own torch forward: the values a solo
        run computes there, bit for bit."""
        return torch.cat([member.value(rows) for member, rows in zip(self.members, x.split(self.n))])

    def final_values(self, observations, envs: np.ndarray, state: torch.Tensor | None = None) -> torch.Tensor:
        """V [R] of raw final observations of envs [R] (truncated episodes), each by its agent's member."""
        values = torch.empty(len(envs), device=self.device)
        agents = envs // self.n
        for k in np.unique(agents):
            rows = np.flatnonzero(agents == k)
            part = {key: v[rows] for key, v in observations.items()} if isinstance(observations, dict) \
                else observations[rows]
            values[torch.from_numpy(rows)] = self.members[k].final_values(part, envs[rows] - k * self.n)
        return values

    def rollout_actor(self) -> "PopulationActor":
        """The fused actor of all K agents for the next rollout (built from the current weights); its network
        runs on the population's device (TorchPopulationActor off the CPU)."""
        return PopulationActor(self) if self.device.type == "cpu" else TorchPopulationActor(self)

    def to_env_actions(self, actions: torch.Tensor | np.ndarray) -> np.ndarray:
        """Actions as the env wants them (clipped to a Box's bounds), as a solo policy gives them."""
        return self.members[0].to_env_actions(actions)

    def act(self, *args, **kwargs):
        """Populations act through PopulationActor only (the NumPy path, see population_support)."""
        raise NotImplementedError("a population acts through its fused NumPy actor")


class PopulationActor(RolloutActor):
    """RolloutActor for K agents: layer k of the fused net stacked per agent ([K, 2W, in]), noise drawn
    from each agent's generator. Rows of x are agent-major: agent k's N envs are rows k N ... k N + N - 1."""

    def __init__(self, population: PopulationPolicy) -> None:
        first = population.members[0]
        head = first.action_head
        self.kind, self.activation = head.kind, first.activation
        self.k, self.n, self.generators = population.k, population.n, population.generators
        stack = population.stack

        def weights(name: str) -> np.ndarray:
            return stack.view(name).numpy()

        pi_names = [_param_name(first, layer) for layer in plain_mlp_layers(first, first.pi_net)]
        vf_names = [_param_name(first, layer) for layer in plain_mlp_layers(first, first.vf_net)]
        self.weights, self.biases = [], []
        for index, (a, c) in enumerate(zip(pi_names, vf_names)):
            wa, wc = weights(a + ".weight"), weights(c + ".weight")
            if index == 0:
                fused = np.concatenate([wa, wc], axis=1)  # both nets read the same input
            else:
                fused = _block_diag(wa, wc)
            self.weights.append(np.ascontiguousarray(fused))
            self.biases.append(np.concatenate([weights(a + ".bias"), weights(c + ".bias")], axis=1)[:, None, :])
        head_name = _param_name(first, head.linear)
        value_name = _param_name(first, first.value_head)
        self.out_weight = np.ascontiguousarray(_block_diag(weights(head_name + ".weight"), weights(value_name + ".weight")))
        self.out_bias = np.concatenate([weights(head_name + ".bias"), weights(value_name + ".bias")], axis=1)[:, None, :]
        self.n_out = head.linear.out_features
        if self.kind == "box":
            # torch ops, as RolloutActor computes them, so each agent's numbers are a solo run's
            with torch.no_grad():
                log_std = torch.clamp(stack.view(_param_name(first, head) + ".log_std"), LOG_STD_MIN, LOG_STD_MAX)
                constants = -(log_std.sum(-1) + _HALF_LOG_2PI * self.n_out)  # [K] float32
                self.std = np.repeat(log_std.exp().numpy(), self.n, axis=0)  # per row [K * N, d]
            self.log_prob_const = np.repeat(constants.numpy(), self.n)

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """Every agent's fused output [K * N, n_out + 1] for its rows of x [K * N, D]."""
        stacked = x.reshape(self.k, self.n, -1)
        hidden = mlp_forward(self.weights, self.biases, stacked, self.activation)[-1]
        return linear(hidden, self.out_weight, self.out_bias).reshape(self.k * self.n, -1)

    def draw(self, n_steps: int, num_envs: int, generator: torch.Generator | None = None) -> None:
        """Each agent's rollout noise from its own generator, in a solo rollout's shapes, side by side."""
        if self.kind == "box":
            noise = np.concatenate([torch.randn(n_steps, self.n, self.n_out, generator=g).numpy()
                                    for g in self.generators], axis=1)
            self.scaled_noise = noise * self.std
            self.noise_log_probs = (self.log_prob_const - 0.5 * np.square(noise).sum(-1)).astype(np.float32)
            self.noise = noise
        else:
            self.noise = np.concatenate([torch.rand(n_steps, self.n, dtype=torch.float64, generator=g).numpy()
                                         for g in self.generators], axis=1)


class TorchPopulationActor(PopulationActor):
    """PopulationActor whose fused network runs in torch on the population's device (a GPU): the same
    weights, noise and sampling, with the [K * N, n_out + 1] outputs brought to the host for the envs."""

    def __init__(self, population: PopulationPolicy) -> None:
        with torch.no_grad():
            host = {name: population.stack.view(name).cpu() for name in population.stack.names}
        self._device = population.device
        super().__init__(_HostStack(population, host))
        device = self._device
        self.t_weights = [torch.from_numpy(w).to(device) for w in self.weights]
        self.t_biases = [torch.from_numpy(b).to(device) for b in self.biases]
        self.t_out = (torch.from_numpy(self.out_weight).to(device), torch.from_numpy(self.out_bias).to(device))

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """Every agent's fused output for its rows of x [K * N, D], computed on the device."""
        with torch.no_grad():
            h = torch.from_numpy(np.ascontiguousarray(x)).to(self._device).view(self.k, self.n, -1)
            for weight, bias in zip(self.t_weights, self.t_biases):
                h = torch.baddbmm(bias, h, weight.transpose(1, 2))
                h = torch.tanh(h) if self.activation == "tanh" else torch.relu(h)
            out = torch.baddbmm(self.t_out[1], h, self.t_out[0].transpose(1, 2))
            return out.reshape(self.k * self.n, -1).cpu().numpy()


class _HostStack:
    """A population's policy seen with host copies of its stacked weights (what PopulationActor reads)."""

    def __init__(self, population: PopulationPolicy, host: dict[str, torch.Tensor]) -> None:
        self.members, self.k, self.n, self.generators = (population.members, population.k, population.n,
                                                         population.generators)
        self.stack = _HostViews(host)


class _HostViews:
    def __init__(self, host: dict[str, torch.Tensor]) -> None:
        self.host = host

    def view(self, name: str) -> torch.Tensor:
        return self.host[name]


def _param_name(policy: ActorCritic, module) -> str:
    """The dotted name prefix of module's parameters in policy ("pi_net.0" -> "pi_net.0"; heads with a dot)."""
    for name, candidate in policy.named_modules():
        if candidate is module:
            return name
    raise KeyError("module not in policy")


def _block_diag(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per agent block_diag(a[k], b[k]) of [K, p, q] and [K, r, s] -> [K, p + r, q + s]."""
    k, p, q = a.shape
    _, r, t = b.shape
    out = np.zeros((k, p + r, q + t), dtype=a.dtype)
    out[:, :p, :q] = a
    out[:, p:, q:] = b
    return out
