"""One PPO update: K epochs of shuffled minibatches of Adam on the rollout."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from proximo.core.advantages import normalize
from proximo.core.kl import kl_estimate
from proximo.core.objectives import entropy_bonus, policy_loss, value_loss
from proximo.nn.flat import is_flat_intact, realias_parameters
from proximo.nn.manual import manual_grad_for
from proximo.nn.policy import ActorCritic
from proximo.rollout import NonFiniteError, RolloutBuffer

RATIO_BINS = 40
RATIO_RANGE = (0.0, 2.0)
STAT_KEYS = ("policy_loss", "value_loss", "entropy", "approx_kl", "approx_kl_k1", "clip_fraction")


@dataclass
class UpdateSettings:
    """The per-update values of the hyperparameters (schedules already applied)."""

    n_epochs: int
    batch_size: int
    objective: str
    clip_range: float
    clip_range_vf: float | None
    kl_coef: float
    ent_coef: float
    vf_coef: float
    max_grad_norm: float | None
    target_kl: float | None
    normalize_advantage: bool
    use_manual_grad: bool = True  # the NumPy backward where the policy allows it; False: always autograd


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var[target - predicted] / Var[target]; NaN when the target has no variance."""
    var_target = target.var()
    if var_target <= 0:
        return float("nan")
    return float(1.0 - (target - predicted).var() / var_target)


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors the optimizer steps (one flat tensor when the policy was flattened)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def ppo_update(policy: ActorCritic, optimizer: torch.optim.Optimizer, buffer: RolloutBuffer,
               settings: UpdateSettings, generator: torch.Generator | None = None) -> dict[str, float]:
    """Optimize the policy on one rollout; returns mean statistics of the update.

    The returned dict has policy_loss, value_loss, entropy, approx_kl (k3), approx_kl_k1,
    clip_fraction, grad_norm, epochs (how many ran before any target_kl stop), explained_variance,
    advantage_std, ratio_min/ratio_max and ratio_hist (counts over RATIO_BINS bins of RATIO_RANGE in
    the last epoch that ran), kl_last_epoch (mean k3 KL of the last epoch, used by adaptive KL).
    """
    obs = buffer.obs.flatten(0, 1)
    actions = buffer.actions.flatten(0, 1)
    old_log_probs = buffer.log_probs.flatten()
    old_values = buffer.values.flatten()
    advantages = buffer.advantages.flatten()
    returns = buffer.returns.flatten()
    total = obs.shape[0]
    batch_size = settings.batch_size
    params = optimizer_params(optimizer)
    flat = getattr(policy, "_proximo_flat", None)
    if flat is None or not any(p is flat for p in params):
        flat = None
    elif not is_flat_intact(policy, flat):
        realias_parameters(policy, flat)
    # Small MLPs get the hand-written NumPy backward (proximo/nn/manual.py), the rest autograd.
    manual = manual_grad_for(policy) if flat is not None and settings.use_manual_grad else None
    flat_grad_np = flat.grad.numpy() if manual is not None else None
    # Statistics stay tensors until the end: one host read per update, not ~10 per minibatch. The
    # KL estimates and clip fraction come from the stored log-ratios in one pass after the loop.
    losses: list = []  # tensors (autograd path) or floats (NumPy path)
    grad_norms: list = []  # tensors (autograd path) or floats (NumPy path)
    epoch_log_ratios: list[list[torch.Tensor]] = []   # per epoch that ran, per minibatch
    stop = False
    # One minibatch holding the whole rollout is the same every epoch (a mean does not depend on
    # the order), so shuffling and advantage normalization are done once, not once per epoch.
    whole = batch_size >= total
    whole_adv = normalize(advantages) if whole and settings.normalize_advantage else advantages
    if manual is not None:
        whole_adv = whole_adv.numpy()
    columns = (obs, actions, old_log_probs, old_values, advantages, returns)
    n_batches = -(-total // batch_size)
    for epoch in range(settings.n_epochs):
        if whole:
            shuffled = columns
        else:
            # Gather once per epoch, then take contiguous slices: the same minibatches as indexing
            # each one with its slice of the permutation, for 6 gathers per epoch instead of per batch.
            permutation = torch.randperm(total, generator=generator)
            shuffled = tuple(column[permutation] for column in columns)
            if settings.normalize_advantage and total % batch_size == 0:
                # Every minibatch normalized on its own, all in one batched call.
                shuffled = shuffled[:4] + (normalize(shuffled[4].view(n_batches, batch_size), dim=1).view(-1),
                                           shuffled[5])
        log_ratios: list[torch.Tensor] = []
        if manual is not None:
            shuffled = tuple(column.numpy() for column in shuffled)
        for start in range(0, total, batch_size):
            if whole:
                mb_obs, mb_actions, mb_old_logp, mb_old_values, _, mb_returns = shuffled
                mb_adv = whole_adv
            else:
                end = start + batch_size
                mb_obs, mb_actions, mb_old_logp, mb_old_values, mb_adv, mb_returns = (
                    column[start:end] for column in shuffled)
                if settings.normalize_advantage and total % batch_size != 0:
                    # Sizes that do not divide the rollout: each minibatch on its own (off the common path,
                    # so the NumPy path borrows the torch function).
                    mb_adv = normalize(mb_adv) if manual is None else normalize(torch.from_numpy(mb_adv)).numpy()
            if manual is not None:
                forward = manual.forward(mb_obs, mb_actions)
                log_ratio_np = forward.log_probs - mb_old_logp
                log_ratio = torch.from_numpy(log_ratio_np)
                if settings.target_kl is not None and float(_k3(log_ratio).mean()) > 1.5 * settings.target_kl:
                    stop = True
                    break
                pg_loss, vf_loss, ent_mean = manual.backward(
                    forward, mb_old_logp, mb_old_values, mb_adv, mb_returns, settings.objective,
                    settings.clip_range, settings.clip_range_vf, settings.kl_coef, settings.ent_coef,
                    settings.vf_coef)
                total_loss = pg_loss + settings.vf_coef * vf_loss - settings.ent_coef * ent_mean
                if not math.isfinite(total_loss):
                    raise NonFiniteError(
                        f"the loss became {total_loss} (policy {pg_loss}, value {vf_loss}, entropy "
                        f"{ent_mean}) in epoch {epoch}; lower learning_rate or enable normalize_obs")
                grad_norm = math.sqrt(float(np.dot(flat_grad_np, flat_grad_np)))
                if settings.max_grad_norm is not None:
                    flat_grad_np *= min(settings.max_grad_norm / (grad_norm + 1e-6), 1.0)
                optimizer.step()
                losses += (pg_loss, vf_loss, ent_mean)
                grad_norms.append(grad_norm)
                log_ratios.append(log_ratio)
                continue
            log_probs, entropy, values = policy.evaluate(mb_obs, mb_actions)
            log_ratio = log_probs.detach() - mb_old_logp
            if settings.target_kl is not None and _k3(log_ratio).mean().item() > 1.5 * settings.target_kl:
                stop = True
                break
            pg = policy_loss(log_probs, mb_old_logp, mb_adv, settings.objective, settings.clip_range,
                             kl_coef=settings.kl_coef, stats=False)
            vf = value_loss(values, mb_old_values, mb_returns, settings.clip_range_vf)
            loss = pg.loss + settings.vf_coef * vf
            if settings.ent_coef != 0.0:
                ent = entropy_bonus(entropy)
                loss = loss - settings.ent_coef * ent
            else:
                # A zero coefficient adds nothing to the gradient; keep entropy out of the graph.
                ent = entropy_bonus(entropy.detach())
            if not math.isfinite(loss.item()):
                raise NonFiniteError(
                    f"the loss became {loss.item()} (policy {pg.loss.item()}, value {vf.item()}, "
                    f"entropy {ent.item()}) in epoch {epoch}; lower learning_rate or enable normalize_obs")
            if flat is not None:
                flat.grad.zero_()
                loss.backward()
                # clip_grad_norm_ on one tensor, without its per-call bookkeeping
                grad_norm = torch.linalg.vector_norm(flat.grad)
                if settings.max_grad_norm is not None:
                    flat.grad.mul_(torch.clamp(settings.max_grad_norm / (grad_norm + 1e-6), max=1.0))
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if settings.max_grad_norm is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                else:
                    grad_norm = torch.linalg.vector_norm(
                        torch.stack([torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]))
            optimizer.step()
            losses += (pg.loss.detach(), vf.detach(), ent.detach())
            grad_norms.append(grad_norm)
            log_ratios.append(log_ratio)
        if log_ratios:
            epoch_log_ratios.append(log_ratios)
        if stop:
            break
    n_minibatches = len(grad_norms)
    stats = dict.fromkeys(STAT_KEYS, 0.0)
    kl_last_epoch = 0.0
    ratio_hist = torch.zeros(RATIO_BINS)
    ratio_min, ratio_max = float("inf"), float("-inf")
    if n_minibatches:
        stacked = torch.tensor(losses, dtype=torch.float64) if manual is not None else torch.stack(losses)
        loss_means = stacked.view(n_minibatches, 3).mean(0).tolist()
        stats.update(policy_loss=loss_means[0], value_loss=loss_means[1], entropy=loss_means[2])
        chunks = [chunk for epoch_chunks in epoch_log_ratios for chunk in epoch_chunks]
        low, high = 1.0 - settings.clip_range, 1.0 + settings.clip_range

        def outside(lr: torch.Tensor) -> torch.Tensor:
            ratio = lr.exp()
            return ((ratio < low) | (ratio > high)).to(lr.dtype)
        # Means over minibatches of per-minibatch means, as if each minibatch had reported its own.
        stats["approx_kl"] = _mean_of_means(chunks, _k3)
        stats["approx_kl_k1"] = _mean_of_means(chunks, torch.neg)
        stats["clip_fraction"] = _mean_of_means(chunks, outside)
        stats["grad_norm"] = (float(np.mean(grad_norms)) if manual is not None
                              else float(torch.stack(grad_norms).float().mean()))
        kl_last_epoch = _mean_of_means(epoch_log_ratios[-1], _k3)
        ratios = torch.cat(epoch_log_ratios[-1]).exp()
        ratio_hist = torch.histc(ratios, RATIO_BINS, *RATIO_RANGE)
        ratio_min, ratio_max = float(ratios.min()), float(ratios.max())
    stats.update(epochs=float(len(epoch_log_ratios)), minibatches=float(n_minibatches),
                 explained_variance=explained_variance(buffer.values.flatten(), returns),
                 advantage_std=float(advantages.std()) if total > 1 else 0.0,
                 ratio_min=ratio_min, ratio_max=ratio_max, kl_last_epoch=kl_last_epoch,
                 early_stopped=float(stop))
    stats["ratio_hist"] = ratio_hist.tolist()  # type: ignore[assignment]
    return stats


def _k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """Per-sample k3 KL estimate from log(pi_new / pi_old) (see proximo.core.kl)."""
    return kl_estimate(torch.zeros_like(log_ratio), log_ratio, "k3")


def _mean_of_means(chunks: list[torch.Tensor], per_sample) -> float:
    """Mean over chunks of the mean of per_sample(chunk); one reduction when the chunks are equal."""
    if len({chunk.numel() for chunk in chunks}) == 1:
        return float(per_sample(torch.cat(chunks)).mean())
    return float(torch.stack([per_sample(chunk).mean() for chunk in chunks]).mean())

