"""One PPO update for every proximo trainer: epochs of shuffled minibatches, each stepped by a learner.

This module owns what PPO itself prescribes, once, for classic RL and for language models alike: the
epochs, the shuffle (one shuffler, which keeps contiguous blocks of rows together where they belong
together: a recurrent policy's L-step sequences, a GRPO group's completions), the minibatches, the
target_kl stop and the statistics (one clip-fraction, one KL estimate, one statistics path, pooled over
a data-parallel run's ranks). How one minibatch becomes a parameter step (forward, loss, micro-batches,
autocast and loss scaling, the gradient all-reduce, the KL gate, clipping, Adam) is the learner's:
proximo/learners/base.py, with the language-model learners in proximo/llm/learners.py.

    classic PPO    ppo_update(learner, rollout, settings)            (advantages normalized per minibatch)
    GRPO, RLHF     run_update(learner, settings, n_epochs, minibatches, clip_range=...)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch

from proximo.core.advantages import normalize
from proximo.errors import NonFiniteError
from proximo.learners.base import Learner, LossSettings, Minibatch, k3

RATIO_BINS = 40
RATIO_RANGE = (0.0, 2.0)
STAT_KEYS = ("policy_loss", "value_loss", "entropy", "approx_kl", "approx_kl_k1", "clip_fraction", "grad_norm")
# shuffle(n) -> a permutation of range(n) [n] (int64): one epoch's order of the rows (or of the blocks).
Shuffle = Callable[[int], torch.Tensor]


@dataclass
class UpdateSettings(LossSettings):
    """The per-update values of the hyperparameters (schedules already applied): the loss settings a
    learner's step takes, plus what the loop itself needs."""

    n_epochs: int
    batch_size: int              # the global minibatch; each of the world's ranks takes batch_size / size
    target_kl: float | None
    normalize_advantage: bool


