"""The loop GRPO and PPO-RLHF share: load the policy and a frozen reference, draw prompts, sample
rollouts, evaluate on held-out prompts, log, checkpoint. Subclasses implement one update (step)."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from proximo.errors import ProximoError
from proximo.learners.optimizer import FlatOptimizer
from proximo.llm.generation import Rollout, generate
from proximo.llm.models import load_model
from proximo.llm.run import (
    RewardFn, RunDir, decode_responses, encode_prompts, evaluate, make_optimizer, seed_all, set_threads,
)
from proximo.llm.tasks import get_task


def minibatch_indices(batch: int, num_minibatches: int, n_epochs: int, group_size: int = 1):
    """Index tensors of the minibatches of n_epochs shuffled passes over `batch` rollouts. With
    group_size > 1 (rows laid out as consecutive groups) whole groups are shuffled and kept together,
    so a minibatch holds every row of the groups it has (they then share one prompt pass)."""
    groups = batch // group_size
    if group_size > 1 and (batch % group_size or groups % num_minibatches):
        group_size, groups = 1, batch  # groups do not split evenly into minibatches: shuffle rows
    size = batch // num_minibatches
    offsets = torch.arange(group_size)
    for _ in range(n_epochs):
        order = torch.randperm(groups)
        if group_size > 1:
            order = (order[:, None] * group_size + offsets).reshape(-1)
        for start in range(0, batch, size):
            yield order[start:start + size]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class RLTrainer:
    """Shared machinery of the LLM RL trainers; see GRPO and RLHF."""

    kind = "rl"

    def __init__(self, model: str | Path, config, reward_fn: RewardFn | None = None,
                 prompts: list[str] | None = None, eval_prompts: list[str] | None = None,
                 run_dir: str | Path | None = None, verbose: bool = False, tensorboard: bool = True,
                 extra: dict[str, Any] | None = None) -> None:
        self.config = config
        set_threads(config.torch_threads)
        self.rng = seed_all(config.seed)
        # A built-in task supplies prompts, rewards and held-out prompts unless the caller brings them.
        self.task = get_task(config.task, config.digits) if config.task else None
        if prompts is not None:
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ProximoError("prompts must be a non-empty list of strings")
            self.prompts: list[str] | None = list(prompts)
        else:
            self.prompts = None
        if self.task is None and (self.prompts is None or reward_fn is None):
            raise ProximoError("without a built-in task, pass both prompts=[...] and reward_fn=...")
        self.reward_fn: RewardFn = reward_fn if reward_fn is not None else self.task.reward
        if not callable(self.reward_fn):
            raise ProximoError(f"reward_fn must be callable as reward_fn(prompts, completions), got {reward_fn!r}")
        if eval_prompts is not None:
            self.eval_prompts = list(eval_prompts)
        elif self.task is not None:
            self.eval_prompts = self.task.held_out_prompts(config.num_eval_prompts)
        else:
            self.eval_prompts = self.prompts[:config.num_eval_prompts]
        self.model, self.tokenizer, self.model_dir = load_model(model, seed=config.seed)
        self.max_new_tokens = config.max_new_tokens or (self.task.max_new_tokens if self.task else 16)
        self.reference = copy.deepcopy(self.model).eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.step_count = 0
        self.run = RunDir(self.kind, config, run_dir, {"model": str(model), **(extra or {})}, tensorboard,
                          verbose, total=config.steps)
        self.history: list[dict[str, Any]] = []

    def trainable_parameters(self):
        """Parameters the optimizer updates (the policy; subclasses add heads)."""
        return list(self.model.parameters())

    def make_optimizer(self) -> FlatOptimizer:
        """AdamW over trainable_parameters, in one flat buffer."""
        return make_optimizer(self.trainable_parameters, self.config)

    def sample_prompts(self, n: int) -> list[str]:
        """n training prompts: from the user's list (with replacement) or the task's sampler."""
        if self.prompts is not None:
            return [self.prompts[self.rng.randrange(len(self.prompts))] for _ in range(n)]
        return self.task.sample_prompts(self.rng, n)

    def rollout(self, prompts: list[str], repeats: int = 1) -> tuple[Rollout, list[str], float]:
        """Sample repeats completions per prompt (rows grouped by prompt); returns (rollout, completion
        texts, generation seconds)."""
        ids, mask = encode_prompts(self.tokenizer, prompts)
        started = time.perf_counter()
        rollout = generate(self.model, ids, mask, self.max_new_tokens, self.tokenizer.eos_id, self.tokenizer.pad_id,
                           temperature=self.config.temperature, repeats=repeats)
        seconds = time.perf_counter() - started
        return rollout, decode_responses(self.tokenizer, rollout.response_ids, rollout.response_mask), seconds

    def evaluate(self) -> dict[str, float]:
        """Held-out mean reward (accuracy on exact-match tasks) of sampled and greedy completions."""
        sampled = evaluate(self.model, self.tokenizer, self.eval_prompts, self.reward_fn, self.max_new_tokens,
                           self.config.temperature)
        greedy = evaluate(self.model, self.tokenizer, self.eval_prompts, self.reward_fn, self.max_new_tokens,
                          greedy=True)
        return {"eval_sampled_accuracy": sampled["reward"], "eval_greedy_accuracy": greedy["reward"]}

    def step(self, optimizer: FlatOptimizer) -> dict[str, float]:
        """One rollout + update; returns the row of statistics."""
        raise NotImplementedError

    def heads(self) -> dict:
        """Heads saved next to the policy (none for GRPO)."""
        return {}

    def train(self, steps: int | None = None) -> dict[str, Any]:
        """Run steps rollout+update rounds (default config.steps), evaluating every eval_every; writes
        model/ and summary.json and returns the summary (eval before and after included)."""
        steps = self.config.steps if steps is None else steps
        if steps < 1:
            raise ProximoError(f"steps must be at least 1, got {steps}")
        optimizer = getattr(self, "_optimizer", None) or self.make_optimizer()
        self._optimizer = optimizer
        before = self.evaluate()
        self.run.log(self.step_count, before, 0.0, before["eval_sampled_accuracy"])
        evaluation = before
        for index in range(steps):
            self.step_count += 1
            optimizer.ensure_intact()  # parameters re-homed since (a load, a .to()) are views again
            row = self.step(optimizer)
            every = self.config.eval_every
            if (every and self.step_count % every == 0) or index == steps - 1:
                evaluation = self.evaluate()
                row.update(evaluation)
            self.history.append(row)
            self.run.log(self.step_count, row, row.get("gen_tokens_per_s", 0.0), row.get("reward", 0.0))
            if self.config.save_every and self.step_count % self.config.save_every == 0:
                self.run.checkpoint(self.step_count, self.model, self.tokenizer, self.heads())
        last = self.history[-10:]
        summary = {
            "kind": self.kind, "steps": self.step_count,
            "before": before, "after": evaluation,
            "train_reward_last10": sum(r["reward"] for r in last) / len(last),
            "kl_ref_last10": _mean([r["kl_ref"] for r in self.history[-20:] if r.get("kl_ref") is not None][-10:]),
            "gen_tokens_per_s": sum(r["gen_tokens_per_s"] for r in self.history) / len(self.history),
            "step_tokens_per_s": sum(r["tokens_per_s"] for r in self.history) / len(self.history),
        }
        self.summary = self.run.finish(self.model, self.tokenizer, summary, self.heads())
        return self.summary

    def generate(self, prompts: list[str], greedy: bool = False) -> list[str]:
        """Completions of prompts by the current policy."""
        ids, mask = encode_prompts(self.tokenizer, prompts)
        rollout = generate(self.model, ids, mask, self.max_new_tokens, self.tokenizer.eos_id, self.tokenizer.pad_id,
                           temperature=self.config.temperature, greedy=greedy)
        return decode_responses(self.tokenizer, rollout.response_ids, rollout.response_mask)
