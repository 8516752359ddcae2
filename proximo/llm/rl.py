"""The loop GRPO and PPO-RLHF share: load the policy and a frozen reference, draw prompts, sample
rollouts, evaluate on held-out prompts, log, checkpoint. Subclasses implement one update (step).

Data parallel: under torchrun (or `proximo llm grpo --nproc K`) each process is one rank with a full
replica of the policy, the reference and the optimizer state (on CUDA, GPU LOCAL_RANK). Parameters start
equal (a built-in model and a LoRA adapter are broadcast from rank 0), each rank seeds its draws with
rank_seed and rolls out prompts_per_step / K prompts (its own groups), each part's loss is divided by
the global minibatch's count, and the flat gradient is all-reduced (summed) once per optimizer step, so
the step is the whole batch's. Statistics an algorithm needs over the batch (GRPO's batch reward std,
REINFORCE++ return whitening, RLHF's score normalization, advantage whitening and adaptive KL) and
every logged statistic pool all ranks; dynamic sampling stays per rank. Held-out evaluation is sharded:
each rank completes its slice of the prompts and the sums are pooled (no rank idles into the collective
timeout during a long evaluation, and it runs K times as fast). Rank 0 alone writes the run directory
and prints.

Not wired: FSDP / ZeRO (nor accelerate or DeepSpeed). They shard the parameters, gradients and Adam
state across ranks (ZeRO-1: optimizer state; ZeRO-2: + gradients, reduce-scatter in place of the
all-reduce; ZeRO-3 / FSDP: + parameters, all-gathered layer by layer for each forward and backward),
so a model whose replica, fp32 master weights and two Adam moments (~16 bytes per trained parameter)
do not fit one device still trains; proximo keeps a full replica per rank. Wiring FSDP would take:
wrapping the policy (torch.distributed.fsdp fully_shard per transformer block) in place of the flat
FlatOptimizer buffer and the learner's gradient all-reduce (FSDP reduce-scatters itself; a per-shard AdamW), generation
from the sharded model (an all-gather per layer per decoded token, or summoning full parameters for
sampling), the reference kept sharded or as a LoRA-off pass, and checkpoints gathered on rank 0 or
saved as sharded state dicts."""
from __future__ import annotations

import copy
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from proximo.errors import ConfigError, ProximoError
from proximo.distributed import (
    World, broadcast_module_, broadcast_parameters_, init_world, launched_by_torchrun, rank_seed,
)
from proximo.learners.optimizer import FlatOptimizer
from proximo.llm.generation import KVCacheSampler, Rollout, Sampler, generate, pad_prompts, response_logprobs
from proximo.llm.data import PromptDataset, render_prompt
from proximo.llm.learners import TokenLearner, micro_batches  # noqa: F401 - micro_batches is imported from here too
from proximo.llm.lora import LoRA
from proximo.llm.multiturn import episode_sampler, run_episodes
from proximo.llm.models import enable_gradient_checkpointing, load_model, position_limit
from proximo.llm.precision import Precision, resolve_llm_device
from proximo.llm.rewards import RewardSet, score_samples
from proximo.llm.run import (
    LLMRun, RankRun, RewardFn, decode_responses, encode_prompts, evaluate, make_optimizer, prompt_token_ids,
)
from proximo.callbacks import Callback, run_loop
from proximo.runtime import seed_everything, set_threads
from proximo.llm.tasks import get_task
from proximo.llm.trainer import Attributes, LLMTrainer, TrainedWeights, model_fingerprint


