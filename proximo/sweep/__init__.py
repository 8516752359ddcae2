"""Many runs at once on Ray: grid sweeps over seeds and settings, hyperparameter search, the PPO paper's Table 1.

Every trial is a normal proximo run directory, so a sweep is resumable by construction: a finished trial has
summary.json, an interrupted one has checkpoints that proximo's own resume continues from.
"""
from proximo.sweep.spec import SweepSpec, Trial, parse_grid, parse_seeds

__all__ = ["SweepSpec", "Trial", "parse_grid", "parse_seeds"]
