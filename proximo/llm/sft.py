"""Supervised fine-tuning on a built-in task's exact answers, stopped at a target held-out accuracy
so that RL starts from a weak-but-nonzero policy."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from proximo.callbacks import Callback, CallbackList, CheckpointEvery, as_callbacks, run_loop
from proximo.core import masked_mean
from proximo.llm.config import SFTConfig
from proximo.llm.generation import pad_responses, response_logprobs
from proximo.llm.models import load_model
from proximo.llm.run import LLMRun, encode_prompts, evaluate, make_optimizer
from proximo.runtime import seed_everything, set_threads
from proximo.llm.tasks import get_task


def sft_loss(model, tokenizer, prompts: list[str], answers: list[str]) -> tuple[torch.Tensor, int]:
    """Mean negative log-likelihood of answer + <eos> given prompt (prompt tokens carry no loss);
    returns (loss, number of answer tokens)."""
    ids, mask = encode_prompts(tokenizer, prompts)
    rids, rmask = pad_responses([tokenizer.encode(a) + [tokenizer.eos_id] for a in answers], tokenizer.pad_id)
    logp, _, _ = response_logprobs(model, torch.cat([ids, rids], 1), torch.cat([mask, rmask], 1), ids.shape[1])
    return -masked_mean(logp, rmask), int(rmask.sum())


class SFT:
    """Train a causal LM on a task's answers: SFT("tiny", task="add").train() -> summary dict."""

    def __init__(self, model: str | Path = "tiny", run_dir: str | Path | None = None, verbose: bool = False,
                 tensorboard: bool = True, **config: Any) -> None:
        self.config = SFTConfig(**config)
        set_threads(self.config.torch_threads)
        self.rng = seed_everything(self.config.seed)
        self.task = get_task(self.config.task, self.config.digits)
        self.model, self.tokenizer, _ = load_model(model, seed=self.config.seed)
        self.max_new_tokens = self.config.max_new_tokens or self.task.max_new_tokens
        self.held_out = self.task.held_out_prompts(self.config.num_eval_prompts)
        self.run = LLMRun("sft", self.config, run_dir, {"model": str(model)}, tensorboard, verbose,
                          total=self.config.max_steps)

    def evaluate(self, greedy: bool = True) -> dict[str, float]:
        """Held-out accuracy of sampled (at the config temperature) and, if asked, greedy completions."""
        prompts = self.held_out
        sampled = evaluate(self.model, self.tokenizer, prompts, self.task.reward, self.max_new_tokens,
                           self.config.temperature)
        out = {"eval_sampled_accuracy": sampled["reward"], "response_length": sampled["response_length"]}
        if greedy:
            out["eval_greedy_accuracy"] = evaluate(self.model, self.tokenizer, prompts, self.task.reward,
                                                   self.max_new_tokens, greedy=True)["reward"]
        return out

    @property
    def global_step(self) -> int:
        """Optimizer steps so far."""
        return self.step_count

    def save_checkpoint(self) -> Path:
        """checkpoints/step_<step>/: the model folder as it is now."""
        return self.run.checkpoint(self.step_count, self.model, self.tokenizer)

    def train(self, callback: Any = None) -> dict[str, Any]:
        """Run until the target accuracy, max_steps or max_time_s; save model/ and summary.json.

        callback: as for every proximo trainer (proximo/callbacks.py); False from one stops training."""
        cfg = self.config
        optimizer = make_optimizer(self.model, cfg)
        self.step_count, self.tokens, self.started = 0, 0, time.perf_counter()
        self.last_loss = float("nan")

        def collect() -> list[str]:
            self.step_count += 1
            return self.task.sample_prompts(self.rng, cfg.batch_size)

        def learn(prompts: list[str]) -> dict[str, Any]:
            step = self.step_count
            lr = cfg.learning_rate * min(1.0, step / max(1, cfg.warmup_steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, count = sft_loss(self.model, self.tokenizer, prompts, [self.task.answer(p) for p in prompts])
            optimizer.zero_grad()
            loss.backward()
            optimizer.clip_grad_norm_(cfg.max_grad_norm)
            optimizer.step()
            self.tokens += count
            self.last_loss = float(loss.detach())
            return {"global_step": step, "update": step, "loss": self.last_loss, "learning_rate": lr}

        save = [CheckpointEvery(cfg.save_every)] if cfg.save_every else []
        callbacks = CallbackList([_EvaluateAndStop(), *as_callbacks(callback), *save])
        callbacks.init_callback(self)
        stop_reason = run_loop(collect, learn, lambda: self.step_count >= cfg.max_steps, callbacks) or "max_steps"
        step, loss = self.step_count, self.last_loss
        last_eval = self.evaluate()
        summary = {"kind": "sft", "steps": step, "stop_reason": stop_reason, "final_loss": loss, **last_eval}
        return self.run.finish(self.model, self.tokenizer, summary)


class _EvaluateAndStop(Callback):
    """Every eval_every steps (and at max_steps): held-out accuracy, logged; stop at target_accuracy or
    past max_time_s (only the sampled accuracy decides the stop; greedy is measured once at the end)."""

    reason: str | None = None

    def on_update_end(self, row: dict[str, Any]) -> bool | None:
        """Evaluate and log when due; False when a stopping rule is met."""
        sft, cfg = self.trainer, self.trainer.config
        step = sft.step_count
        if (cfg.eval_every > 0 and step % cfg.eval_every == 0) or step == cfg.max_steps:
            evaluation = sft.evaluate(greedy=False)
            speed = sft.tokens / (time.perf_counter() - sft.started)
            row.update(tokens_per_s=speed, **evaluation)
            sft.run.log(step, {k: v for k, v in row.items() if k not in ("global_step", "update")}, speed,
                        evaluation["eval_sampled_accuracy"])
            if cfg.target_accuracy is not None and evaluation["eval_sampled_accuracy"] >= cfg.target_accuracy:
                self.reason = "target_accuracy"
                return False
        if cfg.max_time_s is not None and time.perf_counter() - sft.started >= cfg.max_time_s:
            self.reason = "max_time_s"
            return False
        return None
