"""`proximo check ENV_ID`: does an env give proximo what it needs?

It checks the spaces (types proximo can encode and act in), the gymnasium 1.x signatures of
reset() and step(), and the observations and rewards of a few random steps (shape and dtype
against the declared space, NaN/inf). Errors stop a training run before it starts; warnings
are worth fixing but proximo copes (it casts dtypes, for instance).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from proximo.envs.make import EnvLike, make_single_env
from proximo.errors import ProximoError

OBS_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
ACTION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


class EnvCheckError(ProximoError):
    """The env breaks something proximo relies on (see `proximo check`)."""


class EnvCheckWarning(UserWarning):
    """The env has a quirk proximo copes with (a dtype its space does not declare, for instance)."""


@dataclass
class CheckReport:
    """What check_env found: errors (proximo cannot train), warnings and plain notes."""

    env: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there is no error."""
        return not self.errors

    def error(self, message: str) -> None:
        """Record an error once (repeats over many steps are dropped)."""
        if message not in self.errors:
            self.errors.append(message)

    def warn(self, message: str) -> None:
        """Record a warning once."""
        if message not in self.warnings:
            self.warnings.append(message)

    def raise_first(self) -> None:
        """Raise EnvCheckError with the first error, if any."""
        if self.errors:
            more = f" (and {len(self.errors) - 1} more; run `proximo check` on it)" if len(self.errors) > 1 else ""
            raise EnvCheckError(f"env {self.env}: {self.errors[0]}{more}")


# spaces -------------------------------------------------------------------------------------------
def _short(space: spaces.Space) -> str:
    if isinstance(space, spaces.Box):
        low, high = np.unique(space.low), np.unique(space.high)
        bounds = f"[{low[0]}, {high[0]}]" if low.size == 1 and high.size == 1 else "per-dimension bounds"
        return f"Box(shape {space.shape}, {space.dtype}, {bounds})"
    text = str(space)
    return text if len(text) <= 40 else f"{type(space).__name__}(...)"


def unsupported_obs_space(space: spaces.Space) -> str | None:
    """Why proximo cannot encode observations of space (None when it can)."""
    if isinstance(space, spaces.Dict):
        for key, sub in space.spaces.items():
            if not isinstance(sub, OBS_SPACES + (spaces.Dict,)):
                return (f"observation space Dict entry {key!r} is {type(sub).__name__}, which proximo cannot "
                        "encode; use Box, Discrete, MultiDiscrete or MultiBinary entries (wrap the env)")
            nested = unsupported_obs_space(sub)
            if nested:
                return nested
        return None
    if isinstance(space, OBS_SPACES):
        return None
    return (f"observation space {_short(space)} is not supported; proximo trains on "
            "Box, Discrete, MultiDiscrete, MultiBinary and Dict of those (wrap the env to encode it as one)")


def unsupported_action_space(space: spaces.Space) -> str | None:
    """Why proximo cannot act in space (None when it can)."""
    if isinstance(space, ACTION_SPACES):
        return None
    return (f"action space {_short(space)} is not supported; proximo acts in "
            "Discrete, Box, MultiDiscrete and MultiBinary spaces (wrap the env to use one of them)")


def _describe_obs(space: spaces.Space) -> str:
    if isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3:
        return f"{_short(space)} -> image frames, CNN torso"
    return f"{_short(space)} -> flat vector, MLP torso"


def _describe_action(space: spaces.Space) -> str:
    kinds = {spaces.Discrete: "categorical", spaces.Box: "diagonal Gaussian (clipped to the bounds)",
             spaces.MultiDiscrete: "one categorical per entry", spaces.MultiBinary: "one Bernoulli per entry"}
    return f"{_short(space)} -> {next(v for k, v in kinds.items() if isinstance(space, k))} policy"


