"""proximo: Proximal Policy Optimization for gymnasium envs and language models."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from proximo.version import __version__

# The face hands on its names when first asked for them (PEP 562): importing one part of proximo (the LLM
# trainers, say) then does not import the classic trainer and gymnasium with it.
_HOME = {"PPO": "proximo.api", "PPOConfig": "proximo.config", "make_config": "proximo.config",
         "ProximoError": "proximo.errors"}

if TYPE_CHECKING:  # for type checkers alone: nothing is imported at run time
    from proximo.api import PPO
    from proximo.config import PPOConfig, make_config
    from proximo.errors import ProximoError

__all__ = ["PPO", "PPOConfig", "make_config", "ProximoError", "__version__"]


def __getattr__(name: str) -> Any:
    """PPO, PPOConfig, make_config and ProximoError, imported from their modules on first use."""
    if name not in _HOME:
        raise AttributeError(f"module 'proximo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the ones handed on lazily included."""
    return sorted({*globals(), *_HOME})
