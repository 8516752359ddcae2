"""Typed, validated configs for the LLM commands: sft, rm (reward model), grpo and rlhf."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from proximo.fielddoc import check_choices, check_field_types, doc
from proximo.core.kl import KL_ESTIMATORS
from proximo.core.offpolicy import OFFPOLICY_MODES

OLD_LOGPROBS = ("auto", "recompute", "sampler")  # where GRPO takes the old policy's log-probs from
from proximo.errors import ConfigError
from proximo.llm.losses import (
    ADVANTAGE_ESTIMATORS, AGGREGATION_ALIASES, IMPORTANCE_SAMPLING, KL_PLACEMENTS, LOSS_AGGREGATIONS,
    REWARD_SCALINGS, SURROGATES, aggregation_name, scaling_name,
)
from proximo.tracking import TRACKERS

KL_CONTROLLERS = ("adaptive", "fixed")
PAIR_SOURCES = ("corrupt", "samples")
CRITICS = ("auto", "reward_model", "head")
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # the keys of proximo/llm/precision.py DTYPES (tested equal)


@dataclass
class _LLMConfig:
    """Fields every LLM run has."""

    task: str = doc("add", "built-in task giving prompts, rewards and held-out prompts: add or sort (a --dataset "
                    "run has none)")
    digits: int | None = doc(None, "task size: add's operand digits, sort's length; none: the task's own (3, 5)")
    seed: int = doc(1, "seed of the model's initialization, the prompts and the sampling")
    learning_rate: float = doc(1e-4, "AdamW step size")
    adam_eps: float = doc(1e-8, "AdamW's epsilon")
    max_grad_norm: float | None = doc(1.0, "clip the gradient's global norm to this; none: no clipping")
    max_new_tokens: int | None = doc(None, "longest completion in tokens; none: the task's answer length + 1 (<eos>)")
    temperature: float = doc(1.0, "sampling temperature of rollouts and of sampled evaluation")
    eval_every: int = doc(20, "steps between held-out evaluations; 0: only at the start and the end")
    num_eval_prompts: int = doc(500, "held-out prompts per evaluation")
    save_every: int = doc(0, "steps between checkpoints; 0: only the final model")
    torch_threads: int = doc(1, "torch CPU threads; 0: torch's default (1 is fastest for tiny models on shared CPUs)")
    lora_r: int = doc(0, "LoRA rank (peft adapters); 0: train every weight")
    lora_alpha: float = doc(16.0, "LoRA scale alpha: the adapter's update is scaled by alpha / r")
    lora_target: str = doc("", "comma-separated module names LoRA adapts; empty: peft's default for the family")
    device: str = doc("auto", "where the model runs: auto (a GPU when torch sees one) | cpu | cuda | cuda:N | mps")
    dtype: str = doc("float32", "precision of forward and backward passes (autocast; master weights and Adam stay "
                     "float32, frozen weights are stored in it)", choices=DTYPE_NAMES)
    gradient_checkpointing: bool = doc(False, "recompute activations in backward: less memory, ~30% more time")
    max_prompt_tokens: int | None = doc(None, "longer prompts keep their last this-many tokens (logged as "
                                        "prompt_truncated_fraction); none: a prompt too long is an error")
    track: str = doc("none", "also send metrics, config and findings to Weights & Biases", choices=TRACKERS)
    track_project: str | None = doc(None, "W&B project (none: $WANDB_PROJECT, else proximo)")
    track_run_name: str | None = doc(None, "W&B run name (none: $WANDB_NAME, else the run directory's name)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value and the fix."""
        check_field_types(self)
        check_choices(self)
        for name in ("learning_rate", "adam_eps", "temperature"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive finite number, got {value}")
        for name in ("eval_every", "save_every", "torch_threads", "lora_r"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.num_eval_prompts < 1:
            raise ConfigError(f"num_eval_prompts must be at least 1, got {self.num_eval_prompts}")
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= 65_536:
            raise ConfigError(f"max_new_tokens must lie in 1..65536 (or None for the task's), got {self.max_new_tokens}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 2:
            raise ConfigError(f"max_prompt_tokens must be at least 2 (or None), got {self.max_prompt_tokens}")
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
    batch_size: int = doc(256, "examples per optimizer step")
    max_steps: int = doc(20_000, "optimizer steps at most")
    warmup_steps: int = doc(100, "steps of linear learning-rate warm-up")
    weight_decay: float = doc(0.0, "AdamW weight decay")
    eval_every: int = 50
    target_accuracy: float | None = doc(0.4, "stop once held-out sampled accuracy reaches this (with a dataset: "
                                        "greedy exact match, only when set); none: never")
    max_time_s: float | None = doc(None, "stop after this much wall time in seconds; none: no limit")

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
    batch_size: int = doc(64, "preference pairs per optimizer step")
    max_steps: int = doc(600, "optimizer steps")
    train_pairs: int = doc(20_000, "task pairs drawn (a --dataset trains on all its rows instead)")
    eval_pairs: int = doc(500, "held-out pairs scored (task pairs, or the first of a dataset's)")
    eval_every: int = 100
    pair_source: str = doc("corrupt", "task pairs' wrong answers: corrupt makes them by rule, samples takes the init "
                           "model's own wrong samples (needs a model that half-solves the task)",
                           choices=PAIR_SOURCES)

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value and the fix."""
        super().validate()
        for name in ("batch_size", "max_steps", "train_pairs", "eval_pairs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class _RLConfig(_LLMConfig):
    """Fields shared by GRPO and PPO-RLHF."""

    steps: int = doc(200, "rollout + update rounds")
    prompts_per_step: int = doc(32, "prompts sampled per step (over all processes)")
    n_epochs: int = doc(1, "passes (K epochs) over each rollout; TRL's num_iterations")
    num_minibatches: int = doc(2, "optimizer steps per epoch; TRL's steps_per_generation")
    clip_range: float = doc(0.2, "PPO clip epsilon of the token ratio (its lower side with clip_range_high)")
    clip_range_high: float | None = doc(None, "separate upper clip (clip-higher); none: the same as clip_range")
    kl_coef: float = doc(0.0, "beta on the KL to the frozen reference policy (its start if adaptive)")
    micro_batch_size: int = doc(0, "rows per forward/backward pass, gradients accumulated to one optimizer step; "
                                "0: the whole minibatch")
    target_kl: float | None = doc(None, "stop a step's epochs at a minibatch whose mean k3 KL to the rollout policy "
                                  "passes 1.5 x this (as classic PPO); none: never")

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
        if self.target_kl is not None and not self.target_kl > 0:
            raise ConfigError(f"target_kl must be positive or None, got {self.target_kl}")

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
    group_size: int = doc(8, "completions per prompt (G)")
    advantage_estimator: str = doc("grpo", "baseline of the advantages: group mean, leave-one-out (rloo), "
                                   "REINFORCE++ (per-token KL in the reward, batch-standardized returns) or "
                                   "REINFORCE++ on scores minus their group mean", choices=ADVANTAGE_ESTIMATORS)
    scale_rewards: str = doc("group", "divide advantages by the group's or the batch's reward std, or not "
                             "(Dr. GRPO); true/false read as group/none", choices=REWARD_SCALINGS)
    loss_aggregation: str = doc("bnpo", "how token losses average: per-sequence mean (grpo), minibatch token mean "
                                "(bnpo), a constant (dr_grpo) or the generation batch's token mean (dapo)",
                                choices=LOSS_AGGREGATIONS)
    loss_constant: float | None = doc(None, "normalizer of dr_grpo; none: max_new_tokens")
    importance_sampling: str = doc("token", "PPO ratio per token, or GSPO's ratio per sequence",
                                   choices=IMPORTANCE_SAMPLING)
    seq_clip_range: float = doc(3e-4, "GSPO's lower clip on the sequence ratio (paper: 3e-4)")
    seq_clip_range_high: float = doc(4e-4, "GSPO's upper clip on the sequence ratio (paper: 4e-4)")
    surrogate: str = doc("clip", "the per-token objective: PPO's clipped ratio (GSPO's with importance_sampling "
                         "sequence), CISPO's capped stop-gradient weight on log pi, GMPO's geometric mean of "
                         "log-clipped token ratios, SAPO's soft sigmoid gate", choices=SURROGATES)
    cispo_max_weight: float = doc(5.0, "CISPO's cap on the importance weight, 1 + eps_high (TRL 1.16 recommends "
                                  "ScaleRL's 5.0); no lower cap, as in the paper")
    gmpo_clip_range: float = doc(0.4, "GMPO's log-space clip: token ratios kept in (e^-x, e^x) (paper: 0.4)")
    sapo_tau_pos: float = doc(1.0, "SAPO's gate temperature where the advantage is positive (paper: 1.0)")
    sapo_tau_neg: float = doc(1.05, "SAPO's gate temperature where the advantage is not positive (paper: 1.05)")
    kl_estimator: str = doc("k3", "estimator of the KL to the reference with kl_coef > 0: k1 = log(pi/ref), "
                            "k2 = k1^2 / 2, k3 = ref/pi - 1 + k1 (REINFORCE++ keeps its k1 reward)",
                            choices=KL_ESTIMATORS)
    kl_placement: str = doc("loss", "the KL as a loss term (GRPO), or as a per-token penalty in the reward "
                            "(advantages minus kl_coef x its reward-to-go; with k1 the KL's exact gradient)",
                            choices=KL_PLACEMENTS)
    kl_ratio_weighted: bool = doc(False, "multiply the KL loss term by the ratio pi/pi_old (TRL's "
                                  "use_bias_correction_kl, on there by default): with k1 or k3 its gradient is "
                                  "then the KL's, not the reverse KL's")
    offpolicy_correction: str = doc("sequence_mask", "weight the loss by pi_old/sampler for an outside sampler "
                                    "(exact_logprobs False): per token or sequence, capped at offpolicy_cap "
                                    "(truncate) or dropped above it (mask); the built-in sampler is the learner "
                                    "and is not corrected", choices=OFFPOLICY_MODES)
    offpolicy_cap: float = doc(3.0, "cap C of the off-policy weights (TRL's vllm_importance_sampling_clip_max, 3.0)")
    old_logprobs: str = doc("auto", "the old policy in the ratio: recompute = the learner's forward pass before the "
                            "update (off-policy rows then weighted by offpolicy_correction); sampler = the "
                            "sampler's own log-probs (PPO's ratio against the policy that sampled: no extra "
                            "pass, no correction weights, offpolicy/kl not measured); auto = sampler for the "
                            "built-in float32 sampler (equal to ~1e-6), else recompute", choices=OLD_LOGPROBS)
    max_staleness: int | None = doc(None, "drop from the loss the rollouts sampled more than this many policy "
                                    "versions ago (a Rollout's policy_version); none: keep all (with "
                                    "async_generation: 1)")
    async_generation: bool = doc(False, "sample the next step's rollouts in a generator process (its own copy of "
                                 "the policy, exactly one update behind) while the learner trains on this step's; "
                                 "the lag is corrected by offpolicy_correction (CPU, one process)")
    generator_threads: int | None = doc(None, "with async_generation: torch threads of the generator process; none: "
                                        "torch_threads (the learner's count)")
    async_timeout_s: float = doc(900.0, "with async_generation: seconds the learner waits for the generator process "
                                 "(its start, a batch, taking new weights) before stopping with an error")
    dynamic_sampling: bool = doc(False, "DAPO: drop groups whose rewards are all equal and draw more prompts")
    max_extra_draws: int = doc(4, "extra generation rounds per step dynamic sampling may take")
    mask_truncated: bool = doc(False, "completions cut at max_new_tokens (no <eos>) get loss mask 0 (their rewards "
                               "still count in the group statistics)")
    ent_coef: float = doc(0.0, "weight of the entropy bonus")
    keep_reference: bool | None = doc(None, "hold a frozen copy of the initial policy for the kl_ref metric; none: "
                                      "only when kl_coef > 0 needs it (LoRA's reference is free)")
    tools: str = doc("", "tools the policy may call over several turns: module:function[,module:function] (or "
                     "proximo:calculator), called as <tool_call>{json}</tool_call>; empty: one turn, no tools")
    max_turns: int = doc(4, "most policy turns of an episode with tools (each up to max_new_tokens tokens)")
    tool_timeout_s: float = doc(5.0, "time limit of one tool call in seconds; past it the model is answered an error")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value and the fix."""
        # Old spellings: scale_rewards was a bool (true/false), loss_aggregation seq-mean | token-mean | constant.
        if isinstance(self.scale_rewards, bool) or str(self.scale_rewards).lower() in ("true", "false"):
            self.scale_rewards = scaling_name(self.scale_rewards)
        if isinstance(self.loss_aggregation, str) and self.loss_aggregation in AGGREGATION_ALIASES:
            self.loss_aggregation = aggregation_name(self.loss_aggregation)
        super().validate()  # checks every choice field too (scale_rewards, loss_aggregation, ...)
        if self.group_size < 2:
            raise ConfigError(f"group_size must be at least 2 (advantages are relative within a group), "
                              f"got {self.group_size}")
        if self.importance_sampling == "sequence" and self.advantage_estimator.startswith("reinforce++"):
            raise ConfigError("importance_sampling sequence (GSPO) needs one advantage per sequence; "
                              "use advantage_estimator grpo or rloo with it")
        if self.surrogate != "clip" and self.importance_sampling != "token":
            raise ConfigError(f"surrogate {self.surrogate} defines its own ratios; use it with importance_sampling "
                              f"token (sequence is GSPO, a clip surrogate)")
        if self.surrogate == "gmpo" and self.advantage_estimator.startswith("reinforce++"):
            raise ConfigError("surrogate gmpo needs one advantage per sequence; use advantage_estimator grpo or rloo")
        if self.kl_placement == "reward" and self.advantage_estimator.startswith("reinforce++"):
            raise ConfigError("REINFORCE++ has the k1 KL in its reward already; use kl_placement loss with it")
        for name in ("cispo_max_weight", "gmpo_clip_range", "sapo_tau_pos", "sapo_tau_neg", "offpolicy_cap"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"{name} must be a positive finite number, got {getattr(self, name)}")
        if self.max_turns < 1:
            raise ConfigError(f"max_turns must be at least 1, got {self.max_turns}")
        if not (self.tool_timeout_s > 0 and math.isfinite(self.tool_timeout_s)):
            raise ConfigError(f"tool_timeout_s must be a positive number of seconds, got {self.tool_timeout_s}")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ConfigError(f"max_staleness must not be negative (or None), got {self.max_staleness}")
        if not (self.async_timeout_s > 0 and math.isfinite(self.async_timeout_s)):
            raise ConfigError(f"async_timeout_s must be a positive finite number, got {self.async_timeout_s}")
        if self.generator_threads is not None and self.generator_threads < 0:
            raise ConfigError(f"generator_threads must be 0 (torch's default) or more, got {self.generator_threads}")
        if self.async_generation:
            if self.max_staleness == 0:
                raise ConfigError("async_generation samples each step's rollouts one update behind the learner, so "
                                  "max_staleness 0 would drop every row but the first step's; use max_staleness 1 "
                                  "(or leave async_generation off)")
            if self.max_staleness is None:
                self.max_staleness = 1  # the pipeline's lag is at most 1: the bound it keeps, recorded
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
    kl_estimator: str = doc("k1", "estimator of the per-token KL penalty in the reward", choices=KL_ESTIMATORS)
    kl_controller: str = doc("fixed", "KL coefficient: fixed, or adaptive by the PPO paper's halve/double rule",
                             choices=KL_CONTROLLERS)
    kl_target: float = doc(0.5, "target KL per sequence (nats) of the adaptive controller")
    gamma: float = doc(1.0, "discount over tokens")
    gae_lambda: float = doc(0.95, "GAE lambda over tokens")
    vf_coef: float = doc(0.5, "weight of the value loss")
    clip_range_vf: float | None = doc(0.2, "clip the value update to this distance from the old value; none: "
                                      "unclipped")
    ent_coef: float = doc(0.0, "weight of the entropy bonus")
    whiten_advantages: bool = doc(True, "standardize advantages over the batch's response tokens")
    normalize_scores: bool = doc(False, "standardize reward-model scores by their running mean and std")
    critic: str = doc("auto", "the value model: reward_model (a separate one initialized from the reward model, as "
                      "InstructGPT; it must read the policy's tokens), head (a value head on the policy's trunk), "
                      "auto (reward_model when a reward model reads the policy's tokens, else head)", choices=CRITICS)

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value and the fix."""
        super().validate()
        if self.kl_controller == "adaptive" and not self.kl_target > 0:
            raise ConfigError(f"kl_target must be positive for the adaptive controller, got {self.kl_target}")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.vf_coef < 0 or self.ent_coef < 0:
            raise ConfigError("vf_coef and ent_coef must not be negative")
        if self.clip_range_vf is not None and not self.clip_range_vf > 0:
            raise ConfigError(f"clip_range_vf must be positive or None, got {self.clip_range_vf}")
        self._check_minibatches()
