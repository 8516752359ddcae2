"""The one protocol by which a run's state is saved and restored.

Every component that carries state across a checkpoint has `state_dict()` and `load_state_dict()`.
A run names its components once (`{prefix: component}`); `pack_state` splits their state into the
tensors of state.safetensors (under "<prefix>.<key>") and the JSON of state.json (under
meta[prefix], or at the top level of meta for the prefix ""), and `unpack_state` hands each
component back exactly what it gave. Adding state to a run is one entry in that mapping, or one
key in a component's own state_dict.
"""
from __future__ import annotations

import random
from typing import Any, Protocol

import numpy as np
import torch


class Stateful(Protocol):
    """Anything whose state survives a checkpoint: torch modules, optimizers, proximo's own parts."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors and JSON values that describe the component now."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Become the component that state_dict() described."""


def pack_state(parts: dict[str, Stateful]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON) of every component: tensor values by "<prefix>.<key>", the others in meta[prefix]."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for prefix, part in parts.items():
        plain: dict[str, Any] = {}
        for key, value in part.state_dict().items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{key}" if prefix else key] = value
            else:
                plain[key] = value
        if prefix:
            if plain:
                meta[prefix] = plain
        else:
            meta.update(plain)
    return tensors, meta


def unpack_state(parts: dict[str, Stateful], tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Load each component from what pack_state wrote (KeyError/ValueError on a damaged checkpoint)."""
    for prefix, part in parts.items():
        if prefix:
            start = len(prefix) + 1
            state = {key[start:]: value for key, value in tensors.items() if key.startswith(prefix + ".")}
            keeps_json = any(not isinstance(value, torch.Tensor) for value in part.state_dict().values())
            if keeps_json:
                state.update(meta[prefix])  # a KeyError names the missing part of state.json
        else:
            # Top-level components read their own keys out of the whole of meta (and unprefixed tensors).
            state = {**{key: value for key, value in tensors.items() if "." not in key}, **meta}
        part.load_state_dict(state)


class RandomState:
    """The process's random number generators: torch (CPU and, where present, CUDA), Python, NumPy."""

    def state_dict(self) -> dict[str, Any]:
        """The generators' states: tensors for torch, JSON for Python and NumPy."""
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _python_rng_state(),
                                 "numpy": _numpy_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for index, value in enumerate(torch.cuda.get_rng_state_all()):
                state[f"cuda{index}"] = value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put the generators back as saved (CUDA ones only where this process has as many devices)."""
        torch.set_rng_state(state["torch"])
        random.setstate(_to_python_rng(state["python"]))
        np.random.set_state(_to_numpy_rng(state["numpy"]))
        cuda = sorted((key for key in state if key.startswith("cuda")), key=lambda key: int(key[4:]))
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([state[key] for key in cuda])


class Together:
    """Several components saved side by side under one prefix (their keys must differ)."""

    def __init__(self, *parts: Stateful) -> None:
        self.parts = parts

    def state_dict(self) -> dict[str, Any]:
        """The union of the parts' state_dicts."""
        merged: dict[str, Any] = {}
        for part in self.parts:
            merged.update(part.state_dict())
        return merged

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Each part reads its own keys."""
        for part in self.parts:
            part.load_state_dict(state)


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _to_python_rng(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


def _numpy_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached": float(cached)}


def _to_numpy_rng(state: dict[str, Any]) -> tuple:
    return (state["name"], np.asarray(state["keys"], dtype=np.uint32), state["pos"], state["has_gauss"],
            state["cached"])
