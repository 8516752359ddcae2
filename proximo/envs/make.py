"""Vector envs with same-step autoreset, from an env id or a factory."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Union

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from proximo.envs.atari import PixelOptions, is_atari_id, is_minatar_id, make_atari, make_minatar, register_pixel_family
from proximo.errors import ConfigError, ProximoError

EnvFactory = Callable[[], gym.Env]
EnvLike = Union[str, EnvFactory]


@dataclass(frozen=True)
class EnvSpec:
    """What proximo needs to rebuild an env: an id (with kwargs) or a factory callable."""

    env: EnvLike
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """A printable name: the id, or the factory's qualified name."""
        if isinstance(self.env, str):
            return self.env
        return getattr(self.env, "__qualname__", repr(self.env))


def _unknown_env_message(env_id: str) -> str:
    close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `python -m gymnasium` lists none, see gym.registry"
    return f"unknown env id {env_id!r}{hint}"


def make_single_env(env: EnvLike, render_mode: str | None = None, pixels: PixelOptions | None = None,
                    **kwargs: Any) -> gym.Env:
    """One env from an id or a factory, with proximo's standard wrappers (the Atari and MinAtar pipelines).

    pixels sets the Atari pipeline (proximo.envs.atari); None means its evaluation defaults.
    """
    if callable(env) and not isinstance(env, str):
        made = env()
        if not isinstance(made, gym.Env):
            raise ProximoError(f"env factory {env!r} returned {type(made).__name__}, which is neither a gymnasium.Env "
                               "nor a PettingZoo AECEnv or ParallelEnv")
        return made
    if not isinstance(env, str):
        raise ProximoError(f"env must be a gymnasium id or a callable returning an env, got {env!r}")
    if env.startswith("proximo/"):
        # registers the built-in tasks on the first proximo/ id: importing proximo adds nothing to gymnasium's registry
        import proximo.envs.tasks  # noqa: F401
    register_pixel_family(env)
    if env not in gym.registry:
        raise ProximoError(_unknown_env_message(env))
    try:
        if is_atari_id(env):
            return make_atari(env, pixels, render_mode=render_mode, **kwargs)
        if is_minatar_id(env):
            return make_minatar(env, render_mode=render_mode, obs=pixels.minatar_obs if pixels else "frames", **kwargs)
        if render_mode is not None:
            kwargs = {**kwargs, "render_mode": render_mode}
        return gym.make(env, **kwargs)
    except (gym.error.Error, TypeError) as exc:
        raise ProximoError(f"could not make env {env!r}: {exc}") from exc
    except ImportError as exc:
        raise ProximoError(f"env {env!r} needs a package that is not installed: {exc}") from exc


def make_vector_env(env: EnvLike, num_envs: int, backend: str = "sync", **kwargs: Any) -> gym.vector.VectorEnv:
    """num_envs copies in a gymnasium vector env with SAME_STEP autoreset.

    SAME_STEP means a step that ends an episode already returns the next episode's first
    observation, with the final one in info["final_obs"]; no step mixes two episodes.
    """
    if backend == "batched":
        raise ConfigError(f"env_backend batched steps a multi-agent env's NumPy twin (mpe2's simple_spread_v3); "
                          f"{env!r} is a gymnasium env: use --env-backend sync or async")
    make_one = _Maker(env, kwargs)
    make_one().close()  # fail here, in the caller's process, with a clear message
    fns = [make_one] * num_envs
    if backend == "async":
        return AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)


class _Maker:
    """A picklable thunk for vector env workers."""

    def __init__(self, env: EnvLike, kwargs: dict[str, Any]) -> None:
        self.env, self.kwargs = env, kwargs

    def __call__(self) -> gym.Env:
        return make_single_env(self.env, **self.kwargs)