def split_prompts(config, size: int) -> int:
    """The prompts of one rank's share of a step (prompts_per_step over size ranks); ConfigError in one
    line naming the fix when they do not split evenly, or a share not into num_minibatches."""
    total = config.prompts_per_step
    if total % size:
        fits = [k for k in range(1, min(total, 64) + 1) if total % k == 0]
        raise ConfigError(f"{size} processes do not divide prompts_per_step {total} (the prompts of a step, split "
                          f"evenly over the processes); use --nproc {', '.join(map(str, fits))} (under torchrun: "
                          f"that many processes in all), or a prompts_per_step that is a multiple of {size}")
    share = total // size
    completions = share * (config.rollout_size // total)
    if completions % config.num_minibatches:
        raise ConfigError(f"num_minibatches {config.num_minibatches} does not divide one process's {completions} "
                          f"completions per step (prompts_per_step {total} over {size} processes); lower "
                          f"num_minibatches or raise prompts_per_step")
    return share


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class RLTrainer(LLMTrainer):
    """Shared machinery of the LLM RL trainers; see GRPO and RLHF. global_step counts updates (one
    rollout + update round each)."""

    kind = "rl"
    # A multi-turn environment (proximo/llm/multiturn.py) when episodes have several turns; None: one turn.
    environment = None
    tool_schemas: list | None = None  # the tools' JSON schemas, given to the chat template with chat prompts

    def __init__(self, model: str | Path, config, reward_fn: RewardFn | str | list | None = None,
                 prompts: list[str] | None = None, eval_prompts: list[str] | None = None,
                 run_dir: str | Path | None = None, verbose: bool = False, tensorboard: bool = True,
                 extra: dict[str, Any] | None = None, dataset: Any = None, eval_dataset: Any = None,
                 eval_fraction: float | None = None, reward_weights: list[float] | None = None,
                 sampler: Sampler | None = None) -> None:
        self.config = config
        # Files to read again in `proximo llm eval RUN` (absolute: eval may run from elsewhere).
        data_files = {f"{name}_file": str(Path(value).resolve()) if isinstance(value, (str, Path)) else None
                      for name, value in (("dataset", dataset), ("eval_dataset", eval_dataset))}
        set_threads(config.torch_threads)
        # Under torchrun this process is one rank of a data-parallel run (see the module docstring).
        self.device = resolve_llm_device(config.device)
        self.world: World = init_world(self.device) if launched_by_torchrun() else World.local()
        if self.world.size > 1 and self.device.type == "cuda":
            if self.world.device.type != "cuda":
                raise ConfigError(f"rank {self.world.rank} has no GPU of its own (LOCAL_RANK {self.world.local_rank}, "
                                  f"{torch.cuda.device_count()} visible); start at most one process per GPU, "
                                  "or set device cpu")
            self.device = self.world.device  # cuda:LOCAL_RANK
        self.prompts_per_rank = split_prompts(config, self.world.size)
        # Each rank draws its own prompts and samples; rank 0 keeps the single-process seed.
        self.rng = seed_everything(rank_seed(config.seed, self.world.rank))
        # A built-in task supplies prompts, rewards and held-out prompts unless the caller brings them.
        self.task = get_task(config.task, config.digits) if config.task else None
        if prompts is not None:
            if dataset is not None:
                raise ProximoError("pass prompts=[...] or dataset=..., not both")
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ProximoError("prompts must be a non-empty list of strings")
            dataset = [{"prompt": p} for p in prompts]
        # Every prompt source but a task's endless sampler is a dataset of rows (a list of strings too).
        self.dataset: PromptDataset | None = None if dataset is None else PromptDataset.load(dataset)
        if self.task is None and (self.dataset is None or reward_fn is None):
            raise ProximoError("without a built-in task, pass both prompts=[...] (or dataset=...) and reward_fn=...")
        self.reward_is_task = reward_fn is None
        if isinstance(reward_fn, RewardSet) and reward_weights is None:
            self.rewards = reward_fn  # already a set (PPO-RLHF evaluating with its training reward)
        else:
            self.rewards = RewardSet(self.task.reward if reward_fn is None else reward_fn, reward_weights)
        self.reward_fn = self.rewards.funcs[0] if len(self.rewards.funcs) == 1 else self.rewards
        self.eval_dataset: PromptDataset | None = None
        if eval_dataset is not None and eval_fraction is not None:
            raise ProximoError("pass eval_dataset or eval_fraction, not both")
        if eval_fraction is not None:
            if self.dataset is None:
                raise ProximoError("eval_fraction splits a dataset; pass dataset=... (or --dataset) with it")
            self.dataset, self.eval_dataset = self.dataset.split(eval_fraction, config.seed)
        elif eval_dataset is not None:
            self.eval_dataset = PromptDataset.load(eval_dataset)
        elif eval_prompts is not None:
            self.eval_dataset = PromptDataset.load([{"prompt": p} for p in eval_prompts])
        elif self.task is None:
            self.eval_dataset = self.dataset  # nothing held out: evaluation reuses the training rows
        self.eval_rows = "training" if self.task is None and self.eval_dataset is self.dataset else "held-out"
        self.precision = Precision(self.device, config.dtype)
        self.sampler: Sampler = sampler if sampler is not None else KVCacheSampler()
        # Under LoRA every base weight stays frozen, stored in the run's dtype (cast_frozen below): read them
        # in it at once, without a float32 copy of the whole model on the way (peft keeps its adapter float32).
        frozen_base = self.precision.dtype if config.lora_r and self.precision.mixed else torch.float32
        self.model, self.tokenizer, self.model_dir = load_model(model, seed=config.seed, dtype=frozen_base)
        if self.model_dir is None:
            broadcast_module_(self.model, self.world)  # built from the seed, not read: make sure it is rank 0's
        self.fingerprint = model_fingerprint(self.model)  # a resume checks it starts from these weights
        self.max_new_tokens = config.max_new_tokens or (self.task.max_new_tokens if self.task else 16)
        self.train_texts = self._render(self.dataset)
        if self.eval_dataset is not None:
            self.eval_dataset = PromptDataset(self.eval_dataset.rows[:config.num_eval_prompts],
                                              self.eval_dataset.source)
            self.eval_texts = self._render(self.eval_dataset)
            self.eval_prompts = self.eval_texts
        else:
            self.eval_prompts = self.task.held_out_prompts(config.num_eval_prompts)
        self.lora: LoRA | None = None
        if config.lora_r:
            # The reference is the same model with the adapter off: no second copy of the weights.
            self.lora = LoRA(self.model, config.lora_r, config.lora_alpha, config.lora_target)
            # Each rank drew its adapter's initial values from its own seed: rank 0's on every rank.
            broadcast_parameters_([p for p in self.model.parameters() if p.requires_grad], self.world)
            self.reference = self.model
        elif self.needs_reference_copy():
            self.reference = copy.deepcopy(self.model).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)
        else:
            self.reference = None  # nothing reads it: no second copy of the weights
        if self.world.rank:
            # A built-in model is built under torch.manual_seed(config.seed), which put every rank on one
            # torch stream: ranks > 0 sample from their own again (rank 0 keeps the single-process one).
            torch.manual_seed(rank_seed(config.seed, self.world.rank))
        # Frozen weights (a LoRA's base model, the reference copy) live in the low dtype; trained ones
        # stay float32 for the optimizer.
        self.precision.cast_frozen(self.model).to(self.device)
        if self.reference is not None and self.reference is not self.model:
            self.precision.cast_frozen(self.reference).to(self.device)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.step_count = 0
        # What trained and what evaluated, and how to load each again (`proximo llm eval RUN` reads them).
        trained = getattr(self, "train_rewards", self.rewards)
        sources = {"dataset": None if self.dataset is None else self.dataset.source,
                   "eval_dataset": None if self.eval_dataset is None else self.eval_dataset.source,
                   "eval_fraction": eval_fraction, **data_files, "eval_rows": self.eval_rows,
                   "rewards": trained.names, "reward_weights": trained.weights, "reward_specs": trained.specs,
                   "eval_rewards": ([f"task:{self.task.name}"] if self.reward_is_task and self.task is not None
                                    else self.rewards.names),
                   "eval_reward_weights": self.rewards.weights, "eval_reward_specs": self.rewards.specs}
        if self.world.size > 1:
            sources["world"] = {"size": self.world.size, "backend": self.world.backend}

        def open_run() -> str:
            self.run = LLMRun(self.kind, config, run_dir, {"model": str(model), **sources, **(extra or {})},
                              tensorboard, verbose, total=config.steps, step_unit=self.step_unit)
            return str(self.run.path)
        # Rank 0 alone writes the run directory; the others learn its name (a default one holds the time).
        path = self.world.on_main(open_run)
        if not self.world.is_main:
            self.run = RankRun(Path(path))
        self.history: list[dict[str, Any]] = []
        self.before: dict[str, float] = {}
        self.last_evaluation: dict[str, float] = {}

    def _render(self, dataset: "PromptDataset | None") -> list[str] | None:
        """The prompt texts of a dataset's rows, checked to fit the model's positions with the completion."""
        if dataset is None:
            return None
        # A tools run's chat prompts list the tools' schemas where the chat template has a place for them.
        texts = [render_prompt(p, self.tokenizer, self.tool_schemas) for p in dataset.prompts(range(len(dataset)))]
        limit = position_limit(self.model)
        cap = self.config.max_prompt_tokens
        if limit:
            for row, text in enumerate(texts):
                length = len(self.tokenizer.encode(text, add_bos=True))
                if min(length, cap or length) + self.max_new_tokens > limit:
                    fix = "lower max_prompt_tokens" if cap else "set max_prompt_tokens to truncate prompts"
                    raise ProximoError(f"{dataset.source} row {row}: the prompt has {length} tokens; with "
                                       f"max_new_tokens {self.max_new_tokens} that passes the model's {limit} "
                                       f"positions. Shorten the prompt, lower max_new_tokens or {fix}")
        return texts

    def draw_prompts(self, n: int) -> tuple[list[str], list[int] | None]:
        """n training prompt texts and their dataset rows (drawn with replacement; rows None for a task)."""
        if self.dataset is not None:
            rows = [self.rng.randrange(len(self.dataset)) for _ in range(n)]
            return [self.train_texts[i] for i in rows], rows
        return self.task.sample_prompts(self.rng, n), None

    def score(self, dataset: "PromptDataset | None", rows: list[int] | None, texts: list[str],
              completions: list[str], rewards: RewardSet | None = None,
              rollout: Rollout | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Rewards [B] (NaN: no function scored the sample) and per-function means by rewards (default
        self.rewards), for completions of prompts texts; with a dataset, the raw prompts and other columns
        of rows go to the functions, and the completions of chat prompts as one assistant message each.
        rollout (the sampled rows): a reward model that shares the policy's tokenizer scores its token ids."""
        rewards = self.rewards if rewards is None else rewards
        tokens = None if rollout is None else (rollout.input_ids, rollout.attention_mask, self.tokenizer)
        return score_samples(rewards, dataset, rows, texts, completions, tokens)

    def prepare_reward_models(self, rewards: RewardSet) -> None:
        """Put the reward models among rewards on the trainer's device, frozen weights in its low dtype, and
        have them score under its autocast (as the policy's own passes run)."""
        for scorer in rewards.reward_models():
            self.precision.cast_frozen(scorer.model).to(self.device)
            scorer.autocast = self.precision.autocast

    def needs_reference_copy(self) -> bool:
        """Whether to hold a frozen copy of the initial policy (without LoRA); subclasses say when not."""
        return True

    def trainable_parameters(self):
        """Parameters the optimizer updates (the policy, or its LoRA adapter; subclasses add heads)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def global_sum(self, *values: float) -> list[float]:
        """values summed over every rank of the run (as they are, in one process)."""
        if self.world.size == 1:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64)
        return self.world.all_reduce_sum_(total).tolist()

    learner_class: type[TokenLearner] = TokenLearner  # the algorithm's minibatch step (proximo/llm/learners.py)

    def learner_for(self, optimizer: FlatOptimizer) -> TokenLearner:
        """The learner that steps optimizer (built once per optimizer): what run_update hands minibatches to."""
        learner = getattr(self, "_learner", None)
        if learner is None or learner.optimizer is not optimizer:
            learner = self._learner = self.learner_class(self, optimizer)
        return learner

    @contextmanager
    def learning_passes(self):
        """The context of the loss passes: train mode with gradient checkpointing (transformers recomputes
        only in train mode; dropout was zeroed when it was enabled), eval mode otherwise."""
        if not self.config.gradient_checkpointing:
            yield
            return
        self.model.train()
        try:
            yield
        finally:
            self.model.eval()

    def shared_prompt_groups(self, groups: torch.Tensor | None) -> torch.Tensor | None:
        """groups for response_logprobs, or None where prompts cannot share one pass (gradient
        checkpointing recomputes without a KV cache)."""
        return None if self.config.gradient_checkpointing else groups

    _updating = False              # between a step's collect() and the end of its learn()
    _prompts_ahead = None          # (texts, rows) of the next step's prompts, drawn early for a pipelined sampler
    _last_step: int | None = None  # the step train() stops at (no prefetch past it)

    @property
    def learner_version(self) -> int:
        """The policy version of the live weights: updates applied to them (during a step's collect and
        learn, step_count already counts the step being taken)."""
        return self.step_count - 1 if self._updating else self.step_count

    def old_logprobs(self, rollout: Rollout, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probs [B, R] of the rollout's tokens under the old policy of the ratio: the sampler's own when
        they match the learner's forward pass (the built-in sampler in float32, to ~1e-6) or when the config's
        old_logprobs says sampler, else one forward pass of the learner (low-precision passes and outside
        engines differ more than that)."""
        if self.takes_sampler_logprobs():
            return rollout.logprobs
        with torch.inference_mode(), self.precision.autocast():
            logp, _, _ = response_logprobs(self.model, rollout.input_ids, rollout.attention_mask,
                                           rollout.prompt_ids.shape[1], self.config.temperature, groups=groups)
        return logp.float().clone()

    def takes_sampler_logprobs(self) -> bool:
        """True when the sampler's log-probs serve as the old policy's (old_logprobs, where the config has it)."""
        choice = getattr(self.config, "old_logprobs", "auto")
        if choice == "auto":
            return self.sampler.exact_logprobs and not self.precision.mixed
        return choice == "sampler"

    def reference_mode(self) -> AbstractContextManager:
        """The context in which self.reference computes the reference policy (the adapter off, with LoRA)."""
        return self.lora.disabled() if self.lora is not None else nullcontext()

    def export_model(self):
        """The policy as a plain transformers model to save (with LoRA: the adapter merged into a copy)."""
        return self.lora.merged() if self.lora is not None else self.model

    def make_optimizer(self) -> FlatOptimizer:
        """AdamW over trainable_parameters, in one flat buffer."""
        return make_optimizer(self.trainable_parameters, self.config)

    def sample_prompts(self, n: int) -> list[str]:
        """n training prompt texts: from the dataset's rows (with replacement) or the task's sampler."""
        return self.draw_prompts(n)[0]

    def _padded_args(self, token_ids: list[list[int]]) -> tuple:
        """The sampler's positional arguments for the prompts' token ids."""
        ids, mask = pad_prompts(token_ids, self.tokenizer.pad_id)
        return (self.model, ids, mask, self.max_new_tokens, self.tokenizer.stop_ids, self.tokenizer.pad_id)

    def _sampler_args(self, prompts: list[str]) -> tuple[tuple, int]:
        """(the sampler's positional arguments for prompts, how many prompts were cut to max_prompt_tokens)."""
        token_ids, truncated = prompt_token_ids(self.tokenizer, prompts, self.config.max_prompt_tokens)
        return self._padded_args(token_ids), truncated

    def rollout(self, prompts: list[str], repeats: int = 1) -> tuple[Rollout, list[str], float]:
        """Sample repeats completions per prompt (rows grouped by prompt); returns (rollout, completion
        texts, generation seconds: the engine's own where it reports them, else the call's)."""
        token_ids, truncated = prompt_token_ids(self.tokenizer, prompts, self.config.max_prompt_tokens)
        self.prompt_truncated_fraction = truncated / max(len(prompts), 1)
        if self.environment is not None:
            return self.episodes(prompts, token_ids, repeats)
        args = self._padded_args(token_ids)
        started = time.perf_counter()
        self.sampler.last_seconds = None
        with self.precision.autocast():
            rollout = self.sampler.generate(*args, temperature=self.config.temperature, repeats=repeats)
        seconds = time.perf_counter() - started
        if self.sampler.last_seconds is not None:
            seconds = self.sampler.last_seconds  # a pipelined engine sampled while the learner did other work
        return rollout, decode_responses(self.tokenizer, rollout.response_ids, rollout.response_mask), seconds

    def prefetch(self, prompts: list[str], repeats: int = 1) -> None:
        """Hand a pipelined sampler the prompts of a later rollout() call, so it samples them meanwhile."""
        args, _ = self._sampler_args(prompts)
        with self.precision.autocast():
            self.sampler.prefetch(*args, temperature=self.config.temperature, repeats=repeats)

    def start_pipeline(self) -> None:
        """Before the first step of train(): hand a pipelined sampler that step's prompts (subclasses that
        prefetch; nothing here)."""

    def load_training_state(self, folder: Path) -> None:
        """As LLMTrainer's, after closing the sampler: a generator process holds the weights (and a batch) of
        before the load; the next rollout starts it again from the loaded weights."""
        self.sampler.close()
        self._prompts_ahead = None
        super().load_training_state(folder)

    def episodes(self, prompts: list[str], token_ids: list[list[int]], repeats: int = 1
                 ) -> tuple[Rollout, list[str], float]:
        """repeats multi-turn episodes per prompt with self.environment, each turn through the sampler (rows
        grouped by prompt); returns (rollout, text of each episode's last policy turn, seconds) and keeps the
        Episodes in last_episodes."""
        cfg = self.config
        stops, pad = self.tokenizer.stop_ids, self.tokenizer.pad_id

        def one_turn(ids: torch.Tensor, mask: torch.Tensor, times: int) -> Rollout:
            return self.sampler.generate(self.model, ids, mask, self.max_new_tokens, stops, pad,
                                         temperature=cfg.temperature, repeats=times)
        started = time.perf_counter()
        with self.precision.autocast():
            self.last_episodes = run_episodes(one_turn, self.tokenizer, self.environment, token_ids, prompts,
                                              repeats, cfg.max_turns, self.max_new_tokens, position_limit(self.model))
        return self.last_episodes.rollout, self.last_episodes.completions, time.perf_counter() - started

    def evaluate(self) -> dict[str, float]:
        """Held-out mean reward (accuracy on exact-match tasks) of sampled and greedy completions. Sharded:
        each rank completes its contiguous slice of the held-out prompts, and the sums are pooled."""
        world = self.world
        first = len(self.eval_prompts) * world.rank // world.size
        last = len(self.eval_prompts) * (world.rank + 1) // world.size
        tally = [0.0, 0.0, 0.0, 0.0]  # sampled reward sum, scored count, then the same for greedy
        slot = 0  # score() adds into the slots of the pass that is running

        def score(start: int, completions: list[str]) -> torch.Tensor:
            start += first  # evaluate counts from the first prompt of this rank's slice
            rows = list(range(start, start + len(completions)))
            rewards = self.score(self.eval_dataset, rows, self.eval_prompts[start:start + len(completions)],
                                 completions)[0]
            valid = ~torch.isnan(rewards)
            tally[slot] += float(rewards[valid].sum())
            tally[slot + 1] += int(valid.sum())
            return rewards
        reward_fn = None
        cap = self.config.max_prompt_tokens
        prompts = self.eval_prompts[first:last]

        def episodes(greedy: bool):
            # With an environment, held-out prompts are whole episodes too (scored on their last policy turn).
            return None if self.environment is None else episode_sampler(
                self.model, self.tokenizer, self.environment, self.max_new_tokens, self.config.max_turns,
                self.config.temperature, greedy)
        if prompts:  # more ranks than held-out prompts leaves some with none
            with self.precision.autocast():
                evaluate(self.model, self.tokenizer, prompts, reward_fn, self.max_new_tokens,
                         self.config.temperature, score=score, max_prompt_tokens=cap, sample=episodes(False))
                slot = 2
                evaluate(self.model, self.tokenizer, prompts, reward_fn, self.max_new_tokens,
                         greedy=True, score=score, max_prompt_tokens=cap, sample=episodes(True))
        sampled, sampled_n, greedy, greedy_n = self.global_sum(*tally)
        return {"eval_sampled_accuracy": sampled / max(sampled_n, 1), "eval_greedy_accuracy": greedy / max(greedy_n, 1)}

    def collect(self) -> Any:
        """One batch of rollouts with everything the update needs (subclasses)."""
        raise NotImplementedError

    def learn(self, batch: Any, optimizer: FlatOptimizer) -> dict[str, float]:
        """One update on a collected batch; returns the row of statistics (subclasses)."""
        raise NotImplementedError

    def step(self, optimizer: FlatOptimizer) -> dict[str, float]:
        """One rollout + update; returns the row of statistics."""
        return self.learn(self.collect(), optimizer)

    def heads(self) -> dict:
        """Heads saved next to the policy (none for GRPO)."""
        return {}

    def export(self) -> tuple[Any, Any, dict]:
        """(model, tokenizer, heads) of a checkpoint's model folder: the policy as a plain transformers model."""
        return self.export_model(), self.tokenizer, self.heads()

    def state_parts(self) -> dict[str, Any]:
        """The trained weights (the policy or its adapter), optimizer, loss scale, counters and history."""
        return {**super().state_parts(), "policy": TrainedWeights(self.model), "precision": self.precision,
                "": Attributes(self, "step_count", "history", "before", "last_evaluation")}

    def train(self, steps: int | None = None, callback: Any = None) -> dict[str, Any]:
        """Train until config.steps updates in all (a resumed run continues to them), or `steps` more than
        now, evaluating every eval_every; writes model/ and summary.json and returns the summary (eval
        before and after included).

        callback: as for classic PPO (proximo/callbacks.py): a function of each step's row or Callback
        objects; one returning False stops after that step."""
        if steps is not None and steps < 1:
            raise ProximoError(f"steps must be at least 1, got {steps}")
        last = self.config.steps if steps is None else self.step_count + steps
        optimizer = self.ensure_optimizer()
        self.run.open(self.step_count, self.headline)
        try:
            if self.step_count < last:
                # A pipelined sampler gets the first step's prompts now: it starts (a new process: up to seconds of
                # imports) and samples them while the initial evaluation runs.
                self.sampler.policy_version = self.learner_version
                self.start_pipeline()
            if self.step_count == 0:
                self.before = self.evaluate()
                self.run.log(0, self.before, 0.0, self.before["eval_sampled_accuracy"])
                self.last_evaluation = self.before
            callbacks = self.run_callbacks([_EvaluateEvery(last)], callback, last=[_History()])
            self._last_step = last

            def collect() -> Any:
                self.step_count += 1  # the step being taken: collect() already sees its number
                self._updating = True
                optimizer.ensure_intact()  # parameters re-homed since (a load, a .to()) are views again
                # An outside engine (or the generator process) samples from this step's weights from now on.
                self.sampler.policy_version = self.learner_version
                self.sampler.sync_weights(self.model)
                return self.collect()

            def learn(batch: Any) -> dict[str, Any]:
                row = {**self.learn(batch, optimizer), "global_step": self.step_count, "update": self.step_count,
                       "time_s": round(self.run.elapsed(), 3)}
                self._updating = False
                return row

            try:
                self.stopped_by = run_loop(collect, learn, lambda: self.step_count >= last, callbacks)
            finally:
                self.run.close()  # (finish() writes the summary below; a crash leaves the rows written so far)
        finally:
            self._updating = False
            # A generator process ends with the loop, however it ended (done, an error, a signal's stop).
            self.sampler.close()
        if self.stopped_by is not None and self.history and "eval_sampled_accuracy" not in self.history[-1]:
            self.last_evaluation = self.evaluate()  # the summary's "after" is of the final policy
        if self.config.save_every and getattr(self, "last_checkpoint_step", None) != self.step_count:
            self.save_checkpoint()  # the final state too, so that --resume can extend the run
        recent = self.history[-10:]
        summary = {
            "kind": self.kind, "steps": self.step_count, "step_unit": self.step_unit, "stopped_by": self.stopped_by,
            "before": self.before, "after": self.last_evaluation,
            "train_reward_last10": sum(r["reward"] for r in recent) / len(recent),
            "kl_ref_last10": _mean([r["kl_ref"] for r in self.history[-20:] if r.get("kl_ref") is not None][-10:]),
            "gen_tokens_per_s": sum(r["gen_tokens_per_s"] for r in self.history) / len(self.history),
            "step_tokens_per_s": sum(r["tokens_per_s"] for r in self.history) / len(self.history),
        }
        if self.resumed_from is not None:
            summary["resumed_from"] = str(self.resumed_from)
        if self.lora is not None:
            if self.world.is_main:
                self.lora.save_adapter(self.run.path / "adapter")
            summary["lora"] = {"r": self.config.lora_r, "targets": self.lora.targets,
                               "trainable_parameters": self.lora.counts()[0], "parameters": self.lora.counts()[1]}
        model = self.export_model() if self.world.is_main else None
        self.summary = self.run.finish(model, self.tokenizer, summary, self.heads())
        return self.summary

    def generate(self, prompts: list[str], greedy: bool = False) -> list[str]:
        """Completions of prompts by the current policy."""
        ids, mask = encode_prompts(self.tokenizer, prompts, self.config.max_prompt_tokens)
        with self.precision.autocast():
            rollout = generate(self.model, ids, mask, self.max_new_tokens, self.tokenizer.stop_ids,
                               self.tokenizer.pad_id, temperature=self.config.temperature, greedy=greedy)
        return decode_responses(self.tokenizer, rollout.response_ids, rollout.response_mask)


class _EvaluateEvery(Callback):
    """Held-out evaluation every eval_every steps and after the last one, into the step's row."""

    def __init__(self, last_step: int) -> None:
        self.last_step = last_step

    def on_update_end(self, row: dict[str, Any]) -> None:
        """Evaluate when due."""
        trainer = self.trainer
        every = trainer.config.eval_every
        if (every and trainer.step_count % every == 0) or trainer.step_count == self.last_step:
            trainer.last_evaluation = trainer.evaluate()
            row.update(trainer.last_evaluation)


class _History(Callback):
    """The row into the trainer's history (the summary's recent means; every rank keeps it)."""

    def on_update_end(self, row: dict[str, Any]) -> None:
        """Keep the row."""
        self.trainer.history.append(row)
