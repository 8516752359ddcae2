"""Typed, validated configs for the LLM commands: sft, rm (reward model), grpo and rlhf."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from proximo.config import check_field_types
from proximo.core.kl import KL_ESTIMATORS
from proximo.errors import ConfigError, ProximoError
from proximo.llm.losses import (
    ADVANTAGE_ESTIMATORS, AGGREGATION_ALIASES, IMPORTANCE_SAMPLING, LOSS_AGGREGATIONS, aggregation_name,
    scaling_name,
)
from proximo.tracking import TRACKERS

KL_CONTROLLERS = ("adaptive", "fixed")


@dataclass
class _LLMConfig:
    """Fields every LLM run has."""

    task: str = "add"                       # built-in task giving prompts, rewards and held-out prompts
    digits: int | None = None               # task size (add: operand digits, default 3; sort: length, 5)
    seed: int = 1
    learning_rate: float = 1e-4
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    max_new_tokens: int | None = None       # None: the task's answer length + 1 (for <eos>)
    temperature: float = 1.0                # sampling temperature of rollouts and of sampled evaluation
    eval_every: int = 20                    # steps between held-out evaluations (0: only start and end)
    num_eval_prompts: int = 500             # held-out prompts per evaluation
    save_every: int = 0                     # steps between checkpoints; 0: only the final model
    torch_threads: int = 1                  # 0: torch's default; 1 is fastest for tiny models on shared CPUs
    lora_r: int = 0                         # LoRA rank (peft); 0: train every weight
    lora_alpha: float = 16.0                # LoRA scale alpha (the update is scaled by alpha / r)
    lora_target: str = ""                   # comma-separated module names; "": peft's default for the family
    device: str = "auto"                    # auto (a GPU when torch sees one) | cpu | cuda | cuda:N | mps
    dtype: str = "float32"                  # float32 | bfloat16 | float16: autocast passes, fp32 master weights
                                            # and Adam state; frozen weights stored in it (proximo/llm/precision.py)
    gradient_checkpointing: bool = False    # recompute activations in backward (less memory, ~30% more time)
    max_prompt_tokens: int | None = None    # longer prompts keep their last this-many tokens (counted per step
                                            # as prompt_truncated_fraction); None: a prompt too long is an error
    track: str = "none"                     # none | wandb (proximo/tracking.py), as for classic runs
    track_project: str | None = None        # W&B project (None: $WANDB_PROJECT, else "proximo")
    track_run_name: str | None = None       # W&B run name (None: $WANDB_NAME, else the run directory's name)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value and the fix."""
        check_field_types(self)
        for name in ("learning_rate", "adam_eps", "temperature"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive finite number, got {value}")
        for name in ("eval_every", "save_every", "torch_threads", "lora_r"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.track not in TRACKERS:
            raise ConfigError(f"track must be one of {', '.join(TRACKERS)}; got {self.track!r}")
        if self.num_eval_prompts < 1:
            raise ConfigError(f"num_eval_prompts must be at least 1, got {self.num_eval_prompts}")
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= 65_536:
            raise ConfigError(f"max_new_tokens must lie in 1..65536 (or None for the task's), got {self.max_new_tokens}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 2:
            raise ConfigError(f"max_prompt_tokens must be at least 2 (or None), got {self.max_prompt_tokens}")
        from proximo.llm.precision import DTYPES
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps; got {self.device!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be positive or None, got {self.max_grad_norm}")
        if self.digits is not None and not 1 <= self.digits <= 12:
            raise ConfigError(f"digits must lie in 1..12, got {self.digits}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def replace(self, **overrides: Any):
        """A validated copy with some fields changed."""
        return type(self).from_dict({**self.to_dict(), **overrides})


@dataclass
class SFTConfig(_LLMConfig):
    """Supervised fine-tuning on a task's exact answers, stopped at a target held-out accuracy."""

    learning_rate: float = 1e-3
    batch_size: int = 256
    max_steps: int = 20_000
    warmup_steps: int = 100
    weight_decay: float = 0.0
    eval_every: int = 50
    target_accuracy: float | None = 0.4     # stop once held-out sampled accuracy reaches this (None: never); with
                                            # a dataset: greedy exact match, and only when set explicitly
    max_time_s: float | None = None         # stop after this much wall time

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value and the fix."""
        super().validate()
        for name in ("batch_size", "max_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ConfigError("warmup_steps and weight_decay must not be negative")
        if self.target_accuracy is not None and not 0.0 < self.target_accuracy <= 1.0:
            raise ConfigError(f"target_accuracy must lie in (0, 1] or be None, got {self.target_accuracy}")


@dataclass
class RewardModelConfig(_LLMConfig):
    """A scalar reward head on a causal LM, trained with the Bradley-Terry loss on preference pairs."""

    learning_rate: float = 3e-4
    batch_size: int = 64
    max_steps: int = 600
    train_pairs: int = 20_000               # task pairs drawn (a --dataset trains on all its rows instead)
    eval_pairs: int = 500                   # held-out pairs scored (task pairs, or the first of a dataset's)
    eval_every: int = 100
    pair_source: str = "corrupt"            # corrupt: rule-made wrong answers; samples: the init model's own
                                            # wrong samples (needs a model that already half-solves the task)
                                            # (task pairs only; unused with a dataset)

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value and the fix."""
        super().validate()
        for name in ("batch_size", "max_steps", "train_pairs", "eval_pairs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.pair_source not in ("corrupt", "samples"):
            raise ConfigError(f"pair_source must be corrupt or samples; got {self.pair_source!r}")


@dataclass
class _RLConfig(_LLMConfig):
    """Fields shared by GRPO and PPO-RLHF."""

    steps: int = 200                        # rollout + update rounds
    prompts_per_step: int = 32
    n_epochs: int = 1                       # K passes over each rollout
    num_minibatches: int = 2                # minibatches per epoch
    clip_range: float = 0.2
    clip_range_high: float | None = None    # separate upper clip ("clip-higher"); None: same as clip_range
    kl_coef: float = 0.0                    # beta on the KL to the frozen reference (its start if adaptive)
    micro_batch_size: int = 0               # rows per forward/backward pass; gradients accumulate over a
                                            # minibatch's micro-batches (one optimizer step). 0: whole minibatch

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value and the fix."""
        super().validate()
        for name in ("steps", "prompts_per_step", "n_epochs", "num_minibatches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.micro_batch_size < 0:
            raise ConfigError(f"micro_batch_size must not be negative (0: the whole minibatch), got {self.micro_batch_size}")
        if not 0.0 < self.clip_range < 1.0:
            raise ConfigError(f"clip_range must lie in (0, 1), got {self.clip_range}")
        if self.clip_range_high is not None and not 0.0 < self.clip_range_high < 10.0:
            raise ConfigError(f"clip_range_high must lie in (0, 10) or be None, got {self.clip_range_high}")
        if self.kl_coef < 0:
            raise ConfigError(f"kl_coef must not be negative, got {self.kl_coef}")

    @property
    def rollout_size(self) -> int:
        """Completions per step."""
        return self.prompts_per_step

    def _check_minibatches(self) -> None:
        if self.rollout_size % self.num_minibatches != 0:
            raise ConfigError(f"num_minibatches {self.num_minibatches} does not divide the {self.rollout_size} "
                              f"completions per step; choose a divisor of {self.rollout_size}")


@dataclass
class GRPOConfig(_RLConfig):
    """GRPO and its variants: G completions per prompt, group-relative (or RLOO / REINFORCE++)
    advantages, no critic, k3 KL as a loss term. n_epochs is TRL's num_iterations and num_minibatches
    its steps_per_generation: n_epochs x num_minibatches optimizer steps per generation, all against the
    log-probs kept from generation time."""

    learning_rate: float = 5e-5
    group_size: int = 8                     # G completions per prompt
    advantage_estimator: str = "grpo"       # grpo (group mean baseline) | rloo (leave-one-out) | reinforce++
                                            # (per-token KL in the reward, batch-standardized returns) |
                                            # reinforce++-baseline (the same on scores minus their group mean)
    scale_rewards: str = "group"            # group | batch | none: divide advantages by the group's or the
                                            # batch's reward std, or not (Dr. GRPO); true/false = group/none
    loss_aggregation: str = "bnpo"          # grpo (seq mean) | bnpo (minibatch token mean) | dr_grpo
                                            # (constant) | dapo (token mean of the whole generation batch)
    loss_constant: float | None = None      # normalizer of dr_grpo (None: max_new_tokens)
    importance_sampling: str = "token"      # token (PPO ratio per token) | sequence (GSPO ratio per sequence)
    seq_clip_range: float = 3e-4            # GSPO's lower clip on the sequence ratio (paper: 3e-4)
    seq_clip_range_high: float = 4e-4       # GSPO's upper clip (paper: 4e-4)
    dynamic_sampling: bool = False          # DAPO: drop groups whose rewards are all equal, draw more prompts
    max_extra_draws: int = 4                # extra generation rounds per step dynamic sampling may take
    mask_truncated: bool = False            # completions cut at max_new_tokens (no <eos>) get loss mask 0
                                            # (their rewards still count in the group statistics)
    ent_coef: float = 0.0
    keep_reference: bool | None = None      # hold a frozen copy of the initial policy for the kl_ref metric;
                                            # None: only when kl_coef > 0 uses it (LoRA's reference is free)

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value and the fix."""
        # Old spellings: scale_rewards was a bool, loss_aggregation seq-mean | token-mean | constant.
        if isinstance(self.scale_rewards, bool):
            self.scale_rewards = scaling_name(self.scale_rewards)
        if isinstance(self.loss_aggregation, str) and self.loss_aggregation in AGGREGATION_ALIASES:
            self.loss_aggregation = aggregation_name(self.loss_aggregation)
        super().validate()
        if self.group_size < 2:
            raise ConfigError(f"group_size must be at least 2 (advantages are relative within a group), "
                              f"got {self.group_size}")
        try:
            self.scale_rewards = scaling_name(self.scale_rewards)
        except ProximoError:
            raise ConfigError(f"scale_rewards must be group, batch or none (or true/false); "
                              f"got {self.scale_rewards!r}") from None
        choices = (("loss_aggregation", LOSS_AGGREGATIONS), ("advantage_estimator", ADVANTAGE_ESTIMATORS),
                   ("importance_sampling", IMPORTANCE_SAMPLING))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.importance_sampling == "sequence" and self.advantage_estimator.startswith("reinforce++"):
            raise ConfigError("importance_sampling sequence (GSPO) needs one advantage per sequence; "
                              "use advantage_estimator grpo or rloo with it")
        for name in ("seq_clip_range", "seq_clip_range_high"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must lie in (0, 1), got {getattr(self, name)}")
        if self.loss_constant is not None and not self.loss_constant > 0:
            raise ConfigError(f"loss_constant must be positive or None, got {self.loss_constant}")
        if self.max_extra_draws < 0:
            raise ConfigError(f"max_extra_draws must not be negative, got {self.max_extra_draws}")
        if self.ent_coef < 0:
            raise ConfigError(f"ent_coef must not be negative, got {self.ent_coef}")
        self._check_minibatches()

    @property
    def rollout_size(self) -> int:
        """Completions per step: prompts_per_step x group_size."""
        return self.prompts_per_step * self.group_size


@dataclass
class RLHFConfig(_RLConfig):
    """PPO-RLHF: reward-model score at the last token, per-token KL penalty, value head, GAE over tokens."""

    learning_rate: float = 3e-5
    prompts_per_step: int = 128
    n_epochs: int = 2
    num_minibatches: int = 4
    kl_coef: float = 0.05
    kl_estimator: str = "k1"                # estimator of the per-token KL penalty in the reward
    kl_controller: str = "fixed"            # fixed | adaptive (the PPO paper's halve/double rule)
    kl_target: float = 0.5                  # target KL per sequence (nats) of the adaptive controller
    gamma: float = 1.0
    gae_lambda: float = 0.95
    vf_coef: float = 0.5
    clip_range_vf: float | None = 0.2
    ent_coef: float = 0.0
    whiten_advantages: bool = True
    normalize_scores: bool = False          # standardize reward-model scores by their running mean/std
    critic: str = "auto"                    # reward_model: a separate value model initialized from the reward
                                            # model (InstructGPT; it must read the policy's tokens); head: a value
                                            # head on the policy's trunk; auto: reward_model when a reward model
                                            # reads the policy's tokens, else head

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value and the fix."""
        super().validate()
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}; got {self.kl_estimator!r}")
        if self.kl_controller not in KL_CONTROLLERS:
            raise ConfigError(f"kl_controller must be one of {', '.join(KL_CONTROLLERS)}; got {self.kl_controller!r}")
        if self.kl_controller == "adaptive" and not self.kl_target > 0:
            raise ConfigError(f"kl_target must be positive for the adaptive controller, got {self.kl_target}")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.critic not in ("auto", "reward_model", "head"):
            raise ConfigError(f"critic must be auto, reward_model or head; got {self.critic!r}")
        if self.vf_coef < 0 or self.ent_coef < 0:
            raise ConfigError("vf_coef and ent_coef must not be negative")
        if self.clip_range_vf is not None and not self.clip_range_vf > 0:
            raise ConfigError(f"clip_range_vf must be positive or None, got {self.clip_range_vf}")
        self._check_minibatches()
