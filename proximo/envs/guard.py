"""A wrapper that survives an env whose step() or reset() raises: it re-makes and resets the env.

A failed step comes back as an episode end (reward 0, truncated) with the error text in
info[FAULT_KEY]; the rollout collector counts these faults, stores the step as terminal (no
bootstrap), warns, and stops the run once more than its restart budget have happened. A failed
reset (the vector env's autoreset after an episode end, typically) comes back as the fresh env's
reset with FAULT_KEY in its info; the episode before it had ended normally, so only the restart
is counted.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from typing import Any, Callable

import gymnasium as gym

from proximo.envs.make import make_single_env
from proximo.envs.snapshot import restore_env, snapshot_env
from proximo.errors import ProximoError

FAULT_KEY = "proximo_env_fault"


class EnvFaultError(ProximoError):
    """An env kept raising in step() or reset() (or could not be restarted)."""


class EnvGuard(gym.Wrapper):
    """Turns an exception in step() into a restart of the wrapped env (see module docstring)."""

    proximo_stateless_wrapper = True
    proximo_pending_snapshot: dict[str, Any] | None = None

    def __init__(self, env: gym.Env, make: Callable[[], gym.Env]) -> None:
        super().__init__(env)
        self._make = make

    def step(self, action):
        """The wrapped env's step; on an exception a fresh env's reset obs with truncated=True."""
        try:
            return self.env.step(action)
        except Exception as exc:  # noqa: BLE001 - any env bug is what this wrapper is for
            detail = f"{type(exc).__name__}: {exc}"
            obs, info = self._restart(detail, "step()")
            return obs, 0.0, False, True, {**info, FAULT_KEY: detail}

    def reset(self, *, seed=None, options=None):
        """The wrapped env's reset; on an exception a fresh env's reset, with FAULT_KEY in its info."""
        try:
            return self.env.reset(seed=seed, options=options)
        except Exception as exc:  # noqa: BLE001
            detail = f"{type(exc).__name__}: {exc}"
            obs, info = self._restart(detail, "reset()", seed=seed, options=options)
            return obs, {**info, FAULT_KEY: detail}

    def _restart(self, detail: str, where: str, seed: int | None = None, options=None) -> tuple[Any, dict]:
        # Seed the new env from the old one's generator so a restarted run stays reproducible.
        if seed is None:
            seed = int(self.env.np_random.integers(2**31 - 1))
        try:
            self.env.close()
        except Exception:  # noqa: BLE001 - the env is already broken; closing it is best effort
            pass
        try:
            self.env = self._make()
            return self.env.reset(seed=seed, options=options)
        except Exception as exc:  # noqa: BLE001
            raise EnvFaultError(f"the env raised in {where} ({detail}) and could not be restarted: "
                                f"{type(exc).__name__}: {exc}") from exc

    def proximo_snapshot(self) -> dict[str, Any] | None:
        """snapshot_env() of the wrapped env (AsyncVectorEnv workers call this by name)."""
        return snapshot_env(self.env)

    def proximo_apply_snapshot(self) -> None:
        """Restore the snapshot set in proximo_pending_snapshot (AsyncVectorEnv workers)."""
        if self.proximo_pending_snapshot is not None:
            restore_env(self.env, self.proximo_pending_snapshot)
            self.proximo_pending_snapshot = None


class GuardedMaker:
    """A picklable env factory: make_single_env(env, **kwargs) inside an EnvGuard."""

    def __init__(self, env, kwargs: dict[str, Any]) -> None:
        self.env, self.kwargs = env, dict(kwargs)
        self.__qualname__ = getattr(env, "__qualname__", str(env))

    def _make_inner(self) -> gym.Env:
        return make_single_env(self.env, **self.kwargs)

    def __call__(self) -> gym.Env:
        if multiprocessing.parent_process() is not None:
            # An AsyncVectorEnv worker. A terminal's Ctrl-C reaches the whole foreground process group, and
            # torchrun stops a rank with killpg(SIGTERM); both are meant for the trainer, which finishes its
            # update and checkpoint with these workers. So the worker leaves the trainer's group and ignores
            # SIGINT; it still ends when the trainer closes it, or dies (its pipe then reads end-of-file).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            os.setpgid(0, 0)
        return EnvGuard(self._make_inner(), self._make_inner)