class Rollout(Protocol):
    """What ppo_update reads of a classic rollout (proximo.rollout.RolloutBuffer has it): columns [T, N, ...]."""

    obs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    action_masks: torch.Tensor | None
    episode_starts: torch.Tensor | None
    rnn_states: torch.Tensor | None      # [N * T / L, state_size] for a recurrent policy, else None
    sequence_length: int                 # L: steps per recurrent sequence (1 without memory)


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var[target - predicted] / Var[target]; NaN when the target has no variance."""
    var_target = target.var()
    if var_target <= 0:
        return float("nan")
    return float(1.0 - (target - predicted).var() / var_target)


# the one shuffler -----------------------------------------------------------------------------------
def default_shuffle(generator: torch.Generator | None = None) -> Shuffle:
    """torch.randperm(n, generator=generator): the global torch stream when generator is None."""
    return lambda n: torch.randperm(n, generator=generator)


def block_order(total: int, block: int, shuffle: Shuffle,
                device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One epoch's order of total rows that moves whole blocks of `block` consecutive rows and keeps each
    block's rows together and in order: (row order [total], block order [total / block], None when
    block is 1). Rows 0..block-1 are block 0, and so on; total must be a multiple of block."""
    if block <= 1:
        return shuffle(total).to(device), None
    blocks = shuffle(total // block).to(device)
    return (blocks[:, None] * block + torch.arange(block, device=blocks.device)).flatten(), blocks


def minibatch_rows(total: int, batch: int, block: int = 1, shuffle: Shuffle | None = None) -> list[torch.Tensor]:
    """One epoch's minibatches as row indices: consecutive slices of `batch` rows of block_order's order.
    Blocks stay whole within a minibatch when they split evenly (total and batch multiples of block);
    otherwise the rows are shuffled one by one."""
    if block > 1 and (total % block or batch % block):
        block = 1
    order, _ = block_order(total, block, shuffle or default_shuffle())
    return list(order.split(batch))


# the one loop ---------------------------------------------------------------------------------------
def run_update(learner: Learner, settings: Any, n_epochs: int, minibatches: Callable[[int], Iterable[Any]],
               kl_limit: float | None = None, clip_range: float = 0.2,
               clip_range_high: float | None = None, per_agent: Callable[[list], list] | None = None) -> Any:
    """Up to n_epochs passes of learner.step over minibatches(epoch); returns the update's statistics.

    A step that reports stepped False (its KL passed kl_limit) ends the update there. The statistics
    (update_statistics) are means over the stepped minibatches of each minibatch's value over every
    rank's samples; clip_range (and clip_range_high for the upper side) define the clip fraction.

    A population's learner (proximo/learners/population.py) steps K agents at once and reports stepped
    per agent; the update goes on while any agent steps, and per_agent(records) turns the (epoch, step
    result) of every step into each agent's statistics (population_update).
    """
    learner.begin_update()
    records: list[tuple[int, Any]] = []
    # Statistics stay tensors until the end: one host read per update, not several per minibatch.
    losses: list[torch.Tensor] = []
    grad_norms: list[torch.Tensor] = []
    extras: list[dict[str, torch.Tensor]] = []
    epoch_log_ratios: list[list[torch.Tensor]] = []  # per epoch that ran, per minibatch
    stopped = False
    for epoch in range(n_epochs):
        log_ratios: list[torch.Tensor] = []
        for minibatch in minibatches(epoch):
            try:
                result = learner.step(minibatch, settings, kl_limit)
            except NonFiniteError as exc:
                raise NonFiniteError(f"{exc} (epoch {epoch})") from None
            if per_agent is not None:
                records.append((epoch, result))
            if not _any(result.stepped):
                stopped = True
                break
            losses.append(result.losses)
            if result.grad_norm is not None:  # None: a float16 overflow skipped this step's update
                grad_norms.append(result.grad_norm)
            if result.extra:
                extras.append(result.extra)
            log_ratios.append(result.log_ratio)
        if log_ratios:
            epoch_log_ratios.append(log_ratios)
        if stopped:
            break
    if per_agent is not None:
        return per_agent(records)
    return update_statistics(losses, grad_norms, epoch_log_ratios, extras, stopped, clip_range, clip_range_high,
                             learner.world)


def _any(stepped: bool | torch.Tensor) -> bool:
    """Whether a step result stepped (a bool, or a bool tensor with one entry per agent: any of them)."""
    return bool(stepped.any()) if isinstance(stepped, torch.Tensor) else bool(stepped)


def update_statistics(losses: list[torch.Tensor], grad_norms: list[torch.Tensor],
                      epoch_log_ratios: list[list[torch.Tensor]], extras: list[dict[str, torch.Tensor]],
                      stopped: bool, clip_range: float, clip_range_high: float | None = None,
                      world=None) -> dict[str, Any]:
    """The statistics of one update from its stepped minibatches (the one path every trainer logs through).

    Each minibatch's value is over every rank's samples: a learner's losses and extras are this rank's
    additive share (summed over ranks they are the minibatch's), and the per-sample statistics of the
    log-ratios log(pi_new / pi_old) are pooled sums over counts. Returned: policy_loss, value_loss, entropy
    and each extra (means over minibatches), approx_kl (k3) and approx_kl_k1, clip_fraction (the fraction
    of samples whose ratio lies outside [1 - clip_range, 1 + clip_range_high]), grad_norm (before
    clipping), epochs, minibatches, ratio_min/ratio_max and ratio_hist (counts over RATIO_BINS bins of
    RATIO_RANGE in the last epoch that ran), kl_last_epoch (mean k3 KL of that epoch, what adaptive KL
    reads) and early_stopped.
    """
    pooled = world is not None and world.size > 1
    n_minibatches = len(losses)
    stats: dict[str, Any] = dict.fromkeys(STAT_KEYS, 0.0)
    kl_last_epoch = 0.0
    ratio_hist = torch.zeros(RATIO_BINS)
    ratio_min, ratio_max = float("inf"), float("-inf")
    extra_keys = list(extras[0]) if extras else []
    if n_minibatches:
        chunks = [chunk for epoch_chunks in epoch_log_ratios for chunk in epoch_chunks]
        high = clip_range if clip_range_high is None else clip_range_high
        table = _per_minibatch_sums(chunks, 1.0 - clip_range, 1.0 + high)  # [M, 4]
        last = torch.cat(epoch_log_ratios[-1]).exp()
        hist = torch.histc(last.float(), RATIO_BINS, *RATIO_RANGE)
        like = dict(device=table.device, dtype=table.dtype)  # (a learner's extras may live on the host)
        loss_table = torch.stack(losses).to(**like)  # [M, 3]
        parts = [table.flatten(), loss_table.flatten(), hist.to(**like)]
        if extra_keys:
            parts.append(torch.stack([torch.stack([e[k].to(**like) for k in extra_keys]) for e in extras]).flatten())
        if pooled:
            packed = world.all_reduce_sum_(torch.cat(parts))
            sizes = [p.numel() for p in parts]
            parts = list(packed.split(sizes))
            table, loss_table = parts[0].view(-1, 4), parts[1].view(-1, 3)
            hist = parts[2]
            extremes = world.all_reduce_max_(torch.stack([last.max(), -last.min()]).double())
            ratio_max, ratio_min = float(extremes[0]), -float(extremes[1])
        else:
            ratio_min, ratio_max = float(last.min()), float(last.max())
        means = table[:, :3] / table[:, 3:].clamp(min=1.0)  # per minibatch: k3, k1, clipped
        # Means over minibatches of per-minibatch means, as if each minibatch had reported its own.
        overall = means.mean(0).tolist()
        stats.update(approx_kl=overall[0], approx_kl_k1=overall[1], clip_fraction=overall[2])
        loss_means = loss_table.mean(0).tolist()
        stats.update(policy_loss=loss_means[0], value_loss=loss_means[1], entropy=loss_means[2])
        if extra_keys:
            extra_means = parts[3].view(n_minibatches, len(extra_keys)).mean(0).tolist()
            stats.update(zip(extra_keys, extra_means))
        stats["grad_norm"] = float(torch.stack(grad_norms).float().mean()) if grad_norms else float("nan")
        kl_last_epoch = float(means[-len(epoch_log_ratios[-1]):, 0].mean())
        ratio_hist = hist.float().cpu()
    stats.update(epochs=float(len(epoch_log_ratios)), minibatches=float(n_minibatches), ratio_min=ratio_min,
                 ratio_max=ratio_max, kl_last_epoch=kl_last_epoch, early_stopped=float(stopped))
    stats["ratio_hist"] = ratio_hist.tolist()
    return stats


def _per_minibatch_sums(chunks: list[torch.Tensor], low: float, high: float) -> torch.Tensor:
    """[M, 4]: per chunk of log-ratios, the sums of k3, of k1 (-log r) and of r outside [low, high], and
    the count; batched in one pass when the chunks are equal."""
    def sums(log_ratio: torch.Tensor, dim: int | None) -> list[torch.Tensor]:
        ratio = log_ratio.exp()
        outside = ((ratio < low) | (ratio > high)).to(log_ratio.dtype)
        if dim is None:
            return [k3(log_ratio).sum(), -log_ratio.sum(), outside.sum()]
        return [k3(log_ratio).sum(dim), -log_ratio.sum(dim), outside.sum(dim)]
    sizes = {chunk.numel() for chunk in chunks}
    if len(sizes) == 1:
        size = sizes.pop()
        grid = torch.cat(chunks).view(len(chunks), size)
        columns = sums(grid, 1)
        count = torch.full_like(columns[0], float(size))
        return torch.stack([*columns, count], 1)
    rows = [torch.stack([*sums(chunk, None), torch.tensor(float(chunk.numel()), dtype=chunk.dtype,
                                                          device=chunk.device)]) for chunk in chunks]
    return torch.stack(rows)


# classic PPO: a rollout's columns in minibatches --------------------------------------------------
def ppo_update(learner: Learner, buffer: Rollout, settings: UpdateSettings,
               generator: torch.Generator | None = None,
               shuffle: Shuffle | None = None) -> dict[str, Any]:
    """Optimize the learner's policy on one classic rollout; returns mean statistics of the update.

    shuffle(n) gives each epoch's sample order (default: torch.randperm(n, generator=generator)). The
    returned dict is run_update's statistics plus explained_variance and advantage_std of the rollout.
    """
    world = learner.world
    columns = _columns(buffer)
    sequence_length = buffer.sequence_length
    total = columns.returns.shape[0]
    batch = settings.batch_size // world.size
    kl_limit = None if settings.target_kl is None else 1.5 * settings.target_kl
    shuffle = shuffle or default_shuffle(generator)
    reduce = world.all_reduce_sum_ if world.size > 1 else None
    whole = None
    if batch >= total:
        # One minibatch holding the whole rollout is the same every epoch (a mean does not depend on
        # the order): no shuffle, and its advantages are normalized once.
        advantages = columns.advantages
        if settings.normalize_advantage:
            advantages = normalize(advantages, all_reduce=reduce)
        whole = [replace(columns, advantages=advantages)]

    def minibatches(epoch: int) -> Iterable[Minibatch]:
        return whole or _shuffled_minibatches(columns, batch, sequence_length, settings.normalize_advantage,
                                              shuffle, reduce)
    stats = run_update(learner, settings, settings.n_epochs, minibatches, kl_limit, settings.clip_range)
    returns = buffer.returns.flatten()
    stats.update(explained_variance=explained_variance(buffer.values.flatten(), returns),
                 advantage_std=float(buffer.advantages.std()) if returns.numel() > 1 else 0.0)
    return stats


def _columns(buffer: Rollout) -> Minibatch:
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
                          shuffle: Shuffle, reduce) -> Iterator[Minibatch]:
    """One epoch's minibatches of `batch` samples (this rank's share of each), advantages normalized
    per global minibatch when asked (reduce: the all-reduce that makes the moments global, or None).

    With sequence_length L > 1 the shuffle permutes whole L-step sequences, never steps within one:
    a minibatch is batch / L sequences, each in time order.
    """
    total = columns.returns.shape[0]
    order, sequence_order = block_order(total, sequence_length, shuffle, columns.returns.device)
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


