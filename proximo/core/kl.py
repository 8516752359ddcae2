"""KL estimators on sampled log-probs and the KL-coefficient controllers of PPO-Penalty."""
from __future__ import annotations

from dataclasses import dataclass

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp_sampler: torch.Tensor, logp_other: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-sample estimate of KL(sampler || other) from log-probs of actions drawn from the sampler.

    k1 = -log r (unbiased, can be negative), k2 = (log r)^2 / 2 (low variance, biased),
    k3 = (r - 1) - log r (unbiased and never negative), with r = p_other / p_sampler.
    """
    log_ratio = logp_other - logp_sampler
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {KL_ESTIMATORS}")


@dataclass
class FixedKLController:
    """A constant KL coefficient beta (PPO-Penalty with fixed beta)."""

    value: float

    def update(self, observed_kl: float) -> float:
        """Keep beta as it is; returns beta."""
        return self.value

    def state_dict(self) -> dict[str, float]:
        """The current beta, as a checkpoint keeps it."""
        return {"kl_coef": self.value}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved beta."""
        self.value = float(state["kl_coef"])


@dataclass
class AdaptiveKLController(FixedKLController):
    """The PPO paper's adaptive beta: halve it when KL < target/1.5, double it when KL > 1.5 target."""

    value: float
    target: float
    tolerance: float = 1.5
    factor: float = 2.0

    def update(self, observed_kl: float) -> float:
        """Adjust beta after one policy update from its mean KL; returns the new beta."""
        if observed_kl < self.target / self.tolerance:
            self.value /= self.factor
        elif observed_kl > self.target * self.tolerance:
            self.value *= self.factor
        return self.value
