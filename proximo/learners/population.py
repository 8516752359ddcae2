"""The population learner: K agents' PPO minibatch steps as one batched NumPy step.

Agent k's step is the NumPy learner's (proximo/learners/numpy_mlp.py) on its own minibatch: the same
loss terms (proximo/core/objectives.py *_np, with per-agent coefficients as [K, 1] arrays), the same
distribution gradients and the same MLP kernel (proximo/nn/numpy_mlp.py, which takes a leading agent
axis: each agent's matrices go through the BLAS call a solo step makes). The tail is per agent too:
each agent's gradient norm and clip, a KL gate per agent, and Adam on each agent's row of the flat
buffer through torch's own fused Adam kernel, one call per distinct learning rate.

Settings that are numbers in the math may differ per agent (AgentSettings): the clip range (inf for
none), the KL coefficient (0 for none), entropy and value coefficients, the gradient-norm limit, the
KL stop and the learning rate. Every objective takes the form clip_kl (core/objectives.py), which is
each of clip, none, adaptive_kl and fixed_kl exactly for its settings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from proximo.core.objectives import (
    entropy_bonus, entropy_bonus_np, policy_loss, policy_loss_np, value_loss, value_loss_np,
)
from proximo.errors import ProximoError
from proximo.learners.base import StepResult, k3
from proximo.nn.distributions import (
    CategoricalDist, DiagGaussianDist, categorical_backward_np, categorical_np, diag_gaussian_backward_np,
    diag_gaussian_np,
)
from proximo.nn.numpy_mlp import head_backward, linear, mlp_backward, mlp_forward
from proximo.nn.policy import ActorCritic, plain_mlp_layers
from proximo.population.stack import StackedParameters


@dataclass
class AgentSettings:
    """One update's loss and step settings of K agents, each a [K] float64 array (schedules applied).

    A clip range of inf clips nothing (objectives none and the KL ones); a KL coefficient of 0 adds no
    KL term; max_grad_norm inf does not clip; kl_limit inf never stops (no target_kl)."""

    clip_range: np.ndarray       # the loss's eps (inf where the objective does not clip)
    stat_clip_range: np.ndarray  # the eps the clip_fraction statistic counts against (the config's)
    clip_range_vf: np.ndarray    # inf: unclipped value loss
    kl_coef: np.ndarray
    ent_coef: np.ndarray
    vf_coef: np.ndarray
    max_grad_norm: np.ndarray
    kl_limit: np.ndarray         # 1.5 x target_kl
    learning_rate: np.ndarray


class StackedAdam:
    """Adam for K agents' rows of one flat buffer [K * P]: per-agent moments and step counts, stepped by
    torch's fused Adam kernel on the rows of the agents that step (a solo run's FlatOptimizer runs the
    same kernel on its one row), one call per distinct learning rate among them."""

    def __init__(self, stack: StackedParameters, betas: tuple[float, float], eps: np.ndarray) -> None:
        k, p = stack.k, stack.size
        self.stack, self.k = stack, k
        self.betas = betas
        self.eps = np.asarray(eps, dtype=np.float64)
        self.exp_avg = torch.zeros(k, p)
        self.exp_avg_sq = torch.zeros(k, p)
        self.steps = torch.zeros(k)  # float32 step counts, as torch's Adam keeps them
        self._rows()

    def _rows(self) -> None:
        """Per-agent row views of the parameters, gradients and moments (the kernel takes lists)."""
        self.param_rows = list(self.stack.rows().unbind(0))
        self.grad_rows = list(self.stack.rows(grad=True).unbind(0))
        self.avg_rows = list(self.exp_avg.unbind(0))
        self.sq_rows = list(self.exp_avg_sq.unbind(0))
        self.step_rows = list(self.steps.unbind(0))

    def step(self, agents: np.ndarray, lr: np.ndarray) -> None:
        """One Adam step of the agents `agents` (indices) with their learning rates lr [K]."""
        if len(agents) == 0:
            return
        beta1, beta2 = self.betas
        keys = np.stack([lr[agents], self.eps[agents]], axis=1)
        for key in np.unique(keys, axis=0):
            group = agents[(keys == key).all(axis=1)]
            pick = (lambda rows: [rows[i] for i in group]) if len(group) < self.k else (lambda rows: rows)
            steps = pick(self.step_rows)
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(pick(self.param_rows), pick(self.grad_rows), pick(self.avg_rows), pick(self.sq_rows),
                               [], steps, amsgrad=False, lr=float(key[0]), beta1=beta1, beta2=beta2,
                               weight_decay=0.0, eps=float(key[1]), maximize=False)

    def member_state(self, k: int, template: dict[str, Any]) -> dict[str, Any]:
        """Agent k's state as a solo FlatOptimizer's torch Adam state_dict (template: its param_groups)."""
        return {"state": {0: {"step": self.steps[k].clone(), "exp_avg": self.exp_avg[k].clone(),
                              "exp_avg_sq": self.exp_avg_sq[k].clone()}},
                "param_groups": template["param_groups"]}

    def load_member_state(self, k: int, state: dict[str, Any]) -> None:
        """Restore agent k's row from a solo torch Adam state_dict (moments of one flat parameter)."""
        saved = state["state"].get(0)
        if saved is None:  # a checkpoint from before the first step
            self.steps[k] = 0.0
            self.exp_avg[k].zero_()
            self.exp_avg_sq[k].zero_()
            return
        self.steps[k] = float(saved["step"])
        self.exp_avg[k].copy_(saved["exp_avg"])
        self.exp_avg_sq[k].copy_(saved["exp_avg_sq"])


