"""Where an env says which actions are legal, found once per run and read after every reset and step.

Three conventions, looked for in this order:
- a Dict observation with an "action_mask" key (the policy then does not see that key);
- an `action_masks()` method on the env, reachable through wrappers (sb3-contrib's convention);
- `info["action_mask"]` (PettingZoo's and gymnasium's convention).
A mask is bool [mask_dim] per env, True = legal; for MultiDiscrete actions it is the concatenation of
one mask per dimension (length sum(nvec)), or a sequence of those per-dimension masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# The space-only helpers live with the networks (proximo/nn/spaces.py) and are imported from here too.
from proximo.errors import ActionMaskError  # noqa: F401
from proximo.nn.spaces import MASK_KEY, MASKING_MODES, mask_key_of, mask_width, network_space  # noqa: F401

SOURCES = ("observation", "method", "info")


def _has_method(env: gym.Env) -> bool:
    try:
        return callable(env.get_wrapper_attr("action_masks"))
    except AttributeError:
        return False


@dataclass
class ActionMaskSource:
    """How a run reads masks (source: observation | method | info) and how wide they are."""

    source: str
    width: int
    env_name: str = "the env"
    nvec: tuple[int, ...] | None = None  # MultiDiscrete: each dimension's block must allow an action

    @classmethod
    def detect(cls, env: gym.Env, mode: str, env_name: str = "the env") -> "ActionMaskSource | None":
        """Find the env's mask convention on one freshly reset env; None when masking is off or absent.

        mode "on" requires a mask; "auto" uses one when the env provides it. A mask offered for an
        action space masking does not apply to (Box, MultiBinary) is an error either way.
        """
        if mode == "off":
            return None
        observation, info = env.reset(seed=0)
        source = None
        if mask_key_of(env.observation_space, mode) is not None:
            source = "observation"
        elif _has_method(env):
            source = "method"
        elif isinstance(info, dict) and MASK_KEY in info:
            source = "info"
        if source is None:
            if mode == "on":
                raise ActionMaskError(
                    f"action_masking=on, but {env_name} exposes no action mask: give it an action_masks() method, "
                    f"an info['{MASK_KEY}'] or a Dict observation with an '{MASK_KEY}' key")
            return None
        width = mask_width(env.action_space)
        if width is None:
            raise ActionMaskError(
                f"{env_name} provides action masks ({source}), but its action space is {env.action_space}; masking "
                "applies to Discrete and MultiDiscrete actions: set action_masking=off")
        nvec = (tuple(int(n) for n in np.asarray(env.action_space.nvec).ravel())
                if isinstance(env.action_space, spaces.MultiDiscrete) else None)
        found = cls(source, width, env_name, nvec)
        found.check(found._one(env, observation, info), "after reset")
        return found

    # reading --------------------------------------------------------------------------------
    def _one(self, env: gym.Env, observation, info) -> np.ndarray:
        if self.source == "observation":
            return self._flat(observation[MASK_KEY])
        if self.source == "method":
            return self._flat(env.get_wrapper_attr("action_masks")())
        if not isinstance(info, dict) or MASK_KEY not in info:
            raise ActionMaskError(f"{self.env_name} gave no info['{MASK_KEY}'] on this step; it must give one "
                                  "on every reset and step")
        return self._flat(info[MASK_KEY])

    def _flat(self, mask) -> np.ndarray:
        if isinstance(mask, (list, tuple)) and mask and np.ndim(mask[0]) == 1 and len({len(m) for m in mask}) > 1:
            mask = np.concatenate([np.asarray(m) for m in mask])  # one mask per MultiDiscrete dimension
        array = np.asarray(mask)
        if array.size != self.width:
            raise ActionMaskError(f"{self.env_name}'s action mask has shape {array.shape}, the action space needs "
                                  f"{self.width} entries (for MultiDiscrete: sum(nvec), one block per dimension)")
        return array.reshape(self.width).astype(bool)

    def single(self, env: gym.Env, observation, info) -> np.ndarray:
        """The mask [width] of one (non-vector) env for its latest observation."""
        return self._one(env, observation, info)

    def vector(self, envs: gym.vector.VectorEnv, observations, infos) -> np.ndarray:
        """The masks [N, width] of a vector env's latest observations (after its autoreset)."""
        n = envs.num_envs
        if self.source == "observation":
            return self._rows(observations[MASK_KEY], n)
        if self.source == "method":
            return np.stack([self._flat(m) for m in envs.call("action_masks")])
        if MASK_KEY not in infos:
            raise ActionMaskError(f"{self.env_name} gave no info['{MASK_KEY}'] on this step; it must give one "
                                  "on every reset and step")
        present = infos.get(f"_{MASK_KEY}")
        if present is not None and not np.all(present):
            missing = np.flatnonzero(~np.asarray(present)).tolist()
            raise ActionMaskError(f"envs {missing} of {self.env_name} gave no info['{MASK_KEY}'] on this step; "
                                  "every reset and step must give one")
        return self._rows(infos[MASK_KEY], n)

    def _rows(self, masks, n: int) -> np.ndarray:
        array = np.asarray(masks)
        if array.ndim == 1 and array.dtype == object:
            return np.stack([self._flat(m) for m in array])
        if array.size != n * self.width:
            raise ActionMaskError(f"{self.env_name}'s action masks have shape {array.shape}, {n} envs need "
                                  f"[{n}, {self.width}] (for MultiDiscrete: sum(nvec) per env)")
        return array.reshape(n, self.width).astype(bool)

    def check(self, masks: np.ndarray, where: str) -> None:
        """Raise ActionMaskError naming the env and step when a mask [width] or [N, width] allows no action
        (for MultiDiscrete: in some dimension)."""
        rows, nvec = masks.reshape(-1, self.width), self.nvec
        blocks = np.split(rows, np.cumsum(nvec)[:-1], axis=1) if nvec else [rows]
        for dim, block in enumerate(blocks):
            empty = ~block.any(axis=1)
            if empty.any():
                envs = np.flatnonzero(empty).tolist()
                part = f" in action dimension {dim}" if nvec else ""
                raise ActionMaskError(f"{self.env_name} returned an action mask that allows no action{part} "
                                      f"{where} (env {envs[0]}; envs {envs}); every state needs a legal action")
