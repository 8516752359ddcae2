"""One trial, as a Ray worker runs it: a normal proximo run directory, started fresh or resumed from its checkpoint.

This module imports nothing from Ray, so a trial can also run (and be tested) in a plain process.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from proximo.checkpoint import CheckpointError, atomic_write_json
from proximo.config import PPOConfig

TRIAL_META = "trial.json"
TRIAL_LOG = "trial.log"


def read_json_or_empty(path: Path) -> dict[str, Any]:
    """A sweep's bookkeeping file as JSON; {} when it is missing or torn (the sweep then starts that record anew)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def trial_state(run_dir: Path) -> dict[str, Any]:
    """What the run directory says of its trial: attempts so far, last pid, status ({} if never started)."""
    return read_json_or_empty(Path(run_dir) / TRIAL_META)


def is_finished(run_dir: Path) -> bool:
    """A trial is finished once its run wrote summary.json (the last file a run writes)."""
    return (Path(run_dir) / "summary.json").is_file()


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json of a finished run."""
    return json.loads((Path(run_dir) / "summary.json").read_text())


@contextlib.contextmanager
def output_to(path: Path):
    """Send this process's stdout and stderr (file descriptors too: MuJoCo's C warnings) to a file, then restore."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def run_trial(env_id: str, config: dict[str, Any], run_dir: str, reporter: Callable[[dict], None] | None = None
              ) -> dict[str, Any]:
    """Train one trial into run_dir and return its summary; resumes from the newest intact checkpoint if any.

    A finished run (summary.json) is returned as it is. Each call counts one attempt in trial.json, with the pid,
    so a sweep can tell a retried trial (its worker died) from a fresh one. reporter(row) sees every update.
    """
    from proximo.train import Trainer, list_checkpoints  # here: the sweep's driver reads trials, a worker trains

    run_dir_path = Path(run_dir)
    if is_finished(run_dir_path):
        return read_summary(run_dir_path)
    run_dir_path.mkdir(parents=True, exist_ok=True)
    state = trial_state(run_dir_path)
    attempts = int(state.get("attempts", 0)) + 1
    atomic_write_json(run_dir_path / TRIAL_META, {**state, "attempts": attempts, "pid": os.getpid(),
                                                  "status": "running", "started": time.time()})
    with output_to(run_dir_path / TRIAL_LOG), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        print(f"proximo: attempt {attempts} of {env_id} in pid {os.getpid()} (proximo from "
              f"{Path(__file__).parent.parent})", flush=True)
        trainer = Trainer(env_id, PPOConfig.from_dict(config), run_dir_path, verbose=False, tensorboard=False)
        checkpoints = list_checkpoints(run_dir_path)
        resumed_from = _resume(trainer, checkpoints)
        if checkpoints and resumed_from is None:  # every checkpoint was damaged: start over on a clean trainer
            trainer = Trainer(env_id, PPOConfig.from_dict(config), run_dir_path, verbose=False, tensorboard=False)
        if reporter is not None:
            trainer.on_update = reporter
        summary = trainer.train(trainer.config.total_steps)
    atomic_write_json(run_dir_path / TRIAL_META, {**trial_state(run_dir_path), "status": "done",
                                                  "resumed_from": resumed_from, "finished": time.time()})
    return summary


def run_pack(env_id: str, configs: list[dict[str, Any]], run_dirs: list[str], pack_dir: str) -> list[dict[str, Any]]:
    """Train the trials run_dirs (their configs) as one batched population (proximo/population/), each in its
    own run directory; returns their summaries. Finished packs are returned as they are; an interrupted one
    resumes from the newest step at which every member has a checkpoint (else it starts afresh). The
    population's log goes to pack_dir/pack.log."""
    from proximo.population.trainer import Population  # here: the sweep's driver reads trials, a worker trains

    dirs = [Path(d) for d in run_dirs]
    if all(is_finished(d) for d in dirs):
        return [read_summary(d) for d in dirs]
    pack = Path(pack_dir)
    pack.mkdir(parents=True, exist_ok=True)
    attempts = int(read_json_or_empty(pack / "pack.json").get("attempts", 0)) + 1
    atomic_write_json(pack / "pack.json", {"attempts": attempts, "pid": os.getpid(), "status": "running",
                                           "started": time.time(), "members": [str(d) for d in dirs]})
    for run_dir in dirs:
        run_dir.mkdir(parents=True, exist_ok=True)
        state = trial_state(run_dir)
        atomic_write_json(run_dir / TRIAL_META, {**state, "attempts": int(state.get("attempts", 0)) + 1,
                                                 "pid": os.getpid(), "status": "running", "started": time.time(),
                                                 "pack": str(pack)})
    with output_to(pack / "pack.log"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        print(f"proximo: attempt {attempts} of a population of {len(dirs)} {env_id} trials in pid {os.getpid()}",
              flush=True)
        ppo_configs = [PPOConfig.from_dict(c) for c in configs]

        def build() -> Population:
            # absolute member names: each member's run directory is its trial's own
            return Population(env_id, ppo_configs, pack, verbose=False, tensorboard=False,
                              names=[str(d) for d in dirs])
        population = build()
        resumed_from = None
        try:
            population.load()
            resumed_from = population.global_step
            print(f"proximo: resuming the population from step {population.global_step:,}", flush=True)
        except CheckpointError as exc:
            print(f"proximo: starting the population afresh ({exc})", flush=True)
            population = build()
        population.open()
        summaries = population.train(ppo_configs[0].total_steps)
    for run_dir in dirs:
        atomic_write_json(run_dir / TRIAL_META, {**trial_state(run_dir), "status": "done",
                                                 "resumed_from": resumed_from, "finished": time.time()})
    atomic_write_json(pack / "pack.json", {**read_json_or_empty(pack / "pack.json"), "status": "done",
                                           "finished": time.time()})
    return summaries


def _resume(trainer, checkpoints: list[Path]) -> str | None:
    """Load the newest checkpoint that loads (a kill may have damaged the newest); its name, or None."""
    for folder in reversed(checkpoints):
        try:
            trainer.load_training_state(folder)
        except CheckpointError as exc:
            print(f"proximo: skipping damaged checkpoint {folder.name}: {exc}", flush=True)
            continue
        print(f"proximo: resuming from {folder.name} (step {trainer.global_step:,})", flush=True)
        return folder.name
    return None