# a population: K agents' rollouts in minibatches, one batched step per minibatch index ------------------
def population_update(learner, columns: Minibatch, settings, n_epochs: int, batch: int, normalize_advantage: bool,
                      generators: list[torch.Generator]) -> list[dict[str, Any]]:
    """One PPO update of K agents at once (proximo/population/); returns each agent's statistics, the dict
    ppo_update returns for a solo run.

    columns are [K, T * N, ...] (agent k's rollout in a solo run's sample order), settings an
    AgentSettings of [K] arrays, generators each agent's torch generator: an agent's shuffles are the ones
    its solo run draws. Per minibatch index one batched learner step serves every agent, each on its own
    shuffled minibatch; an agent whose KL passes its limit stops there for this update, as a solo run
    stops (it draws no more shuffles either), while the others go on."""
    k, total = columns.returns.shape[:2]
    agents = torch.arange(k)[:, None]
    whole = None
    if batch >= total:
        advantages = normalize(columns.advantages, dim=-1) if normalize_advantage else columns.advantages
        whole = [replace(columns, advantages=advantages)]

    def minibatches(epoch: int) -> Iterable[Minibatch]:
        if whole is not None:
            return whole
        order = torch.stack([torch.randperm(total, generator=g) if on else torch.arange(total)
                             for g, on in zip(generators, learner.active)])
        shuffled = {name: getattr(columns, name)[agents, order] for name in Minibatch.PER_SAMPLE
                    if getattr(columns, name) is not None}
        if normalize_advantage:
            adv = shuffled["advantages"]
            if total % batch == 0:
                shuffled["advantages"] = normalize(adv.view(k, total // batch, batch), dim=-1).view(k, total)
            else:
                shuffled["advantages"] = torch.cat([normalize(chunk, dim=-1) for chunk in adv.split(batch, 1)], 1)
        return (Minibatch(**{name: column[:, start:start + batch] for name, column in shuffled.items()})
                for start in range(0, total, batch))

    def per_agent(records: list) -> list[dict[str, Any]]:
        return [_agent_statistics(columns, records, agent, float(settings.stat_clip_range[agent]))
                for agent in range(k)]
    return run_update(learner, settings, n_epochs, minibatches, per_agent=per_agent)


def _agent_statistics(columns: Minibatch, records: list, agent: int, clip_range: float) -> dict[str, Any]:
    """Agent `agent`'s statistics from the batched step records, through the path a solo run's take."""
    losses, grad_norms, epochs = [], [], {}
    stopped = False
    for epoch, result in records:
        if not bool(result.stepped[agent]):
            stopped = True  # its first step not taken: where a solo run's update ended
            break
        losses.append(result.losses[agent])
        grad_norms.append(result.grad_norm[agent])
        epochs.setdefault(epoch, []).append(result.log_ratio[agent])
    stats = update_statistics(losses, grad_norms, list(epochs.values()), [], stopped, clip_range)
    returns = columns.returns[agent]
    stats.update(explained_variance=explained_variance(columns.old_values[agent], returns),
                 advantage_std=float(columns.advantages[agent].std()) if returns.numel() > 1 else 0.0)
    return stats
