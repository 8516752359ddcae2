"""Running a sweep's trials as Ray tasks: skip the finished, resume the interrupted, retry lost workers."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proximo.checkpoint import atomic_write_json, ensure_run_dir
from proximo.config import PPOConfig
from proximo.envs.make import make_single_env
from proximo.errors import ConfigError, ProximoError
from proximo.sweep.cluster import check_address, cluster_cpus, connect, import_ray
from proximo.sweep.progress import SweepProgress
from proximo.sweep.results import read_failures, trial_rows, write_failures, write_results
from proximo.sweep.spec import SweepSpec, Trial
from proximo.sweep.trial import is_finished, run_pack, run_trial

SPEC_FILE = "sweep.json"
RUNS = "runs"
PACKS = "packs"  # one folder per population of packed trials (its population.json and pack.log)


@dataclass
class RunOptions:
    """How to run (not what): the cluster, each trial's CPU share, retries, progress output."""

    address: str | None = None       # None: a local cluster; "auto" or HOST:PORT: join that one
    workers: int | None = None       # CPUs of the local cluster (default: this machine's)
    cpus_per_trial: int = 1          # each trial's CPU share; torch threads follow it
    retries: int = 2                 # extra attempts of a trial whose worker died
    progress_every_s: float = 30.0   # plain progress lines (non-terminal) at this period
    checkpoints_per_trial: int = 10  # when the config sets no save_every: about this many per trial
    title: str = "proximo sweep"
    command: str | None = None       # the command line, recorded in results.md
    pack: str = "off"                # off | auto | force: trials that can share a population run as one
    max_pack: int = 32               # at most this many trials per population


def trial_config(trial: Trial, spec: SweepSpec, options: RunOptions) -> dict[str, Any]:
    """The trial's config as it runs: torch threads at its CPU share and periodic checkpoints (a killed
    trial resumes from the last one) unless the sweep set them."""
    config = dict(trial.config)
    if "torch_threads" not in spec.base:
        config["torch_threads"] = options.cpus_per_trial
    if not config["save_every"]:
        config["save_every"] = periodic_save_every(config, options.checkpoints_per_trial)
    return config


