"""A reward model: a linear head on a transformer's last hidden state, read at one token per sequence,
trained on preference pairs with the Bradley-Terry loss; reports held-out pairwise accuracy. Pairs come
from a built-in task (rule-made corruptions or the model's own wrong samples) or from your preference
dataset (prompt / chosen / rejected, read by proximo.llm.labeled_data).

A reward model is saved in transformers' form, XForSequenceClassification with num_labels 1 (what TRL's
RewardTrainer writes and most published reward models are), so AutoModelForSequenceClassification and
other tools load it, and any such folder works as a proximo reward. proximo's older form (a causal LM +
reward_head.safetensors) still loads."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from proximo.callbacks import FunctionCallback, run_loop
from proximo.distributed import World
from proximo.llm.config import RewardModelConfig
from proximo.errors import ProximoError
from proximo.llm.generation import generate, pad_responses
from proximo.llm.labeled_data import load_train_eval, preference_triples
from proximo.llm.losses import bradley_terry_loss, last_token_index
from proximo.llm.models import (
    ScalarHead, forward_hidden, hidden_size, is_model_dir, is_sequence_classifier, load_head, load_model,
    load_pretrained, resolve_model_dir,
)
from proximo.llm.precision import Precision, resolve_llm_device
from proximo.llm.run import LLMRun, decode_responses, encode_prompts, make_optimizer
from proximo.llm.tokenizer import load_tokenizer
from proximo.runtime import seed_everything, set_threads
from proximo.llm.tasks import get_task
from proximo.llm.trainer import Attributes, LLMTrainer, TrainedWeights, model_fingerprint

REWARD_HEAD = "reward"  # proximo's older form: model/reward_head.safetensors beside a causal LM


def is_reward_model_dir(path: str | Path) -> bool:
    """True for a folder (or a run directory's model/) holding a reward model in either form."""
    path = Path(path)
    for folder in (path, path / "model"):
        if is_model_dir(folder) and (is_sequence_classifier(folder)
                                     or (folder / f"{REWARD_HEAD}_head.safetensors").is_file()):
            return True
    return False


class RewardModel(nn.Module):
    """A transformer + linear head; score(ids [B, L], mask [B, L]) -> [B], read at one token per row.

    backbone: a transformers model whose base_model is the trunk (a causal LM, or a sequence classifier).
    pad_id None: the score is read at each row's last real token (proximo's older form); an id: at the last
    real token that is not pad_id, as transformers' sequence classifiers read theirs (with pad = eos, as
    TRL's RewardTrainer sets for a tokenizer without a pad token, that is the token before the eos)."""

    def __init__(self, backbone: nn.Module, tokenizer, head: ScalarHead | None = None,
                 pad_id: int | None = None) -> None:
        super().__init__()
        self.backbone, self.tokenizer = backbone, tokenizer
        self.head = head if head is not None else ScalarHead(hidden_size(backbone))
        self.pad_id = pad_id

    @classmethod
    def from_classifier(cls, classifier: nn.Module, tokenizer, source: str = "the model") -> "RewardModel":
        """A reward model on a transformers XForSequenceClassification with one label (its score layer is
        the head, shared); ProximoError in one line for another label count or a model without `score`."""
        labels = getattr(classifier.config, "num_labels", None)
        if labels != 1:
            raise ProximoError(f"{source} is a sequence classifier with {labels} labels; a reward model has one "
                               f"(num_labels=1, one score per sequence): train it as TRL's RewardTrainer or "
                               f"`proximo llm rm` does")
        layer = getattr(classifier, "score", None)
        if not isinstance(layer, nn.Linear):
            raise ProximoError(f"{source} ({type(classifier).__name__}) has no linear `score` layer; proximo reads "
                               f"decoder reward models (LlamaForSequenceClassification and the like)")
        return cls(classifier, tokenizer, ScalarHead(hidden_size(classifier), linear=layer),
                   pad_id=classifier.config.pad_token_id)

    @classmethod
    def from_causal_lm(cls, model: nn.Module, tokenizer) -> "RewardModel":
        """A new reward model in transformers' sequence-classifier form on the trunk of a causal LM (its
        weights copied, the LM head dropped) with a zero score layer: every score starts at 0."""
        from transformers import AutoModelForSequenceClassification
        config = copy.deepcopy(model.config)
        config.num_labels = 1
        config.pad_token_id = tokenizer.pad_id  # where transformers looks for the last non-pad token
        config.architectures = None  # save_pretrained writes the classifier's own
        classifier = AutoModelForSequenceClassification.from_config(config)
        classifier.base_model.load_state_dict(model.base_model.state_dict())
        nn.init.zeros_(classifier.score.weight)
        return cls.from_classifier(classifier.to(next(model.parameters()).device).eval(), tokenizer)

    def pool_index(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Index [B] of the token each row's score is read at (see the class docstring)."""
        read = attention_mask.bool()
        if self.pad_id is not None:
            not_pad = read & (input_ids != self.pad_id)
            read = torch.where(not_pad.any(1, keepdim=True), not_pad, read)
        positions = torch.arange(read.shape[1], device=read.device).expand_as(read)
        return (positions * read.long()).argmax(dim=1)

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One scalar per sequence [B] (float32, on the model's device), read at pool_index."""
        device = next(self.backbone.parameters()).device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        _, hidden = forward_hidden(self.backbone, input_ids, attention_mask, with_logits=False)
        index = self.pool_index(input_ids, attention_mask)
        rows = torch.arange(hidden.shape[0], device=device)
        return self.head(hidden[rows, index][:, None, :]).float()[:, 0]

    def score_texts(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """Scores [B] of prompt + completion + <eos> texts."""
        ids, mask = encode_prompts(self.tokenizer, prompts)
        rids, rmask = pad_responses([self.tokenizer.encode(c) + [self.tokenizer.eos_id] for c in completions],
                                    self.tokenizer.pad_id)
        return self.score(torch.cat([ids, rids], 1), torch.cat([mask, rmask], 1))

    def export(self) -> tuple[nn.Module, dict[str, nn.Module]]:
        """(model to save_pretrained, heads to save beside it): the classifier alone, or for the older form
        the causal LM and its reward head."""
        return (self.backbone, {}) if _is_classifier(self.backbone) else (self.backbone, {REWARD_HEAD: self.head})

    @classmethod
    def load(cls, path: str | Path) -> "RewardModel":
        """A reward model from a folder or run directory: transformers' sequence-classifier form (num_labels
        1; TRL's, `proximo llm rm`'s) or proximo's older causal LM + reward_head.safetensors."""
        directory = resolve_model_dir(path)
        if is_sequence_classifier(directory):
            from transformers import AutoModelForSequenceClassification
            classifier = load_pretrained(directory, AutoModelForSequenceClassification)
            return cls.from_classifier(classifier, load_tokenizer(directory), str(directory))
        if not (directory / f"{REWARD_HEAD}_head.safetensors").is_file():
            raise ProximoError(f"{directory} holds no reward model: neither a sequence classifier (config.json "
                               f"architectures ...ForSequenceClassification) nor {REWARD_HEAD}_head.safetensors; "
                               "train one with `proximo llm rm` or TRL's RewardTrainer")
        backbone, tokenizer, _ = load_model(directory)
        return cls(backbone, tokenizer, load_head(directory, REWARD_HEAD, hidden_size(backbone)))


def _is_classifier(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


def pairwise_accuracy(model: RewardModel, pairs: list[tuple[str, str, str]], batch_size: int = 512) -> float:
    """Fraction of (prompt, chosen, rejected) pairs where chosen scores higher (a tie counts half)."""
    was_training = model.training
    model.eval()
    wins = 0.0
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            prompts = [p for p, _, _ in chunk]
            chosen = model.score_texts(prompts, [c for _, c, _ in chunk])
            rejected = model.score_texts(prompts, [r for _, _, r in chunk])
            wins += float((chosen > rejected).sum()) + 0.5 * float((chosen == rejected).sum())
    model.train(was_training)
    return wins / len(pairs)


def sampled_pairs(model, tokenizer, task, prompts: list[str], rng, per_prompt: int = 4,
                  temperature: float = 1.0) -> list[tuple[str, str, str]]:
    """(prompt, exact answer, one of the model's own wrong samples) per prompt; a rule-made
    corruption where all per_prompt samples were right."""
    pairs = []
    for start in range(0, len(prompts), 256):
        chunk = prompts[start:start + 256]
        expanded = [p for p in chunk for _ in range(per_prompt)]
        ids, mask = encode_prompts(tokenizer, expanded)
        rollout = generate(model, ids, mask, task.max_new_tokens, tokenizer.stop_ids, tokenizer.pad_id, temperature)
        completions = decode_responses(tokenizer, rollout.response_ids, rollout.response_mask)
        for i, prompt in enumerate(chunk):
            answer = task.answer(prompt)
            wrong = [c for c in completions[i * per_prompt:(i + 1) * per_prompt] if c.strip() != answer]
            pairs.append((prompt, answer, rng.choice(wrong) if wrong else task.corrupt(answer, rng)))
    return pairs


def train_reward_model(model: str | Path = "tiny", run_dir: str | Path | None = None, verbose: bool = False,
                       tensorboard: bool = True, callback: Any = None, dataset: Any = None,
                       eval_dataset: Any = None, eval_fraction: float | None = None, **config: Any) -> dict[str, Any]:
    """Train a reward model on the task's synthetic preference pairs, or on dataset= (a preference file
    or list of rows) with eval_dataset= or eval_fraction= held out; returns the summary (held-out
    pairwise accuracy before and after included) and saves model/ as a transformers sequence classifier
    (num_labels 1). model: a built-in name, a causal LM folder or run directory (its trunk starts the reward
    model) or a reward model in either form (trained on). Without a held-out set a dataset run evaluates
    on its training pairs (the summary says so); at most eval_pairs held-out pairs are scored. callback: as
    for every proximo trainer (proximo/callbacks.py)."""
    trainer = RewardModelTrainer(model, run_dir, verbose, tensorboard, dataset, eval_dataset, eval_fraction, **config)
    return trainer.train(callback)


class RewardModelTrainer(LLMTrainer):
    """train_reward_model's run as an object, resumable: RewardModelTrainer(model, run_dir, ...,
    **RewardModelConfig fields).train(callback) -> summary. global_step counts optimizer steps."""

    kind = "rm"
    step_unit = "optimizer_steps"
    headline = "accuracy"
    speed = "sequences_per_s"

    def __init__(self, model: str | Path = "tiny", run_dir: str | Path | None = None, verbose: bool = False,
                 tensorboard: bool = True, dataset: Any = None, eval_dataset: Any = None,
                 eval_fraction: float | None = None, **config: Any) -> None:
        if dataset is None and (eval_dataset is not None or eval_fraction is not None):
            raise ProximoError("eval_dataset and eval_fraction hold out rows of a dataset; pass dataset=... too")
        if dataset is not None:
            config.setdefault("task", "")
        cfg = self.config = RewardModelConfig(**config)
        set_threads(cfg.torch_threads)
        rng = self.rng = seed_everything(cfg.seed)
        task = get_task(cfg.task, cfg.digits) if dataset is None else None
        policy = None  # the causal LM the pairs of pair_source "samples" come from
        if not isinstance(model, str) and is_reward_model_dir(model):
            if task is not None and cfg.pair_source == "samples":
                raise ProximoError(f"pair_source samples draws from a causal LM; {model} is a reward model: give the "
                                   "policy as --init, or pair_source corrupt")
            rm = RewardModel.load(model)  # train an existing reward model on
        else:
            policy, tokenizer, _ = load_model(model, seed=cfg.seed)
            rm = RewardModel.from_causal_lm(policy, tokenizer)
        tokenizer = rm.tokenizer
        self.fingerprint = model_fingerprint(rm)  # a resume checks it starts from these weights
        self.world = World.local()  # reward models train in one process
        self.rm = rm
        extra: dict[str, Any] = {"model": str(model)}
        self.eval_rows = "held-out"
        if dataset is not None:
            train, name, held, held_name = load_train_eval(dataset, eval_dataset, eval_fraction, cfg.seed)
            self.train_pairs = preference_triples(train, name, tokenizer)
            eval_pairs = self.train_pairs if held is None else preference_triples(held, held_name, tokenizer)
            self.eval_pairs = eval_pairs[:cfg.eval_pairs]
            self.eval_rows = "training" if held is None else "held-out"
            extra.update(dataset=name, eval_dataset=held_name if held is not None else f"{name} (training rows)")
        self.run = LLMRun("rm", cfg, run_dir, extra, tensorboard, verbose, total=cfg.max_steps,
                          step_unit=self.step_unit)
        if task is not None and cfg.pair_source == "samples":
            # Labelled samples of the model being improved: the errors the policy will actually make.
            self.train_pairs = sampled_pairs(policy, tokenizer, task, task.sample_prompts(rng, cfg.train_pairs), rng,
                                             temperature=cfg.temperature)
            self.eval_pairs = sampled_pairs(policy, tokenizer, task, task.held_out_prompts(cfg.eval_pairs), rng,
                                            temperature=cfg.temperature)
        elif task is not None:
            self.train_pairs = task.preference_pairs(rng, cfg.train_pairs)
            self.eval_pairs = task.preference_pairs(rng, cfg.eval_pairs, held_out=True)
        # Every proximo optimizer step ends in the same tail (Precision.step -> FlatOptimizer.clip_and_step); the
        # weights and Adam stay float32 on the run's device, passes run in config.dtype (autocast).
        self.device = resolve_llm_device(cfg.device)
        self.precision = Precision(self.device, cfg.dtype)
        rm.to(self.device)
        self.step_count, self.loss, self.before, self.accuracy = 0, float("nan"), None, None

    def make_optimizer(self):
        """AdamW over the backbone and head, in one flat buffer."""
        return make_optimizer(self.rm, self.config)

    def export(self) -> tuple[Any, Any, dict]:
        """(model, tokenizer, heads) of a checkpoint's model folder: the reward model in transformers' form."""
        model, heads = self.rm.export()
        return model, self.rm.tokenizer, heads

    def state_parts(self) -> dict[str, Any]:
        """The weights, optimizer and counters."""
        return {**super().state_parts(), "reward_model": TrainedWeights(self.rm),
                "": Attributes(self, "step_count", "loss", "before", "accuracy")}

    def train(self, callback: Any = None) -> dict[str, Any]:
        """Train to max_steps (a resumed run continues to it); save model/ and summary.json; the summary."""
        cfg, rm = self.config, self.rm
        optimizer, precision = self.ensure_optimizer(), self.precision
        self.run.open(self.step_count, self.headline)
        if self.step_count == 0:
            self.before = self.accuracy = pairwise_accuracy(rm, self.eval_pairs)
            self.run.log(0, {"eval_sampled_accuracy": self.before}, 0.0, self.before)
        rm.eval()  # dropout off, as for every proximo LM

        def collect() -> list[tuple[str, str, str]]:
            self.step_count += 1
            return [self.train_pairs[self.rng.randrange(len(self.train_pairs))] for _ in range(cfg.batch_size)]

        def learn(batch: list[tuple[str, str, str]]) -> dict[str, Any]:
            prompts = [p for p, _, _ in batch]
            with precision.autocast():
                scores = rm.score_texts(prompts + prompts, [c for _, c, _ in batch] + [r for _, _, r in batch])
            loss = bradley_terry_loss(scores[:cfg.batch_size], scores[cfg.batch_size:])
            optimizer.zero_grad()
            precision.backward(loss)
            precision.step(optimizer, cfg.max_grad_norm)
            self.loss = float(loss.detach())
            elapsed = self.run.elapsed()
            return {"global_step": self.step_count, "update": self.step_count, "time_s": round(elapsed, 3),
                    "loss": self.loss, "learning_rate": cfg.learning_rate,
                    "sequences_per_s": self.step_count * cfg.batch_size * 2 / max(elapsed, 1e-9)}

        # Metrics rows are the evaluation steps' (every row still goes to the health monitor and progress).
        callbacks = self.run_callbacks([FunctionCallback(self._evaluate_when_due)], callback, log_every=0,
                                       always=lambda row: "eval_sampled_accuracy" in row)
        try:
            stopped_by = run_loop(collect, learn, lambda: self.step_count >= cfg.max_steps, callbacks)
        finally:
            self.run.close()
        if cfg.save_every and getattr(self, "last_checkpoint_step", None) != self.step_count:
            self.save_checkpoint()  # the final state too, so that --resume can extend the run
        summary = {"kind": "rm", "steps": self.step_count, "step_unit": self.step_unit, "stopped_by": stopped_by,
                   "pairwise_accuracy_before": self.before, "pairwise_accuracy": self.accuracy,
                   "final_loss": self.loss, "eval_pairs": len(self.eval_pairs), "eval_rows": self.eval_rows}
        if self.resumed_from is not None:
            summary["resumed_from"] = str(self.resumed_from)
        model, heads = rm.export()
        return self.run.finish(model, rm.tokenizer, summary, heads)

    def _evaluate_when_due(self, row: dict[str, Any]) -> None:
        """Every eval_every steps and at max_steps: the held-out pairwise accuracy, into the row (it goes in
        the accuracy columns: it is this run's held-out metric)."""
        cfg = self.config
        if (cfg.eval_every and self.step_count % cfg.eval_every == 0) or self.step_count == cfg.max_steps:
            self.accuracy = pairwise_accuracy(self.rm, self.eval_pairs)
            row.update(accuracy=self.accuracy, eval_sampled_accuracy=self.accuracy)
