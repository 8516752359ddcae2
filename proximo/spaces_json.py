"""gymnasium spaces to and from plain JSON, so a saved policy can be rebuilt without pickle."""
from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from proximo.errors import ProximoError


class SpaceFormatError(ProximoError, ValueError):
    """A saved space description that does not describe a space (a ValueError, as callers catch those)."""


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    """A JSON-ready description of a Box/Discrete/MultiDiscrete/MultiBinary/Dict space."""
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": _floats(space.low), "high": _floats(space.high)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).tolist()}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {key: space_to_json(sub) for key, sub in space.spaces.items()}}
    raise ProximoError(f"space {space} cannot be saved; proximo saves Box, Discrete, MultiDiscrete, "
                       "MultiBinary and Dict spaces")


def space_from_json(data: dict[str, Any]) -> spaces.Space:
    """Rebuild a space written by space_to_json; a malformed description raises SpaceFormatError."""
    try:
        return _space_from_json(data)
    except SpaceFormatError:
        raise
    # what NumPy and gymnasium raise for wrong types, shapes and sizes (gymnasium checks some with assert)
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError, AssertionError) as exc:
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise SpaceFormatError(f"a saved space is malformed ({type(exc).__name__}: {detail}); the file is "
                               "corrupt or was not written by proximo") from None


def _space_from_json(data: dict[str, Any]) -> spaces.Space:
    if not isinstance(data, dict):
        raise SpaceFormatError(f"a saved space is malformed (a JSON {type(data).__name__}, not an object); "
                               "the file is corrupt or was not written by proximo")
    kind = data.get("type")
    if kind == "Box":
        dtype = np.dtype(data["dtype"])
        low = np.array([_unfloat(v) for v in np.ravel(data["low"])], dtype=dtype).reshape(data["shape"])
        high = np.array([_unfloat(v) for v in np.ravel(data["high"])], dtype=dtype).reshape(data["shape"])
        return spaces.Box(low=low, high=high, shape=tuple(data["shape"]), dtype=dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(data["n"]), start=int(data.get("start", 0)))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(np.array(data["nvec"]))
    if kind == "MultiBinary":
        return spaces.MultiBinary(data["n"])
    if kind == "Dict":
        return spaces.Dict({key: _space_from_json(sub) for key, sub in data["spaces"].items()})
    raise SpaceFormatError(f"unknown space type {kind!r} in saved metadata; the file is corrupt or from a newer "
                           "proximo")


def _floats(array: np.ndarray) -> list:
    # JSON has no infinity; keep them as strings so the round trip is exact.
    flat = [v if np.isfinite(v) else ("inf" if v > 0 else "-inf") for v in np.ravel(array).tolist()]
    return flat


def _unfloat(value: Any) -> float:
    return float(value)
