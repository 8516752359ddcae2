"""K agents of one env trained as one batch in one process: `proximo train ENV --seeds 1-16`.

Each agent (a Member) is a solo run in everything a user sees: its own config and seed, parameters,
Adam state, envs, observation and reward statistics, RNG stream, schedules and KL controller, and its
own normal run directory (RUN/s<seed>, or the names a sweep gives) that `eval`, `doctor`, `plot`,
`export` and `train --resume` accept as they accept a solo run's; its checkpoints are solo
checkpoints. The work is batched: one vector env of K x N sub-envs, one fused forward per vector step
for all agents (proximo/population/policy.py), one batched learner step per minibatch index
(proximo/learners/population.py) in one update loop (proximo/ppo.py population_update).

Agent k equals a solo run with its seed and settings: the same actions in the first rollout, and
parameters equal to float tolerance after updates (tests/test_population.py says how close and why).
"""
from __future__ import annotations

import math
import re
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from proximo.callbacks import CallbackList
from proximo.checkpoint import CheckpointError, atomic_write_json, load_json
from proximo.config import PPOConfig
from proximo.core.advantages import gae
from proximo.envs.atari import pixel_options
from proximo.envs.check import require_env_ok
from proximo.envs.guard import GuardedMaker
from proximo.envs.make import EnvLike, make_single_env, make_vector_env
from proximo.envs.snapshot import restore_vector_env, snapshot_vector_env
from proximo.errors import ConfigError, ProximoError
from proximo.learners.base import Minibatch
from proximo.learners.distributed import World
from proximo.devices import WIDE_MLP, resolve_device
from proximo.learners.population import (
    AgentSettings, PopulationLearner, StackedAdam, TorchPopulationLearner, column_or_inf,
)
from proximo.metrics import Progress
from proximo.multiagent import trainer_class
from proximo.nn.normalize import RunningMeanStd
from proximo.nn.policy import ActorCritic
from proximo.population.policy import PopulationPolicy, population_support
from proximo.population.stack import PopulationEpisodes, PopulationRewardScaler, StackedParameters
from proximo.ppo import population_update
from proximo.rollout import NonFiniteError, RolloutCollector
from proximo.runtime import keep_freed_memory, seed_everything, set_threads
from proximo.saved import build_policy, env_name, list_checkpoints
from proximo.state import _numpy_rng_state, _python_rng_state
from proximo.stopping import StopSignals, TrainingInterrupted
from proximo.train import Trainer, find_action_masks, pick_threads

# Fields that may differ between the agents of one population: numbers in the math (and the seed).
PER_AGENT_FIELDS = ("seed", "learning_rate", "lr_schedule", "objective", "clip_range", "clip_schedule",
                    "clip_range_vf", "kl_coef", "kl_target", "ent_coef", "ent_schedule", "vf_coef", "target_kl",
                    "max_grad_norm", "gamma", "gae_lambda", "adam_eps", "log_std_init", "ortho_init", "clip_reward")
POPULATION_FILE = "population.json"
KL_OBJECTIVES = ("adaptive_kl", "fixed_kl")


