"""Supervised fine-tuning on a built-in task's exact answers, stopped at a target held-out accuracy
so that RL starts from a weak-but-nonzero policy."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from proximo.core import masked_mean
from proximo.llm.config import SFTConfig
from proximo.llm.generation import pad_responses, response_logprobs
from proximo.llm.models import load_model
from proximo.llm.run import RunDir, encode_prompts, evaluate, make_optimizer, seed_all, set_threads
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
        self.rng = seed_all(self.config.seed)
        self.task = get_task(self.config.task, self.config.digits)
        self.model, self.tokenizer, _ = load_model(model, seed=self.config.seed)
        self.max_new_tokens = self.config.max_new_tokens or self.task.max_new_tokens
        self.held_out = self.task.held_out_prompts(self.config.num_eval_prompts)
        self.run = RunDir("sft", self.config, run_dir, {"model": str(model)}, tensorboard, verbose,
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

    def train(self) -> dict[str, Any]:
        """Run until the target accuracy, max_steps or max_time_s; save model/ and summary.json."""
        cfg = self.config
        optimizer = make_optimizer(self.model, cfg)
        last_eval: dict[str, float] = {}
        step, tokens, started = 0, 0, time.perf_counter()
        stop_reason = "max_steps"
        while step < cfg.max_steps:
            step += 1
            lr = cfg.learning_rate * min(1.0, step / max(1, cfg.warmup_steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            prompts = self.task.sample_prompts(self.rng, cfg.batch_size)
            loss, count = sft_loss(self.model, self.tokenizer, prompts, [self.task.answer(p) for p in prompts])
            optimizer.zero_grad()
            loss.backward()
            optimizer.clip_grad_norm_(cfg.max_grad_norm)
            optimizer.step()
            tokens += count
            due = cfg.eval_every > 0 and step % cfg.eval_every == 0
            if due or step == cfg.max_steps:
                # Only the sampled accuracy decides the stop; greedy is measured once at the end.
                last_eval = self.evaluate(greedy=False)
                speed = tokens / (time.perf_counter() - started)
                self.run.log(step, {"loss": float(loss.detach()), "learning_rate": lr, "tokens_per_s": speed, **last_eval},
                             speed, last_eval["eval_sampled_accuracy"])
                if cfg.target_accuracy is not None and last_eval["eval_sampled_accuracy"] >= cfg.target_accuracy:
                    stop_reason = "target_accuracy"
                    break
            if cfg.max_time_s is not None and time.perf_counter() - started >= cfg.max_time_s:
                stop_reason = "max_time_s"
                break
            if cfg.save_every and step % cfg.save_every == 0:
                self.run.checkpoint(step, self.model, self.tokenizer)
        last_eval = self.evaluate()
        summary = {"kind": "sft", "steps": step, "stop_reason": stop_reason, "final_loss": float(loss.detach()), **last_eval}
        return self.run.finish(self.model, self.tokenizer, summary)
