"""The training loop: collect -> advantages -> update -> log -> checkpoint."""
from __future__ import annotations

import json
import math
import random
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from proximo import __version__
from proximo.checkpoint import (
    POLICY_META, POLICY_TENSORS, CheckpointError, CheckpointFallbackWarning, atomic_write_dir, atomic_write_json,
    ensure_run_dir, load_json, load_tensors, optimizer_from_tensors, optimizer_to_tensors, prefixed, recover_dir,
    unprefixed,
)
from proximo.config import PPOConfig
from proximo.core.kl import AdaptiveKLController, FixedKLController
from proximo.core.schedules import Schedule
from proximo.diagnostics import HealthMonitor
from proximo.envs.atari import pixel_options
from proximo.envs.check import require_env_ok
from proximo.envs.guard import EnvFaultError, GuardedMaker
from proximo.envs.make import EnvLike, make_vector_env
from proximo.envs.masks import ActionMaskSource, mask_key_of, mask_width
from proximo.envs.snapshot import (
    decode_value, encode_value, restore_vector_env, snapshot_vector_env, vector_env_obstacle,
)
from proximo.evaluate import evaluate_policy
from proximo.learners.distributed import (
    DistributedError, World, broadcast_module_, broadcast_optimizer_, check_divides, rank_seed,
)
from proximo.metrics import MetricsWriter, Progress
from proximo.devices import resolve_device
from proximo.errors import ConfigError
from proximo.learners.base import choose_learner
from proximo.learners.optimizer import FlatOptimizer
from proximo.nn.policy import ActorCritic
from proximo.ppo import UpdateSettings, ppo_update
from proximo.rollout import NonFiniteError, RewardScaler, RolloutCollector
from proximo.spaces_json import space_from_json, space_to_json
from proximo.tracking import open_tracker

STATE_TENSORS = "state.safetensors"
STATE_META = "state.json"
# The state.json fields and state.safetensors tensors each rank keeps for itself (under "ranks" and
# "rank.<r>."); everything else in a checkpoint is the same on every rank and saved once.
RANK_FIELDS = ("envs", "episodes", "env_faults", "rng")


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after finishing an update and saving a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, run_dir: Path | None,
                 world_size: int = 1) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        nproc = f" --nproc {world_size}" if world_size > 1 else ""
        saved = (f"checkpoint saved to {checkpoint}; continue with `proximo train --resume {run_dir}{nproc}`"
                 if checkpoint is not None else "no run directory, so nothing was saved")
        super().__init__(f"stopped by {name} at step {step:,}; {saved}")


class ResumeWarning(UserWarning):
    """A resume could not restore everything exactly (the env state, typically)."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def pick_threads(config: PPOConfig) -> int:
    """Torch threads: the configured count, else 1 (small MLP batches lose time to thread hand-offs)."""
    return config.torch_threads if config.torch_threads > 0 else 1


def set_threads(threads: int) -> None:
    """Use `threads` threads in torch and in NumPy's BLAS alike.

    NumPy's OpenBLAS otherwise starts one thread per core; on a busy 2-core machine its spinning
    second thread turned a 0.35 ms NumPy minibatch update into ~10 ms.
    """
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")


def build_policy(observation_space, action_space, config: PPOConfig) -> ActorCritic:
    """The actor-critic a config asks for."""
    return ActorCritic(observation_space, action_space, net_arch=config.net_arch,
                       activation=config.activation, shared_network=config.shared_network,
                       ortho_init=config.ortho_init, log_std_init=config.log_std_init,
                       normalize_obs=config.normalize_obs, clip_obs=config.clip_obs,
                       recurrent=config.recurrent, rnn_hidden=config.rnn_hidden, rnn_layers=config.rnn_layers,
                       mask_key=mask_key_of(observation_space, config.action_masking))


def make_adam(policy: ActorCritic, config: PPOConfig) -> FlatOptimizer:
    """Adam over the policy's parameters, kept in one flat buffer with the fused kernel (learners/optimizer.py)."""
    return FlatOptimizer(policy, lr=config.learning_rate, eps=config.adam_eps)


def place_policy(policy: ActorCritic, config: PPOConfig) -> str:
    """Move the policy to the config's device (resolving auto); returns why that device."""
    device, why = resolve_device(config.device, policy.image, max(config.net_arch))
    policy.to(device)
    return f"{device} ({why})"


def env_name(env: EnvLike) -> str | None:
    """The env id, or None for a factory (which cannot be saved)."""
    return env if isinstance(env, str) else None


def policy_metadata(policy: ActorCritic, config: PPOConfig, env: EnvLike | None,
                    env_kwargs: dict | None) -> dict[str, Any]:
    """The JSON that rebuilds a policy: format, version, env, spaces and config."""
    return {"format_version": 1, "proximo_version": __version__, "env_id": env_name(env) if env else None,
            "env_kwargs": env_kwargs or {}, "observation_space": space_to_json(policy.observation_space),
            "action_space": space_to_json(policy.action_space), "config": config.to_dict()}


def save_policy(directory: Path, policy: ActorCritic, config: PPOConfig, env: EnvLike | None,
                env_kwargs: dict | None = None) -> None:
    """Write policy.safetensors (weights and normalization statistics) and policy.json atomically."""
    atomic_write_dir(Path(directory), {
        "policy.safetensors": policy.state_dict(),
        "policy.json": policy_metadata(policy, config, env, env_kwargs)})


