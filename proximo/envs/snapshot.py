"""Pickle-free snapshots of env state, so a resumed run continues its episodes exactly.

A snapshot is plain JSON: for each wrapper layer the few counters it keeps (TimeLimit's elapsed
steps, ...), for the base env its NumPy bit-generator state and its simulator state. Only env
families whose state proximo knows are covered (classic control, MuJoCo, and Atari without sticky
actions through proximo's pipeline, proximo/envs/atari.py); for any other env
snapshot_env() returns None and a resume restarts that env's episode from reset instead.
"""
from __future__ import annotations

import base64
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import (
    AtariPreprocessing, FrameStackObservation, OrderEnforcing, PassiveEnvChecker, RecordEpisodeStatistics, TimeLimit,
    TransformReward,
)

from proximo.checkpoint import CheckpointError

SNAPSHOT_VERSION = 1

# Per-step state of the classic-control envs: everything step() reads that reset() writes.
# Pendulum's last_u only feeds render(), but it costs nothing to keep.
CLASSIC_FIELDS: dict[str, tuple[str, ...]] = {
    "CartPoleEnv": ("state", "steps_beyond_terminated"),
    "PendulumEnv": ("state", "last_u"),
    "MountainCarEnv": ("state",),
    "Continuous_MountainCarEnv": ("state",),
    "AcrobotEnv": ("state",),
    "TicTacToe": ("board",),  # proximo's own task (proximo/envs/tasks.py)
}

BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
NUMERIC_KINDS = "biuf"  # bool, int, uint, float: nothing that could carry objects


class Unsnapshottable(Exception):
    """Raised inside this module when a layer's state is unknown; callers see None."""