class PopulationLearner:
    """Batched NumPy PPO steps for K same-shaped MLP ActorCritics on one StackedParameters."""

    name = "population-numpy"

    def __init__(self, policy: ActorCritic, stack: StackedParameters, optimizer: StackedAdam) -> None:
        self.stack, self.optimizer = stack, optimizer
        self.k = stack.k
        self.activation = policy.activation
        self.kind = policy.action_head.kind
        names = {id(m): n for n, m in policy.named_modules()}
        self.pi = [names[id(layer)] for layer in plain_mlp_layers(policy, policy.pi_net)]
        self.vf = [names[id(layer)] for layer in plain_mlp_layers(policy, policy.vf_net)]
        self.head = names[id(policy.action_head.linear)]
        self.value_head = names[id(policy.value_head)]
        self.log_std = names[id(policy.action_head)] + ".log_std" if self.kind == "box" else None

    def begin_update(self) -> None:
        """Every agent steps again; take fresh stacked NumPy views of the weights and their gradients."""
        self.active = np.ones(self.k, dtype=bool)
        view = self.stack.view

        def net(names: list[str]) -> tuple[list, list, list, list]:
            return ([view(n + ".weight").numpy() for n in names], [view(n + ".bias").numpy()[:, None] for n in names],
                    [view(n + ".weight", True).numpy() for n in names],
                    [view(n + ".bias", True).numpy()[:, None] for n in names])
        self.pi_w, self.pi_b, self.pi_gw, self.pi_gb = net(self.pi)
        self.vf_w, self.vf_b, self.vf_gw, self.vf_gb = net(self.vf)
        (self.h_w,), (self.h_b,), (self.h_gw,), (self.h_gb,) = net([self.head])
        (self.v_w,), (self.v_b,), (self.v_gw,), (self.v_gb,) = net([self.value_head])
        if self.log_std is not None:
            self.ls = view(self.log_std).numpy()[:, None]
            self.ls_grad = view(self.log_std, True).numpy()[:, None]
        self.grads = self.stack.rows(grad=True).numpy()

    def step(self, minibatch, settings: AgentSettings, kl_limit: float | None = None) -> StepResult:
        """Loss, gradient and step of every agent still active in this update, each on its own minibatch
        ([K, B, ...] tensors). An agent whose mean k3 KL passes settings.kl_limit is not stepped and stays
        inactive until the next update (kl_limit, one run's limit, is unused: each agent has its own)."""
        active = self.active
        k = self.k
        x, actions = minibatch.obs.numpy(), minibatch.actions.numpy()
        old_log_probs = minibatch.old_log_probs.numpy()
        batch = x.shape[1]
        pi_hidden = mlp_forward(self.pi_w, self.pi_b, x, self.activation)
        vf_hidden = mlp_forward(self.vf_w, self.vf_b, x, self.activation)
        head = linear(pi_hidden[-1], self.h_w, self.h_b)
        values = np.matmul(vf_hidden[-1], self.v_w[:, 0, :, None])[..., 0]
        values += self.v_b[:, :, 0]
        if self.kind == "discrete":
            masks = None if minibatch.action_masks is None else minibatch.action_masks.numpy().reshape(k * batch, -1)
            flat_lp, flat_ent, cache = categorical_np(head.reshape(k * batch, -1), actions.reshape(-1), masks)
            log_probs, entropy = flat_lp.reshape(k, batch), flat_ent.reshape(k, batch)
        else:
            log_probs, entropy, cache = diag_gaussian_np(head, self.ls, actions)
        log_ratio_np = (log_probs - old_log_probs).astype(np.float32, copy=False)
        log_ratio = torch.from_numpy(log_ratio_np)
        kl = k3(log_ratio).mean(-1).numpy()  # each agent's mean k3 KL, as a solo step's gate reads it
        stepping = active & ~(kl > settings.kl_limit)

        def column(values: np.ndarray) -> np.ndarray:
            # [K] -> [K, 1] in the terms' float32, as a solo step's Python floats enter them
            return values[:, None].astype(np.float32)
        pg_loss, grad_log_probs = policy_loss_np(log_probs, old_log_probs, minibatch.advantages.numpy(), "clip_kl",
                                                 settings.clip_range[:, None], kl_coef=column(settings.kl_coef))
        # No value clip anywhere is the unclipped branch (its loss statistic then matches a solo step's too).
        clip_vf = None if np.isinf(settings.clip_range_vf).all() else column(settings.clip_range_vf)
        vf_loss, grad_values = value_loss_np(values, minibatch.old_values.numpy(), minibatch.returns.numpy(), clip_vf)
        ent_mean, grad_entropy = entropy_bonus_np(entropy)
        total = pg_loss + settings.vf_coef * vf_loss - settings.ent_coef * ent_mean
        bad = stepping & ~np.isfinite(total)
        if bad.any():
            agent = int(np.flatnonzero(bad)[0])
            raise NonFiniteAgentError(agent, float(total[agent]), float(pg_loss[agent]), float(vf_loss[agent]),
                                      float(np.asarray(ent_mean)[agent]))
        entropy_weight = -settings.ent_coef * grad_entropy  # [K]
        if self.kind == "discrete":
            rows = np.repeat(entropy_weight, batch)[:, None].astype(np.float32)
            grad_head = categorical_backward_np(cache, actions.reshape(-1), grad_log_probs.reshape(-1), rows)
            grad_head = grad_head.reshape(k, batch, -1)
        else:
            grad_head, grad_log_std = diag_gaussian_backward_np(cache, self.ls, grad_log_probs,
                                                                entropy_weight[:, None, None].astype(np.float32))
            self.ls_grad[...] = grad_log_std
        grad_values = (grad_values * column(settings.vf_coef))[..., None]
        grad_pi = head_backward(self.h_w, self.h_gw, self.h_gb, pi_hidden[-1], grad_head)
        mlp_backward(self.pi_w, self.pi_gw, self.pi_gb, x, pi_hidden, grad_pi, self.activation)
        grad_vf = head_backward(self.v_w, self.v_gw, self.v_gb, vf_hidden[-1], grad_values)
        mlp_backward(self.vf_w, self.vf_gw, self.vf_gb, x, vf_hidden, grad_vf, self.activation)
        # Each agent's gradient norm and clip, as FlatOptimizer.clip_grad_norm_ computes them for one.
        grads = self.grads
        norms = np.sqrt(np.matmul(grads[:, None, :], grads[:, :, None])[:, 0, 0].astype(np.float64))
        scale = np.minimum(settings.max_grad_norm / (norms + 1e-6), 1.0)
        clipped = scale < 1.0
        if clipped.any():
            grads[clipped] *= scale[clipped, None].astype(np.float32)
        agents = np.flatnonzero(stepping)
        self.optimizer.step(agents, settings.learning_rate)
        self.active = stepping
        # float32 statistics, as a solo step's torch.tensor of Python floats
        losses = torch.from_numpy(np.stack([pg_loss, vf_loss, np.broadcast_to(ent_mean, (k,))], axis=1)
                                  .astype(np.float32))
        return StepResult(torch.from_numpy(stepping), log_ratio, losses, torch.from_numpy(norms.astype(np.float32)))


