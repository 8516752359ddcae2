"""One PPO run: the Trainer builds envs, policy, optimizer and learner, runs proximo's one loop
(proximo/callbacks.py run_loop: collect -> learn -> callbacks for logging, health, checkpoints,
evaluation) and saves and restores its state through one protocol (proximo/state.py)."""
from __future__ import annotations

import json
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from proximo.callbacks import (
    Callback, CallbackList, CheckpointEvery, EvalCallback, FunctionCallback, LogMetrics, ShowProgress, StopAtReturn,
    WatchHealth, as_callbacks, run_loop,
)
from proximo.checkpoint import (
    CheckpointError, OptimizerState, load_json, load_tensors, prefixed, unprefixed, write_files,
)
from proximo.config import PPOConfig
from proximo.core.kl import AdaptiveKLController, FixedKLController
from proximo.core.schedules import Schedule
from proximo.diagnostics import HealthMonitor
from proximo.envs.atari import pixel_options
from proximo.envs.check import require_env_ok
from proximo.envs.guard import EnvFaultError, GuardedMaker
from proximo.envs.make import EnvLike, make_single_env, make_vector_env
from proximo.envs.masks import ActionMaskSource, mask_width
from proximo.envs.snapshot import decode_value, encode_value, vector_env_obstacle
from proximo.evaluate import evaluate_policy
from proximo.distributed import (
    DistributedError, World, broadcast_module_, broadcast_optimizer_, check_divides, rank_seed,
)
from proximo.metrics import MetricsWriter, Progress
from proximo.devices import resolve_device
from proximo.errors import ConfigError
from proximo.learners.choose import choose_learner
from proximo.learners.optimizer import FlatOptimizer
from proximo.nn.policy import ActorCritic
from proximo.ppo import UpdateSettings, ppo_update
from proximo.rollout import NonFiniteError, RewardScaler, RolloutCollector
from proximo.rundir import RunDir
from proximo.saved import (
    STATE_META, STATE_TENSORS, _describe_space, _load_state_strict, build_policy, env_name, find_checkpoint,
    list_checkpoints, load_policy, policy_shape, read_run_config, resume_target, save_policy,
)
from proximo.runtime import keep_freed_memory, seed_everything, set_threads
from proximo.spaces_json import space_to_json
from proximo.state import RandomState, Together, pack_state, unpack_state
from proximo.stopping import StopSignals, TrainingInterrupted
from proximo.tracking import open_tracker
from proximo.version import __version__

# The state.json fields and state.safetensors tensors each rank keeps for itself (under "ranks" and
# "rank.<r>."); everything else in a checkpoint is the same on every rank and saved once.
RANK_FIELDS = ("envs", "episodes", "env_faults", "rng")
# What proximo.train has always offered; the file functions now live in proximo/saved.py.
__all__ = ["Trainer", "TrainingInterrupted", "ResumeWarning", "build_policy", "make_adam", "save_policy", "load_policy",
           "find_checkpoint", "list_checkpoints", "read_run_config", "resume_target", "find_action_masks"]


class ResumeWarning(UserWarning):
    """A resume could not restore everything exactly (the env state, typically)."""


def pick_threads(config: PPOConfig) -> int:
    """Torch threads: the configured count, else 1 (small MLP batches lose time to thread hand-offs)."""
    return config.torch_threads if config.torch_threads > 0 else 1


def make_adam(policy: ActorCritic, config: PPOConfig) -> FlatOptimizer:
    """Adam over the policy's parameters, kept in one flat buffer with the fused kernel (learners/optimizer.py)."""
    return FlatOptimizer(policy, lr=config.learning_rate, eps=config.adam_eps)


def place_policy(policy: ActorCritic, config: PPOConfig) -> str:
    """Move the policy to the config's device (resolving auto); returns why that device."""
    device, why = resolve_device(config.device, policy.image, max(config.net_arch))
    policy.to(device)
    return f"{device} ({why})"