def periodic_save_every(config: dict[str, Any], checkpoints: int = 10) -> int:
    """save_every (env steps, a whole number of rollouts) that gives a run about `checkpoints` checkpoints."""
    rollout = config["num_envs"] * config["n_steps"]
    updates = max(1, -(-config["total_steps"] // rollout))
    return rollout * max(1, updates // checkpoints)


def prepare_dir(sweep_dir: Path, spec: SweepSpec) -> None:
    """Create the sweep folder and record the spec; a folder holding another sweep is refused."""
    ensure_run_dir(sweep_dir)
    path = sweep_dir / SPEC_FILE
    mine = spec.to_dict()
    if path.is_file():
        try:
            theirs = json.loads(path.read_text())
        except ValueError:
            theirs = None
        if theirs != json.loads(json.dumps(mine)):
            differ = sorted(k for k in mine if theirs is None or json.loads(json.dumps(mine.get(k))) != theirs.get(k))
            raise ConfigError(f"--sweep-dir {sweep_dir} holds another sweep (it differs in {', '.join(differ)}); "
                              "re-run that sweep's command to resume it, or choose a new --sweep-dir")
    else:
        atomic_write_json(path, mine)


def _remote_trial(env_id: str, config: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """The body of one Ray task (a module-level function, so workers import it by name)."""
    return run_trial(env_id, config, run_dir)


def _remote_pack(env_id: str, configs: list[dict[str, Any]], run_dirs: list[str], pack_dir: str
                 ) -> list[dict[str, Any]]:
    """The body of one Ray task that trains a pack of trials as one population."""
    return run_pack(env_id, configs, run_dirs, pack_dir)


@dataclass
class Pack:
    """Trials of one env that train as one population (proximo/population/), each in its own run directory."""

    name: str
    env_id: str
    trials: list[Trial]


def make_packs(trials: list[Trial], spec: SweepSpec, options: RunOptions) -> tuple[list[Pack], list[Trial]]:
    """(packs, trials that run alone): trials grouped by env and everything a population must share, in sweep
    order, each group split evenly into packs of at most options.max_pack; a group of one, or a policy the
    batched path cannot train, runs alone. With pack=force a trial that would run alone is a ConfigError."""
    from proximo.population.trainer import PER_AGENT_FIELDS, batchable  # here: a sweep without --pack needs none

    groups: dict[tuple, list[Trial]] = {}
    alone: list[Trial] = []
    for trial in trials:
        config = trial_config(trial, spec, options)
        why = batchable(trial.env_id, PPOConfig.from_dict(config))
        if why is not None:
            if options.pack == "force":
                raise ConfigError(f"--pack force: trial {trial.name} cannot train in a population ({why}); use "
                                  "--pack auto to run such trials alone")
            alone.append(trial)
            continue
        key = (trial.env_id, json.dumps({k: v for k, v in sorted(config.items()) if k not in PER_AGENT_FIELDS},
                                        sort_keys=True, default=str))
        groups.setdefault(key, []).append(trial)
    packs: list[Pack] = []
    for (env_id, _), members in groups.items():
        if len(members) == 1:
            if options.pack == "force":
                raise ConfigError(f"--pack force: trial {members[0].name} shares its env and shape with no other "
                                  "trial, so it has no population to join; use --pack auto")
            alone.extend(members)
            continue
        count = -(-len(members) // options.max_pack)
        size = -(-len(members) // count)
        for start in range(0, len(members), size):
            part = members[start:start + size]
            packs.append(Pack(f"{len(packs):03d}_{part[0].name}_x{len(part)}", env_id, part))
    if options.pack == "force" and alone:
        raise ConfigError(f"--pack force: {len(alone)} trial(s) cannot share a population")
    return packs, alone


def _error_text(exc: BaseException) -> str:
    """The cause of a failed Ray task in one line: the trial's own exception where there is one."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, KeyboardInterrupt):
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def run_sweep(spec: SweepSpec, sweep_dir: str | Path, options: RunOptions) -> list[dict[str, Any]]:
    """Run every unfinished trial of spec under sweep_dir/runs/ on Ray and write results.csv and results.md.

    Returns the result rows. A finished trial (summary.json) is skipped; one with checkpoints resumes from the
    newest; a trial whose worker dies is retried options.retries times and then recorded as failed with its
    error. Ctrl-C cancels the running trials (their checkpoints stay) and raises KeyboardInterrupt.
    """
    sweep_dir = Path(sweep_dir)
    trials = spec.trials()  # every config validated before Ray starts
    import_ray()  # Ray missing: one line naming the extra, before anything is written
    check_address(options.address, options.workers)
    for env_id in spec.envs:  # a wrong env id: one line here, not a failed trial per setting and seed
        make_single_env(env_id).close()
    if options.cpus_per_trial < 1:
        raise ConfigError(f"--cpus-per-trial must be at least 1, got {options.cpus_per_trial}")
    if options.retries < 0:
        raise ConfigError(f"--retries must not be negative, got {options.retries}")
    packs, _ = make_packs(trials, spec, options) if options.pack != "off" else ([], trials)
    prepare_dir(sweep_dir, spec)
    run_dirs = {t.name: sweep_dir / RUNS / t.name for t in trials}
    todo = [t for t in trials if not is_finished(run_dirs[t.name])]
    say = _printer()
    try:
        if not todo:
            say(f"proximo: all {len(trials)} trials in {sweep_dir} are finished; nothing to run")
        else:
            _run_on_ray(todo, spec, sweep_dir, run_dirs, options, len(trials), say, packs)
    finally:  # an interrupted sweep still tables what finished
        rows = trial_rows(trials, sweep_dir, run_dirs)
        write_results(sweep_dir, rows, options.title, options.command)
    return rows


def _printer():
    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)
    return say


def _run_on_ray(todo: list[Trial], spec: SweepSpec, sweep_dir: Path, run_dirs: dict[str, Path],
                options: RunOptions, total: int, say, packs: list[Pack] | None = None) -> None:
    owned = not import_ray().is_initialized()  # a cluster the caller already joined is theirs to shut down
    ray = connect(options.address, options.workers, options.cpus_per_trial)
    try:
        failures = _drive(ray, todo, spec, sweep_dir, run_dirs, options, total, say, packs or [])
    finally:
        if owned:
            ray.shutdown()
    if failures:
        say(f"proximo: {len(failures)} trial(s) failed; see failures.json and each trial's trial.log "
            "(re-running the command tries them again)")


def _drive(ray, todo: list[Trial], spec: SweepSpec, sweep_dir: Path, run_dirs: dict[str, Path],
           options: RunOptions, total: int, say, packs: list[Pack]) -> dict[str, str]:
    """Submit the trials as Ray tasks and collect them as they finish; returns the failures."""
    cpus = cluster_cpus(ray)
    if options.cpus_per_trial > cpus:
        raise ConfigError(f"--cpus-per-trial {options.cpus_per_trial} is more than the cluster's {cpus} CPUs; "
                          f"lower it or start the cluster with more (--workers {options.cpus_per_trial})")
    slots = cpus // options.cpus_per_trial
    resumed = sum((run_dirs[t.name] / "checkpoints").is_dir() for t in todo)
    say(f"proximo: sweep of {total} trials in {sweep_dir}: {total - len(todo)} finished, {resumed} to resume, "
        f"{len(todo) - resumed} to start; {slots} at a time on {cpus} CPUs "
        f"({'local cluster' if options.address is None else options.address})")
    # max_retries counts lost workers (kill -9, a node gone); an exception in the trial itself is not retried.
    task = ray.remote(_remote_trial).options(num_cpus=options.cpus_per_trial, max_retries=options.retries,
                                             retry_exceptions=False)
    failures = read_failures(sweep_dir)
    pending = {}
    unfinished = {t.name for t in todo}
    packed = set()
    pack_task = ray.remote(_remote_pack).options(num_cpus=options.cpus_per_trial, max_retries=options.retries,
                                                 retry_exceptions=False)
    for pack in packs:
        if not any(t.name in unfinished for t in pack.trials):
            continue
        for trial in pack.trials:
            failures.pop(trial.name, None)
            packed.add(trial.name)
        ref = pack_task.remote(pack.env_id, [trial_config(t, spec, options) for t in pack.trials],
                               [str(run_dirs[t.name].resolve()) for t in pack.trials],
                               str((sweep_dir / PACKS / pack.name).resolve()))
        pending[ref] = pack
    if packed:
        say(f"proximo: {len(packed)} trials train as {sum(isinstance(v, Pack) for v in pending.values())} batched "
            f"populations (--pack {options.pack}), {len(todo) - len(packed)} alone")
    for trial in todo:
        if trial.name in packed:
            continue
        failures.pop(trial.name, None)  # a trial that failed before gets its attempts again
        ref = task.remote(trial.env_id, trial_config(trial, spec, options), str(run_dirs[trial.name]))
        pending[ref] = trial
    write_failures(sweep_dir, failures)
    progress = SweepProgress(todo, run_dirs, total - len(todo), total, slots, options.progress_every_s, say)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                item = pending.pop(ref)
                members = item.trials if isinstance(item, Pack) else [item]
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the trial's own error, or the worker died past its retries
                    for trial in members:
                        failures[trial.name] = _error_text(exc)
                        progress.failed(trial, failures[trial.name])
                    write_failures(sweep_dir, failures)
                else:
                    for trial, summary in zip(members, result if isinstance(item, Pack) else [result]):
                        progress.finished(trial, summary)
            progress.tick()
    except KeyboardInterrupt:
        progress.close()
        say(f"proximo: interrupted; stopping {len(pending)} unfinished trials (their checkpoints stay; re-run the "
            "same command to resume)")
        for ref in pending:
            ray.cancel(ref, force=False)
        ray.wait(list(pending), num_returns=len(pending), timeout=15.0)
        raise
    finally:
        progress.close()
    return failures


def check_sweep_dir(path: Path | None) -> Path:
    """--sweep-dir is required and must be a folder (or not exist yet)."""
    if path is None:
        raise ProximoError("give --sweep-dir DIR: where the trials' run directories and results go")
    return path