class TorchPopulationLearner(PopulationLearner):
    """The same batched step in torch on any device (a GPU for large populations): a stacked forward by
    batched matmuls, core/objectives.py's torch losses with per-agent [K, 1] settings, autograd into the
    flat gradient (agent k's loss reaches only its own row), then the per-agent tail shared with the NumPy
    learner. tests/test_population.py checks it against PopulationLearner."""

    name = "population-torch"

    def begin_update(self) -> None:
        """Every agent steps again."""
        self.active = np.ones(self.k, dtype=bool)

    def _forward(self, names: list[str], x: torch.Tensor) -> torch.Tensor:
        view = self.stack.view
        for name in names:
            weight, bias = view_param(self.stack, name + ".weight"), view_param(self.stack, name + ".bias")
            x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
            x = torch.tanh(x) if self.activation == "tanh" else torch.relu(x)
        return x

    def step(self, minibatch, settings: AgentSettings, kl_limit: float | None = None) -> StepResult:
        """Loss, autograd backward and step of every agent still active in this update (as PopulationLearner)."""
        stack, active = self.stack, self.active
        device = stack.flat.device
        column = lambda values: torch.as_tensor(values, dtype=torch.float32, device=device)[:, None]  # noqa: E731
        x = minibatch.obs
        latent_pi, latent_vf = self._forward(self.pi, x), self._forward(self.vf, x)
        head = torch.baddbmm(view_param(stack, self.head + ".bias").unsqueeze(1), latent_pi,
                             view_param(stack, self.head + ".weight").transpose(1, 2))
        values = torch.baddbmm(view_param(stack, self.value_head + ".bias").unsqueeze(1), latent_vf,
                               view_param(stack, self.value_head + ".weight").transpose(1, 2)).squeeze(-1)
        if self.kind == "discrete":
            dist = CategoricalDist(head, minibatch.action_masks)
        else:
            dist = DiagGaussianDist(head, view_param(stack, self.log_std).unsqueeze(1))
        log_probs, entropy = dist.log_prob(minibatch.actions), dist.entropy()
        log_ratio = (log_probs.detach() - minibatch.old_log_probs).float()
        kl = k3(log_ratio).mean(-1).cpu().numpy()
        stepping = active & ~(kl > settings.kl_limit)
        pg = policy_loss(log_probs, minibatch.old_log_probs, minibatch.advantages, "clip_kl",
                         column(settings.clip_range), kl_coef=column(settings.kl_coef), stats=False).per_sample.mean(-1)
        clip_vf = None if np.isinf(settings.clip_range_vf).all() else column(settings.clip_range_vf)
        vf = value_loss(values, minibatch.old_values, minibatch.returns, clip_vf, dim=-1)
        ent = entropy_bonus(entropy, dim=-1)
        ent_coef, vf_coef = column(settings.ent_coef)[:, 0], column(settings.vf_coef)[:, 0]
        total = pg + vf_coef * vf - ent_coef * ent  # [K]: agent k's loss depends on its parameters alone
        finite = torch.isfinite(total.detach()).cpu().numpy()
        bad = stepping & ~finite
        if bad.any():
            agent = int(np.flatnonzero(bad)[0])
            raise NonFiniteAgentError(agent, float(total[agent]), float(pg[agent]), float(vf[agent]),
                                      float(ent[agent]))
        stack.flat.grad.zero_()
        total.sum().backward()
        grads = stack.rows(grad=True)
        norms = torch.linalg.vector_norm(grads, dim=1)
        scale = torch.clamp(column(settings.max_grad_norm)[:, 0] / (norms + 1e-6), max=1.0)
        grads.mul_(scale[:, None])
        agents = np.flatnonzero(stepping)
        self.optimizer.step(agents, settings.learning_rate)
        self.active = stepping
        losses = torch.stack([pg.detach(), vf.detach(), ent.detach()], dim=1).float().cpu()
        return StepResult(torch.from_numpy(stepping), log_ratio.cpu(), losses, norms.detach().float().cpu())


def view_param(stack: StackedParameters, name: str) -> torch.Tensor:
    """Parameter `name` of every agent [K, ...] as a differentiable view of the flat Parameter (autograd then
    writes each agent's gradient into its own row of flat.grad)."""
    shape = stack.shapes[name]
    strides = [1] * len(shape)
    for axis in range(len(shape) - 2, -1, -1):
        strides[axis] = strides[axis + 1] * shape[axis + 1]
    return stack.flat.as_strided((stack.k, *shape), (stack.stride, *strides), stack.offsets[name])


class NonFiniteAgentError(ProximoError):
    """Agent k's loss became NaN or infinite."""

    def __init__(self, agent: int, total: float, policy: float, value: float, entropy: float) -> None:
        self.agent = agent
        super().__init__(f"agent {agent}: the loss became {total} (policy {policy}, value {value}, entropy {entropy}); "
                         "lower learning_rate or enable normalize_obs")


def column_or_inf(values: list[float | None]) -> np.ndarray:
    """[K] float64 with None as inf (no clip, no limit)."""
    return np.array([math.inf if v is None else float(v) for v in values], dtype=np.float64)