# values -------------------------------------------------------------------------------------------
def encode_value(value: Any) -> Any:
    """A JSON-ready form of None/bool/int/float or a NumPy array/scalar (dtype kept, floats exact)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return {"ndarray": str(value.dtype), "shape": None, "data": value.item()}
    if isinstance(value, np.ndarray) and value.dtype.kind in NUMERIC_KINDS:
        if value.size > 64:  # frames and buffers: raw bytes, base64, far smaller and faster than a list
            return {"ndarray": value.dtype.str, "shape": list(value.shape),
                    "base64": base64.b64encode(np.ascontiguousarray(value).tobytes()).decode("ascii")}
        return {"ndarray": str(value.dtype), "shape": list(value.shape), "data": value.ravel().tolist()}
    raise Unsnapshottable(f"a value of type {type(value).__name__}")


def decode_value(data: Any) -> Any:
    """Invert encode_value."""
    if isinstance(data, dict) and "ndarray" in data:
        dtype = np.dtype(data["ndarray"])
        if dtype.kind not in NUMERIC_KINDS:
            raise CheckpointError(f"saved env state has an array of dtype {dtype}; only numbers are allowed")
        if data["shape"] is None:
            return dtype.type(data["data"])
        if "base64" in data:
            raw = base64.b64decode(data["base64"])
            return np.frombuffer(raw, dtype=dtype).reshape(data["shape"]).copy()
        return np.array(data["data"], dtype=dtype).reshape(data["shape"])
    return data


# layers -------------------------------------------------------------------------------------------
def _wrapper_state(layer: gym.Env) -> dict[str, Any]:
    if isinstance(layer, TimeLimit):
        return {"elapsed_steps": layer._elapsed_steps}
    if isinstance(layer, OrderEnforcing):
        return {"has_reset": layer._has_reset}
    if isinstance(layer, (PassiveEnvChecker, TransformReward)) or getattr(layer, "proximo_stateless_wrapper", False):
        return {}  # TransformReward: proximo only builds it with a pure function (Atari's sign rewards)
    if hasattr(layer, "proximo_state"):  # proximo's own wrappers say what they keep (envs/atari.py)
        return {"state": layer.proximo_state()}
    if isinstance(layer, RecordEpisodeStatistics):
        # The running sums of the episode (for Atari: the whole game) in progress; the queues of past
        # episodes and the wall-clock start only feed info["..."]["t"] and the wrapper's own history.
        return {"episode_returns": float(layer.episode_returns), "episode_lengths": int(layer.episode_lengths),
                "episode_count": int(layer.episode_count)}
    if isinstance(layer, AtariPreprocessing):
        # The two last screens (max-pooled into the next obs) and the life counter.
        return {"obs_buffer": [encode_value(b) for b in layer.obs_buffer], "lives": int(layer.lives),
                "game_over": bool(layer.game_over)}
    if isinstance(layer, FrameStackObservation):
        state = {"frames": [encode_value(np.asarray(frame)) for frame in layer.obs_queue]}
        if layer.padding_type == "reset":
            state["padding"] = encode_value(np.asarray(layer.padding_value))
        return state
    raise Unsnapshottable(f"wrapper {type(layer).__name__}")


def _set_wrapper_state(layer: gym.Env, state: dict[str, Any]) -> None:
    if isinstance(layer, TimeLimit):
        layer._elapsed_steps = state["elapsed_steps"]
    elif isinstance(layer, OrderEnforcing):
        layer._has_reset = state["has_reset"]
    elif hasattr(layer, "proximo_set_state") and "state" in state:
        layer.proximo_set_state(state["state"])
    elif isinstance(layer, RecordEpisodeStatistics):
        layer.episode_returns, layer.episode_lengths = state["episode_returns"], state["episode_lengths"]
        layer.episode_count = state["episode_count"]
    elif isinstance(layer, AtariPreprocessing):
        for buffer, saved in zip(layer.obs_buffer, state["obs_buffer"]):
            buffer[...] = decode_value(saved)  # in place: ALE writes screens into these arrays
        layer.lives, layer.game_over = state["lives"], state["game_over"]
    elif isinstance(layer, FrameStackObservation):
        frames = [decode_value(frame) for frame in state["frames"]]
        if len(frames) != layer.stack_size:
            raise CheckpointError(f"saved frame stack has {len(frames)} frames, this env stacks {layer.stack_size}")
        layer.obs_queue.clear()
        layer.obs_queue.extend(frames)
        if "padding" in state:
            layer.padding_value = decode_value(state["padding"])


def _is_mujoco(env: gym.Env) -> bool:
    return hasattr(env, "model") and hasattr(env, "data") and type(env.data).__name__ == "MjData"


def _mujoco_state(env: gym.Env) -> dict[str, Any]:
    import mujoco
    # INTEGRATION covers time, qpos, qvel, act, warm-start accelerations, controls, applied forces,
    # mocap and plugin state: all that mj_step reads, so stepping on is bitwise the same.
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(env.model, spec), dtype=np.float64)
    mujoco.mj_getState(env.model, env.data, state, spec)
    return {"mujoco_integration": encode_value(state)}


def _set_mujoco_state(env: gym.Env, state: dict[str, Any]) -> None:
    import mujoco
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    values = decode_value(state["mujoco_integration"])
    if values.shape != (mujoco.mj_stateSize(env.model, spec),):
        raise CheckpointError(f"saved MuJoCo state has {values.size} numbers, this model needs "
                              f"{mujoco.mj_stateSize(env.model, spec)}; resume with the env it was trained on")
    mujoco.mj_setState(env.model, env.data, values, spec)
    mujoco.mj_forward(env.model, env.data)  # derived quantities (positions, contacts) as after a step


def _base_state(env: gym.Env) -> dict[str, Any]:
    name = type(env).__name__
    if name in CLASSIC_FIELDS:
        sim = {field: encode_value(getattr(env, field)) for field in CLASSIC_FIELDS[name]}
    elif _is_mujoco(env):
        sim = _mujoco_state(env)
    elif name == "AtariEnv":
        if env.ale.getFloat("repeat_action_probability") > 0:
            # A sticky action repeats the emulator's last action, which ALE keeps outside its saved state.
            raise Unsnapshottable("Atari with sticky actions (repeat_action_probability > 0: ALE does not save "
                                  "the last action; pass repeat_action_probability=0.0 for exact resumes)")
        # The emulator's RAM, CPU and its own RNG, in ALE's binary format.
        ale_state = env.ale.cloneState(include_rng=True).serialize()
        sim = {"ale": base64.b64encode(ale_state).decode("ascii")}
    else:
        raise Unsnapshottable(f"env class {name}")
    rng = env._np_random
    return {"sim": sim, "np_random": None if rng is None else rng.bit_generator.state,
            "np_random_seed": getattr(env, "_np_random_seed", None)}


def generator_from_state(state: dict[str, Any], what: str = "RNG") -> np.random.Generator:
    """A NumPy Generator continuing from a saved bit_generator.state dict; CheckpointError naming `what` when the
    file names a bit generator outside BIT_GENERATORS (never let a file pick an arbitrary attribute to call)."""
    name = state.get("bit_generator")
    if name not in BIT_GENERATORS:
        raise CheckpointError(f"saved {what} {name!r} is not one of {sorted(BIT_GENERATORS)}")
    bit_generator = getattr(np.random, name)()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def _set_base_state(env: gym.Env, state: dict[str, Any]) -> None:
    name = type(env).__name__
    if name in CLASSIC_FIELDS:
        for field in CLASSIC_FIELDS[name]:
            setattr(env, field, decode_value(state["sim"][field]))
    elif _is_mujoco(env):
        _set_mujoco_state(env, state["sim"])
    elif name == "AtariEnv":
        from ale_py import ALEState
        env.ale.restoreState(ALEState(base64.b64decode(state["sim"]["ale"])))
    if state["np_random"] is not None:
        env._np_random = generator_from_state(state["np_random"], "env RNG")
    env._np_random_seed = state["np_random_seed"]


def _layers(env: gym.Env) -> list[gym.Env]:
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


# public -------------------------------------------------------------------------------------------
def snapshot_env(env: gym.Env) -> dict[str, Any] | None:
    """The JSON state of one env (all wrapper layers and the base env), or None if proximo can't save it."""
    try:
        layers = _layers(env)
        base = {"type": type(layers[-1]).__name__, **_base_state(layers[-1])}  # first: the likeliest refusal
        return {"layers": [{"type": type(layer).__name__, **_wrapper_state(layer)} for layer in layers[:-1]],
                "base": base}
    except Unsnapshottable:
        return None