# observations -------------------------------------------------------------------------------------
def check_observation(obs: Any, space: spaces.Space, where: str, report: CheckReport) -> None:
    """Record shape/dtype mismatches with space and NaN/inf values of one observation."""
    if isinstance(space, spaces.Dict):
        if not isinstance(obs, dict):
            report.error(f"{where} returned a {type(obs).__name__} observation, the Dict space needs a dict")
            return
        missing, extra = sorted(set(space.spaces) - set(obs)), sorted(set(obs) - set(space.spaces))
        if missing or extra:
            report.error(f"{where} returned observation keys {sorted(obs)}, the space declares "
                         f"{sorted(space.spaces)}")
            return
        for key, sub in space.spaces.items():
            check_observation(obs[key], sub, f"{where} [{key!r}]", report)
        return
    array = np.asarray(obs)
    if array.dtype == object:
        report.error(f"{where} returned an observation of type {type(obs).__name__}, not an array or number")
        return
    if isinstance(space, spaces.Discrete):
        if array.shape != () or not np.issubdtype(array.dtype, np.integer):
            report.error(f"{where} returned {array.dtype} observation of shape {array.shape}, the Discrete space "
                         "needs one integer")
        elif not space.contains(array.astype(space.dtype)):
            report.error(f"{where} returned observation {int(array)}, outside {space}")
        return
    shape = tuple(space.shape)
    if array.shape != shape:
        report.error(f"{where} returned an observation of shape {array.shape}, the observation space declares "
                     f"{shape}; fix the space or the env")
        return
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0].tolist()
        report.error(f"{where} returned a non-finite observation ({array[tuple(bad)]} at index {bad}); proximo "
                     "stops on NaN/inf, fix the env")
        return
    if array.dtype != space.dtype:
        report.warn(f"{where} returned observations of dtype {array.dtype}, the space declares {space.dtype} "
                    "(proximo casts them, but the env and its space disagree)")
    if isinstance(space, spaces.Box):
        if np.issubdtype(array.dtype, np.number) and not space.contains(array.astype(space.dtype)):
            report.warn(f"{where} returned an observation outside the declared Box bounds")
    elif not space.contains(array.astype(space.dtype)):
        report.error(f"{where} returned observation {array.tolist()}, outside {space}")


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _check_step(result: Any, space: spaces.Space, step: int, report: CheckReport) -> tuple[bool, bool]:
    """Check one step() result; returns (episode ended, result usable)."""
    if not isinstance(result, tuple) or len(result) != 5:
        size = len(result) if isinstance(result, tuple) else type(result).__name__
        old = " (obs, reward, done, info) is the old gym API" if size == 4 else ""
        report.error(f"step() returned {size} values{old}; proximo needs gymnasium 1.x's "
                     "(obs, reward, terminated, truncated, info)")
        return True, False
    obs, reward, terminated, truncated, info = result
    check_observation(obs, space, "step()", report)
    if isinstance(reward, np.ndarray) and reward.shape == ():
        reward = reward.item()
    if not isinstance(reward, numbers.Real) or isinstance(reward, bool):
        report.error(f"step() returned a reward of type {type(reward).__name__}"
                     f"{' with shape ' + str(np.shape(reward)) if hasattr(reward, 'shape') else ''}; "
                     "proximo needs one real number per step")
    elif not np.isfinite(float(reward)):
        report.error(f"step() returned a non-finite reward ({reward}) at step {step}; proximo stops on "
                     "NaN/inf, fix the env")
    for name, flag in (("terminated", terminated), ("truncated", truncated)):
        if not _is_bool(flag):
            report.warn(f"step() returned {name} of type {type(flag).__name__}; gymnasium 1.x wants a bool")
    if not isinstance(info, dict):
        report.error(f"step() returned info of type {type(info).__name__}; it must be a dict")
    return bool(terminated) or bool(truncated), True


def _check_reset(env: gym.Env, seed: int | None, space: spaces.Space, report: CheckReport) -> bool:
    try:
        result = env.reset(seed=seed)
    except Exception as exc:  # noqa: BLE001 - any failure is what we report
        report.error(f"reset(seed={seed}) raised {type(exc).__name__}: {exc}")
        return False
    if not isinstance(result, tuple) or len(result) != 2 or not isinstance(result[1], dict):
        got = f"a {len(result)}-tuple" if isinstance(result, tuple) else f"a {type(result).__name__}"
        report.error(f"reset() returned {got}; proximo needs gymnasium 1.x's (obs, info) with info a dict "
                     "(and reset must accept seed=)")
        return False
    check_observation(result[0], space, "reset()", report)
    return True


