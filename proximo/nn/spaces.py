"""What the networks read off gymnasium spaces about action masks: the Dict key that holds them (kept out of
the network's input) and how wide a flat mask is for an action space. Spaces only, no env: envs/masks.py finds
and reads an env's masks on top of these."""
from __future__ import annotations

import numpy as np
from gymnasium import spaces

from proximo.errors import ActionMaskError

MASK_KEY = "action_mask"
MASKING_MODES = ("auto", "on", "off")


def mask_key_of(observation_space: spaces.Space, mode: str) -> str | None:
    """The Dict key holding the mask (kept out of the network's input), or None."""
    if mode != "off" and isinstance(observation_space, spaces.Dict) and MASK_KEY in observation_space.spaces:
        return MASK_KEY
    return None


def network_space(observation_space: spaces.Space, mask_key: str | None) -> spaces.Space:
    """The observation space the network sees: the Dict without its mask key."""
    if mask_key is None:
        return observation_space
    rest = {key: sub for key, sub in observation_space.spaces.items() if key != mask_key}
    if not rest:
        raise ActionMaskError(f"the Dict observation holds only {mask_key!r}; add the observation itself beside it")
    return spaces.Dict(rest)


def mask_width(action_space: spaces.Space) -> int | None:
    """Width of a flat mask for action_space; None for spaces masking does not apply to."""
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, spaces.MultiDiscrete):
        return int(np.sum(action_space.nvec))
    return None
