"""The actor-critic: observation encoding and normalization, policy and value networks."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from proximo.nn.distributions import _HALF_LOG_2PI, LOG_STD_MAX, LOG_STD_MIN, MASKED_LOGIT, make_action_head
from proximo.nn.encoders import encode_flat, flat_dim, image_torso, is_image_space, plain_conv
from proximo.nn.fast import fast_tanh
from proximo.nn.normalize import RunningMeanStd
from proximo.nn.numpy_conv import conv_forward, frames_columns, patch_rows
from proximo.nn.numpy_mlp import NUMPY_ACTIVATIONS, linear, mlp_forward
from proximo.nn.recurrent import RecurrentCore
from proximo.nn.spaces import mask_width, network_space

ACTIVATION_LAYERS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}
# The same activations as plain functions, for the module-call-free forward pass (see ActorCritic._mlp).
ACTIVATION_FUNCTIONS = {"tanh": fast_tanh, "relu": torch.relu, "elu": F.elu, "gelu": F.gelu, "silu": F.silu}


def plain_mlp_layers(policy: "ActorCritic", net: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of net when it is exactly Linear, activation, Linear, activation, ... with the
    policy's configured activation; None when it holds anything else (a LayerNorm, another activation)."""
    if not isinstance(net, nn.Sequential) or len(net) == 0 or len(net) % 2:
        return None
    activation = ACTIVATION_LAYERS[policy.activation]
    layers = list(net)
    if all(isinstance(m, nn.Linear) for m in layers[0::2]) and all(type(m) is activation for m in layers[1::2]):
        return layers[0::2]
    return None


def mlp(in_features: int, widths: list[int], activation: str) -> nn.Sequential:
    """Linear + activation layers of the given widths."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_features, width), ACTIVATION_LAYERS[activation]()]
        in_features = width
    return nn.Sequential(*layers)


def orthogonal_init(module: nn.Module, gain: float) -> None:
    """Orthogonal weights with gain, zero biases, for every Linear/Conv2d inside module."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.orthogonal_(layer.weight, gain)
            nn.init.zeros_(layer.bias)


