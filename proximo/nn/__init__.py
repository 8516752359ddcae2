"""Actor-critic networks, observation encoders and action distributions."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Handed on when first asked for (PEP 562): the LLM side imports proximo.nn.normalize alone, without the
# policy's gymnasium spaces.
_HOME = {"ActorCritic": "proximo.nn.policy", "RunningMeanStd": "proximo.nn.normalize",
         "make_action_head": "proximo.nn.distributions"}

if TYPE_CHECKING:  # for type checkers alone: nothing is imported at run time
    from proximo.nn.distributions import make_action_head
    from proximo.nn.normalize import RunningMeanStd
    from proximo.nn.policy import ActorCritic

__all__ = ["ActorCritic", "RunningMeanStd", "make_action_head"]


def __getattr__(name: str) -> Any:
    """ActorCritic, RunningMeanStd and make_action_head, imported from their modules on first use."""
    if name not in _HOME:
        raise AttributeError(f"module 'proximo.nn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The package's names, the ones handed on lazily included."""
    return sorted({*globals(), *_HOME})
