"""What every LLM run shares: the run directory (config.json, metrics.csv, TensorBoard, summary.json,
safetensors checkpoints), held-out evaluation, seeding and the optimizer."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from proximo.checkpoint import STATE_META, STATE_TENSORS, atomic_build_dir, write_files
from proximo.diagnostics import HealthMonitor
from proximo.errors import ProximoError
from proximo.learners.optimizer import FlatOptimizer
from proximo.llm.generation import generate, pad_prompts
from proximo.llm.models import save_model
from proximo.metrics import MetricsWriter, Progress
from proximo.rundir import STEP_DIGITS, RunDir
from proximo.tracking import open_tracker
from proximo.version import __version__

LLM_COLUMNS = [
    "global_step", "update", "time_s", "reward", "reward_std", "accuracy", "eval_sampled_accuracy",
    "eval_greedy_accuracy", "kl_ref", "entropy", "clip_fraction", "approx_kl", "policy_loss", "value_loss",
    "loss", "response_length", "kl_coef", "learning_rate", "tokens_per_s", "gen_tokens_per_s", "score",
    "truncated_fraction", "skipped_fraction", "groups_drawn", "groups_dropped", "groups_filled", "eval_nll",
    "zero_std_fraction", "offpolicy/kl", "offpolicy/abs_log_w", "offpolicy/clipped_frac", "offpolicy/stale_frac",
    "offpolicy/version_lag",
]
RewardFn = Callable[[list[str], list[str]], list[float]]


def make_optimizer(params, config) -> FlatOptimizer:
    """AdamW over params (a module, a function returning parameters, or a list; one flat buffer, fused)
    with the config's learning rate, eps and weight decay."""
    return FlatOptimizer(params, lr=config.learning_rate, eps=config.adam_eps,
                         weight_decay=getattr(config, "weight_decay", 0.0), decoupled_weight_decay=True)


def call_reward(reward_fn: RewardFn, prompts: list[str], completions: list[str]) -> torch.Tensor:
    """reward_fn's rewards as a float tensor [B], checked for length and finiteness."""
    try:
        values = [float(v) for v in reward_fn(prompts, completions)]
    except (TypeError, ValueError) as exc:
        raise ProximoError(f"reward_fn must return a list of numbers, one per completion ({exc})") from None
    if len(values) != len(completions):
        raise ProximoError(f"reward_fn returned {len(values)} rewards for {len(completions)} completions; "
                           f"return one per completion")
    rewards = torch.tensor(values, dtype=torch.float32)
    if not torch.isfinite(rewards).all():
        raise ProximoError("reward_fn returned a NaN or infinite reward; return finite numbers")
    return rewards


def prompt_token_ids(tokenizer, prompts: list[str], max_tokens: int | None = None) -> tuple[list[list[int]], int]:
    """(token ids of each prompt, starting with <bos> when there is one; how many were cut). A prompt
    over max_tokens keeps its bos and its last tokens: the end of a prompt (the question, the
    assistant turn) is what the completion follows."""
    ids = [tokenizer.encode(p, add_bos=True) for p in prompts]
    if max_tokens is None:
        return ids, 0
    cut = 0
    for row, tokens in enumerate(ids):
        if len(tokens) > max_tokens:
            keep_bos = tokenizer.bos_id is not None and tokens[0] == tokenizer.bos_id
            ids[row] = ([tokens[0]] if keep_bos else []) + tokens[len(tokens) - max_tokens + int(keep_bos):]
            cut += 1
    return ids, cut


