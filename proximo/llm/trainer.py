"""What every LLM trainer (GRPO, PPO-RLHF, SFT, the reward model) shares with a classic run.

- One step counter: `global_step`, with `step_unit` naming what it counts (updates for GRPO and PPO-RLHF,
  optimizer steps for SFT and the reward model; env steps on the classic side). config.json records it,
  and `proximo plot` labels its axis with it.
- The run's callbacks (proximo/callbacks.py), the ones a classic run logs through: LogMetrics (metrics.csv,
  updates.jsonl, TensorBoard, `--track wandb`), WatchHealth (the live doctor), ShowProgress and
  CheckpointEvery; so `proximo doctor RUN` and `proximo plot RUN` read an LLM run directory as they read a
  classic one.
- One resumable state through the classic side's protocol (proximo/state.py): every component's
  state_dict() packed into checkpoints/step_N/state.safetensors + state.json, beside the checkpoint's model
  folder (which `proximo llm eval` loads). It holds the trained weights (the whole policy, or its LoRA
  adapter; the value head or critic), the optimizer moments and step counts, the loss scale, the counters
  and history, each algorithm's own state (RLHF's KL controller and score normalizer, SFT's pass over the
  data), the callbacks' state, and per rank every random stream (torch, Python, NumPy, the trainer's own
  draws of prompts and rows). A resumed run on the CPU is bitwise the uninterrupted one
  (tests/test_llm_resume.py).
"""
from __future__ import annotations

import random
import signal
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from proximo.callbacks import (
    Callback, CallbackList, CheckpointEvery, LogMetrics, ShowProgress, WatchHealth, as_callbacks,
)
from proximo.checkpoint import STATE_META, STATE_TENSORS, CheckpointError, OptimizerState, load_json, load_tensors
from proximo.distributed import rank_seed
from proximo.errors import ProximoError
from proximo.rundir import RunDir
from proximo.runtime import seed_everything
from proximo.state import RandomState, Together, pack_state, unpack_state
from proximo.stopping import StopSignals, TrainingInterrupted
from proximo.version import __version__

STATE_FORMAT = 1


class ResumeWarning(UserWarning):
    """A resume could not restore everything exactly (another process count, typically)."""