# the check --------------------------------------------------------------------------------------
def check_env(env: EnvLike | gym.Env, env_kwargs: dict | None = None, steps: int = 200,
              seed: int = 0) -> CheckReport:
    """Check an env (id, factory or instance) with `steps` random actions; returns the report."""
    name = env if isinstance(env, str) else getattr(env, "__qualname__", type(env).__name__)
    report = CheckReport(str(name))
    instance = env if isinstance(env, gym.Env) else make_single_env(env, **(env_kwargs or {}))
    try:
        _run_checks(instance, steps, seed, report)
    finally:
        if instance is not env:
            try:
                instance.close()
            except Exception:  # noqa: BLE001 - closing is best effort after a failed check
                pass
    return report


def _time_limit(env: gym.Env) -> int | None:
    """max_episode_steps of the first TimeLimit wrapper (factories have no spec), else the spec's."""
    layer = env
    while isinstance(layer, gym.Wrapper):
        if isinstance(layer, gym.wrappers.TimeLimit):
            return layer._max_episode_steps
        layer = layer.env
    return getattr(getattr(env, "spec", None), "max_episode_steps", None)


def _run_checks(env: gym.Env, steps: int, seed: int, report: CheckReport) -> None:
    obs_space, action_space = env.observation_space, env.action_space
    for problem in (unsupported_obs_space(obs_space), unsupported_action_space(action_space)):
        if problem:
            report.error(problem)
    if report.errors:
        return  # nothing further is meaningful without usable spaces
    report.notes.append(f"observation space: {_describe_obs(obs_space)}")
    report.notes.append(f"action space: {_describe_action(action_space)}")
    if isinstance(action_space, spaces.Box) and not (np.isfinite(action_space.low).all()
                                                     and np.isfinite(action_space.high).all()):
        report.warn("the Box action space has infinite bounds, so actions are not clipped; give it finite "
                    "bounds if the env expects a range")
    limit = _time_limit(env)
    report.notes.append(f"time limit: {limit} steps" if limit else
                        "time limit: none (episodes end only when the env terminates them)")
    if not _check_reset(env, seed, obs_space, report):
        return
    action_space.seed(seed)
    episodes_ended = 0
    for step in range(steps):
        try:
            result = env.step(action_space.sample())
        except Exception as exc:  # noqa: BLE001
            report.error(f"step() raised {type(exc).__name__}: {exc} at random step {step}; during training "
                         "proximo restarts such an env a few times, then stops")
            return
        ended, usable = _check_step(result, obs_space, step, report)
        if not usable:
            return
        if ended:
            episodes_ended += 1
            if not _check_reset(env, None, obs_space, report):
                return
    report.notes.append(f"reset() and step(): gymnasium 1.x signatures over {steps} random steps "
                        f"({episodes_ended} episodes ended)")


def require_env_ok(env: EnvLike, env_kwargs: dict | None = None, steps: int = 5, seed: int = 0) -> CheckReport:
    """The quick check a training run starts with: raises EnvCheckError on the first hard error, warns the rest."""
    import warnings

    report = check_env(env, env_kwargs, steps=steps, seed=seed)
    report.raise_first()
    for line in report.warnings:
        warnings.warn(f"proximo: warning: env {report.env}: {line}", EnvCheckWarning, stacklevel=3)
    return report


# the `proximo check` command ------------------------------------------------------------------------
def register(subparsers) -> None:
    """Add `proximo check ENV_ID` to the CLI."""
    parser = subparsers.add_parser("check", help="check that an env gives proximo what it needs")
    parser.add_argument("env_id", help="gymnasium id, e.g. Hopper-v5")
    parser.add_argument("--steps", type=int, default=200, help="random steps to take (default 200)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the env's reset and the random actions (default 0)")
    parser.set_defaults(handler=cmd_check)


def cmd_check(args) -> int:
    """Print the report; errors go to stderr as `proximo: error:` lines and give exit status 2."""
    import sys

    if args.steps < 0:
        raise ProximoError(f"--steps must not be negative, got {args.steps}")
    report = check_env(args.env_id, steps=args.steps, seed=args.seed)
    print(f"{report.env}: {'ok' if report.ok else 'NOT usable by proximo'}")
    for line in report.notes:
        print(f"  {line}")
    for line in report.warnings:
        print(f"  warning: {line}")
    for line in report.errors:
        print(f"proximo: error: env {report.env}: {line}", file=sys.stderr)
    return 0 if report.ok else 2
