"""proximo: Proximal Policy Optimization for gymnasium envs and language models."""
from __future__ import annotations

from typing import TYPE_CHECKING

from proximo.lazy import lazy_face
from proximo.version import __version__

# The face hands on its names when first asked for them (proximo/lazy.py): importing one part of proximo (the LLM
# trainers, say) then does not import the classic trainer and gymnasium with it.
_HOME = {"PPO": "proximo.api", "PPOConfig": "proximo.config", "make_config": "proximo.config",
         "ProximoError": "proximo.errors"}
__getattr__, __dir__ = lazy_face(__name__, _HOME, globals())

if TYPE_CHECKING:  # for type checkers alone: nothing is imported at run time
    from proximo.api import PPO
    from proximo.config import PPOConfig, make_config
    from proximo.errors import ProximoError

__all__ = ["PPO", "PPOConfig", "make_config", "ProximoError", "__version__"]