def parse_seeds(text: str) -> list[int]:
    """Seeds from "1-16", "1,3,5" or "1-4,9" (in order, each once); ConfigError in one line otherwise."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        match = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", part)
        if match is None:
            raise ConfigError(f"--seeds {text!r} is not a seed list; write it as 1-16, 1,3,5 or 1-4,9")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise ConfigError(f"--seeds range {part!r} is empty (it counts down); write it low-high, e.g. {high}-{low}")
        seeds.extend(range(low, high + 1))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r} names a seed twice; each agent needs its own")
    return seeds


def pack_obstacle(configs: list[PPOConfig]) -> str | None:
    """Why these configs cannot train as one population (the first field outside PER_AGENT_FIELDS that
    differs), or None when they can."""
    first = configs[0].flat_dict()
    for config in configs[1:]:
        for name, value in config.flat_dict().items():
            if name not in PER_AGENT_FIELDS and value != first[name]:
                return f"{name} differs ({first[name]!r} vs {value!r}); a population shares everything but {', '.join(PER_AGENT_FIELDS)}"
    return None


_SPACES: dict[str, tuple] = {}


def multiagent_obstacle(env: EnvLike, env_kwargs: dict | None = None) -> str | None:
    """The one line that refuses a population of a multi-agent (PettingZoo) env, or None for a gymnasium one."""
    if trainer_class(env, env_kwargs or {}) is not Trainer:
        return (f"{env_name(env) or 'this env'} is a multi-agent (PettingZoo) env: populations batch gymnasium "
                "envs; train its seeds as separate runs (or a `proximo sweep`)")
    return None


def batchable(env_id: str, config: PPOConfig) -> str | None:
    """Why a run of env_id with config cannot be an agent of a population, or None when it can (a gymnasium
    env, a policy that fits the batched path, no stopping rule of its own)."""
    if multiagent_obstacle(env_id) is not None:
        return "a multi-agent env"
    if config.stop_at_return is not None or config.stop_patience:
        return "a stopping rule of its own (stop_at_return / stop_patience)"
    if env_id not in _SPACES:
        probe = make_single_env(env_id)
        _SPACES[env_id] = (probe.observation_space, probe.action_space)
        probe.close()
    return population_support(build_policy(*_SPACES[env_id], config))


def member_names(configs: list[PPOConfig]) -> list[str]:
    """Default run-directory names of the agents: s<seed>, with a number when two agents share a seed."""
    names = [f"s{c.seed}" for c in configs]
    if len(set(names)) == len(names):
        return names
    return [f"a{k}-s{c.seed}" for k, c in enumerate(configs)]


def _available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _rss_bytes() -> int:
    """This process's resident memory (0 where /proc is missing)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096
    except OSError:
        return 0


def population_device(requested: str, agents: int, widest_layer: int) -> tuple[torch.device, str]:
    """(device, why) of a population: as a solo run's (proximo/devices.py), except that `auto` counts the K
    agents' stacked matmuls as one network K times as wide: a GPU pays once K x width reaches WIDE_MLP."""
    device, why = resolve_device(requested, False, widest_layer)
    if requested == "auto" and device.type == "cpu" and agents * widest_layer >= WIDE_MLP:
        wide, _ = resolve_device("auto", False, agents * widest_layer)
        if wide.type != "cpu":
            return wide, (f"auto: {wide.type} found, and {agents} agents x {widest_layer} units batch like one "
                          f"{agents * widest_layer}-unit MLP (at least {WIDE_MLP})")
    if requested == "auto" and device.type == "cpu":
        why = f"{why}; {agents} agents x {widest_layer} units stay under {WIDE_MLP}" if "found," in why else why
    return device, why


