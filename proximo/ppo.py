"""One PPO update: K epochs of shuffled minibatches of Adam on the rollout."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from proximo.core.advantages import normalize
from proximo.core.objectives import entropy_bonus, policy_loss, value_loss
from proximo.nn.policy import ActorCritic
from proximo.rollout import NonFiniteError, RolloutBuffer

RATIO_BINS = 40
RATIO_RANGE = (0.0, 2.0)


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


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var[target - predicted] / Var[target]; NaN when the target has no variance."""
    var_target = target.var()
    if var_target <= 0:
        return float("nan")
    return float(1.0 - (target - predicted).var() / var_target)


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
    sums = dict(policy_loss=0.0, value_loss=0.0, entropy=0.0, approx_kl=0.0, approx_kl_k1=0.0,
                clip_fraction=0.0, grad_norm=0.0)
    n_minibatches = 0
    epochs_run = 0
    stop = False
    ratio_hist = torch.zeros(RATIO_BINS)
    ratio_min, ratio_max = float("inf"), float("-inf")
    kl_last_epoch = 0.0
    params = [p for p in policy.parameters() if p.requires_grad]
    for epoch in range(settings.n_epochs):
        permutation = torch.randperm(total, generator=generator)
        epoch_kl, epoch_batches = 0.0, 0
        epoch_hist = torch.zeros(RATIO_BINS)
        epoch_min, epoch_max = float("inf"), float("-inf")
        for start in range(0, total, settings.batch_size):
            idx = permutation[start:start + settings.batch_size]
            mb_adv = advantages[idx]
            if settings.normalize_advantage:
                mb_adv = normalize(mb_adv)
            log_probs, entropy, values = policy.evaluate(obs[idx], actions[idx])
            pg = policy_loss(log_probs, old_log_probs[idx], mb_adv, settings.objective,
                             settings.clip_range, kl_coef=settings.kl_coef)
            if settings.target_kl is not None and pg.approx_kl_k3.item() > 1.5 * settings.target_kl:
                stop = True
                break
            vf = value_loss(values, old_values[idx], returns[idx], settings.clip_range_vf)
            ent = entropy_bonus(entropy)
            loss = pg.loss + settings.vf_coef * vf - settings.ent_coef * ent
            if not torch.isfinite(loss):
                raise NonFiniteError(
                    f"the loss became {loss.item()} (policy {pg.loss.item()}, value {vf.item()}, "
                    f"entropy {ent.item()}) in epoch {epoch}; lower learning_rate or enable normalize_obs")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.max_grad_norm is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            else:
                grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            optimizer.step()
            n_minibatches += 1
            sums["policy_loss"] += pg.loss.item()
            sums["value_loss"] += vf.item()
            sums["entropy"] += ent.item()
            sums["approx_kl"] += pg.approx_kl_k3.item()
            sums["approx_kl_k1"] += pg.approx_kl_k1.item()
            sums["clip_fraction"] += pg.clip_fraction.item()
            sums["grad_norm"] += float(grad_norm)
            epoch_kl += pg.approx_kl_k3.item()
            epoch_batches += 1
            epoch_hist += torch.histc(pg.ratio, RATIO_BINS, *RATIO_RANGE)
            epoch_min = min(epoch_min, pg.ratio.min().item())
            epoch_max = max(epoch_max, pg.ratio.max().item())
        if epoch_batches:
            epochs_run += 1
            kl_last_epoch = epoch_kl / epoch_batches
            ratio_hist, ratio_min, ratio_max = epoch_hist, epoch_min, epoch_max
        if stop:
            break
    stats = {key: value / max(n_minibatches, 1) for key, value in sums.items()}
    stats.update(epochs=float(epochs_run), minibatches=float(n_minibatches),
                 explained_variance=explained_variance(buffer.values.flatten(), returns),
                 advantage_std=float(advantages.std()) if total > 1 else 0.0,
                 ratio_min=ratio_min, ratio_max=ratio_max, kl_last_epoch=kl_last_epoch,
                 early_stopped=float(stop))
    stats["ratio_hist"] = ratio_hist.tolist()  # type: ignore[assignment]
    return stats
