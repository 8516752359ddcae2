"""Actor-critic networks, observation encoders and action distributions."""
from __future__ import annotations

from typing import TYPE_CHECKING

from proximo.lazy import lazy_face

# Handed on when first asked for (proximo/lazy.py): the LLM side imports proximo.nn.normalize alone, without the
# policy's gymnasium spaces.
_HOME = {"ActorCritic": "proximo.nn.policy", "RunningMeanStd": "proximo.nn.normalize",
         "make_action_head": "proximo.nn.distributions"}
__getattr__, __dir__ = lazy_face(__name__, _HOME, globals())

if TYPE_CHECKING:  # for type checkers alone: nothing is imported at run time
    from proximo.nn.distributions import make_action_head
    from proximo.nn.normalize import RunningMeanStd
    from proximo.nn.policy import ActorCritic

__all__ = ["ActorCritic", "RunningMeanStd", "make_action_head"]