class Trainer:
    """Owns the envs, policy, optimizer and run directory of one PPO run.

    With a World of K processes (proximo/distributed.py) this is one rank of a run: it
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
        self._check_env()
        seed_everything(rank_seed(config.seed, world.rank))
        set_threads(pick_threads(config))
        keep_freed_memory()
        self.envs = self._make_envs()
        self.mask_source = self._find_masks()
        self.policy = self._build_policy()
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
                                          config.sequence_length, config.sde_sample_freq)
        self._init_run_state(config, run_dir, tensorboard)

    def _init_run_state(self, config: PPOConfig, run_dir: str | Path | None, tensorboard: bool) -> None:
        """What one agent's run keeps beside its networks and envs: schedules, KL controller, counters, run
        directory, health monitor and stop flags (a population's members keep theirs the same way)."""
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
        self.monitor = HealthMonitor.from_config(config) if config.diagnostics and self.world.is_main else None
        self._stops = StopSignals()  # the signal this process received, if any
        self.pending_stop: int | None = None  # the signal any rank received: stop after this update
        self.stopped_by: str | None = None  # what stopped the last train() call early (a callback), if anything
        self.last_checkpoint_step: int | None = None
        self._horizon: int | None = None  # the step count the schedules anneal over (train()'s total)
        self._horizon_before_resume: int | None = None
        # Called with each update's metrics row (after it is logged): how a sweep or a tuner watches a run.
        self.on_update: Callable[[dict[str, Any]], None] | None = None

    # what the env decides (proximo/multiagent/trainer.py overrides these for PettingZoo envs) ---------------
    def _check_env(self) -> None:
        """A few random steps: stop on a broken env before training."""
        require_env_ok(self.env, self.env_kwargs)

    def _make_envs(self):
        """The vector env of num_envs copies; EnvGuard restarts a sub-env whose step() raises (the collector
        bounds how often)."""
        config = self.config
        return make_vector_env(GuardedMaker(self.env, {**self.env_kwargs, "pixels": pixel_options(config)}),
                               config.num_envs, config.env_backend)

    def _find_masks(self) -> ActionMaskSource | None:
        """Where the env's action masks come from, or None."""
        return find_action_masks(self.env, self.env_kwargs, self.config.action_masking, self.envs.single_action_space)

    def _build_policy(self) -> ActorCritic:
        """The actor-critic for the vector env's spaces."""
        return build_policy(self.envs.single_observation_space, self.envs.single_action_space, self.config)

    def evaluate_episodes(self, episodes: int, seed: int) -> tuple[list[float], list[int]]:
        """(returns, lengths) of the deterministic policy over episodes fresh episodes (whole games, true score)."""
        return self.evaluate_on(self.env, self.env_kwargs, episodes, seed)

    def evaluate_on(self, env: EnvLike, env_kwargs: dict, episodes: int, seed: int) -> tuple[list[float], list[int]]:
        """(returns, lengths) of the deterministic policy on env (an id or a factory) with env_kwargs, under the
        run's evaluation pixel settings and action masking (EvalCallback's separate env goes through here)."""
        config = self.config
        return evaluate_policy(
            self.policy, env, episodes, seed=seed,
            env_kwargs={**env_kwargs, "pixels": pixel_options(config, training=False)},
            action_masking=config.action_masking)

    def save_policy_to(self, folder: Path) -> None:
        """Write the policy (weights, normalization statistics and policy.json) into folder, atomically."""
        save_policy(folder, self.policy, self.config, self.env, self.env_kwargs)

    # the loop -------------------------------------------------------------------------------
    @property
    def writes(self) -> bool:
        """True where this process writes the run directory: a run directory is set and this is rank 0."""
        return self.run_dir is not None and self.world.is_main

    def train(self, total_steps: int | None = None, callback: Any = None) -> dict[str, Any]:
        """Train until total_steps env steps (default: config.total_steps); returns the summary.

        callback: a function of each update's metrics row, a proximo.callbacks.Callback or a list of
        them; one returning False stops training after that update (see proximo/callbacks.py).
        """
        total = total_steps if total_steps is not None else self.config.total_steps
        self._warn_if_horizon_moved(total)
        writer = self._open_run_dir()
        if self.verbose:
            print(f"proximo: device {self.device_choice}; learner {self.learner_choice}", file=sys.stderr, flush=True)
        self._total = total
        self._start_step = self.global_step
        self._train_started = time.perf_counter()
        first, then = self._builtin_callbacks(writer, total)
        callbacks = CallbackList(first + as_callbacks(callback) + then + [_StopOnSignal()])
        callbacks.init_callback(self)
        self._callbacks = callbacks
        self._load_callback_states()
        restore_signals = self._catch_stop_signals()
        try:
            self.stopped_by = run_loop(self._collect, self._learn, lambda: self.global_step >= total, callbacks)
        except (NonFiniteError, EnvFaultError) as exc:
            last_good = self._fallback.last_good
            if last_good is not None:
                folder = self._write_state(*last_good)
                exc.args = (f"{exc}. Stopped; the last good checkpoint (step {last_good[2]:,}, from before the "
                            f"failing update) is in {folder}",)
            elif self.world.size > 1:
                exc.args = (f"rank {self.world.rank}: {exc}",)
            raise
        except DistributedError as exc:
            checkpoints = list_checkpoints(self.run_dir) if self.writes else []
            if checkpoints:
                exc.args = (f"{exc}; the last checkpoint, {checkpoints[-1]}, stays loadable "
                            f"(`proximo train --resume {self.run_dir} --nproc {self.world.size}`)",)
            raise
        finally:
            restore_signals()
            self.wall_time_s += time.perf_counter() - self._train_started
            self._train_started = None
        if self.stopped_by is not None and self.verbose:
            print(f"proximo: stopped early: {self.stopped_by}", file=sys.stderr, flush=True)
        return self._finish(self._start_step)

    def _builtin_callbacks(self, writer: MetricsWriter | None, total: int) -> tuple[list[Callback], list[Callback]]:
        """proximo's own hooks as (before, after) the user's: the crash fallback and evaluation before (so
        what a user's callback adds to the row is logged too); logging, health, progress, the sweep's
        watcher and periodic checkpoints after (the stop-signal check comes last of all)."""
        config = self.config
        self._fallback = _CrashFallback()
        first: list[Callback] = [self._fallback]
        if config.eval_every:
            first.append(EvalCallback(eval_every=config.eval_every, stop_at_return=config.stop_at_return,
                                      patience=config.stop_patience))
        elif config.stop_at_return is not None:
            first.append(StopAtReturn(config.stop_at_return))
        hooks: list[Callback] = []
        if writer is not None:
            hooks.append(LogMetrics(writer, config.log_every))
        if self.monitor is not None:
            self.monitor.context.total_updates = total // (config.rollout_size * self.world.size)
            hooks.append(WatchHealth(self.monitor))
        hooks.append(ShowProgress(Progress(total, self.global_step, enabled=self.verbose)))
        if self.on_update is not None:
            hooks.append(FunctionCallback(self.on_update))
        if config.save_every and self.run_dir is not None:
            hooks.append(CheckpointEvery(config.save_every))
        return first, hooks

    def _collect(self):
        """One rollout of every env with the current policy, its advantages computed."""
        fraction = self.global_step / self._total
        self._learning_rate = self.lr_schedule(fraction)
        self.optimizer.set_lr(self._learning_rate)
        comm_start = self.world.comm_s
        buffer = self.collector.collect()
        self._comm_rollout = self.world.comm_s - comm_start
        buffer.compute_advantages(self.config.gamma, self.config.gae_lambda)
        return buffer

    def _learn(self, buffer) -> dict[str, Any]:
        """K epochs of minibatch updates on the rollout; returns the update's metrics row."""
        config, world = self.config, self.world
        fraction = self.global_step / self._total
        settings = UpdateSettings(
            n_epochs=config.n_epochs, batch_size=config.batch_size,
            objective=config.objective, clip_range=self.clip_schedule(fraction),
            clip_range_vf=config.clip_range_vf, kl_coef=self.kl_controller.value,
            ent_coef=self.ent_schedule(fraction), vf_coef=config.vf_coef,
            max_grad_norm=config.max_grad_norm, target_kl=config.target_kl,
            normalize_advantage=config.normalize_advantage)
        comm_start = world.comm_s
        stats = ppo_update(self.learner, buffer, settings)
        comm_update = world.comm_s - comm_start
        self._check_finite_parameters()
        self.kl_controller.update(stats["kl_last_epoch"])
        self.global_step += config.rollout_size * world.size
        self.update_index += 1
        self.pending_stop, episodes = self._sync_after_update()
        elapsed = time.perf_counter() - self._train_started
        sps = (self.global_step - self._start_step) / max(elapsed, 1e-9)
        row = dict(stats, global_step=self.global_step, update=self.update_index,
                   time_s=self.wall_time_s + elapsed, sps=sps, **episodes,
                   learning_rate=self._learning_rate, clip_range=settings.clip_range,
                   ent_coef=settings.ent_coef, kl_coef=settings.kl_coef)
        if world.size > 1:
            row.update(world_size=world.size, comm_rollout_s=self._comm_rollout, comm_update_s=comm_update)
        self.last_stats = row
        return row

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
            "world_size": world.size, "backend": world.backend, "stopped_by": self.stopped_by,
            **self.summary_extra()}
        if not world.is_main:
            return summary  # rank 0 evaluates and reports; nothing collective follows, so no one waits
        eval_returns, eval_lengths = self.evaluate_episodes(config.eval_episodes, config.seed + 10_000)
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
            self.save_policy_to(self.run_dir / "policy")
            RunDir(self.run_dir).write_summary(summary)
        return summary

    def summary_extra(self) -> dict[str, Any]:
        """Fields a kind of run adds to summary.json (a population's agents say which population)."""
        return {}

    def _open_run_dir(self) -> MetricsWriter | None:
        if not self.writes:
            return None
        run = RunDir(self.run_dir)
        run.write_config({"env_id": env_name(self.env), "env_kwargs": self.env_kwargs, **self.config.to_dict(),
                          "resolved": self.resolved(), "world": {"size": self.world.size,
                                                                  "backend": self.world.backend}})
        # A resume logs the updates after its checkpoint again: drop the first run's rows for them.
        return run.metrics(tensorboard=self.tensorboard, from_step=self.global_step,
                           tracker=open_tracker(self.config, self.run_dir))

    # checkpoints --------------------------------------------------------------------------------
    def state_parts(self, source: Path | None = None) -> dict[str, Any]:
        """Every component a checkpoint restores, by the prefix its state is saved under (proximo/state.py);
        the same on every rank. Each rank's own part is rank_state_parts(). Adding state is one line here."""
        parts: dict[str, Any] = {
            "policy": _CheckedModule(self.policy, source),
            "optimizer": OptimizerState(self.optimizer),
            "": Together(_RunProgress(self), self.kl_controller),
        }
        if self.reward_scaler is not None:
            parts["reward_scaler.return_rms"] = _CheckedModule(self.reward_scaler.return_rms, source)
        for callback in getattr(self, "_callbacks", CallbackList([])).callbacks:
            if callback.state_dict():
                parts[f"callback.{type(callback).__name__}"] = callback
        return parts

    def rank_state_parts(self) -> dict[str, Any]:
        """This rank's own components: its random generators and its rollouts' envs, observation and episodes."""
        return {"rng": RandomState(), "": self.collector}

    def training_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything needed to continue this run: (tensors, JSON metadata); with several processes every
        rank must call it (it gathers each rank's own part: envs, next observation, episodes, RNGs)."""
        tensors, state = pack_state(self.state_parts())
        meta = {
            "format_version": 2, "proximo_version": __version__, "env_id": env_name(self.env),
            "env_kwargs": self.env_kwargs, "config": self.config.to_dict(),
            **self._spaces_json(), "world": {"size": self.world.size, "backend": self.world.backend},
            **state, "ranks": [],
        }
        for rank, (part_tensors, part_meta) in enumerate(self._gather_rank_parts(*pack_state(self.rank_state_parts()))):
            tensors.update(prefixed(f"rank.{rank}", part_tensors))
            meta["ranks"].append(part_meta)
        return tensors, meta

    def _gather_rank_parts(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
                           ) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """Every rank's own part, in rank order; tensors travel as exact JSON (snapshot.encode_value)."""
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
            self._spaces_json_cache.update(policy_shape(self.policy))  # multi-agent policies: actor_dim, groups
        return self._spaces_json_cache

    def _capture_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
        """A private copy of training_state() (tensors cloned), to write later if this update fails."""
        tensors, meta = self.training_state()
        return {key: value.detach().clone() for key, value in tensors.items()}, meta, self.global_step

    def _checkpoint_path(self, step: int | None = None) -> Path:
        assert self.run_dir is not None
        return RunDir(self.run_dir, create=False).checkpoint_path(self.global_step if step is None else step)

    def _write_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], step: int) -> Path:
        self.last_checkpoint_step = step
        return RunDir(self.run_dir).save_checkpoint(
            step, lambda folder: write_files(folder, {STATE_TENSORS: tensors, STATE_META: meta}),
            self.config.keep_checkpoints, marker=STATE_META)

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step_<global_step>/ atomically and keep the newest keep_checkpoints.

        With several processes every rank calls it; rank 0 writes the one checkpoint, with every rank's part.
        """
        assert self.run_dir is not None
        tensors, meta = self.training_state()
        if not self.world.is_main:
            self.last_checkpoint_step = self.global_step
            return self._checkpoint_path()
        return self._write_state(tensors, meta, self.global_step)

    @property
    def _stop_signal(self) -> int | None:
        """The stop signal this process received (None: none)."""
        return self._stops.received

    def _catch_stop_signals(self):
        """Route SIGINT/SIGTERM to a stop-after-this-update request; returns the function that undoes it."""
        self._stops.received = None
        if self.run_dir is None:
            return lambda: None
        # torchrun forwards a signal to every rank: one line, not one per rank
        return self._stops.install(announce=self.world.is_main)

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop after the current update with a checkpoint, as SIGINT/SIGTERM do."""
        self._stops.request(signum)

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
        parts = self.state_parts(folder / STATE_TENSORS)
        unpack_state({key: part for key, part in parts.items() if not key.startswith("callback.")}, tensors, meta)
        # Callbacks exist once train() builds them: keep their saved state until then.
        self._saved_callback_states = {key: meta[key] for key in meta if key.startswith("callback.")}
        ranks = _rank_parts(meta, tensors)
        rank, size = self.world.rank, self.world.size
        if len(ranks) == size:
            unpack_state(self.rank_state_parts(), *ranks[rank])
            if not self.collector.envs_restored:
                obstacle = vector_env_obstacle(self.envs) or "unknown"
                self._warn(f"proximo: warning: cannot save the state of this env ({obstacle}), so on resume the "
                           "in-progress episodes restart from reset; the resumed run is not bitwise identical to an "
                           "uninterrupted one", ResumeWarning)
            return
        # Another process count: the envs of a rank are not any saved rank's, so start them afresh.
        seed = int(np.random.SeedSequence([self.config.seed, self.global_step, rank]).generate_state(1)[0])
        seed_everything(seed)
        self.collector.reset(seed)
        if rank < len(ranks):
            self.collector.episodes.load_state_dict(ranks[rank][1]["episodes"], in_progress=False)
        self._warn(f"proximo: warning: checkpoint {folder} was written by {len(ranks)} process"
                   f"{'es' if len(ranks) > 1 else ''} and this run has {size}, so the envs were re-seeded and their "
                   "episodes restart from reset; the weights, optimizer state and normalization statistics carry "
                   "over", ResumeWarning)

    def _load_callback_states(self) -> None:
        """Give the callbacks of this train() call the state a resumed checkpoint saved for them."""
        saved = getattr(self, "_saved_callback_states", {})
        for callback in self._callbacks.callbacks:
            state = saved.get(f"callback.{type(callback).__name__}")
            if state is not None:
                callback.load_state_dict(state)
        self._saved_callback_states = {}

    def _warn(self, message: str, category: type[Warning]) -> None:
        """warnings.warn on rank 0 alone: every rank meets the same condition, the user needs one line."""
        if self.world.is_main:
            warnings.warn(message, category, stacklevel=3)