class TrainedWeights:
    """The trainable parameters of a module as a checkpoint component (a LoRA run: the adapter alone; the
    frozen weights come back from the model the run starts from)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter with requires_grad, by name."""
        return {name: p.detach() for name, p in self.module.named_parameters() if p.requires_grad}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy the saved values in place (the optimizer's flat buffer keeps its views); a saved set of other
        names or shapes is a CheckpointError naming the first difference."""
        mine = dict(self.module.named_parameters())
        mine = {name: p for name, p in mine.items() if p.requires_grad}
        missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
        if missing or extra:
            raise CheckpointError(f"the checkpoint's trained weights do not fit this model (missing {missing[:3]}, "
                                  f"unexpected {extra[:3]}); resume with the model and LoRA settings the run used")
        with torch.no_grad():
            for name, param in mine.items():
                if state[name].shape != param.shape:
                    raise CheckpointError(f"the checkpoint's {name} has shape {tuple(state[name].shape)}, this "
                                          f"model's {tuple(param.shape)}; resume with the model the run used")
                param.copy_(state[name])


class Attributes:
    """Some attributes of an object (JSON values) as a checkpoint component."""

    def __init__(self, owner: Any, *names: str) -> None:
        self.owner, self.names = owner, names

    def state_dict(self) -> dict[str, Any]:
        """{name: value} of each attribute."""
        return {name: getattr(self.owner, name) for name in self.names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set each attribute to its saved value."""
        for name in self.names:
            setattr(self.owner, name, state[name])


class PythonRandom:
    """A random.Random (a trainer's own draws of prompts or rows) as a checkpoint component."""

    def __init__(self, owner: Any, name: str = "rng") -> None:
        self.owner, self.name = owner, name

    def state_dict(self) -> dict[str, Any]:
        """The generator's state as JSON."""
        version, internal, gauss = getattr(self.owner, self.name).getstate()
        return {f"{self.name}_state": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put the generator back as saved."""
        version, internal, gauss = state[f"{self.name}_state"]
        getattr(self.owner, self.name).setstate((version, tuple(internal), gauss))


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What identifies the weights a run starts from: parameter count and the float64 sum of every value."""
    with torch.no_grad():
        total = sum(float(p.detach().double().sum()) for p in model.parameters())
    return {"parameters": sum(p.numel() for p in model.parameters()), "sum": total}


class LLMTrainer:
    """The shared part of the LLM trainers (see the module docstring). A subclass sets run, world, config,
    step_count and a fingerprint of its starting model, and names its state (state_parts) and what a
    checkpoint's model folder holds (export)."""

    kind = "llm"
    step_unit = "updates"              # what global_step counts
    headline = "reward"                # the row's figure the progress line shows
    speed = "gen_tokens_per_s"         # the row's speed the progress line shows
    step_count = 0
    resumed_from: Path | None = None   # the checkpoint this trainer was restored from, if any
    last_checkpoint: Path | None = None  # the newest checkpoint folder this process wrote
    _optimizer = None

    @property
    def _stops(self) -> StopSignals:
        """This trainer's SIGINT/SIGTERM requests (made on first use: the subclasses set up the rest)."""
        if "_stop_signals" not in self.__dict__:
            self._stop_signals = StopSignals()
        return self._stop_signals

    @property
    def global_step(self) -> int:
        """The run's one step counter (step_unit says what it counts)."""
        return self.step_count

    @property
    def run_dir(self) -> Path:
        """The run directory."""
        return self.run.path

    @property
    def verbose(self) -> bool:
        """Whether this process prints progress (rank 0 of a verbose run)."""
        return bool(self.run.verbose)

    # what each trainer fills in --------------------------------------------------------------------
    def make_optimizer(self):
        """The run's FlatOptimizer (subclasses)."""
        raise NotImplementedError

    def ensure_optimizer(self):
        """The run's optimizer, made on first use (a resume loads its moments into it)."""
        if self._optimizer is None:
            self._optimizer = self.make_optimizer()
        return self._optimizer

    def state_parts(self) -> dict[str, Any]:
        """Every component a checkpoint restores that is the same on every rank, by prefix (subclasses add
        theirs to this)."""
        parts: dict[str, Any] = {"optimizer": OptimizerState(self.ensure_optimizer())}
        for callback in getattr(self, "_callbacks", CallbackList([])).callbacks:
            if callback.state_dict():
                parts[f"callback.{type(callback).__name__}"] = callback
        return parts

    def rank_state_parts(self) -> dict[str, Any]:
        """This rank's own random streams: torch, Python, NumPy and the trainer's own draws."""
        return {"rng": Together(RandomState(), PythonRandom(self))}

    def export(self) -> tuple[Any, Any, dict | None]:
        """(model, tokenizer, heads) a checkpoint's model folder holds (subclasses)."""
        raise NotImplementedError

    # the run's callbacks --------------------------------------------------------------------------
    def run_callbacks(self, first: list[Callback], user: Any, last: list[Callback] | None = None,
                      log_every: int = 1, always=None) -> CallbackList:
        """proximo's own callbacks around the user's, as a classic run has them: first (evaluation), the user's,
        then on rank 0 metrics, the live health monitor and progress, then last, then periodic checkpoints
        (every rank: saving gathers each rank's random streams). Restores callbacks' state a resume saved."""
        hooks: list[Callback] = []
        if self.world.is_main:
            writer = self.run.open(self.step_count, self.headline)
            hooks += [LogMetrics(writer, log_every, always), WatchHealth(self.run.monitor),
                      ShowProgress(self.run.progress, self.speed, self.headline)]
        hooks += last or []
        if self.config.save_every:
            hooks.append(CheckpointEvery(self.config.save_every))
        hooks.append(StopOnSignal())  # last: a stop saves after everything else has seen the step
        callbacks = CallbackList([*first, *as_callbacks(user), *hooks])
        callbacks.init_callback(self)
        self._callbacks = callbacks
        saved = getattr(self, "_saved_callback_states", {})
        for callback in callbacks.callbacks:
            state = saved.get(f"callback.{type(callback).__name__}")
            if state is not None:
                callback.load_state_dict(state)
        self._saved_callback_states = {}
        return callbacks

    # checkpoints ------------------------------------------------------------------------------------
    def training_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON) of everything needed to continue this run; every rank calls it (each rank's random
        streams are gathered to rank 0)."""
        tensors, meta = pack_state(self.state_parts())
        meta.update(format_version=STATE_FORMAT, proximo_version=__version__, kind=self.kind,
                    global_step=self.step_count, step_unit=self.step_unit, model_fingerprint=self.fingerprint,
                    wall_time_s=self.run.elapsed(),
                    world={"size": self.world.size}, ranks=[])
        mine = pack_state(self.rank_state_parts())
        for rank, (part_tensors, part_meta) in enumerate(self._gather(*mine)):
            tensors.update({f"rank.{rank}.{key}": value for key, value in part_tensors.items()})
            meta["ranks"].append(part_meta)
        return tensors, meta

    def _gather(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> list[tuple[dict, dict]]:
        """Every rank's (tensors, JSON), in rank order; tensors travel as exact lists."""
        if self.world.size == 1:
            return [(tensors, meta)]
        sent = {"tensors": {k: [str(v.dtype).removeprefix("torch."), v.detach().cpu().tolist()]
                            for k, v in tensors.items()}, "meta": meta}
        return [({k: torch.tensor(values, dtype=getattr(torch, dtype)) for k, (dtype, values) in part["tensors"].items()},
                 part["meta"]) for part in self.world.all_gather_object(sent)]

    def save_checkpoint(self) -> Path:
        """checkpoints/step_<global_step>/: the model folder (what `llm eval` loads) and the training state
        (what --resume loads); every rank calls it, rank 0 writes."""
        state = self.training_state()
        model, tokenizer, heads = self.export() if self.world.is_main else (None, None, None)
        self.last_checkpoint_step = self.step_count
        self.last_checkpoint = self.run.checkpoint(self.step_count, model, tokenizer, heads, state=state)
        return self.last_checkpoint

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop after the current step with a checkpoint, as SIGINT/SIGTERM do."""
        self._stops.request(signum)

    def resume(self, path: str | Path) -> Path:
        """Restore this trainer from a run directory's newest checkpoint (or a checkpoint folder); train()
        then continues the run. Returns the checkpoint folder."""
        folder = resume_checkpoint(path)
        self.load_training_state(folder)
        return folder

    def load_training_state(self, folder: Path) -> None:
        """Become the trainer that save_checkpoint() wrote into folder (every rank calls it; rank 0 reads)."""
        folder = Path(folder)
        loaded: dict[str, torch.Tensor] = {}

        def read() -> dict[str, Any]:
            meta = load_json(folder / STATE_META)
            loaded.update(load_tensors(folder / STATE_TENSORS))
            return meta
        meta = self.world.on_main(read)
        tensors = self.world.broadcast_tensors(loaded if self.world.is_main else None)
        if meta.get("kind") != self.kind:
            raise CheckpointError(f"checkpoint {folder} is of a `proximo llm {meta.get('kind')}` run, not {self.kind}; "
                                  f"resume it with `proximo llm {meta.get('kind')} --resume`")
        saved = meta.get("model_fingerprint")
        if saved is not None and not _same_fingerprint(saved, self.fingerprint):
            raise CheckpointError(f"the model this run started from has changed since checkpoint {folder} was "
                                  f"written ({saved['parameters']:,} parameters summing to {saved['sum']:.9g}, now "
                                  f"{self.fingerprint['parameters']:,} summing to {self.fingerprint['sum']:.9g}); "
                                  "resume with the model the run was trained from")
        try:
            parts = self.state_parts()
            unpack_state({k: v for k, v in parts.items() if not k.startswith("callback.")}, tensors, meta)
            self._saved_callback_states = {key: meta[key] for key in meta if key.startswith("callback.")}
            ranks = meta["ranks"]
            rank, size = self.world.rank, self.world.size
            if len(ranks) == size:
                prefix = f"rank.{rank}."
                unpack_state(self.rank_state_parts(),
                             {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, ranks[rank])
            else:
                seed_everything(rank_seed(self.config.seed + self.step_count, rank))
                self.rng = random.Random(rank_seed(self.config.seed + self.step_count, rank))
                if self.world.is_main:
                    warnings.warn(f"proximo: warning: checkpoint {folder} was written by {len(ranks)} process(es) and "
                                  f"this run has {size}, so every random stream was re-seeded; the weights, optimizer "
                                  "state and counters carry over", ResumeWarning, stacklevel=2)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint {folder} is incomplete or damaged ({type(exc).__name__}: {exc}); "
                                  "resume from an earlier checkpoint") from exc
        self.run.elapsed_before = float(meta.get("wall_time_s", 0.0))
        self.resumed_from = folder


class StopOnSignal(Callback):
    """After a SIGINT/SIGTERM (on any rank): save a checkpoint once this step is done (unless one was just
    saved) and stop with TrainingInterrupted, which names the command that continues the run. The handlers
    live from the first step to the last, so a signal outside training keeps its usual meaning."""

    def on_training_start(self) -> None:
        """Catch the signals (rank 0 announces them: torchrun forwards a signal to every rank)."""
        self._restore = self.trainer._stops.install(announce=self.trainer.world.is_main)

    def on_update_end(self, row: dict[str, Any]) -> None:
        """Raise TrainingInterrupted when any rank was asked to stop."""
        trainer = self.trainer
        signum = trainer._stops.received or 0
        if trainer.world.size > 1:
            # Every rank must save and stop after the same step, or the next step's collectives would hang.
            signum = int(trainer.world.all_reduce_max_(torch.tensor([float(signum)])).item())
        if not signum:
            return
        folder = (trainer.last_checkpoint if getattr(trainer, "last_checkpoint_step", None) == trainer.step_count
                  else trainer.save_checkpoint())
        raise TrainingInterrupted(signum, trainer.step_count, folder, trainer.run_dir, trainer.world.size,
                                  command=f"proximo llm {trainer.kind}")

    def on_training_end(self) -> None:
        """Put the previous handlers back."""
        restore = getattr(self, "_restore", None)
        if restore is not None:
            restore()
            self._restore = None


def _same_fingerprint(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return int(a["parameters"]) == int(b["parameters"]) and abs(float(a["sum"]) - float(b["sum"])) <= \
        1e-9 * max(1.0, abs(float(a["sum"])))


def resume_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder to resume from: path itself when it holds a state.json, else the newest
    checkpoint of the run directory path (ProximoError when it has none)."""
    path = Path(path)
    if (path / STATE_META).is_file():
        return path
    if not (path / "config.json").is_file():
        raise ProximoError(f"{path} is neither a proximo run directory (no config.json) nor a checkpoint folder "
                           "(no state.json); pass the --run-dir of the run to continue")
    checkpoints = RunDir(path, create=False).checkpoints(STATE_META)
    if not checkpoints:
        raise ProximoError(f"{path} has no checkpoint to resume from (checkpoints/step_*/state.json); runs save them "
                           "every --save-every steps")
    return checkpoints[-1]