class ActorCritic(nn.Module):
    """Policy pi(a|s) and value V(s) for one observation and one action space.

    Observations go encode() -> normalize() -> the networks; rollouts store the normalized tensor.
    The networks are torso (CNN for frames, else identity) -> recurrent core (LSTM/GRU, optional;
    one for the actor and one for the critic unless shared_network) -> MLP -> action and value heads.
    A recurrent policy acts through step() with a flat state [B, state_size] (proximo/nn/recurrent.py),
    a feedforward one through act(). mask_key names a Dict observation key holding action masks,
    which the network does not see; masks [B, mask_dim] restrict every distribution to legal actions.
    actor_dim makes the actor read only the first actor_dim features of the flat observation while the
    critic reads all of them: a centralized critic (MAPPO) whose extra input, the global state, follows
    each agent's own observation (proximo/multiagent/layout.py builds that vector).
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space,
                 net_arch: list[int] = (64, 64), activation: str = "tanh", shared_network: bool = False,
                 ortho_init: bool = True, log_std_init: float = 0.0, normalize_obs: bool = False,
                 clip_obs: float = 10.0, recurrent: str = "none", rnn_hidden: int = 128, rnn_layers: int = 1,
                 rnn_init: str = "orthogonal", mask_key: str | None = None, actor_dim: int | None = None,
                 use_sde: bool = False) -> None:
        super().__init__()
        self.observation_space = observation_space
        self.action_space = action_space
        self.mask_key = mask_key
        self.net_space = network_space(observation_space, mask_key)
        self.image = is_image_space(self.net_space)
        self.clip_obs = clip_obs
        net_arch = list(net_arch)
        if self.image:
            shape = observation_space.shape
            self.channels_last = shape[-1] < shape[0]
            c, h, w = (shape[2], shape[0], shape[1]) if self.channels_last else shape
            self.torso: nn.Module = image_torso(c, h, w)  # convolutions; the dense layers are net_arch
            in_features = self.torso.out_features
            self.obs_shape: tuple[int, ...] = (c, h, w)
            self.obs_dtype = torch.uint8
        else:
            self.torso = nn.Identity()
            in_features = flat_dim(self.net_space)
            self.obs_shape = (in_features,)
            self.obs_dtype = torch.float32
        self.obs_rms = RunningMeanStd((in_features,)) if normalize_obs and not self.image else None
        if actor_dim is not None and (self.image or shared_network or not 0 < actor_dim <= in_features):
            raise ValueError(f"actor_dim {actor_dim} needs flat observations of at least that width (got "
                             f"{in_features}{', frames' if self.image else ''}) and separate actor and critic "
                             f"networks (shared_network is {shared_network})")
        self.actor_dim = actor_dim
        actor_in = actor_dim if actor_dim is not None else in_features
        self.shared_network = shared_network
        self.recurrent = recurrent
        self.pi_core: RecurrentCore | None = None
        self.vf_core: RecurrentCore | None = None
        if recurrent != "none":
            self.pi_core = RecurrentCore(recurrent, actor_in, rnn_hidden, rnn_layers)
            if not shared_network:
                self.vf_core = RecurrentCore(recurrent, in_features, rnn_hidden, rnn_layers)
            in_features = actor_in = rnn_hidden
        self.pi_net = mlp(actor_in, net_arch, activation)
        self.vf_net = nn.Identity() if shared_network else mlp(in_features, net_arch, activation)
        features = net_arch[-1]
        self.action_head = make_action_head(action_space, features, log_std_init, use_sde)
        self.mask_dim = mask_width(action_space)  # None where masking does not apply
        self.value_head = nn.Linear(features, 1)
        self.activation = activation  # the configured name: backends decide by it, not by a function's name
        # Frames only: rollouts act through ConvRolloutActor (NumPy) when True. choose_learner sets it when
        # the NumPy CNN learner trains this policy, so learner=torch keeps rollouts and update on torch.
        self.numpy_frames = False
        self._activation = ACTIVATION_FUNCTIONS[activation]
        self._activation_layer = ACTIVATION_LAYERS[activation]
        if ortho_init:
            orthogonal_init(self.torso, math.sqrt(2))
            orthogonal_init(self.pi_net, math.sqrt(2))
            orthogonal_init(self.vf_net, math.sqrt(2))
            orthogonal_init(self.action_head, 0.01)
            orthogonal_init(self.value_head, 1.0)
            for core in (self.pi_core, self.vf_core):
                if core is not None:
                    core.initialize(rnn_init)

    # observation pipeline -------------------------------------------------------------------
    def encode(self, obs, batch: int) -> torch.Tensor:
        """Raw env observations of `batch` envs -> tensor [batch, *obs_shape] (uint8 frames or float)."""
        if self.image:
            frames = torch.as_tensor(np.asarray(obs, dtype=np.uint8))
            frames = frames.reshape(batch, *self.observation_space.shape)
            return frames.permute(0, 3, 1, 2) if self.channels_last else frames
        return encode_flat(self.net_space, obs, batch)

    def encode_np(self, obs, batch: int) -> np.ndarray:
        """encode() as a NumPy array [batch, *obs_shape]; Box observations skip torch altogether."""
        if isinstance(self.net_space, spaces.Box) and not self.image:
            return np.asarray(obs, dtype=np.float32).reshape(batch, -1)
        return self.encode(obs, batch).numpy()

    def prepare(self, obs, batch: int) -> torch.Tensor:
        """Raw observations of `batch` envs -> the normalized tensor on the policy's device (stats frozen)."""
        return self.prepare_encoded(self.encode(obs, batch))

    def prepare_encoded(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded observations (host tensor from encode()) -> normalized, on the policy's device."""
        return self.normalize(x).to(self.device)

    def normalize(self, x: torch.Tensor | np.ndarray, update: bool = False) -> torch.Tensor | np.ndarray:
        """Apply (and optionally update) the running observation normalization; tensors or NumPy arrays."""
        if self.obs_rms is None:
            return x
        if update:
            self.obs_rms.update(x)
        return self.obs_rms.normalize(x, self.clip_obs)

    # networks ----------------------------------------------------------------------------------
    def _mlp(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # net(x) with fewer Module calls: with 64-wide layers the calls, not the matmuls, are most of
        # the cost. Linear layers and the configured activation run as functions; any other module
        # the net holds (a LayerNorm, a dropout, another activation) runs as itself.
        if not isinstance(net, nn.Sequential):
            return net(x)
        activation, activation_layer = self._activation, self._activation_layer
        for layer in net:
            if type(layer) is nn.Linear:
                x = F.linear(x, layer.weight, layer.bias)
            elif type(layer) is activation_layer:
                x = activation(x)
            else:
                x = layer(x)
        return x

    @property
    def device(self) -> torch.device:
        """Where the networks live."""
        return self.value_head.weight.device

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.torso(x) if self.image else x

    def _actor_in(self, features: torch.Tensor) -> torch.Tensor:
        """The part of the (flat) features the actor reads: all of them, or the first actor_dim."""
        return features if self.actor_dim is None else features[..., :self.actor_dim]

    def _latents(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._features(x)
        latent_pi = self._mlp(self.pi_net, self._actor_in(features))
        latent_vf = latent_pi if self.shared_network else self._mlp(self.vf_net, features)
        return latent_pi, latent_vf

    def _value_of(self, latent_vf: torch.Tensor) -> torch.Tensor:
        return F.linear(latent_vf, self.value_head.weight, self.value_head.bias).squeeze(-1)

    def distribution(self, x: torch.Tensor, masks: torch.Tensor | None = None):
        """The action distribution of a feedforward policy for normalized observations x [B, *obs_shape]."""
        return self.action_head(self._mlp(self.pi_net, self._actor_in(self._features(x))), masks)

    def value(self, x: torch.Tensor, state: torch.Tensor | None = None,
              episode_starts: torch.Tensor | None = None) -> torch.Tensor:
        """V(x) [B] for normalized observations; a recurrent policy takes its state [B, state_size] (and
        episode_starts [B] bool, default none) and does not advance it."""
        features = self._features(x)
        if self.pi_core is not None:
            starts = torch.zeros(1, x.shape[0], dtype=torch.bool, device=x.device) if episode_starts is None \
                else episode_starts.view(1, -1)
            _, latent_vf, _ = self._core_latents(features.unsqueeze(0), state, starts, actor=self.shared_network)
            return self._value_of(latent_vf[0])
        return self._value_of(self._mlp(self.pi_net if self.shared_network else self.vf_net, features))

    @staticmethod
    def _sample(dist, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if deterministic:
            actions = dist.mode()
            return actions, dist.log_prob(actions)
        return dist.sample_with_log_prob()

    def act(self, x: torch.Tensor, deterministic: bool = False, masks: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (or take the mode of) actions of a feedforward policy, legal ones only where masks [B,
        mask_dim] are given; returns (actions, log_probs [B], values [B])."""
        latent_pi, latent_vf = self._latents(x)
        actions, log_probs = self._sample(self.action_head(latent_pi, masks), deterministic)
        return actions, log_probs, self._value_of(latent_vf)

    def evaluate(self, x: torch.Tensor, actions: torch.Tensor, masks: torch.Tensor | None = None,
                 states: torch.Tensor | None = None, episode_starts: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log_probs [B], entropy [B], values [B]) of stored actions under the current networks.

        A recurrent policy replays whole sequences: x, actions, masks and episode_starts [B] hold
        B / S sequences one after another, each of length L = B / S, and states [S, state_size] are
        the states at their first steps.
        """
        if self.pi_core is None:
            latent_pi, latent_vf = self._latents(x)
        else:
            sequences = states.shape[0]
            length = x.shape[0] // sequences
            features = self._features(x)
            by_time = features.view(sequences, length, -1).transpose(0, 1)
            starts = episode_starts.view(sequences, length).t()
            latent_pi, latent_vf, _ = self._core_latents(by_time, states, starts, final=False)
            latent_pi = latent_pi.transpose(0, 1).reshape(sequences * length, -1)
            latent_vf = latent_vf.transpose(0, 1).reshape(sequences * length, -1)
        dist = self.action_head(latent_pi, masks)
        return dist.log_prob(actions), dist.entropy(), self._value_of(latent_vf)

    # recurrent policies ------------------------------------------------------------------------
    @property
    def is_recurrent(self) -> bool:
        """True when a recurrent core sits between the torso and the MLPs."""
        return self.pi_core is not None

    @property
    def actor_state_size(self) -> int:
        """Width of the actor's part of the flat state (the first columns); 0 for feedforward policies."""
        return self.pi_core.state_size if self.pi_core is not None else 0

    @property
    def state_size(self) -> int:
        """Width of the flat state [B, state_size]: the actor's core, then the critic's; 0 for feedforward."""
        return self.actor_state_size + (self.vf_core.state_size if self.vf_core is not None else 0)

    def initial_state(self, batch: int) -> torch.Tensor:
        """The zero state [batch, state_size] an episode starts from, on the policy's device."""
        return torch.zeros(batch, self.state_size, device=self.device)

    def _core_latents(self, features: torch.Tensor, state: torch.Tensor, starts: torch.Tensor,
                      actor: bool = True, critic: bool = True, final: bool = True
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(latent_pi [L, B, W], latent_vf [L, B, W], new state [B, state_size], None unless final) for
        features [L, B, F]; the side not asked for is None and its part of the state is passed through."""
        split = self.actor_state_size
        latent_pi = latent_vf = None
        pi_state, vf_state = state[:, :split], state[:, split:]
        if actor or self.shared_network:
            out, pi_state = self.pi_core(self._actor_in(features), pi_state, starts, final)
            latent_pi = self._mlp(self.pi_net, out)
            latent_vf = latent_pi if self.shared_network else None
        if critic and not self.shared_network:
            out, vf_state = self.vf_core(features, vf_state, starts, final)
            latent_vf = self._mlp(self.vf_net, out)
        return latent_pi, latent_vf, torch.cat([pi_state, vf_state], dim=1) if final else None

    def step(self, x: torch.Tensor, state: torch.Tensor, episode_starts: torch.Tensor,
             masks: torch.Tensor | None = None, deterministic: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of a recurrent policy for x [B, ...] from state [B, state_size]; episode_starts [B] bool
        zeroes the state first where an episode begins. Returns (actions, log_probs [B], values [B], new state)."""
        features = self._features(x).unsqueeze(0)
        latent_pi, latent_vf, new_state = self._core_latents(features, state, episode_starts.view(1, -1))
        actions, log_probs = self._sample(self.action_head(latent_pi[0], masks), deterministic)
        return actions, log_probs, self._value_of(latent_vf[0]), new_state

    def actor_step(self, x: torch.Tensor, actor_state: torch.Tensor, episode_starts: torch.Tensor,
                   masks: torch.Tensor | None = None, deterministic: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """step() for acting alone: the actor's state [B, actor_state_size] in, (actions, its new state) out."""
        features = self._features(x).unsqueeze(0)
        critic_part = actor_state.new_zeros(actor_state.shape[0], self.state_size - self.actor_state_size)
        latent_pi, _, new_state = self._core_latents(features, torch.cat([actor_state, critic_part], dim=1),
                                                     episode_starts.view(1, -1), critic=False)
        actions, _ = self._sample(self.action_head(latent_pi[0], masks), deterministic)
        return actions, new_state[:, :self.actor_state_size]

    def reset_noise(self, num_envs: int) -> None:
        """gSDE (use_sde): draw new exploration matrices, one per env, from torch's RNG; a no-op otherwise."""
        self.action_head.reset_noise(num_envs)

    def rollout_actor(self) -> "RolloutActor | None":
        """The fused NumPy actor-critic for one rollout where it supports this policy (CPU MLPs; MinAtar's
        CNN when numpy_frames is set), else None."""
        if self.image:
            return ConvRolloutActor(self) if self.numpy_frames and ConvRolloutActor.supports(self) else None
        return RolloutActor(self) if RolloutActor.supports(self) else None

    def final_values(self, observations, envs: np.ndarray, state: torch.Tensor | None = None) -> torch.Tensor:
        """V [R] of raw final observations of the envs `envs` [R] (their truncated episodes' last); a
        recurrent critic reads them from state [N, state_size], the state the step left, at those rows."""
        x = self.prepare(observations, len(envs))
        if state is None:
            return self.value(x)
        return self.value(x, state[torch.from_numpy(envs).to(state.device)])

    def to_env_actions(self, actions: torch.Tensor | np.ndarray) -> np.ndarray:
        """Actions as the env wants them: Box actions clipped to bounds (log-probs keep the raw sample)."""
        array = actions if isinstance(actions, np.ndarray) else actions.detach().cpu().numpy()
        if isinstance(self.action_space, spaces.Box):
            # minimum/maximum: the same values as np.clip at a third of its per-call cost here
            low, high = self.action_space.low, self.action_space.high
            array = np.minimum(np.maximum(array, low), high).reshape(-1, *self.action_space.shape)
        elif isinstance(self.action_space, spaces.MultiBinary):
            array = array.astype(np.int8)
        return array

    def space_signature(self) -> dict[str, str]:
        """Text of the observation and action spaces, to detect a policy loaded for another env."""
        return {"observation_space": repr(self.observation_space), "action_space": repr(self.action_space)}


class RolloutActor:
    """A frozen NumPy copy of an MLP actor-critic for one rollout: actor and critic fused into one network.

    Layer k of the fused net is block_diag(actor layer k, critic layer k) (a trunk shared by both heads,
    as ConvRolloutActor's minatar preset has, is taken as it is), the last layer stacks
    the action head and the value head, so one step of inference is L matmuls and L-1 activations
    on [B, 2W] instead of 2L + 2 small matmuls, and in NumPy each costs ~1 us instead of torch's
    ~5 us per op. Built from the current weights; rebuild it after every update. The randomness
    comes in as numbers drawn by torch's generator for the whole rollout at once (draw()), so runs
    stay reproducible from torch's RNG state alone: standard normals for Box actions, uniforms on
    [0, 1) turned into categorical draws by the inverse CDF for Discrete ones.
    """

    def __init__(self, policy: ActorCritic) -> None:
        head = policy.action_head
        self.kind = head.kind
        self.activation = policy.activation
        with torch.no_grad():
            pi = plain_mlp_layers(policy, policy.pi_net)
            self.weights: list[np.ndarray] = []  # [out, in], as the kernel takes them
            self.biases: list[np.ndarray] = []
            if policy.shared_network:  # one trunk (ConvRolloutActor's minatar preset): the heads read one latent
                self.weights = [layer.weight.detach().clone().numpy() for layer in pi]
                self.biases = [layer.bias.detach().clone().numpy() for layer in pi]
                self.out_weight = torch.cat([head.linear.weight, policy.value_head.weight]).numpy()
            else:
                vf = plain_mlp_layers(policy, policy.vf_net)
                for k, (a, c) in enumerate(zip(pi, vf)):
                    # The first layer reads the same input for both nets: stack, do not block-diagonalize. An
                    # actor that reads the first actor_dim inputs alone (a centralized critic) gets zero columns.
                    first = a.weight if k or a.weight.shape[1] == c.weight.shape[1] else \
                        F.pad(a.weight, (0, c.weight.shape[1] - a.weight.shape[1]))
                    weight = torch.cat([first, c.weight]) if k == 0 else torch.block_diag(a.weight, c.weight)
                    self.weights.append(weight.contiguous().numpy())
                    self.biases.append(torch.cat([a.bias, c.bias]).numpy())
                self.out_weight = torch.block_diag(head.linear.weight, policy.value_head.weight).contiguous().numpy()
            self.out_bias = torch.cat([head.linear.bias, policy.value_head.bias]).numpy()
            self.n_out = head.linear.out_features
            if self.kind == "box":
                log_std = torch.clamp(head.log_std, LOG_STD_MIN, LOG_STD_MAX)
                self.std = log_std.exp().numpy()
                # log N(mean + std z | mean, std) = -|z|^2 / 2 - sum(log_std) - d log(2 pi) / 2
                self.log_prob_const = float(-(log_std.sum() + _HALF_LOG_2PI * self.n_out))

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """The fused network's output [B, n_out + 1] (action head, then value) for x [B, D]."""
        hidden = mlp_forward(self.weights, self.biases, x, self.activation)[-1]
        return linear(hidden, self.out_weight, self.out_bias)

    @staticmethod
    def supports(policy: ActorCritic) -> bool:
        """True on the CPU for flat observations, separate plain tanh/relu Linear stacks of equal depth
        for actor and critic (see plain_mlp_layers), Discrete or Box actions."""
        if policy.device.type != "cpu" or policy.image or policy.shared_network or policy.is_recurrent:
            return False
        if getattr(policy, "routes_by_group", False):  # one network per agent group (proximo/nn/groups.py)
            return False
        if policy.action_head.kind not in ("discrete", "box") or policy.activation not in NUMPY_ACTIVATIONS:
            return False
        if policy.action_head.sde:  # gSDE's noise depends on the latent: torch acts
            return False
        pi, vf = plain_mlp_layers(policy, policy.pi_net), plain_mlp_layers(policy, policy.vf_net)
        return pi is not None and vf is not None and len(pi) == len(vf)

    def draw(self, n_steps: int, num_envs: int, generator: torch.Generator | None = None) -> None:
        """Draw the randomness of a whole rollout from torch's RNG: [T, N, d] normals (Box) or [T, N]
        uniforms (Discrete). For Box actions the scaled noise and the log-probs, which depend on
        the noise alone, are computed here for all steps at once."""
        if self.kind == "box":
            noise = torch.randn(n_steps, num_envs, self.n_out, generator=generator).numpy()
            self.scaled_noise = noise * self.std
            self.noise_log_probs = (self.log_prob_const - 0.5 * np.square(noise).sum(-1)).astype(np.float32)
            self.noise = noise
        else:
            self.noise = torch.rand(n_steps, num_envs, dtype=torch.float64, generator=generator).numpy()

    def __call__(self, x: np.ndarray, t: int, masks: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(actions, their log-probs [B], values [B]) at rollout step t (of draw()) for normalized
        observations x [B, D] float32; masks [B, n] bool (Discrete) restricts the draw to legal actions."""
        out = self.outputs(x)
        head, values = out[:, :self.n_out], out[:, self.n_out]
        if self.kind == "discrete":
            last = self.n_out - 1
            if masks is not None:
                head = np.where(masks, head, np.float32(MASKED_LOGIT))
                last = last - np.argmax(masks[:, ::-1], axis=1)  # the last legal action of each row
            shifted = head - head.max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            cdf = np.cumsum(np.exp(log_probs.astype(np.float64)), axis=1)
            # The first action whose CDF passes u; rounding can leave cdf[-1] a hair below 1, so the
            # count is capped at the last (legal) action: an illegal action's CDF step is flat, never passed.
            actions = np.minimum((self.noise[t][:, None] >= cdf).sum(axis=1), last)
            return actions, log_probs[np.arange(len(actions)), actions], values
        return head + self.scaled_noise[t], self.noise_log_probs[t], values


class ConvRolloutActor(RolloutActor):
    """RolloutActor behind MinAtar's conv torso: uint8 frames [B, C, H, W] -> the NumPy conv kernel
    (proximo/nn/numpy_conv.py) -> the fused MLP and heads, sampled as RolloutActor samples.

    Used for a policy whose update runs on the NumPy CNN learner (ActorCritic.numpy_frames), shared
    trunk or separate MLPs. Built from the current weights; rebuild it after every update.
    """

    def __init__(self, policy: ActorCritic) -> None:
        super().__init__(policy)
        conv = plain_conv(policy.torso)
        with torch.no_grad():
            self.conv_weight = conv.weight.detach().clone().numpy()
            self.conv_bias = conv.bias.detach().clone().numpy()
        self.rows = patch_rows(*policy.obs_shape, conv.kernel_size[0])

    def outputs(self, frames: np.ndarray) -> np.ndarray:
        """The network's output [B, n_out + 1] (action head, then value) for uint8 frames [B, C, H, W]."""
        _, features_t = conv_forward(frames_columns(frames), self.rows, self.conv_weight, self.conv_bias)
        return super().outputs(features_t.T)

    @staticmethod
    def supports(policy: ActorCritic) -> bool:
        """True on the CPU for MinAtar's conv torso (encoders.plain_conv) under a plain tanh/relu trunk
        shared by both heads or separate stacks of equal depth, Discrete or Box actions, no recurrent core."""
        if policy.device.type != "cpu" or not policy.image or plain_conv(policy.torso) is None:
            return False
        if policy.is_recurrent or getattr(policy, "routes_by_group", False):
            return False
        if policy.action_head.kind not in ("discrete", "box") or policy.activation not in NUMPY_ACTIVATIONS:
            return False
        if policy.action_head.sde:  # gSDE's noise depends on the latent: torch acts
            return False
        pi = plain_mlp_layers(policy, policy.pi_net)
        if policy.shared_network:
            return pi is not None
        vf = plain_mlp_layers(policy, policy.vf_net)
        return pi is not None and vf is not None and len(pi) == len(vf)