class _RunProgress:
    """The trainer's counters as a checkpoint component: steps, updates, training seconds, schedule horizon."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        """global_step, update_index, wall_time_s (a checkpoint inside train() counts this call so far), schedules."""
        t = self.trainer
        running = time.perf_counter() - t._train_started if t._train_started is not None else 0.0
        # Schedules are functions of global_step / horizon; kept so a resume can tell if the horizon moved.
        return {"global_step": t.global_step, "update_index": t.update_index, "wall_time_s": t.wall_time_s + running,
                "schedules": {"horizon": t._horizon, "lr": t.lr_schedule.kind, "clip": t.clip_schedule.kind,
                              "ent": t.ent_schedule.kind}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the counters where the checkpoint left them."""
        t = self.trainer
        t.global_step, t.update_index = int(state["global_step"]), int(state["update_index"])
        t.wall_time_s = float(state["wall_time_s"])
        t._horizon_before_resume = state.get("schedules", {}).get("horizon")


class _CheckedModule:
    """A torch module as a checkpoint component whose load names what does not fit (CheckpointError)."""

    def __init__(self, module: torch.nn.Module, source: Path | None) -> None:
        self.module, self.source = module, source

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The module's own state_dict."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load strictly: every key present, every shape the module's."""
        _load_state_strict(self.module, state, self.source)


class _CrashFallback(Callback):
    """Before each rollout, a private copy of the state: what a NaN or env crash in the update falls back to.

    Only with one process: a failing rank cannot reach the others mid-update, so their last checkpoint stands.
    """

    last_good: tuple | None = None

    def on_rollout_start(self) -> None:
        """Copy the state, when the run has a directory to write it to."""
        trainer = self.trainer
        if trainer.run_dir is not None and trainer.world.size == 1:
            self.last_good = trainer._capture_state()


class _StopOnSignal(Callback):
    """Last of all: after a SIGINT/SIGTERM on any rank, save a checkpoint (unless one was just saved) and stop."""

    def on_update_end(self, row: dict[str, Any]) -> None:
        """Raise TrainingInterrupted when a stop was asked for."""
        trainer = self.trainer
        if trainer.pending_stop is None:
            return
        folder = None
        if trainer.run_dir is not None:
            folder = (trainer._checkpoint_path() if trainer.last_checkpoint_step == trainer.global_step
                      else trainer.save_checkpoint())
        raise TrainingInterrupted(trainer.pending_stop, trainer.global_step, folder, trainer.run_dir,
                                  trainer.world.size)


def find_action_masks(env: EnvLike, env_kwargs: dict, mode: str, action_space) -> ActionMaskSource | None:
    """Where this env's action masks come from (probing one env), or None; errors when mode=on finds none."""
    if mode == "off":
        return None
    if mask_width(action_space) is None:
        if mode == "on":
            raise ConfigError(f"action_masking=on, but the action space is {action_space}; masking applies to "
                              "Discrete and MultiDiscrete actions: set action_masking=auto or off")
        return None

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


def dump_json(data: Any) -> str:
    """Compact JSON for printing."""
    return json.dumps(data, indent=2, default=str)
