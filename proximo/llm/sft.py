"""Supervised fine-tuning: on a built-in task's exact answers, stopped at a target held-out accuracy so
that RL starts from a weak-but-nonzero policy; or on your prompt/completion (or messages) dataset, with
held-out token NLL and greedy exact match (proximo.llm.labeled_data reads the file)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from proximo.callbacks import Callback, run_loop
from proximo.core import masked_mean
from proximo.distributed import World
from proximo.errors import ProximoError
from proximo.llm.config import SFTConfig
from proximo.llm.labeled_data import load_train_eval, sft_examples
from proximo.llm.generation import pad_responses, response_logprobs
from proximo.llm.models import load_model
from proximo.llm.precision import Precision, resolve_llm_device
from proximo.llm.run import LLMRun, encode_prompts, evaluate, make_optimizer
from proximo.runtime import seed_everything, set_threads
from proximo.llm.tasks import get_task
from proximo.llm.trainer import Attributes, LLMTrainer, TrainedWeights, model_fingerprint


def sft_loss(model, tokenizer, prompts: list[str], answers: list[str]) -> tuple[torch.Tensor, int]:
    """Mean negative log-likelihood of answer + <eos> given prompt (prompt tokens carry no loss);
    returns (loss, number of answer tokens)."""
    ids, mask = encode_prompts(tokenizer, prompts)
    rids, rmask = pad_responses([tokenizer.encode(a) + [tokenizer.eos_id] for a in answers], tokenizer.pad_id)
    device = next(model.parameters()).device  # the batch goes where the model is
    attention = torch.cat([mask, rmask], 1).to(device)
    logp, _, _ = response_logprobs(model, torch.cat([ids, rids], 1).to(device), attention, ids.shape[1])
    rmask = rmask.to(device)
    return -masked_mean(logp, rmask), int(rmask.sum())


def mean_nll(model, tokenizer, examples: list[tuple[str, str]], batch_size: int = 256) -> float:
    """Mean per-token negative log-likelihood of completions + <eos> given their prompts (sft_loss's
    quantity, weighted by each batch's token count so it is the mean over all tokens)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            loss, tokens = sft_loss(model, tokenizer, [p for p, _ in chunk], [c for _, c in chunk])
            total += float(loss) * tokens
            count += tokens
    model.train(was_training)
    return total / max(count, 1)


class SFT(LLMTrainer):
    """Train a causal LM on a task's answers, SFT("tiny", task="add").train(), or on a dataset,
    SFT(model_dir, dataset="train.jsonl", eval_fraction=0.1).train() -> summary dict.

    With a dataset the held-out metric is the mean token NLL of the completions (eval_nll) and the
    greedy exact-match accuracy of their text (eval_greedy_accuracy); target_accuracy, when given
    explicitly, applies to that exact match (the task default of 0.4 does not). Without eval_dataset
    or eval_fraction the training rows are evaluated (the summary says so). global_step counts optimizer
    steps."""

    kind = "sft"
    step_unit = "optimizer_steps"
    speed = "tokens_per_s"

    def __init__(self, model: str | Path = "tiny", run_dir: str | Path | None = None, verbose: bool = False,
                 tensorboard: bool = True, dataset: Any = None, eval_dataset: Any = None,
                 eval_fraction: float | None = None, **config: Any) -> None:
        if dataset is None and (eval_dataset is not None or eval_fraction is not None):
            raise ProximoError("eval_dataset and eval_fraction hold out rows of a dataset; pass dataset=... too")
        if dataset is not None:
            config.setdefault("task", "")
            # The default stop is a task's sampled accuracy; a dataset run stops there only when asked.
            config.setdefault("target_accuracy", None)
        self.config = SFTConfig(**config)
        set_threads(self.config.torch_threads)
        self.rng = seed_everything(self.config.seed)
        self.model, self.tokenizer, _ = load_model(model, seed=self.config.seed)
        self.fingerprint = model_fingerprint(self.model)  # a resume checks it starts from these weights
        self.world = World.local()  # SFT runs in one process
        # Every proximo optimizer step ends in the same tail (Precision.step -> FlatOptimizer.clip_and_step);
        # the weights and Adam stay float32 on the run's device, passes run in config.dtype (autocast).
        self.device = resolve_llm_device(self.config.device)
        self.precision = Precision(self.device, self.config.dtype)
        self.model.to(self.device)
        self.step_count, self.tokens, self.last_loss = 0, 0, float("nan")
        self.before: dict[str, float] = {}
        self._order: list[int] = []  # the rest of the current pass over the dataset's rows
        extra: dict[str, Any] = {"model": str(model)}
        self.task = None
        self.examples: list[tuple[str, str]] | None = None
        if dataset is None:
            self.task = get_task(self.config.task, self.config.digits)
            self.max_new_tokens = self.config.max_new_tokens or self.task.max_new_tokens
            self.held_out = self.task.held_out_prompts(self.config.num_eval_prompts)
        else:
            train, name, held, held_name = load_train_eval(dataset, eval_dataset, eval_fraction, self.config.seed)
            self.examples = sft_examples(train, name, self.tokenizer)
            self.eval_on_train = held is None
            self.eval_examples = (self.examples if held is None else sft_examples(held, held_name, self.tokenizer)
                                  )[:self.config.num_eval_prompts]
            longest = max(len(self.tokenizer.encode(c)) for _, c in self.examples + self.eval_examples) + 1
            # Room for the longest completion and its <eos> (48: the generation limit proximo allows).
            self.max_new_tokens = self.config.max_new_tokens or min(48, longest)
            self._check_lengths(self.examples, name)
            if held is not None:
                self._check_lengths(self.eval_examples, held_name)
            extra.update(dataset=name, eval_dataset=held_name if held is not None else f"{name} (training rows)")
        # On a task the sampled accuracy decides the stop; on a dataset the greedy exact match.
        self.headline = "eval_sampled_accuracy" if self.task is not None else "eval_greedy_accuracy"
        self.run = LLMRun("sft", self.config, run_dir, extra, tensorboard, verbose, total=self.config.max_steps,
                          step_unit=self.step_unit)

    def _check_lengths(self, examples: list[tuple[str, str]], name: str) -> None:
        """Raise naming the first row whose prompt + completion + <eos> passes the model's positions."""
        limit = getattr(self.model.config, "max_position_embeddings", None) or getattr(self.model.config,
                                                                                       "n_positions", None)
        if not limit:
            return
        for row, (prompt, completion) in enumerate(examples):
            length = len(self.tokenizer.encode(prompt, add_bos=True)) + len(self.tokenizer.encode(completion)) + 1
            if length > limit:
                raise ProximoError(f"{name} row {row}: prompt + completion are {length} tokens, past the model's "
                                   f"{limit} positions; shorten the row or drop it")

    def _draw_examples(self, n: int) -> list[tuple[str, str]]:
        """n training examples, in shuffled passes over the rows (each row once per pass)."""
        batch = []
        while len(batch) < n:
            if not self._order:
                self._order = list(range(len(self.examples)))
                self.rng.shuffle(self._order)
            batch.append(self.examples[self._order.pop()])
        return batch

    def evaluate(self, greedy: bool = True) -> dict[str, float]:
        """Held-out accuracy of sampled (at the config temperature) and, if asked, greedy completions; with
        a dataset, held-out mean token NLL and (if greedy) greedy exact match of the completion text."""
        if self.task is None:
            out = {"eval_nll": mean_nll(self.model, self.tokenizer, self.eval_examples)}
            if greedy:
                answers = [c.strip() for _, c in self.eval_examples]

                def exact(start: int, completions: list[str]) -> torch.Tensor:
                    return torch.tensor([float(c.strip() == a) for c, a in zip(completions, answers[start:])])
                out["eval_greedy_accuracy"] = evaluate(self.model, self.tokenizer, [p for p, _ in self.eval_examples],
                                                       None, self.max_new_tokens, greedy=True, score=exact)["reward"]
            return out
        prompts = self.held_out
        sampled = evaluate(self.model, self.tokenizer, prompts, self.task.reward, self.max_new_tokens,
                           self.config.temperature)
        out = {"eval_sampled_accuracy": sampled["reward"], "response_length": sampled["response_length"]}
        if greedy:
            out["eval_greedy_accuracy"] = evaluate(self.model, self.tokenizer, prompts, self.task.reward,
                                                   self.max_new_tokens, greedy=True)["reward"]
        return out

    def make_optimizer(self):
        """AdamW over the model, in one flat buffer."""
        return make_optimizer(self.model, self.config)

    def export(self) -> tuple[Any, Any, None]:
        """(model, tokenizer, heads) of a checkpoint's model folder."""
        return self.model, self.tokenizer, None

    def state_parts(self) -> dict[str, Any]:
        """The weights, optimizer, counters and the pass over the dataset's rows."""
        return {**super().state_parts(), "policy": TrainedWeights(self.model),
                "": Attributes(self, "step_count", "tokens", "last_loss", "before", "_order")}

    def train(self, callback: Any = None) -> dict[str, Any]:
        """Run until the target accuracy, max_steps or max_time_s (a resumed run continues to them); save
        model/ and summary.json.

        callback: as for every proximo trainer (proximo/callbacks.py); False from one stops training."""
        cfg = self.config
        optimizer, precision = self.ensure_optimizer(), self.precision
        self.run.open(self.step_count, self.headline)
        if self.task is None and self.step_count == 0:
            self.before = self.evaluate()
            self.run.log(0, self.before, 0.0, self.before["eval_greedy_accuracy"])

        def collect() -> list[tuple[str, str]]:
            self.step_count += 1
            if self.task is None:
                return self._draw_examples(cfg.batch_size)
            return [(p, self.task.answer(p)) for p in self.task.sample_prompts(self.rng, cfg.batch_size)]

        def learn(batch: list[tuple[str, str]]) -> dict[str, Any]:
            step = self.step_count
            lr = cfg.learning_rate * min(1.0, step / max(1, cfg.warmup_steps))
            optimizer.set_lr(lr)
            with precision.autocast():
                loss, count = sft_loss(self.model, self.tokenizer, [p for p, _ in batch], [a for _, a in batch])
            optimizer.zero_grad()
            precision.backward(loss)
            precision.step(optimizer, cfg.max_grad_norm)
            self.tokens += count
            self.last_loss = float(loss.detach())
            return {"global_step": step, "update": step, "time_s": round(self.run.elapsed(), 3),
                    "loss": self.last_loss, "learning_rate": lr}

        # Metrics rows are the evaluation steps' (every row still goes to the health monitor and progress).
        callbacks = self.run_callbacks([_EvaluateAndStop()], callback, log_every=0, always=_evaluated)
        try:
            stop_reason = run_loop(collect, learn, lambda: self.step_count >= cfg.max_steps, callbacks) or "max_steps"
        finally:
            self.run.close()
        if cfg.save_every and getattr(self, "last_checkpoint_step", None) != self.step_count:
            self.save_checkpoint()  # the final state too, so that --resume can extend the run
        step, loss = self.step_count, self.last_loss
        last_eval = self.evaluate()
        summary = {"kind": "sft", "steps": step, "step_unit": self.step_unit, "stop_reason": stop_reason,
                   "final_loss": loss, **last_eval}
        if self.resumed_from is not None:
            summary["resumed_from"] = str(self.resumed_from)
        if self.task is None:
            summary.update(eval_nll_before=self.before["eval_nll"],
                           eval_greedy_accuracy_before=self.before["eval_greedy_accuracy"],
                           eval_rows="training" if self.eval_on_train else "held-out")
        return self.run.finish(self.model, self.tokenizer, summary)


def _evaluated(row: dict[str, Any]) -> bool:
    """Whether a step's row carries a held-out evaluation (those rows go to the metrics files)."""
    return any(key.startswith("eval_") for key in row)


class _EvaluateAndStop(Callback):
    """Every eval_every steps (and at max_steps): held-out accuracy, logged; stop at target_accuracy or
    past max_time_s (on a task only the sampled accuracy decides the stop and greedy is measured once at
    the end; on a dataset the greedy exact match decides, measured at every evaluation)."""

    reason: str | None = None

    def on_update_end(self, row: dict[str, Any]) -> bool | None:
        """Evaluate and log when due; False when a stopping rule is met."""
        sft, cfg = self.trainer, self.trainer.config
        step = sft.step_count
        if (cfg.eval_every > 0 and step % cfg.eval_every == 0) or step == cfg.max_steps:
            on_dataset = sft.task is None
            evaluation = sft.evaluate(greedy=on_dataset)
            accuracy = evaluation["eval_greedy_accuracy" if on_dataset else "eval_sampled_accuracy"]
            row.update(tokens_per_s=sft.tokens / max(sft.run.elapsed(), 1e-9), **evaluation)
            if cfg.target_accuracy is not None and accuracy >= cfg.target_accuracy:
                self.reason = "target_accuracy"
                return False
        if cfg.max_time_s is not None and sft.run.elapsed() >= cfg.max_time_s:
            self.reason = "max_time_s"
            return False
        return None