def why_unsnapshottable(env: gym.Env) -> str | None:
    """The first layer of env whose state proximo cannot save, as text; None if it can save them all."""
    try:
        layers = _layers(env)
        for layer in layers[:-1]:
            _wrapper_state(layer)
        _base_state(layers[-1])
    except Unsnapshottable as exc:
        return str(exc)
    return None


def restore_env(env: gym.Env, snapshot: dict[str, Any]) -> None:
    """Put env back into the state snapshot_env() saved; the env must be built the same way."""
    layers = _layers(env)
    saved = [layer["type"] for layer in snapshot["layers"]] + [snapshot["base"]["type"]]
    mine = [type(layer).__name__ for layer in layers]
    if saved != mine:
        raise CheckpointError(f"the saved env state is for wrappers {saved}, this env has {mine}; "
                              "resume with the env and wrappers it was trained with")
    for layer, state in zip(layers[:-1], snapshot["layers"]):
        _set_wrapper_state(layer, state)
    _set_base_state(layers[-1], snapshot["base"])


def snapshot_vector_env(envs: gym.vector.VectorEnv, rows: slice | None = None) -> dict[str, Any] | None:
    """The JSON state of every sub-env of a Sync/AsyncVectorEnv, or None if any cannot be saved.

    rows: only those sub-envs of a SyncVectorEnv (one agent's envs in a population), saved as a vector
    env of their own."""
    if hasattr(envs, "proximo_vector_snapshot"):  # a vector env that saves itself (proximo/multiagent/vector.py)
        return envs.proximo_vector_snapshot()
    if isinstance(envs, gym.vector.SyncVectorEnv):
        rows = rows or slice(None)
        subs = [snapshot_env(env) for env in envs.envs[rows]]
        autoreset = envs._autoreset_envs[rows].tolist()
    else:
        subs = list(envs.call("proximo_snapshot"))
        autoreset = None
    if any(sub is None for sub in subs):
        return None
    return {"version": SNAPSHOT_VERSION, "num_envs": len(subs), "envs": subs, "autoreset_envs": autoreset}


def restore_vector_env(envs: gym.vector.VectorEnv, snapshot: dict[str, Any], rows: slice | None = None) -> None:
    """Restore every sub-env (or the SyncVectorEnv's sub-envs `rows`) from snapshot_vector_env()'s output
    (call after envs.reset())."""
    if hasattr(envs, "proximo_vector_restore"):
        return envs.proximo_vector_restore(snapshot)
    if snapshot.get("version") != SNAPSHOT_VERSION:
        raise CheckpointError(f"env snapshot version {snapshot.get('version')} is not {SNAPSHOT_VERSION}; "
                              "this checkpoint is from another proximo version")
    rows = rows or slice(None)
    count = len(range(envs.num_envs)[rows])
    if snapshot["num_envs"] != count:
        raise CheckpointError(f"the checkpoint has {snapshot['num_envs']} envs, this run has {count}; "
                              "resume with the same num_envs")
    if isinstance(envs, gym.vector.SyncVectorEnv):
        for env, sub in zip(envs.envs[rows], snapshot["envs"]):
            restore_env(env, sub)
        if snapshot["autoreset_envs"] is not None:
            envs._autoreset_envs[rows] = np.array(snapshot["autoreset_envs"], dtype=np.bool_)
    else:
        envs.set_attr("proximo_pending_snapshot", snapshot["envs"])
        envs.call("proximo_apply_snapshot")


def vector_env_obstacle(envs: gym.vector.VectorEnv) -> str | None:
    """Why the sub-envs cannot be snapshotted (first reason), or None when they can."""
    if hasattr(envs, "proximo_vector_snapshot"):
        return None
    if isinstance(envs, gym.vector.SyncVectorEnv):
        return why_unsnapshottable(envs.envs[0])
    return None if snapshot_vector_env(envs) is not None else "a sub-env of the async vector env"

