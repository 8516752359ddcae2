"""Pure tensor functions of PPO: advantages, objectives, KL, masked ops, schedules."""
from proximo.core.advantages import discounted_returns, gae, normalize
from proximo.core.kl import AdaptiveKLController, FixedKLController, kl_estimate
from proximo.core.masked import masked_mean, masked_var, masked_whiten
from proximo.core.objectives import (
    PolicyLossOutput,
    entropy_bonus,
    policy_loss,
    value_loss,
)
from proximo.core.schedules import Schedule

__all__ = [
    "gae", "discounted_returns", "normalize",
    "kl_estimate", "AdaptiveKLController", "FixedKLController",
    "masked_mean", "masked_var", "masked_whiten",
    "policy_loss", "value_loss", "entropy_bonus", "PolicyLossOutput",
    "Schedule",
]
