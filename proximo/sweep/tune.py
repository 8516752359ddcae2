"""`proximo tune`: hyperparameter search with Optuna's TPE through Ray Tune, ASHA stopping bad trials early."""
from __future__ import annotations

import argparse


def register_tune(subparsers: argparse._SubParsersAction) -> None:
    """Add `proximo tune`."""