class Population:
    """K agents of one env (configs: one PPOConfig per agent, see PER_AGENT_FIELDS) trained as one batch;
    run_dir/<name> is agent k's run directory (names: member_names by default)."""

    def __init__(self, env: EnvLike, configs: list[PPOConfig], run_dir: str | Path | None = None,
                 env_kwargs: dict | None = None, verbose: bool = True, tensorboard: bool = True,
                 names: list[str] | None = None) -> None:
        if not configs:
            raise ConfigError("a population needs at least one agent (--seeds 1-4, say)")
        obstacle = pack_obstacle(configs)
        if obstacle is not None:
            raise ConfigError(f"these agents cannot share a population: {obstacle}")
        config = configs[0]
        why_not = multiagent_obstacle(env, env_kwargs)
        if why_not is not None:
            raise ConfigError(why_not)
        if config.stop_at_return is not None or config.stop_patience:
            raise ConfigError("stop_at_return / stop_patience stop one run; a population trains every agent to "
                              "total_steps (evaluate each agent's run directory afterwards)")
        self.env, self.configs, self.env_kwargs = env, configs, dict(env_kwargs or {})
        self.k, self.n = len(configs), config.num_envs
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.verbose = verbose
        self.names = names or member_names(configs)
        require_env_ok(env, self.env_kwargs)
        set_threads(pick_threads(config))
        keep_freed_memory()
        before = _rss_bytes()
        maker = GuardedMaker(env, {**self.env_kwargs, "pixels": pixel_options(config)})
        probe = make_vector_env(maker, 1, "sync")
        self._check_memory(_rss_bytes() - before, probe)
        probe.close()
        self.envs = make_vector_env(maker, self.k * self.n, config.env_backend)
        mask_source = find_action_masks(env, self.env_kwargs, config.action_masking, self.envs.single_action_space)
        policies: list[ActorCritic] = []
        self.generators: list[torch.Generator] = []
        for agent in configs:
            # The stream a solo run of this seed has after building its policy (seed_everything, then init).
            seed_everything(agent.seed)
            policies.append(build_policy(self.envs.single_observation_space, self.envs.single_action_space, agent))
            generator = torch.Generator()
            generator.set_state(torch.get_rng_state())
            self.generators.append(generator)
        why = population_support(policies[0])
        if why is not None:
            raise ConfigError(f"this policy cannot be batched in a population: {why}; train it solo (without --seeds)")
        device, why_device = population_device(config.device, self.k, max(config.net_arch))
        for policy in policies:
            policy.to(device)
        self.stack = StackedParameters(policies)
        self.optimizer = StackedAdam(self.stack, (0.9, 0.999), np.array([c.adam_eps for c in configs]))
        # The NumPy learner on the CPU (the fastest there, and bitwise a solo run's); torch elsewhere, or asked for.
        torch_learner = device.type != "cpu" or config.learner == "torch"
        self.learner = (TorchPopulationLearner if torch_learner else PopulationLearner)(policies[0], self.stack,
                                                                                      self.optimizer)
        self.device_choice = f"{device} ({why_device})"
        self.learner_choice = (f"{self.learner.name}: {self.k} agents batched"
                               + (" (learner=torch)" if config.learner == "torch" and device.type == "cpu" else ""))
        self.policy = PopulationPolicy(policies, self.stack, self.n, self.generators)
        scaler = (PopulationRewardScaler(self.k, self.n, np.array([c.gamma for c in configs]),
                                         np.array([c.clip_reward for c in configs]))
                  if config.normalize_reward else None)
        seeds = [c.seed + i for c in configs for i in range(self.n)]  # agent k's env i: its solo seed + i
        self.collector = RolloutCollector(self.envs, self.policy, config.n_steps, config.gamma, config.normalize_obs,
                                          scaler, seeds, World.local(), mask_source, 1)
        self.collector.episodes = PopulationEpisodes(self.k, self.n)
        self.members = [Member(self, k, configs[k], policies[k], tensorboard) for k in range(self.k)]
        self.global_step = 0
        self._stops = StopSignals()

    def _check_memory(self, env_bytes: int, probe) -> None:
        """Refuse, in one line, a population that would not fit in memory (estimated before allocating)."""
        config = self.configs[0]
        obs = int(np.prod(probe.single_observation_space.shape or (1,)))
        # per agent: the rollout (obs and ~10 floats per sample, stored once and shuffled per epoch),
        # the parameters with gradient and two Adam moments, and its envs
        rollout = config.rollout_size * (obs + 10) * 4 * 3
        params = 4 * 4 * sum(w * (w + obs) for w in config.net_arch) * 2
        need = self.k * (rollout + params + self.n * max(env_bytes, 1 << 20))
        available = _available_bytes()
        if available is not None and need > 0.8 * available:
            fits = max(1, int(0.8 * available // max(need // self.k, 1)))
            raise ConfigError(f"{self.k} agents need about {need / 2**30:.1f} GiB here ({self.n} envs each), "
                              f"{available / 2**30:.1f} GiB are available; use at most {fits} seeds per population")

    # the loop ---------------------------------------------------------------------------------
    def train(self, total_steps: int | None = None) -> list[dict[str, Any]]:
        """Train every agent to total_steps env steps (its own; default config.total_steps); returns their summaries."""
        total = total_steps if total_steps is not None else self.configs[0].total_steps
        started = time.perf_counter()
        for member in self.members:
            member.begin(total, started)
        self.wall_before = self.members[0].wall_time_s
        progress = Progress(total, self.global_step, enabled=self.verbose)
        restore = self._catch_stop_signals()
        try:
            for member in self.members:
                member._callbacks.on_training_start()
            while self.global_step < total:
                self._update(total, progress)
                if self._stop_signal is not None:
                    self._stop()
        except NonFiniteError as exc:
            raise NonFiniteError(f"{exc}; every agent's last checkpoint stays loadable "
                                 f"(`proximo train --resume {self.run_dir}`)") from None
        finally:
            restore()
            progress.close()
            elapsed = time.perf_counter() - started
            for member in self.members:
                member._callbacks.on_training_end()
                member.wall_time_s = self.wall_before + elapsed
                member._train_started = None
        summaries = [member._finish(member._start_step) for member in self.members]
        self._write_summary(summaries, total)
        return summaries

    def _update(self, total: int, progress: Progress) -> None:
        """One rollout of every agent's envs and one batched update; each member logs its row."""
        members = self.members
        fraction = self.global_step / total
        for member in members:
            member._callbacks.on_rollout_start()
        settings = self._settings(fraction)
        buffer = self.collector.collect()
        for member in members:
            member._callbacks.on_rollout_end()
        columns = self._columns(buffer)
        config = self.configs[0]
        stats = population_update(self.learner, columns, settings, config.n_epochs, config.batch_size,
                                  config.normalize_advantage, self.generators)
        if not bool(torch.isfinite(self.stack.flat).all()):
            bad = [m.name for m in members if not bool(torch.isfinite(self.stack.rows()[m.k]).all())]
            raise NonFiniteError(f"the update left non-finite parameters in agent(s) {', '.join(bad)} (a non-finite "
                                 "gradient); lower learning_rate or set max_grad_norm")
        self.global_step += config.rollout_size
        elapsed = time.perf_counter() - members[0]._train_started
        for member, agent_stats in zip(members, stats):
            member.end_update(agent_stats, settings, elapsed)
        returns = [m.last_stats["episode_return_mean"] for m in members]
        finite = [r for r in returns if math.isfinite(r)]
        progress.update(self.global_step, (self.global_step - members[0]._start_step) * self.k / max(elapsed, 1e-9),
                        float(np.mean(finite)) if finite else float("nan"))

    def _settings(self, fraction: float) -> AgentSettings:
        """Every agent's loss and step settings for the next update (its schedules at fraction, its KL beta)."""
        members = self.members
        stat_clip = np.array([m.clip_schedule(fraction) for m in members])
        objectives = [m.config.objective for m in members]
        clip = np.where([o == "clip" for o in objectives], stat_clip, np.inf)
        beta = np.array([m.kl_controller.value if o in KL_OBJECTIVES else 0.0 for m, o in zip(members, objectives)])
        lrs = np.array([m.lr_schedule(fraction) for m in members])
        for member, lr in zip(members, lrs):
            member._learning_rate = float(lr)
        return AgentSettings(
            clip_range=clip, stat_clip_range=stat_clip,
            clip_range_vf=column_or_inf([m.config.clip_range_vf for m in members]),
            kl_coef=beta, ent_coef=np.array([m.ent_schedule(fraction) for m in members]),
            vf_coef=np.array([m.config.vf_coef for m in members]),
            max_grad_norm=column_or_inf([m.config.max_grad_norm for m in members]),
            kl_limit=column_or_inf([None if m.config.target_kl is None else 1.5 * m.config.target_kl for m in members]),
            learning_rate=lrs)

    def _columns(self, buffer):
        """The rollout [T, K * N, ...] as per-agent columns [K, T * N, ...] in a solo run's sample order,
        with each agent's advantages by GAE with its own gamma and lambda (the solo function, per agent)."""
        t, k, n = buffer.rewards.shape[0], self.k, self.n
        advantages = torch.empty_like(buffer.rewards)
        returns = torch.empty_like(buffer.rewards)
        for member in self.members:
            rows = slice(member.k * n, (member.k + 1) * n)
            # on the host, as a solo rollout's compute_advantages runs it (a T-step recursion)
            host = [column[:, rows].cpu() for column in (buffer.rewards, buffer.values, buffer.next_values,
                                                         buffer.terminated, buffer.truncated)]
            adv, ret = gae(*host, member.config.gamma, member.config.gae_lambda)
            advantages[:, rows], returns[:, rows] = adv.to(advantages.device), ret.to(returns.device)
        buffer.advantages, buffer.returns = advantages, returns

        def per_agent(column: torch.Tensor | None) -> torch.Tensor | None:
            if column is None:
                return None
            shaped = column.view(t, k, n, *column.shape[2:]).transpose(0, 1)
            return shaped.reshape(k, t * n, *column.shape[2:])
        return Minibatch(per_agent(buffer.obs), per_agent(buffer.actions), per_agent(buffer.log_probs),
                         per_agent(buffer.values), per_agent(advantages), per_agent(returns),
                         per_agent(buffer.action_masks))

    # stopping and resuming ------------------------------------------------------------------------
    @property
    def _stop_signal(self) -> int | None:
        """The stop signal this process received (None: none)."""
        return self._stops.received

    def _catch_stop_signals(self):
        """SIGINT/SIGTERM stop after the current update with every agent's checkpoint; returns the undo."""
        self._stops.received = None
        if self.run_dir is None:
            return lambda: None
        return self._stops.install()

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop after the current update with every agent's checkpoint, as SIGINT/SIGTERM do."""
        self._stops.request(signum)

    def _stop(self) -> None:
        for member in self.members:
            if member.last_checkpoint_step != member.global_step and member.run_dir is not None:
                member.save_checkpoint()
        raise TrainingInterrupted(self._stop_signal, self.global_step, self.run_dir if self.run_dir else None,
                                  self.run_dir)

    def load(self) -> None:
        """Continue from the newest step at which every agent has an intact checkpoint."""
        if self.run_dir is None:
            raise CheckpointError("a population without a run directory has nothing to resume")
        steps = None
        for member in self.members:
            mine = {int(path.name.split("_")[-1]): path for path in list_checkpoints(member.run_dir)}
            steps = set(mine) if steps is None else steps & set(mine)
        if not steps:
            raise CheckpointError(f"{self.run_dir}: no step at which every agent has a checkpoint; start afresh")
        step = max(steps)
        for member in self.members:
            member.load_training_state(member.run_dir / "checkpoints" / f"step_{step:012d}")
        self.global_step = step

    def _write_summary(self, summaries: list[dict[str, Any]], total: int) -> None:
        """RUN/population.json: the agents, their settings that differ, and each one's result."""
        if self.run_dir is None:
            return
        wall = self.members[0].wall_time_s
        data = read_population(self.run_dir) if (self.run_dir / POPULATION_FILE).is_file() else {}
        data.update(describe_population(self.env, self.configs, self.names, self.env_kwargs))
        data.update({"total_steps": total, "wall_time_s": wall,
                     "agent_steps_per_s": self.global_step * self.k / max(wall, 1e-9),
                     "results": [{"name": name, "eval_return_mean": s.get("eval_return_mean"),
                                  "train_return_last100_mean": s.get("train_return_last100_mean")}
                                 for name, s in zip(self.names, summaries)]})
        atomic_write_json(self.run_dir / POPULATION_FILE, data)

    def open(self) -> None:
        """Write RUN/population.json before training, so an interrupted population can be resumed."""
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.run_dir / POPULATION_FILE,
                              describe_population(self.env, self.configs, self.names, self.env_kwargs))


def describe_population(env: EnvLike, configs: list[PPOConfig], names: list[str], env_kwargs: dict) -> dict[str, Any]:
    """The JSON that rebuilds a population: env, member names and each member's full config."""
    return {"format_version": 1, "env_id": env_name(env), "env_kwargs": env_kwargs, "members": names,
            "configs": [c.to_dict() for c in configs]}


def read_population(run_dir: str | Path) -> dict[str, Any]:
    """RUN/population.json, or a CheckpointError naming what is wrong."""
    path = Path(run_dir) / POPULATION_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a population run (no {POPULATION_FILE})")
    return load_json(path)


def is_population(run_dir: str | Path) -> bool:
    """True when run_dir holds a population (RUN/population.json)."""
    return (Path(run_dir) / POPULATION_FILE).is_file()


class Member(Trainer):
    """Agent k of a population as a Trainer: its run directory, callbacks, checkpoints and summary are a
    solo run's (Trainer's own code), while its policy, optimizer state, envs and statistics are views
    into the population's stacked storage. The population, not this object, runs the loop."""

    def __init__(self, population: Population, k: int, config: PPOConfig, policy: ActorCritic,
                 tensorboard: bool) -> None:
        # Trainer.__init__ builds envs and a learner of its own; a member has views of the population's.
        self.population, self.k, self.name = population, k, population.names[k]
        self.env, self.config, self.env_kwargs = population.env, config, population.env_kwargs
        self.world = World.local()
        self.verbose = False  # the population prints one progress line for all agents
        self.policy = policy
        self.optimizer = _MemberOptimizer(population, k, config)
        self.mask_source = population.collector.mask_source
        self.device_choice = population.device_choice
        self.learner_choice = population.learner_choice
        self.envs = population.envs
        scaler = population.collector.reward_scaler
        self.reward_scaler = _MemberRewardScaler(scaler, k, population.n, policy) if scaler is not None else None
        self.collector = _MemberCollector(population.collector, k, population.n)
        run_dir = population.run_dir / self.name if population.run_dir is not None else None
        self._init_run_state(config, run_dir, tensorboard)
        self._learning_rate = config.learning_rate

    def rank_state_parts(self) -> dict[str, Any]:
        """This agent's own random generator and its share of the rollouts (in a solo checkpoint's format)."""
        return {"rng": _MemberRandom(self.population.generators[self.k]), "": self.collector}

    def begin(self, total: int, started: float) -> None:
        """Open the run directory and the callbacks, as Trainer.train does before its loop."""
        self._warn_if_horizon_moved(total)
        writer = self._open_run_dir()
        self._total = total
        self._start_step = self.global_step
        self._train_started = started
        first, then = self._builtin_callbacks(writer, total)
        self._callbacks = CallbackList(first + then)
        self._callbacks.init_callback(self)
        self._load_callback_states()

    def end_update(self, stats: dict[str, Any], settings: AgentSettings, elapsed: float) -> None:
        """The update's row, as Trainer._learn makes it, through this agent's callbacks."""
        k, config = self.k, self.config
        beta = self.kl_controller.value
        self.kl_controller.update(stats["kl_last_epoch"])
        self.global_step += config.rollout_size
        self.update_index += 1
        episodes = self.collector.episodes
        returns = np.fromiter(episodes.returns, dtype=np.float64, count=len(episodes.returns))
        lengths = np.fromiter(episodes.lengths, dtype=np.float64, count=len(episodes.lengths))
        row = dict(stats, global_step=self.global_step, update=self.update_index,
                   time_s=self.population.wall_before + elapsed,
                   sps=(self.global_step - self._start_step) / max(elapsed, 1e-9),
                   episode_return_mean=float(returns.mean()) if len(returns) else float("nan"),
                   episode_length_mean=float(lengths.mean()) if len(lengths) else float("nan"),
                   episodes=episodes.finished, learning_rate=self._learning_rate,
                   clip_range=float(settings.stat_clip_range[k]), ent_coef=float(settings.ent_coef[k]), kl_coef=beta)
        self.last_stats = row
        self._callbacks.on_update_end(row)

    def _check_finite_parameters(self) -> None:
        """The population checks every agent's parameters at once after each update."""

    def summary_extra(self) -> dict[str, Any]:
        """What a member's summary.json adds to a solo one's: the population it trained in (its wall time is
        the population's, shared by all its agents)."""
        population = self.population
        return {"population": {"agents": population.k, "index": self.k,
                               "run_dir": None if population.run_dir is None else str(population.run_dir)}}


class _MemberOptimizer:
    """Agent k's Adam state as a solo run's FlatOptimizer shows it (torch Adam state_dict of one flat
    parameter), read from and written to the population's StackedAdam."""

    def __init__(self, population: Population, k: int, config: PPOConfig) -> None:
        self.population, self.k = population, k
        probe = torch.nn.Parameter(torch.zeros(1))
        self._template = torch.optim.Adam([probe], fused=True, lr=config.learning_rate, eps=config.adam_eps,
                                          betas=(0.9, 0.999), weight_decay=0.0).state_dict()
        self.flat = None  # the population checks finiteness itself

    def state_dict(self) -> dict[str, Any]:
        """The solo format, with the learning rate of the last update."""
        template = {"param_groups": [dict(group) for group in self._template["param_groups"]]}
        template["param_groups"][0]["lr"] = self.population.members[self.k]._learning_rate
        return self.population.optimizer.member_state(self.k, template)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take a solo checkpoint's Adam state into this agent's row."""
        saved = state["state"].get(0)
        size = self.population.stack.size
        if saved is not None and tuple(saved["exp_avg"].shape) != (size,):
            raise CheckpointError(f"optimizer state of {tuple(saved['exp_avg'].shape)} values does not fit this "
                                  f"policy's {size} parameters")
        self.population.optimizer.load_member_state(self.k, state)

    def set_lr(self, lr: float) -> None:
        """The population passes each agent's learning rate with every step."""


class _MemberRewardScaler:
    """Agent k's reward scaling as a solo RewardScaler shows it: its return statistics (views of the
    population's row) and its envs' running returns."""

    def __init__(self, scaler: PopulationRewardScaler, k: int, n: int, policy: ActorCritic) -> None:
        self.scaler, self.rows = scaler, slice(k * n, (k + 1) * n)
        self.return_rms = RunningMeanStd(())
        grouped = scaler.return_rms
        self.return_rms._buffers.update(mean=grouped.mean[k], var=grouped.var[k], count=grouped.count)

    @property
    def running_return(self) -> torch.Tensor:
        """This agent's envs' discounted running returns [N] (a view)."""
        return self.scaler.running_return[self.rows]


class _MemberCollector:
    """Agent k's share of the population's RolloutCollector, with a solo collector's state format."""

    def __init__(self, collector: RolloutCollector, k: int, n: int) -> None:
        self.collector, self.k = collector, k
        self.rows = slice(k * n, (k + 1) * n)
        self.episodes = collector.episodes.member(k) if isinstance(collector.episodes, PopulationEpisodes) else None
        self.envs_restored = True

    def state_dict(self) -> dict:
        """What a solo checkpoint's collector part holds, for this agent's envs."""
        c, rows = self.collector, self.rows
        self.episodes = c.episodes.member(self.k)
        state = {"next_obs": c.next_obs[rows].clone(), "episodes": self.episodes.state_dict(),
                 "env_faults": c.env_faults, "envs": snapshot_vector_env(c.envs, rows)}
        if c.reward_scaler is not None:
            state["running_return"] = c.reward_scaler.running_return[rows].clone()
        if c.next_masks is not None:
            state["next_masks"] = torch.from_numpy(c.next_masks[rows].copy())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue this agent's envs where a solo checkpoint of it stopped."""
        c, rows = self.collector, self.rows
        self.episodes = c.episodes.member(self.k)
        c.env_faults = max(c.env_faults, int(state.get("env_faults", 0)))
        self.envs_restored = state.get("envs") is not None
        if not self.envs_restored:
            self.episodes.load_state_dict(state["episodes"], in_progress=False)
            if c.reward_scaler is not None:
                c.reward_scaler.running_return[rows] = 0.0
            return
        restore_vector_env(c.envs, state["envs"], rows)
        next_obs = state["next_obs"]
        if tuple(next_obs.shape) != tuple(c.next_obs[rows].shape):
            raise CheckpointError(f"the saved next observation is {tuple(next_obs.shape)}, this agent needs "
                                  f"{tuple(c.next_obs[rows].shape)}")
        c.next_obs[rows] = next_obs
        c.pending_obs_moments = None
        if c.next_masks is not None:
            c.next_masks[rows] = state["next_masks"].numpy()
        self.episodes.load_state_dict(state["episodes"])
        if c.reward_scaler is not None:
            c.reward_scaler.running_return[rows] = state["running_return"]


class _MemberRandom:
    """Agent k's random stream as a checkpoint's rng part (a solo run's torch generator state)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        """The generator's state as "torch" (what a solo run's global generator holds), with the process's
        Python and NumPy states (neither drives the training math)."""
        return {"torch": self.generator.get_state(), "python": _python_rng_state(), "numpy": _numpy_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the agent's stream."""
        self.generator.set_state(state["torch"])


def population_configs(config: PPOConfig, seeds: list[int]) -> list[PPOConfig]:
    """One config per seed, the rest as config."""
    return [config.replace(seed=seed) for seed in seeds]


def resume_population(run_dir: str | Path, verbose: bool = True, tensorboard: bool = True,
                      changes: dict[str, Any] | None = None) -> Population:
    """The population of run_dir, loaded from the newest step every agent has a checkpoint of."""
    data = read_population(run_dir)
    if not data.get("env_id"):
        raise ProximoError(f"{run_dir} was trained on an env factory; resume it from Python")
    configs = [PPOConfig.from_dict(c).replace(**(changes or {})) for c in data["configs"]]
    population = Population(data["env_id"], configs, run_dir, data.get("env_kwargs") or {}, verbose, tensorboard,
                            names=data["members"])
    population.load()
    return population


__all__ = ["Population", "parse_seeds", "pack_obstacle", "batchable", "population_configs", "resume_population", "is_population",
           "read_population", "PER_AGENT_FIELDS", "member_names"]