def encode_prompts(tokenizer, prompts: list[str], max_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (ids [B, P], mask [B, P]) of prompts, each starting with <bos> when there is one and
    cut to max_tokens as prompt_token_ids does."""
    return pad_prompts(prompt_token_ids(tokenizer, prompts, max_tokens)[0], tokenizer.pad_id)


def decode_responses(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """Completion texts of right-padded responses [B, R] (up to <eos>)."""
    lengths = response_mask.sum(1).tolist()
    rows = response_ids.tolist()
    return [tokenizer.decode(row[:n]) for row, n in zip(rows, lengths)]


def evaluate(model, tokenizer, prompts: list[str], reward_fn: RewardFn | None, max_new_tokens: int,
             temperature: float = 1.0, greedy: bool = False, batch_size: int = 512,
             score: Callable[[int, list[str]], torch.Tensor] | None = None,
             max_prompt_tokens: int | None = None,
             sample: Callable[[list[str], torch.Tensor, torch.Tensor], tuple[Any, list[str]]] | None = None
             ) -> dict[str, float]:
    """Mean reward (the accuracy for exact-match tasks) and mean response length on prompts. score, when
    given, replaces reward_fn: score(start, completions) -> rewards [n] of prompts[start:start + n], NaN
    for a sample no reward function scored (left out of the mean). Prompts over max_prompt_tokens are cut
    as in training. sample, when given, replaces one-turn generation: sample(prompts, ids [n, P], mask
    [n, P]) -> (rollout, completions) (multi-turn episodes; the length counts the policy's tokens)."""
    was_training = model.training
    model.eval()
    total, scored, length = 0.0, 0, 0.0
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, mask = encode_prompts(tokenizer, chunk, max_prompt_tokens)
        if sample is not None:
            rollout, completions = sample(chunk, ids, mask)
        else:
            rollout = generate(model, ids, mask, max_new_tokens, tokenizer.stop_ids, tokenizer.pad_id,
                               temperature=temperature, greedy=greedy)
            completions = decode_responses(tokenizer, rollout.response_ids, rollout.response_mask)
        rewards = call_reward(reward_fn, chunk, completions) if score is None else score(start, completions)
        valid = ~torch.isnan(rewards)
        total += float(rewards[valid].sum())
        scored += int(valid.sum())
        length += float(rollout.response_mask.sum())
    model.train(was_training)
    return {"reward": total / max(scored, 1), "response_length": length / len(prompts)}


def save_model_atomic(directory: Path, model, tokenizer, heads: dict | None = None) -> None:
    """save_model into a temporary sibling folder, then rename it into place."""
    atomic_build_dir(Path(directory), lambda tmp: save_model(model, tokenizer, tmp, heads))


def default_run_dir(kind: str, task: str, seed: int) -> Path:
    """runs/llm-<kind>-<task>-s<seed>-<YYYYmmdd-HHMMSS> (task "data" for a run on the user's dataset)."""
    return Path("runs") / f"llm-{kind}-{task or 'data'}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"


class LLMRun:
    """An LLM trainer's run directory (proximo/rundir.py, the same layout as a classic run): config.json
    at the start, a metrics row per step, checkpoints/step_<N>/ (a model folder, with the training state
    beside it), model/, summary.json. The metrics writer, progress display and health monitor open at
    open() (a resume drops the rows logged past its checkpoint); log() writes a row outside the
    callbacks (the evaluation before training)."""

    def __init__(self, kind: str, config, run_dir: str | Path | None, extra: dict[str, Any],
                 tensorboard: bool = True, verbose: bool = False, total: int = 0, step_unit: str = "updates") -> None:
        self.dir = RunDir(run_dir if run_dir is not None else default_run_dir(kind, config.task, config.seed))
        self.path = self.dir.path
        self.config, self.tensorboard, self.total = config, tensorboard, total
        self.dir.write_config({"kind": kind, "proximo_version": __version__, "step_unit": step_unit,
                               "config": config.to_dict(), **extra})
        self._metrics: MetricsWriter | None = None
        self.progress: Progress | None = None
        # The same health rules as classic runs; they judge whichever statistics an LLM row has
        # (reward, kl_ref, response_length, entropy, clip_fraction, ...), reward hacking included.
        self.monitor = HealthMonitor.from_config(config, total_updates=total or None)
        self.verbose = verbose
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()
        self.elapsed_before = 0.0  # training seconds of the run before a resume

    def open(self, step: int = 0, headline: str = "reward") -> MetricsWriter:
        """Open the metrics writer (rows past step dropped: a resumed run logs them again) and the progress
        display at step (headline: the figure it shows); returns the writer."""
        if self._metrics is None:
            self._metrics = self.dir.metrics(tensorboard=self.tensorboard, columns=LLM_COLUMNS, from_step=step,
                                             tracker=open_tracker(self.config, self.path))
            self.progress = Progress(self.total, step, enabled=self.verbose, headline=headline, unit="tokens")
        return self._metrics

    @property
    def metrics(self) -> MetricsWriter:
        """The metrics writer (opened at step 0 if open() was not called)."""
        return self.open()

    def record(self, **fields: Any) -> None:
        """Add fields to config.json (the command line a run was started with, for --resume)."""
        self.dir.write_config({**self.dir.read_config(), **fields})

    def elapsed(self) -> float:
        """Wall seconds the run has trained (before a resume too)."""
        return self.elapsed_before + time.perf_counter() - self.start

    def log(self, step: int, row: dict[str, Any], speed: float = 0.0, headline: float = 0.0) -> None:
        """Write one metrics row and advance the progress display (outside the callbacks, which log the
        rows of training steps)."""
        full_row = {"global_step": step, "update": step, "time_s": round(self.elapsed(), 3), **row}
        self.metrics.write(full_row)
        if step > 0:  # step 0 is the evaluation before training, not an update
            self.monitor.observe_and_report(full_row, self.path, echo=self.verbose)
        self.progress.update(step, speed, headline)

    def checkpoint(self, step: int, model, tokenizer, heads: dict | None = None, keep: int = 3,
                   state: tuple[dict, dict] | None = None) -> Path:
        """Save checkpoints/step_<step>/ (a model folder, and state = (tensors, JSON) of the training state
        as state.safetensors + state.json) atomically, and drop all but the newest keep."""
        def fill(folder: Path) -> None:
            save_model(model, tokenizer, folder, heads)
            if state is not None:
                write_files(folder, {STATE_TENSORS: state[0], STATE_META: state[1]})
        return self.dir.save_checkpoint(step, fill, keep)

    def finish(self, model, tokenizer, summary: dict[str, Any], heads: dict | None = None) -> dict[str, Any]:
        """Save the final model into model/, write summary.json, close the writers."""
        save_model_atomic(self.path / "model", model, tokenizer, heads)
        summary = {**summary, "wall_time_s": round(self.elapsed(), 2),
                   "cpu_time_s": round(time.process_time() - self.cpu_start, 2), "run_dir": str(self.path)}
        self.dir.write_summary(summary)
        self.close()
        return summary

    def close(self) -> None:
        """Close the metrics writer and the progress display (a run stopped by an error, too)."""
        if self._metrics is not None:
            self._metrics.close()
            self.progress.close()
            self._metrics = None


class RankRun:
    """What a rank other than 0 holds in place of LLMRun in a data-parallel run: the same calls, no files
    (rank 0 alone writes the run directory and prints)."""

    verbose = False

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.start = time.perf_counter()
        self.elapsed_before = 0.0

    def elapsed(self) -> float:
        """Wall seconds the run has trained."""
        return self.elapsed_before + time.perf_counter() - self.start

    def open(self, step: int = 0, headline: str = "reward") -> None:
        """Nothing: rank 0 writes the metrics."""

    def record(self, **fields: Any) -> None:
        """Nothing: rank 0 writes config.json."""

    def log(self, step: int, row: dict[str, Any], speed: float = 0.0, headline: float = 0.0) -> None:
        """Nothing: rank 0 writes the row."""

    def checkpoint(self, step: int, model, tokenizer, heads: dict | None = None, keep: int = 3,
                   state: tuple[dict, dict] | None = None) -> Path:
        """Nothing: rank 0 saves; returns the folder it writes."""
        return self.path / "checkpoints" / f"step_{step:0{STEP_DIGITS}d}"

    def finish(self, model, tokenizer, summary: dict[str, Any], heads: dict | None = None) -> dict[str, Any]:
        """The summary as rank 0 completes it, without writing it."""
        return {**summary, "wall_time_s": round(self.elapsed(), 2), "run_dir": str(self.path)}

    def close(self) -> None:
        """Nothing to close."""


def read_run(path: str | Path) -> dict[str, Any]:
    """The config.json of a proximo LLM run directory."""
    return RunDir(path, create=False).read_config()