def load_policy(directory: Path, checkpoint: str | Path | None = None) -> tuple[ActorCritic, dict[str, Any]]:
    """Rebuild a policy from a run directory, a policy folder or a checkpoint folder; returns (policy, metadata).

    A run directory gives its final policy/ or, when a kill left none, its newest intact checkpoint (said in a
    CheckpointFallbackWarning). checkpoint= (step_N, or a checkpoint folder) picks one even when policy/ exists.
    No code is run from the files.
    """
    directory = Path(directory)
    recover_dir(directory)
    if checkpoint is not None:
        return _policy_from_checkpoint(find_checkpoint(directory, checkpoint))
    if (directory / STATE_META).is_file():
        return _policy_from_checkpoint(directory)
    recover_dir(directory / "policy")
    if (directory / "policy" / POLICY_META).is_file():
        directory = directory / "policy"
    if (directory / POLICY_META).is_file():
        meta = load_json(directory / POLICY_META)
        tensors = load_tensors(directory / POLICY_TENSORS)
        return _rebuild_policy(meta, tensors, directory / POLICY_META, directory / POLICY_TENSORS), meta
    checkpoints = list_checkpoints(directory)
    if not checkpoints:
        raise CheckpointError(f"no saved policy in {directory}: expected policy/ (policy.json and policy.safetensors) "
                              "or checkpoints/step_*/ (train a run first, or point at its run directory)")
    return _newest_intact_policy(directory, checkpoints)


def find_checkpoint(run_dir: Path, name: str | Path) -> Path:
    """The checkpoint folder `name` picks: a path to one, or step_N (zero padding optional) in run_dir/checkpoints."""
    run_dir, text = Path(run_dir), str(name)
    if Path(text).is_dir():
        recover_dir(Path(text))
        if not (Path(text) / STATE_META).is_file():
            raise CheckpointError(f"checkpoint {text} has no {STATE_META}; give a checkpoints/step_N folder or step_N")
        return Path(text)
    match = re.fullmatch(r"(?:step_)?(\d+)", text)
    if match is None and Path(text).name != text:
        raise CheckpointError(f"checkpoint folder {text} does not exist; give an existing checkpoints/step_N folder "
                              "or a name like step_4096")
    if match is None:
        raise CheckpointError(f"checkpoint {text!r} is neither a checkpoint folder nor a name like step_4096; "
                              "give one of those")
    if (run_dir / STATE_META).is_file():  # a checkpoint folder: its siblings are the run's checkpoints
        run_dir = run_dir.parent.parent
    folder = run_dir / "checkpoints" / f"step_{int(match.group(1)):012d}"
    recover_dir(folder)
    if not (folder / STATE_META).is_file():
        names = [c.name for c in list_checkpoints(run_dir)]
        have = f"it has {', '.join(names[-5:])}" if names else "it has none"
        raise CheckpointError(f"no checkpoint {folder.name} in {run_dir / 'checkpoints'}; {have} (pick one of those)")
    return folder


def _policy_from_checkpoint(folder: Path) -> tuple[ActorCritic, dict[str, Any]]:
    """The policy inside a training checkpoint: the policy.* tensors, and config and spaces from state.json."""
    meta = load_json(folder / STATE_META)
    tensors = load_tensors(folder / STATE_TENSORS)
    policy = _rebuild_policy(meta, unprefixed("policy", tensors), folder / STATE_META, folder / STATE_TENSORS)
    # The keys policy.json has, plus where the weights came from.
    keys = ("format_version", "proximo_version", "env_id", "env_kwargs", "observation_space", "action_space",
            "config", "global_step")
    return policy, {**{key: meta[key] for key in keys if key in meta}, "checkpoint": str(folder)}


def _newest_intact_policy(run_dir: Path, checkpoints: list[Path]) -> tuple[ActorCritic, dict[str, Any]]:
    """Load the newest checkpoint that loads, warning which one (and which newer ones were damaged)."""
    damaged: list[tuple[Path, CheckpointError]] = []
    for folder in reversed(checkpoints):
        try:
            policy, meta = _policy_from_checkpoint(folder)
        except CheckpointError as exc:
            damaged.append((folder, exc))
            continue
        note = f"proximo: {run_dir} has no final policy/; using checkpoint {folder.name}"
        if damaged:
            names = ", ".join(f.name for f, _ in damaged)
            note += f" (newer {names} {'is' if len(damaged) == 1 else 'are'} damaged: {damaged[0][1]})"
        warnings.warn(note, CheckpointFallbackWarning, stacklevel=3)
        return policy, meta
    raise CheckpointError(f"{run_dir} has no final policy/ and none of its {len(checkpoints)} checkpoints loads "
                          f"(the newest: {damaged[0][1]}); train the run again")


def _rebuild_policy(meta: dict[str, Any], tensors: dict[str, torch.Tensor], meta_path: Path,
                    tensors_path: Path) -> ActorCritic:
    """Build the policy meta describes and load tensors into it, every misfit as a CheckpointError."""
    try:
        config = PPOConfig.from_dict(meta["config"])
        spaces = space_from_json(meta["observation_space"]), space_from_json(meta["action_space"])
        with torch.device("meta"):  # shapes first, nothing allocated: a damaged file may claim 10^9 actions
            _check_fit(build_policy(*spaces, config), tensors, tensors_path)
        policy = build_policy(*spaces, config)
    except KeyError as exc:
        raise CheckpointError(f"{meta_path} lacks {exc}; the file is corrupt") from exc
    except (TypeError, ValueError) as exc:  # ConfigError is a ValueError: a value the file should never hold
        raise CheckpointError(f"{meta_path} is damaged ({exc}); use an earlier checkpoint") from exc
    _load_state_strict(policy, tensors, tensors_path)
    policy.eval()
    return policy


