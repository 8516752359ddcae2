"""Action distributions for Discrete, Box, MultiDiscrete and MultiBinary spaces.

Each head maps features [B, F] to a distribution object with sample(), mode(), log_prob(a) [B]
and entropy() [B]. They are written out (not torch.distributions) to keep the inner loop lean.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from proximo.errors import ProximoError

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# The logit an illegal action gets: exp() of it underflows to exactly 0 in float32 and float64, so an
# illegal action is never sampled and adds exactly 0 to the entropy, while every term stays finite
# (-inf would make 0 * log 0 a NaN, in the entropy and in its gradient).
MASKED_LOGIT = -1e8


def mask_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """logits [B, n] with the illegal entries (mask [B, n] False) set to MASKED_LOGIT; their gradient is 0."""
    return logits if mask is None else logits.masked_fill(~mask, MASKED_LOGIT)


class CategoricalDist:
    """Categorical over n actions from logits [B, n]; actions are int64 [B].

    With mask [B, n] (True = legal) it is the masked distribution: illegal actions have probability 0.
    """

    def __init__(self, logits: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        self.log_probs = torch.log_softmax(mask_logits(logits, mask), dim=-1)

    def sample(self) -> torch.Tensor:
        return torch.multinomial(self.log_probs.exp(), 1).squeeze(-1)

    def sample_with_log_prob(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(actions, their log-probs), sharing the gather index."""
        index = torch.multinomial(self.log_probs.exp(), 1)
        return index.squeeze(-1), self.log_probs.gather(-1, index).squeeze(-1)

    def mode(self) -> torch.Tensor:
        return self.log_probs.argmax(-1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return self.log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.log_probs.exp() * self.log_probs).sum(-1)


