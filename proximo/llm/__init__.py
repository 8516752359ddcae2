"""Language models on proximo's PPO core: SFT, a reward model, PPO-RLHF and GRPO on causal LMs.

    from proximo.llm import GRPO
    GRPO("runs/my-sft", reward_fn=my_reward, prompts=my_prompts, steps=100).train()
"""
from proximo.llm.config import GRPOConfig, RewardModelConfig, RLHFConfig, SFTConfig
from proximo.llm.grpo import GRPO
from proximo.llm.multiturn import Environment, Reply, ToolEnvironment
from proximo.llm.reward_model import RewardModel, train_reward_model
from proximo.llm.rlhf import RLHF
from proximo.llm.sft import SFT
from proximo.llm.tasks import get_task

__all__ = ["GRPO", "RLHF", "SFT", "RewardModel", "train_reward_model", "get_task",
           "GRPOConfig", "RLHFConfig", "SFTConfig", "RewardModelConfig", "Environment", "Reply", "ToolEnvironment"]