def _load_state_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    _check_fit(module, tensors, source)
    module.load_state_dict(tensors)


def _check_fit(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit this policy: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]} (saved with other normalization or network settings?)")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, this policy needs "
                                  f"{tuple(expected[key].shape)} (a checkpoint from another env?)")


class Trainer:
    """Owns the envs, policy, optimizer and run directory of one PPO run.

    With a World of K processes (proximo/learners/distributed.py) this is one rank of a run: it
    steps its own num_envs envs, seeded with rank_seed(seed, rank); config.batch_size is the
    global minibatch (batch_size / K samples per rank) and total_steps and global_step count the
    steps of all ranks. Rank 0 alone writes the run directory and prints.
    """

    def __init__(self, env: EnvLike, config: PPOConfig, run_dir: str | Path | None = None,
                 env_kwargs: dict | None = None, verbose: bool = True, tensorboard: bool = True,
                 world: World | None = None) -> None:
        self.env, self.config, self.env_kwargs = env, config, dict(env_kwargs or {})
        self.world = world = world if world is not None else World.local()
        check_divides(config.batch_size, world.size)
        length = config.sequence_length
        if length > 1 and config.batch_size < config.rollout_size * world.size \
                and (config.batch_size // world.size) % length:
            raise ConfigError(f"batch_size {config.batch_size} over {world.size} processes is "
                              f"{config.batch_size // world.size} steps per process, not a whole number of "
                              f"{length}-step sequences; make batch_size a multiple of {length * world.size}")
        self.verbose = verbose and world.is_main
        require_env_ok(env, self.env_kwargs)  # a few random steps: stop on a broken env before training
        seed_everything(rank_seed(config.seed, world.rank))
        set_threads(pick_threads(config))
        # EnvGuard restarts a sub-env whose step() raises; the collector bounds how often.
        self.envs = make_vector_env(GuardedMaker(env, {**self.env_kwargs, "pixels": pixel_options(config)}),
                                    config.num_envs, config.env_backend)
        self.mask_source = find_action_masks(env, self.env_kwargs, config.action_masking,
                                             self.envs.single_action_space)
        self.policy = build_policy(self.envs.single_observation_space, self.envs.single_action_space, config)
        self.device_choice = place_policy(self.policy, config)
        self.optimizer = make_adam(self.policy, config)
        # Every rank starts from rank 0's weights (its own seed drew others) and optimizer state.
        broadcast_module_(self.policy, world)
        broadcast_optimizer_(self.optimizer, world)
        try:
            self.learner, self.learner_choice = choose_learner(self.policy, self.optimizer, config.learner, world)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.reward_scaler = (RewardScaler(config.num_envs, config.gamma, config.clip_reward)
                              if config.normalize_reward else None)
        self.collector = RolloutCollector(self.envs, self.policy, config.n_steps, config.gamma,
                                          config.normalize_obs, self.reward_scaler,
                                          rank_seed(config.seed, world.rank), world, self.mask_source,
                                          config.sequence_length)
        self.lr_schedule = Schedule(config.lr_schedule, config.learning_rate)
        self.clip_schedule = Schedule(config.clip_schedule, config.clip_range)
        self.ent_schedule = Schedule(config.ent_schedule, config.ent_coef)
        self.kl_controller = (AdaptiveKLController(config.kl_coef, config.kl_target)
                              if config.objective == "adaptive_kl" else FixedKLController(config.kl_coef))
        self.global_step = 0
        self.update_index = 0
        self.wall_time_s = 0.0  # training seconds before the current train() call
        self._train_started: float | None = None  # perf_counter() at the start of the current train() call
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.tensorboard = tensorboard
        self.last_stats: dict[str, Any] = {}
        # names PPO's failure modes as they happen (see proximo/diagnostics.py)
        self.monitor = HealthMonitor.from_config(config) if config.diagnostics and world.is_main else None
        self._stop_signal: int | None = None
        self._horizon: int | None = None  # the step count the schedules anneal over (train()'s total)
        self._horizon_before_resume: int | None = None
        # Called with each update's metrics row (after it is logged): how a sweep or a tuner watches a run.
        self.on_update: Callable[[dict[str, Any]], None] | None = None

    # the loop -------------------------------------------------------------------------------
    @property
    def writes(self) -> bool:
        """True where this process writes the run directory: a run directory is set and this is rank 0."""
        return self.run_dir is not None and self.world.is_main

    def train(self, total_steps: int | None = None) -> dict[str, Any]:
        """Train until total_steps env steps (default: config.total_steps); returns the summary."""
        total = total_steps if total_steps is not None else self.config.total_steps
        self._warn_if_horizon_moved(total)
        config, world = self.config, self.world
        steps_per_update = config.rollout_size * world.size
        writer = self._open_run_dir()
        if self.verbose:
            print(f"proximo: device {self.device_choice}; learner {self.learner_choice}", file=sys.stderr, flush=True)
        progress = Progress(total, self.global_step, enabled=self.verbose)
        start_time, start_step = time.perf_counter(), self.global_step
        self._train_started = start_time
        next_save = (self.global_step // config.save_every + 1) * config.save_every if config.save_every else None
        last_good: tuple | None = None
        restore_signals = self._catch_stop_signals()
        try:
            while self.global_step < total:
                if self.run_dir is not None and world.size == 1:
                    # What a NaN or env crash in this update falls back to. Not with several processes: the
                    # failing rank cannot reach the others mid-update, so their last checkpoint stands.
                    last_good = self._capture_state()
                fraction = self.global_step / total
                learning_rate = self.lr_schedule(fraction)
                self.optimizer.set_lr(learning_rate)
                settings = UpdateSettings(
                    n_epochs=config.n_epochs, batch_size=config.batch_size,
                    objective=config.objective, clip_range=self.clip_schedule(fraction),
                    clip_range_vf=config.clip_range_vf, kl_coef=self.kl_controller.value,
                    ent_coef=self.ent_schedule(fraction), vf_coef=config.vf_coef,
                    max_grad_norm=config.max_grad_norm, target_kl=config.target_kl,
                    normalize_advantage=config.normalize_advantage)
                comm_start = world.comm_s
                buffer = self.collector.collect()
                comm_rollout = world.comm_s - comm_start
                buffer.compute_advantages(config.gamma, config.gae_lambda)
                stats = ppo_update(self.learner, buffer, settings)
                comm_update = world.comm_s - comm_start - comm_rollout
                self._check_finite_parameters()
                self.kl_controller.update(stats["kl_last_epoch"])
                self.global_step += steps_per_update
                self.update_index += 1
                stop_signal, episodes = self._sync_after_update()
                elapsed = time.perf_counter() - start_time
                sps = (self.global_step - start_step) / max(elapsed, 1e-9)
                row = dict(stats, global_step=self.global_step, update=self.update_index,
                           time_s=self.wall_time_s + elapsed, sps=sps, **episodes,
                           learning_rate=learning_rate, clip_range=settings.clip_range,
                           ent_coef=settings.ent_coef, kl_coef=settings.kl_coef)
                if world.size > 1:
                    row.update(world_size=world.size, comm_rollout_s=comm_rollout, comm_update_s=comm_update)
                self.last_stats = row
                if writer is not None and self.update_index % config.log_every == 0:
                    writer.write(row)
                if self.monitor is not None:
                    self.monitor.context.total_updates = total // steps_per_update
                    self.monitor.observe_and_report(row, self.run_dir, echo=self.verbose)
                progress.update(self.global_step, sps, episodes["episode_return_mean"])
                if self.on_update is not None:
                    self.on_update(row)
                saved = False
                if next_save is not None and self.global_step >= next_save and self.run_dir is not None:
                    self.save_checkpoint()
                    saved = True
                    next_save += config.save_every
                if stop_signal is not None:
                    folder = None if self.run_dir is None else (
                        self._checkpoint_path() if saved else self.save_checkpoint())
                    raise TrainingInterrupted(stop_signal, self.global_step, folder, self.run_dir, world.size)
        except (NonFiniteError, EnvFaultError) as exc:
            if last_good is not None:
                folder = self._write_state(*last_good)
                exc.args = (f"{exc}. Stopped; the last good checkpoint (step {last_good[2]:,}, from before the "
                            f"failing update) is in {folder}",)
            elif world.size > 1:
                exc.args = (f"rank {world.rank}: {exc}",)
            raise
        except DistributedError as exc:
            checkpoints = list_checkpoints(self.run_dir) if self.writes else []
            if checkpoints:
                exc.args = (f"{exc}; the last checkpoint, {checkpoints[-1]}, stays loadable "
                            f"(`proximo train --resume {self.run_dir} --nproc {world.size}`)",)
            raise
        finally:
            restore_signals()
            self.wall_time_s += time.perf_counter() - start_time
            self._train_started = None
            progress.close()
            if writer is not None:
                writer.close()
        return self._finish(start_step)

    def resolved(self) -> dict[str, str]:
        """What `auto` settings became in this run, and why: the device, the gradient backend and where the
        action masks come from."""
        source = self.mask_source
        masks = f"from the env's {source.source} ({source.width} actions)" if source is not None else "none"
        return {"device": self.device_choice, "learner": self.learner_choice, "action_masks": masks}

    def _sync_after_update(self) -> tuple[int | None, dict[str, float]]:
        """One small all-reduce per update: whether any rank was asked to stop, the episode statistics,
        and every rank's checksum of the policy state.

        The stop decision must be the same on every rank (all save one checkpoint after the same
        update). The episode means are over every rank's last 100 finished episodes. The checksums
        must agree: every rank applies the same all-reduced gradient, so their parameters stay
        bitwise equal; a difference means a step ran without the all-reduce, and the run stops.
        """
        world, episodes, stop = self.world, self.collector.episodes, self._stop_signal
        returns = np.fromiter(episodes.returns, dtype=np.float64, count=len(episodes.returns))
        lengths = np.fromiter(episodes.lengths, dtype=np.float64, count=len(episodes.lengths))
        packed = np.zeros(6 + world.size, dtype=np.float64)
        packed[:6] = (stop == signal.SIGTERM, stop is not None and stop != signal.SIGTERM, returns.sum(),
                      lengths.sum(), len(returns), episodes.finished)
        if world.size > 1:
            # One slot per rank (zeros elsewhere), so the sum hands every rank each checksum exactly.
            packed[6 + world.rank] = self._policy_checksum()
        world.all_reduce_sum_(torch.from_numpy(packed))
        sigterm, other, return_sum, length_sum, count, finished = packed[:6].tolist()
        checksums = packed[6:]
        if world.size > 1 and not (checksums == checksums[0]).all():
            raise DistributedError(f"the ranks' policies differ after update {self.update_index} (checksums "
                                   f"{checksums.tolist()}): a step ran without the gradient all-reduce on every "
                                   "rank; this is a bug in the learner, please report it")
        stop_signal = stop if stop is not None else (signal.SIGTERM if sigterm else signal.SIGINT if other else None)
        if stop_signal is not None and world.size > 1 and world.is_main and stop is None:
            print("\nproximo: another rank was asked to stop; finishing this update, then saving a checkpoint",
                  file=sys.stderr, flush=True)
        return stop_signal, {
            "episode_return_mean": return_sum / count if count else float("nan"),
            "episode_length_mean": length_sum / count if count else float("nan"),
            "episodes": int(finished)}

    def _policy_checksum(self) -> float:
        """The float64 sum of every parameter and buffer of the policy (equal on ranks in step)."""
        return float(sum(value.detach().double().sum().item() for value in self.policy.state_dict().values()
                         if value.is_floating_point()))

    def _warn_if_horizon_moved(self, total: int) -> None:
        annealed = any(schedule.kind != "constant"
                       for schedule in (self.lr_schedule, self.clip_schedule, self.ent_schedule))
        before, self._horizon_before_resume = self._horizon_before_resume, None
        if annealed and before is not None and before != total:
            self._warn(f"proximo: warning: the schedules annealed over {before:,} steps before this resume and "
                       f"now anneal over {total:,}, so the annealed values jump at step {self.global_step:,}; "
                       f"resume with --total-steps {before} to keep them", ResumeWarning)
        self._horizon = total

    def _check_finite_parameters(self) -> None:
        """Raise NonFiniteError if the update just made left NaN/inf in a parameter (a non-finite gradient)."""
        flat = self.optimizer.flat
        if flat is not None and bool(torch.isfinite(flat).all()):
            return  # one check (and one host read) for every parameter at once
        bad = [name for name, param in self.policy.named_parameters() if not bool(torch.isfinite(param).all())]
        if bad:
            raise NonFiniteError(f"update {self.update_index + 1} left non-finite values in the parameters "
                                 f"{bad[:3]} (a non-finite gradient); lower learning_rate or set max_grad_norm")

    def _finish(self, start_step: int) -> dict[str, Any]:
        config, world = self.config, self.world
        if self.run_dir is not None:
            self.save_checkpoint()  # first, so a crash in evaluation still leaves the final state
        summary: dict[str, Any] = {
            "env_id": env_name(self.env), "global_step": self.global_step, "updates": self.update_index,
            "wall_time_s": self.wall_time_s, "sps": self.global_step / max(self.wall_time_s, 1e-9),
            "world_size": world.size, "backend": world.backend}
        if not world.is_main:
            return summary  # rank 0 evaluates and reports; nothing collective follows, so no one waits
        eval_returns, eval_lengths = evaluate_policy(
            self.policy, self.env, config.eval_episodes, seed=config.seed + 10_000,
            env_kwargs={**self.env_kwargs, "pixels": pixel_options(config, training=False)},  # whole games, true score
            action_masking=config.action_masking)
        episodes = self.collector.episodes
        summary.update({
            "eval_return_mean": float(np.mean(eval_returns)), "eval_return_std": float(np.std(eval_returns)),
            "eval_episodes": len(eval_returns), "eval_length_mean": float(np.mean(eval_lengths)),
            # over every rank's last 100 episodes (the std: rank 0's alone)
            "train_return_last100_mean": self.last_stats.get("episode_return_mean", episodes.mean_return()),
            "train_return_last100_std": float(np.std(episodes.returns)) if episodes.returns else float("nan"),
            "episodes": self.last_stats.get("episodes", episodes.finished), "proximo_version": __version__,
            "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
            **self.resolved(),
        })
        if self.run_dir is not None:
            save_policy(self.run_dir / "policy", self.policy, config, self.env, self.env_kwargs)
            atomic_write_json(self.run_dir / "summary.json",
                              {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                               for k, v in summary.items()})
        return summary

    def _open_run_dir(self) -> MetricsWriter | None:
        if not self.writes:
            return None
        ensure_run_dir(self.run_dir)
        atomic_write_json(self.run_dir / "config.json",
                          {"env_id": env_name(self.env), "env_kwargs": self.env_kwargs, **self.config.to_dict(),
                           "resolved": self.resolved(), "world": {"size": self.world.size,
                                                                   "backend": self.world.backend}})
        # A resume logs the updates after its checkpoint again: drop the first run's rows for them.
        return MetricsWriter(self.run_dir, tensorboard=self.tensorboard, from_step=self.global_step,
                             tracker=open_tracker(self.config, self.run_dir))

    # checkpoints --------------------------------------------------------------------------------
    def training_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything needed to continue this run: (tensors, JSON metadata); with several processes every
        rank must call it (it gathers each rank's own part: envs, next observation, episodes, RNGs)."""
        optimizer_tensors, optimizer_meta = optimizer_to_tensors(self.optimizer)
        tensors = {**prefixed("policy", self.policy.state_dict()), **optimizer_tensors}
        if self.reward_scaler is not None:
            tensors.update(prefixed("reward_scaler.return_rms", self.reward_scaler.return_rms.state_dict()))
        meta = {
            "format_version": 2, "proximo_version": __version__, "env_id": env_name(self.env),
            "env_kwargs": self.env_kwargs, "config": self.config.to_dict(),
            **self._spaces_json(),
            # A checkpoint written inside train() counts the time of this call so far.
            "global_step": self.global_step, "update_index": self.update_index,
            "wall_time_s": self.wall_time_s + (time.perf_counter() - self._train_started
                                               if self._train_started is not None else 0.0),
            "kl_coef": self.kl_controller.value, "optimizer": optimizer_meta,
            # Schedules are functions of global_step / horizon; kept so a resume can tell if the horizon moved.
            "schedules": {"horizon": self._horizon, "lr": self.lr_schedule.kind, "clip": self.clip_schedule.kind,
                          "ent": self.ent_schedule.kind},
            "world": {"size": self.world.size, "backend": self.world.backend},
            "ranks": [],
        }
        for rank, (part_tensors, part_meta) in enumerate(self._gather_rank_parts(*self._rank_part())):
            tensors.update(prefixed(f"rank.{rank}", part_tensors))
            meta["ranks"].append(part_meta)
        return tensors, meta

    def _rank_part(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """This rank's own state: (tensors, JSON) with the RANK_FIELDS."""
        collector, episodes = self.collector, self.collector.episodes
        tensors = {"rng.torch": torch.get_rng_state(), "next_obs": collector.next_obs}
        if self.reward_scaler is not None:
            tensors["running_return"] = self.reward_scaler.running_return
        if collector.next_masks is not None:
            tensors["next_masks"] = torch.from_numpy(collector.next_masks)
        if collector.rnn_state is not None:
            tensors["rnn_state"] = collector.rnn_state
            tensors["episode_starts"] = torch.from_numpy(collector.episode_starts)
        meta = {
            "episodes": {"returns": list(episodes.returns), "lengths": list(episodes.lengths),
                         "finished": episodes.finished,
                         "current_return": episodes.current_return.tolist(),
                         "current_length": episodes.current_length.tolist()},
            "env_faults": collector.env_faults,
            # Sub-env states (RNG, time limit, simulator); None when proximo cannot save this env family.
            "envs": snapshot_vector_env(self.envs),
            "rng": {"python": _python_rng_state(), "numpy": _numpy_rng_state()},
        }
        return tensors, meta

    def _gather_rank_parts(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
                           ) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """Every rank's _rank_part(), in rank order; tensors travel as exact JSON (snapshot.encode_value)."""
        if self.world.size == 1:
            return [(tensors, meta)]
        sent = {"tensors": {k: encode_value(v.detach().cpu().numpy()) for k, v in tensors.items()}, "meta": meta}
        return [({k: torch.from_numpy(np.asarray(decode_value(v))) for k, v in part["tensors"].items()},
                 part["meta"]) for part in self.world.all_gather_object(sent)]

    def _spaces_json(self) -> dict[str, Any]:
        """The spaces as JSON, computed once (an Atari Box lists 28,224 bounds twice)."""
        if getattr(self, "_spaces_json_cache", None) is None:
            self._spaces_json_cache = {key: space_to_json(getattr(self.policy, key))
                                       for key in ("observation_space", "action_space")}
        return self._spaces_json_cache

    def _capture_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
        """A private copy of training_state() (tensors cloned), to write later if this update fails."""
        tensors, meta = self.training_state()
        return {key: value.detach().clone() for key, value in tensors.items()}, meta, self.global_step

    def _checkpoint_path(self, step: int | None = None) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "checkpoints" / f"step_{self.global_step if step is None else step:012d}"

    def _write_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], step: int) -> Path:
        folder = self._checkpoint_path(step)
        atomic_write_dir(folder, {STATE_TENSORS: tensors, STATE_META: meta})
        for old in list_checkpoints(self.run_dir)[:-self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step_<global_step>/ atomically and keep the newest keep_checkpoints.

        With several processes every rank calls it; rank 0 writes the one checkpoint, with every rank's part.
        """
        assert self.run_dir is not None
        tensors, meta = self.training_state()
        if not self.world.is_main:
            return self._checkpoint_path()
        return self._write_state(tensors, meta, self.global_step)

    def _catch_stop_signals(self):
        """Route SIGINT/SIGTERM to a stop-after-this-update flag; returns the function that undoes it."""
        self._stop_signal = None
        if self.run_dir is None or threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, self._on_stop_signal)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return restore

    def _on_stop_signal(self, signum: int, frame) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # a second signal: give up on this update, save nothing
        self._stop_signal = signum
        if self.world.is_main:  # torchrun forwards a signal to every rank: one line, not one per rank
            print(f"\nproximo: {signal.Signals(signum).name} received; finishing this update, then saving a "
                  "checkpoint (send it again to stop at once without saving)", file=sys.stderr, flush=True)

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop after the current update with a checkpoint, as SIGINT/SIGTERM do."""
        self._stop_signal = signum

    def load_training_state(self, folder: Path) -> None:
        """Restore a checkpoint written by save_checkpoint into this trainer.

        With several processes every rank calls it: rank 0 reads the files and sends them to the
        others, so only rank 0 needs to see the run directory.
        """
        folder = Path(folder)
        loaded: dict[str, torch.Tensor] = {}

        def read() -> dict[str, Any]:
            meta = load_json(folder / STATE_META)
            loaded.update(load_tensors(folder / STATE_TENSORS))
            return meta
        meta = self.world.on_main(read)
        tensors = self.world.broadcast_tensors(loaded if self.world.is_main else None)
        try:
            self._check_fits(folder, meta)
            self._restore(folder, meta, tensors)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
            raise CheckpointError(f"checkpoint {folder} is incomplete or damaged ({type(exc).__name__}: {exc}); "
                                  "resume from an earlier checkpoint") from exc

    def _check_fits(self, folder: Path, meta: dict[str, Any]) -> None:
        mine_env, saved_env = env_name(self.env), meta.get("env_id")
        if mine_env is not None and saved_env is not None and mine_env != saved_env:
            raise CheckpointError(f"checkpoint {folder} was made on {saved_env}, not {mine_env}; resume it with "
                                  f"the env it was trained on")
        for key in ("observation_space", "action_space"):
            mine = space_to_json(getattr(self.policy, key))
            if meta[key] != mine:
                raise CheckpointError(
                    f"checkpoint {folder} was made for {key.replace('_', ' ')} {_describe_space(meta[key])}, but "
                    f"this env has {_describe_space(mine)}; resume it with the env it was trained on")
        saved_envs = int(meta["config"]["num_envs"])
        if saved_envs != self.config.num_envs:
            raise CheckpointError(f"checkpoint {folder} was made with num_envs={saved_envs}, this run has "
                                  f"{self.config.num_envs}; resume with the same num_envs")

    def _restore(self, folder: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        _load_state_strict(self.policy, unprefixed("policy", tensors), folder / STATE_TENSORS)
        optimizer_from_tensors(self.optimizer, tensors, meta["optimizer"])
        if self.reward_scaler is not None:
            _load_state_strict(self.reward_scaler.return_rms, unprefixed("reward_scaler.return_rms", tensors),
                               folder / STATE_TENSORS)
        self.global_step = int(meta["global_step"])
        self.update_index = int(meta["update_index"])
        self.wall_time_s = float(meta["wall_time_s"])
        self.kl_controller.value = float(meta["kl_coef"])
        self._horizon_before_resume = meta.get("schedules", {}).get("horizon")
        parts = _rank_parts(meta, tensors)
        rank, size = self.world.rank, self.world.size
        if len(parts) == size:
            self._restore_rank_part(folder, *parts[rank])
            return
        # Another process count: the envs of a rank are not any saved rank's, so start them afresh.
        seed = int(np.random.SeedSequence([self.config.seed, self.global_step, rank]).generate_state(1)[0])
        seed_everything(seed)
        self.collector.reset(seed)
        if rank < len(parts):
            self._restore_episode_history(parts[rank][1])
        self._warn(f"proximo: warning: checkpoint {folder} was written by {len(parts)} process"
                   f"{'es' if len(parts) > 1 else ''} and this run has {size}, so the envs were re-seeded and their "
                   "episodes restart from reset; the weights, optimizer state and normalization statistics carry "
                   "over", ResumeWarning)

    def _restore_episode_history(self, part: dict[str, Any]) -> None:
        episodes, saved = self.collector.episodes, part["episodes"]
        episodes.returns.clear()
        episodes.lengths.clear()
        episodes.returns.extend(saved["returns"])
        episodes.lengths.extend(saved["lengths"])
        episodes.finished = int(saved["finished"])

    def _restore_rank_part(self, folder: Path, tensors: dict[str, torch.Tensor], part: dict[str, Any]) -> None:
        """Put back this rank's envs, next observation, episodes and RNG states exactly as saved."""
        torch.set_rng_state(tensors["rng.torch"])
        random.setstate(_to_python_rng(part["rng"]["python"]))
        np.random.set_state(_to_numpy_rng(part["rng"]["numpy"]))
        self._restore_episode_history(part)
        collector, episodes, saved = self.collector, self.collector.episodes, part["episodes"]
        collector.env_faults = int(part.get("env_faults", 0))
        if part.get("envs") is None:
            # The envs restart from reset, so the running sums of their old episodes no longer apply.
            if self.reward_scaler is not None:
                self.reward_scaler.running_return.zero_()
            obstacle = vector_env_obstacle(self.envs) or "unknown"
            self._warn(f"proximo: warning: cannot save the state of this env ({obstacle}), so on resume the "
                       "in-progress episodes restart from reset; the resumed run is not bitwise identical to an "
                       "uninterrupted one", ResumeWarning)
            return
        restore_vector_env(self.envs, part["envs"])
        next_obs = tensors["next_obs"]
        if next_obs.shape != collector.next_obs.shape or next_obs.dtype != collector.next_obs.dtype:
            raise CheckpointError(f"{folder / STATE_TENSORS}: the saved next observation is {tuple(next_obs.shape)} "
                                  f"{next_obs.dtype}, this run needs {tuple(collector.next_obs.shape)} "
                                  f"{collector.next_obs.dtype}")
        collector.next_obs = next_obs.clone()
        collector.pending_obs_moments = None  # recomputed from next_obs, as the uninterrupted run had them
        for name in ("next_masks", "episode_starts", "rnn_state"):
            mine = getattr(collector, name)
            if mine is None:
                continue
            if name not in tensors or tuple(tensors[name].shape) != tuple(mine.shape):
                raise CheckpointError(f"{folder / STATE_TENSORS}: the saved {name} is missing or has another "
                                      f"shape; this run needs {tuple(mine.shape)} (resume with the run's settings)")
            value = tensors[name]
            setattr(collector, name, value.to(mine.device).clone() if isinstance(mine, torch.Tensor)
                    else value.numpy().astype(mine.dtype).copy())
        episodes.current_return[:] = np.asarray(saved["current_return"], dtype=np.float64)
        episodes.current_length[:] = np.asarray(saved["current_length"], dtype=np.int64)
        if self.reward_scaler is not None:
            self.reward_scaler.running_return.copy_(tensors["running_return"])

    def _warn(self, message: str, category: type[Warning]) -> None:
        """warnings.warn on rank 0 alone: every rank meets the same condition, the user needs one line."""
        if self.world.is_main:
            warnings.warn(message, category, stacklevel=3)


def find_action_masks(env: EnvLike, env_kwargs: dict, mode: str, action_space) -> ActionMaskSource | None:
    """Where this env's action masks come from (probing one env), or None; errors when mode=on finds none."""
    if mode == "off":
        return None
    if mask_width(action_space) is None:
        if mode == "on":
            raise ConfigError(f"action_masking=on, but the action space is {action_space}; masking applies to "
                              "Discrete and MultiDiscrete actions: set action_masking=auto or off")
        return None
    from proximo.envs.make import make_single_env

    probe = make_single_env(env, **env_kwargs)
    try:
        return ActionMaskSource.detect(probe, mode, env_name(env) or "the env")
    finally:
        probe.close()


def _rank_parts(meta: dict[str, Any], tensors: dict[str, torch.Tensor]
                ) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """Each saved rank's (tensors, JSON part) of a checkpoint; a format-1 checkpoint holds one rank, at top level."""
    if "ranks" in meta:
        return [(unprefixed(f"rank.{rank}", tensors), part) for rank, part in enumerate(meta["ranks"])]
    part_tensors = {"rng.torch": tensors["rng.torch"], "next_obs": tensors["collector.next_obs"]}
    if "reward_scaler.running_return" in tensors:
        part_tensors["running_return"] = tensors["reward_scaler.running_return"]
    return [(part_tensors, {key: meta.get(key) for key in RANK_FIELDS})]


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    for leftover in folder.glob(".step_*.old"):
        recover_dir(leftover.with_name(leftover.name[1:-len(".old")]))
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and p.name.startswith("step_") and (p / STATE_META).is_file())


def resume_target(path: Path) -> tuple[Path, Path, Path | None]:
    """(run_dir, checkpoint, the one before it or None) for a run directory or one checkpoint folder."""
    path = Path(path)
    if (path / STATE_META).is_file():
        run_dir = path.parent.parent
        checkpoints = list_checkpoints(run_dir)
        before = [c for c in checkpoints if c.name < path.name]
        return run_dir, path, before[-1] if before else None
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a proximo run directory (no config.json) nor a checkpoint folder "
                              "(no state.json)")
    checkpoints = list_checkpoints(path)
    if not checkpoints:
        raise CheckpointError(f"{path} has no checkpoint to resume from (checkpoints/step_*/state.json)")
    return path, checkpoints[-1], checkpoints[-2] if len(checkpoints) > 1 else None


def read_run_config(run_dir: Path) -> tuple[str | None, dict, PPOConfig]:
    """(env_id, env_kwargs, config) from a run directory's config.json."""
    data = load_json(Path(run_dir) / "config.json")
    env_id = data.pop("env_id", None)
    env_kwargs = data.pop("env_kwargs", {})
    if not isinstance(env_id, (str, type(None))) or not isinstance(env_kwargs, dict):
        raise CheckpointError(f"{Path(run_dir) / 'config.json'} is damaged (env_id {env_id!r:.40}, env_kwargs "
                              f"{env_kwargs!r:.40}); restore it from a copy")
    data.pop("resolved", None)  # what the run's auto settings became: a record, not a setting
    data.pop("world", None)  # how many processes wrote it: a fact of that run, not a setting
    return env_id, env_kwargs, PPOConfig.from_dict(data)


def _describe_space(data: dict[str, Any]) -> str:
    """Short text of a space saved by space_to_json (Box bounds left out: they can be huge)."""
    kind = data.get("type")
    if kind == "Box":
        return f"Box(shape {tuple(data['shape'])}, {data['dtype']})"
    if kind == "Dict":
        return "Dict(" + ", ".join(f"{k}: {_describe_space(v)}" for k, v in data["spaces"].items()) + ")"
    return f"{kind}({', '.join(f'{k}={v}' for k, v in data.items() if k != 'type')})"


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _to_python_rng(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])


def _numpy_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached": float(cached)}


def _to_numpy_rng(state: dict[str, Any]) -> tuple:
    return (state["name"], np.array(state["keys"], dtype=np.uint32), state["pos"], state["has_gauss"],
            state["cached"])


def dump_json(data: Any) -> str:
    """Compact JSON for printing."""
    return json.dumps(data, indent=2, default=str)