class DiagGaussianDist:
    """Diagonal Gaussian with mean [B, d] and a log-std [d] shared by all states."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor) -> None:
        self.mean = mean
        self.log_std = torch.clamp(log_std, LOG_STD_MIN, LOG_STD_MAX).expand_as(mean)

    def sample(self) -> torch.Tensor:
        return self.mean + self.log_std.exp() * torch.randn_like(self.mean)

    def sample_with_log_prob(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(actions, their log-probs); the standardized sample z is the noise itself, so no division."""
        noise = torch.randn_like(self.mean)
        actions = self.mean + self.log_std.exp() * noise
        return actions, (-0.5 * noise.square() - self.log_std).sum(-1) - _HALF_LOG_2PI * noise.shape[-1]

    def mode(self) -> torch.Tensor:
        return self.mean

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        z = (actions - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z.square() - self.log_std - _HALF_LOG_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (0.5 + _HALF_LOG_2PI + self.log_std).sum(-1)


def entry_std(log_std: torch.Tensor) -> torch.Tensor:
    """gSDE: the exploration-matrix entries' std [F, d] from their log-std, clamped as the diagonal Gaussian's
    (what the matrix draws and the action variance both read)."""
    return torch.clamp(log_std, LOG_STD_MIN, LOG_STD_MAX).exp()


class StateDependentGaussianDist:
    """Generalized state-dependent exploration (gSDE; Raffin et al. 2022, "Smooth Exploration for Robotic
    Reinforcement Learning"): the action noise is a linear function of the policy's latent features,
    noise = latent [B, F] @ E with an exploration matrix E [F, d] held for several steps, so the same state
    gets the same noise until E is drawn again. Each E[j, k] ~ N(0, std[j, k]^2), std = exp(log_std [F, d]),
    so given the state the action is Gaussian with variance sum_j latent_j^2 std[j, k]^2 (+ 1e-6, which
    keeps it positive where the latent is all zero): log_prob and entropy are that Gaussian's. The latent
    enters the variance and the noise detached (the features are learned for the mean alone, as in the paper's
    default). exploration [M, F, d]: one matrix per env when M equals the batch, else the first for all rows."""

    EPSILON = 1e-6

    def __init__(self, mean: torch.Tensor, latent: torch.Tensor, log_std: torch.Tensor,
                 exploration: torch.Tensor) -> None:
        self.mean = mean
        self.latent = latent.detach()
        self.std = torch.sqrt(self.latent.square() @ entry_std(log_std).square() + self.EPSILON)
        self.exploration = exploration

    def noise(self) -> torch.Tensor:
        """latent @ E [B, d] with the held matrices (reset_noise() on the head draws them)."""
        if self.exploration.shape[0] == self.latent.shape[0]:
            return torch.bmm(self.latent.unsqueeze(1), self.exploration).squeeze(1)
        return self.latent @ self.exploration[0]

    def sample(self) -> torch.Tensor:
        return self.mean + self.noise()

    def sample_with_log_prob(self) -> tuple[torch.Tensor, torch.Tensor]:
        actions = self.sample()
        return actions, self.log_prob(actions)

    def mode(self) -> torch.Tensor:
        return self.mean

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        z = (actions - self.mean) / self.std
        return (-0.5 * z.square() - self.std.log() - _HALF_LOG_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (0.5 + _HALF_LOG_2PI + self.std.log()).sum(-1)


# NumPy twins of the two distributions above, with their backward passes, for the NumPy learner
# (proximo/learners/numpy_mlp.py); tests/test_learners.py checks them against autograd of the torch ones.
def categorical_np(logits: np.ndarray, actions: np.ndarray, mask: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, tuple]:
    """CategoricalDist in NumPy: (log_prob(actions) [B], entropy [B], cache for the backward).

    With mask [B, n] the illegal logits are replaced by MASKED_LOGIT, as mask_logits does; the
    backward's gradient there is then exactly 0 (their probability is 0 and no action is illegal).
    """
    if mask is not None:
        logits = np.where(mask, logits, np.asarray(MASKED_LOGIT, dtype=logits.dtype))
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp_shifted = np.exp(shifted)
    sum_exp = exp_shifted.sum(axis=1, keepdims=True)
    log_softmax = shifted - np.log(sum_exp)
    probs = exp_shifted / sum_exp
    log_probs = log_softmax[np.arange(len(actions)), actions]
    entropy = -np.einsum("ij,ij->i", probs, log_softmax)
    return log_probs, entropy, (log_softmax, probs, entropy)


def categorical_backward_np(cache: tuple, actions: np.ndarray, grad_log_probs: np.ndarray,
                            grad_entropy: float) -> np.ndarray:
    """d loss / d logits [B, n] from d loss / d log_prob [B] and a per-sample d loss / d entropy (a float,
    or [B, 1] per row)."""
    log_softmax, probs, entropy = cache
    # d log pi(a) / d logits = onehot(a) - p;  d H / d logits = -p (log p + H)
    grad_logits = probs * -grad_log_probs[:, None]
    grad_logits[np.arange(len(actions)), actions] += grad_log_probs
    if np.any(grad_entropy != 0.0):  # a float, or per row [B, 1]
        grad_logits -= grad_entropy * probs * (log_softmax + entropy[:, None])
    return grad_logits


def diag_gaussian_np(mean: np.ndarray, log_std: np.ndarray, actions: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, tuple]:
    """DiagGaussianDist in NumPy for mean [B, d] and the raw log-std parameter [d]:
    (log_prob(actions) [B], entropy (0-d: the same for every state), cache for the backward).
    K agents at once: mean [K, B, d] and log_std [K, 1, d] give log-probs [K, B] and entropy [K, 1]."""
    clamped = np.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)
    z = (actions - mean) * np.exp(-clamped)
    d = mean.shape[-1]
    if mean.ndim == 2:
        log_probs = -0.5 * np.einsum("ij,ij->i", z, z) - (clamped.sum() + _HALF_LOG_2PI * d)
        entropy = np.asarray(d * (0.5 + _HALF_LOG_2PI) + clamped.sum(), dtype=mean.dtype)
    else:
        log_norm = clamped.sum(-1) + _HALF_LOG_2PI * d  # [K, 1]
        log_probs = -0.5 * np.einsum("kij,kij->ki", z, z) - log_norm
        entropy = (d * (0.5 + _HALF_LOG_2PI) + clamped.sum(-1)).astype(mean.dtype)
    return log_probs.astype(mean.dtype, copy=False), entropy, (z, clamped)


def diag_gaussian_backward_np(cache: tuple, log_std: np.ndarray, grad_log_probs: np.ndarray,
                              grad_entropy: float) -> tuple[np.ndarray, np.ndarray]:
    """(d loss / d mean [B, d], d loss / d log_std [d]) from d loss / d log_prob [B] and
    d loss / d entropy (the 0-d entropy's total weight); per agent for [K, B, d] caches ([K, 1, d] log-std)."""
    z, clamped = cache
    # d log pi / d mean = z / std;  d log pi / d log_std = z^2 - 1;  d H / d log_std = 1
    grad_mean = (grad_log_probs[..., None] * z) * np.exp(-clamped)
    if z.ndim == 2:
        grad_log_std = grad_log_probs @ (np.square(z) - 1.0) + grad_entropy
    else:
        grad_log_std = np.matmul(grad_log_probs[:, None, :], np.square(z) - 1.0) + grad_entropy
    # torch.clamp passes the gradient only inside [min, max]
    grad_log_std *= (log_std >= LOG_STD_MIN) & (log_std <= LOG_STD_MAX)
    return grad_mean, grad_log_std


class MultiCategoricalDist:
    """Independent categoricals, one per MultiDiscrete dimension; actions int64 [B, k]."""

    def __init__(self, logits: torch.Tensor, nvec: list[int], mask: torch.Tensor | None = None) -> None:
        masks = [None] * len(nvec) if mask is None else torch.split(mask, nvec, dim=-1)
        self.parts = [CategoricalDist(chunk, part_mask)
                      for chunk, part_mask in zip(torch.split(logits, nvec, dim=-1), masks)]

    def sample(self) -> torch.Tensor:
        return torch.stack([p.sample() for p in self.parts], dim=-1)

    def sample_with_log_prob(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(actions [B, k], summed log-probs [B])."""
        actions = self.sample()
        return actions, self.log_prob(actions)

    def mode(self) -> torch.Tensor:
        return torch.stack([p.mode() for p in self.parts], dim=-1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return sum(p.log_prob(actions[..., i]) for i, p in enumerate(self.parts))

    def entropy(self) -> torch.Tensor:
        return sum(p.entropy() for p in self.parts)


class BernoulliDist:
    """Independent Bernoullis from logits [B, n]; actions float {0, 1} [B, n]."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def sample(self) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(self.logits))

    def sample_with_log_prob(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(actions [B, n], summed log-probs [B])."""
        actions = self.sample()
        return actions, self.log_prob(actions)

    def mode(self) -> torch.Tensor:
        return (self.logits > 0).to(self.logits.dtype)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return -F.binary_cross_entropy_with_logits(self.logits, actions, reduction="none").sum(-1)

    def entropy(self) -> torch.Tensor:
        p = torch.sigmoid(self.logits)
        return F.binary_cross_entropy_with_logits(self.logits, p, reduction="none").sum(-1)


class ActionHead(nn.Module):
    """Maps features [B, F] to a distribution over one action space."""

    def __init__(self, space: spaces.Space, features: int, log_std_init: float = 0.0, sde: bool = False) -> None:
        super().__init__()
        self.space = space
        self.sde = sde
        self.exploration: torch.Tensor | None = None  # gSDE's held matrices [M, F, d]; not saved (redrawn)
        if sde and not isinstance(space, spaces.Box):
            raise ProximoError(f"use_sde (gSDE) explores Box actions; this action space is {space}: turn use_sde off")
        if isinstance(space, spaces.Discrete):
            self.kind, out = "discrete", int(space.n)
        elif isinstance(space, spaces.Box):
            self.kind, out = "box", int(np.prod(space.shape))
            # gSDE: one log-std per (latent feature, action) pair, the paper's full_std
            self.log_std = nn.Parameter(torch.full((features, out) if sde else (out,), float(log_std_init)))
        elif isinstance(space, spaces.MultiDiscrete):
            self.kind, self.nvec = "multidiscrete", [int(n) for n in np.asarray(space.nvec).ravel()]
            out = sum(self.nvec)
        elif isinstance(space, spaces.MultiBinary):
            self.kind, out = "multibinary", int(np.prod(space.shape))
        else:
            raise ProximoError(
                f"action space {space} is not supported; proximo handles Discrete, Box, "
                "MultiDiscrete and MultiBinary actions (wrap the env to use one of them)")
        self.linear = nn.Linear(features, out)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None):
        """The action distribution for features [B, F]; mask [B, mask_width(space)] bool restricts it to legal actions."""
        out = F.linear(features, self.linear.weight, self.linear.bias)
        if self.kind == "discrete":
            return CategoricalDist(out, mask)
        if self.kind == "multidiscrete":
            return MultiCategoricalDist(out, self.nvec, mask)
        if mask is not None:
            raise ProximoError(f"action masks apply to Discrete and MultiDiscrete actions, not {self.space}; "
                               "turn masking off (action_masking=off)")
        if self.kind == "box":
            if self.sde:
                if self.exploration is None:  # a policy that has not collected yet (a loaded one): one matrix
                    self.reset_noise(1)
                return StateDependentGaussianDist(out, features, self.log_std, self.exploration)
            return DiagGaussianDist(out, self.log_std)
        return BernoulliDist(out)

    def reset_noise(self, num_envs: int, generator: torch.Generator | None = None) -> None:
        """gSDE: draw num_envs new exploration matrices [num_envs, F, d], E[j, k] ~ N(0, exp(log_std[j, k])^2),
        from torch's RNG (or generator); a no-op for other heads."""
        if not self.sde:
            return
        with torch.no_grad():
            std = entry_std(self.log_std)
            noise = torch.randn((num_envs, *std.shape), generator=generator, device=std.device, dtype=std.dtype)
            self.exploration = noise * std


    def action_shape(self) -> tuple[int, ...]:
        """Per-env shape of a stored action: () for Discrete, (d,) otherwise."""
        if self.kind == "discrete":
            return ()
        if self.kind == "multidiscrete":
            return (len(self.nvec),)
        return (self.linear.out_features,)

    def action_dtype(self) -> torch.dtype:
        """Storage dtype of actions: int64 for categorical kinds, float32 otherwise."""
        return torch.int64 if self.kind in ("discrete", "multidiscrete") else torch.float32


def make_action_head(space: spaces.Space, features: int, log_std_init: float = 0.0, sde: bool = False
                     ) -> ActionHead:
    """An ActionHead for space (sde: gSDE exploration, Box only), or a ProximoError naming an unsupported space."""
    return ActionHead(space, features, log_std_init, sde)
