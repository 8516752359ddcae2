"""One PPO update: K epochs of shuffled minibatches on the rollout, each stepped by a learner.

This loop owns what PPO itself prescribes: epochs, shuffling, minibatches, advantage
normalization, the target_kl stop and the statistics. How one minibatch becomes a parameter step
(loss, gradient, all-reduce, clipping, Adam) is the learner's (proximo/learners/base.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Callable, Iterator

import numpy as np
import torch

from proximo.core.advantages import normalize
from proximo.learners.base import Learner, LossSettings, Minibatch, k3
from proximo.rollout import NonFiniteError, RolloutBuffer

RATIO_BINS = 40
RATIO_RANGE = (0.0, 2.0)
STAT_KEYS = ("policy_loss", "value_loss", "entropy", "approx_kl", "approx_kl_k1", "clip_fraction", "grad_norm")


@dataclass
class UpdateSettings(LossSettings):
    """The per-update values of the hyperparameters (schedules already applied): the loss settings a
    learner's step takes, plus what the loop itself needs."""

    n_epochs: int
    batch_size: int              # the global minibatch; each of the world's ranks takes batch_size / size
    target_kl: float | None
    normalize_advantage: bool


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var[target - predicted] / Var[target]; NaN when the target has no variance."""
    var_target = target.var()
    if var_target <= 0:
        return float("nan")
    return float(1.0 - (target - predicted).var() / var_target)


def ppo_update(learner: Learner, buffer: RolloutBuffer, settings: UpdateSettings,
               generator: torch.Generator | None = None,
               shuffle: Callable[[int], torch.Tensor] | None = None) -> dict[str, float]:
    """Optimize the learner's policy on one rollout; returns mean statistics of the update.

    shuffle(n) gives each epoch's sample order (default: torch.randperm(n, generator=generator)).
    The returned dict has policy_loss, value_loss, entropy, approx_kl (k3), approx_kl_k1,
    clip_fraction, grad_norm, epochs (how many ran before any target_kl stop), minibatches,
    explained_variance, advantage_std, ratio_min/ratio_max and ratio_hist (counts over RATIO_BINS
    bins of RATIO_RANGE in the last epoch that ran), kl_last_epoch (mean k3 KL of the last epoch,
    used by adaptive KL) and early_stopped.
    """
    world = learner.world
    columns = _columns(buffer)
    sequence_length = buffer.sequence_length
    total = columns.returns.shape[0]
    batch = settings.batch_size // world.size
    kl_limit = None if settings.target_kl is None else 1.5 * settings.target_kl
    shuffle = shuffle or (lambda n: torch.randperm(n, generator=generator))
    reduce = world.all_reduce_sum_ if world.size > 1 else None
    whole = None
    if batch >= total:
        # One minibatch holding the whole rollout is the same every epoch (a mean does not depend on
        # the order): no shuffle, and its advantages are normalized once.
        advantages = columns.advantages
        if settings.normalize_advantage:
            advantages = normalize(advantages, all_reduce=reduce)
        whole = [replace(columns, advantages=advantages)]
    learner.begin_update()
    # Statistics stay tensors until the end: one host read per update, not several per minibatch.
    losses, grad_norms = [], []
    epoch_log_ratios: list[list[torch.Tensor]] = []  # per epoch that ran, per minibatch
    stop = False
    for epoch in range(settings.n_epochs):
        log_ratios: list[torch.Tensor] = []
        minibatches = whole or _shuffled_minibatches(columns, batch, sequence_length, settings.normalize_advantage,
                                                     shuffle, reduce)
        for minibatch in minibatches:
            try:
                result = learner.step(minibatch, settings, kl_limit)
            except NonFiniteError as exc:
                raise NonFiniteError(f"{exc} (epoch {epoch})") from None
            if not result.stepped:
                stop = True
                break
            losses.append(result.losses)
            grad_norms.append(result.grad_norm)
            log_ratios.append(result.log_ratio)
        if log_ratios:
            epoch_log_ratios.append(log_ratios)
        if stop:
            break
    return _statistics(buffer, settings, losses, grad_norms, epoch_log_ratios, stop)


def _columns(buffer: RolloutBuffer) -> Minibatch:
    """The rollout as per-sample columns [T * N, ...]. A recurrent rollout is laid out env by env, so
    its L-step sequences lie one after another: sequence s = n * (T / L) + c is env n's chunk c, and
    rnn_states row s is the state at its first step."""
    recurrent = buffer.rnn_states is not None

    def flat(column: torch.Tensor | None) -> torch.Tensor | None:
        if column is None:
            return None
        return column.transpose(0, 1).flatten(0, 1) if recurrent else column.flatten(0, 1)
    return Minibatch(flat(buffer.obs), flat(buffer.actions), flat(buffer.log_probs), flat(buffer.values),
                     flat(buffer.advantages), flat(buffer.returns), flat(buffer.action_masks),
                     flat(buffer.episode_starts), flat(buffer.rnn_states))


def _shuffled_minibatches(columns: Minibatch, batch: int, sequence_length: int, normalize_advantage: bool,
                          shuffle, reduce) -> Iterator[Minibatch]:
    """One epoch's minibatches of `batch` samples (this rank's share of each), advantages normalized
    per global minibatch when asked (reduce: the all-reduce that makes the moments global, or None).

    With sequence_length L > 1 the shuffle permutes whole L-step sequences, never steps within one:
    a minibatch is batch / L sequences, each in time order.
    """
    total = columns.returns.shape[0]
    device = columns.returns.device
    if sequence_length == 1:
        sequence_order = None
        order = shuffle(total).to(device)
    else:
        sequence_order = shuffle(total // sequence_length).to(device)
        order = (sequence_order[:, None] * sequence_length
                 + torch.arange(sequence_length, device=device)).flatten()
    # Gather once per epoch, then take contiguous slices: the same minibatches as indexing each with
    # its slice of the permutation, for one gather per column per epoch instead of one per minibatch.
    shuffled = {name: getattr(columns, name)[order] for name in Minibatch.PER_SAMPLE
                if getattr(columns, name) is not None}
    states = columns.rnn_states[sequence_order] if columns.rnn_states is not None else None
    if normalize_advantage:
        advantages = shuffled["advantages"]
        if total % batch == 0:
            # Every minibatch normalized on its own, in one batched call.
            n_batches = total // batch
            shuffled["advantages"] = normalize(advantages.view(n_batches, batch), dim=1, all_reduce=reduce).view(-1)
        else:
            shuffled["advantages"] = torch.cat([normalize(chunk, all_reduce=reduce) for chunk in advantages.split(batch)])
    for start in range(0, total, batch):
        rows = {name: column[start:start + batch] for name, column in shuffled.items()}
        if states is not None:
            rows["rnn_states"] = states[start // sequence_length:(start + batch) // sequence_length]
        yield Minibatch(**rows)


def _statistics(buffer: RolloutBuffer, settings: UpdateSettings, losses: list, grad_norms: list,
                epoch_log_ratios: list[list[torch.Tensor]], stopped: bool) -> dict[str, float]:
    n_minibatches = len(grad_norms)
    returns = buffer.returns.flatten()
    stats = dict.fromkeys(STAT_KEYS, 0.0)
    kl_last_epoch = 0.0
    ratio_hist = torch.zeros(RATIO_BINS)
    ratio_min, ratio_max = float("inf"), float("-inf")
    if n_minibatches:
        loss_means = torch.stack(losses).mean(0).tolist()
        stats.update(policy_loss=loss_means[0], value_loss=loss_means[1], entropy=loss_means[2])
        chunks = [chunk for epoch_chunks in epoch_log_ratios for chunk in epoch_chunks]
        low, high = 1.0 - settings.clip_range, 1.0 + settings.clip_range

        def outside(log_ratio: torch.Tensor) -> torch.Tensor:
            ratio = log_ratio.exp()
            return ((ratio < low) | (ratio > high)).to(log_ratio.dtype)
        # Means over minibatches of per-minibatch means, as if each minibatch had reported its own.
        stats["approx_kl"] = _mean_of_means(chunks, k3)
        stats["approx_kl_k1"] = _mean_of_means(chunks, torch.neg)
        stats["clip_fraction"] = _mean_of_means(chunks, outside)
        stats["grad_norm"] = float(torch.stack(grad_norms).float().mean())
        kl_last_epoch = _mean_of_means(epoch_log_ratios[-1], k3)
        ratios = torch.cat(epoch_log_ratios[-1]).exp()
        ratio_hist = torch.histc(ratios, RATIO_BINS, *RATIO_RANGE).cpu()
        ratio_min, ratio_max = float(ratios.min()), float(ratios.max())
    stats.update(epochs=float(len(epoch_log_ratios)), minibatches=float(n_minibatches),
                 explained_variance=explained_variance(buffer.values.flatten(), returns),
                 advantage_std=float(buffer.advantages.std()) if returns.numel() > 1 else 0.0,
                 ratio_min=ratio_min, ratio_max=ratio_max, kl_last_epoch=kl_last_epoch,
                 early_stopped=float(stopped))
    stats["ratio_hist"] = ratio_hist.tolist()  # type: ignore[assignment]
    return stats


def _mean_of_means(chunks: list[torch.Tensor], per_sample) -> float:
    """Mean over chunks of the mean of per_sample(chunk); one reduction when the chunks are equal."""
    if len({chunk.numel() for chunk in chunks}) == 1:
        return float(per_sample(torch.cat(chunks)).mean())
    return float(torch.stack([per_sample(chunk).mean() for chunk in chunks]).mean())


def population_update(learner, columns: Minibatch, settings, n_epochs: int, batch: int, normalize_advantage: bool,
                      generators: list[torch.Generator]) -> list[dict[str, float]]:
    """One PPO update of K agents at once (proximo/population/): columns are [K, T * N, ...] (agent k's
    rollout in a solo run's sample order), settings an AgentSettings of [K] arrays, generators each
    agent's torch generator (its shuffles are a solo run's). Returns each agent's statistics, the dict
    ppo_update returns for one run.

    Per minibatch index one batched learner step serves every agent, each on its own shuffled
    minibatch; an agent whose KL passes its limit stops there for this update, as a solo run stops,
    while the others go on. Statistics are gathered per agent once the update ends."""
    k, total = columns.returns.shape[:2]
    agents = torch.arange(k)[:, None]
    whole = None
    if batch >= total:
        advantages = normalize(columns.advantages, dim=-1) if normalize_advantage else columns.advantages
        whole = [replace(columns, advantages=advantages)]
    learner.begin_update()
    active = np.ones(k, dtype=bool)
    records: list[tuple[int, object]] = []  # (epoch, step result) of every minibatch step taken
    for epoch in range(n_epochs):
        if whole is not None:
            minibatches = whole
        else:
            # Only agents still stepping draw their shuffle: a stopped solo run draws no more epochs.
            order = torch.stack([torch.randperm(total, generator=g) if on else torch.arange(total)
                                 for g, on in zip(generators, active)])
            shuffled = {name: getattr(columns, name)[agents, order] for name in Minibatch.PER_SAMPLE
                        if getattr(columns, name) is not None}
            if normalize_advantage:
                adv = shuffled["advantages"]
                if total % batch == 0:
                    shuffled["advantages"] = normalize(adv.view(k, total // batch, batch), dim=-1).view(k, total)
                else:
                    shuffled["advantages"] = torch.cat([normalize(chunk, dim=-1) for chunk in adv.split(batch, 1)], 1)
            minibatches = (Minibatch(**{name: column[:, start:start + batch] for name, column in shuffled.items()})
                           for start in range(0, total, batch))
        for minibatch in minibatches:
            result = learner.step(minibatch, settings, active)
            records.append((epoch, result))
            active &= result.stepped.numpy()
            if not active.any():
                break
        if not active.any():
            break
    return [_agent_statistics(columns, settings, records, agent) for agent in range(k)]


def _agent_statistics(columns: Minibatch, settings, records: list, agent: int) -> dict[str, float]:
    """Agent `agent`'s update statistics from the batched records, through the solo path (_statistics)."""
    losses, grad_norms, epochs = [], [], {}
    stopped = False
    for epoch, result in records:
        if not bool(result.stepped[agent]):
            stopped = True
            break
        losses.append(result.losses[agent])
        grad_norms.append(result.grad_norm[agent])
        epochs.setdefault(epoch, []).append(result.log_ratio[agent])
    rollout = SimpleNamespace(returns=columns.returns[agent], values=columns.old_values[agent],
                              advantages=columns.advantages[agent])
    return _statistics(rollout, SimpleNamespace(clip_range=float(settings.stat_clip_range[agent])), losses,
                       grad_norms, list(epochs.values()), stopped)
