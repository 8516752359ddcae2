"""The files a run leaves and how they are read back: saved policies (policy.json + policy.safetensors),
checkpoints (checkpoints/step_N/state.json + state.safetensors) and the run's config.json."""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from proximo.checkpoint import (  # noqa: F401 - STATE_META and STATE_TENSORS are imported from here too
    POLICY_META, POLICY_TENSORS, STATE_META, STATE_TENSORS, CheckpointError, CheckpointFallbackWarning,
    atomic_write_dir, load_json, load_tensors, recover_dir, unprefixed,
)
from proximo.config import PPOConfig
from proximo.nn.groups import GroupedActorCritic, group_info
from proximo.nn.policy import ActorCritic
from proximo.nn.spaces import mask_key_of
from proximo.rundir import RunDir, list_checkpoints  # noqa: F401 - list_checkpoints: imported from here too
from proximo.spaces_json import space_from_json, space_to_json
from proximo.version import __version__


def build_policy(observation_space, action_space, config: PPOConfig, actor_dim: int | None = None,
                 groups: dict | None = None) -> ActorCritic:
    """The actor-critic a config asks for; actor_dim: the actor reads only that many leading features (MAPPO);
    groups ({"group_of_agent", "id_start"}): one set of networks per agent group (proximo/nn/groups.py)."""
    if groups is not None:
        return GroupedActorCritic(observation_space, action_space, groups["group_of_agent"], groups["id_start"],
                                  **_policy_kwargs(observation_space, config, actor_dim))
    return ActorCritic(observation_space, action_space, **_policy_kwargs(observation_space, config, actor_dim))


def _policy_kwargs(observation_space, config: PPOConfig, actor_dim: int | None) -> dict[str, Any]:
    return dict(net_arch=config.net_arch,
                activation=config.activation, shared_network=config.shared_network,
                ortho_init=config.ortho_init, log_std_init=config.log_std_init,
                normalize_obs=config.normalize_obs, clip_obs=config.clip_obs,
                recurrent=config.recurrent, rnn_hidden=config.rnn_hidden, rnn_layers=config.rnn_layers,
                rnn_init=config.rnn_init, mask_key=mask_key_of(observation_space, config.action_masking), actor_dim=actor_dim,
                use_sde=config.use_sde)


def env_name(env: str | Callable) -> str | None:
    """The env id, or None for a factory (which cannot be saved)."""
    return env if isinstance(env, str) else None


def policy_metadata(policy: ActorCritic, config: PPOConfig, env: str | Callable | None,
                    env_kwargs: dict | None) -> dict[str, Any]:
    """The JSON that rebuilds a policy: format, version, env, spaces and config."""
    meta = {"format_version": 1, "proximo_version": __version__, "env_id": env_name(env) if env else None,
            "env_kwargs": env_kwargs or {}, "observation_space": space_to_json(policy.observation_space),
            "action_space": space_to_json(policy.action_space), "config": config.to_dict()}
    meta.update(policy_shape(policy))
    return meta


def policy_shape(policy: ActorCritic) -> dict[str, Any]:
    """What rebuilds a multi-agent policy beyond its spaces and config: the actor's input width (a centralized
    critic) and the agent groups (one policy per group); empty for a single-agent policy."""
    shape: dict[str, Any] = {}
    if policy.actor_dim is not None:
        shape["actor_dim"] = policy.actor_dim
    if group_info(policy) is not None:
        shape["policy_groups"] = group_info(policy)
    return shape


def save_policy(directory: Path, policy: ActorCritic, config: PPOConfig, env: str | Callable | None,
                env_kwargs: dict | None = None) -> None:
    """Write policy.safetensors (weights and normalization statistics) and policy.json atomically."""
    atomic_write_dir(Path(directory), {
        "policy.safetensors": policy.state_dict(),
        "policy.json": policy_metadata(policy, config, env, env_kwargs)})


def load_policy(directory: Path, checkpoint: str | Path | None = None) -> tuple[ActorCritic, dict[str, Any]]:
    """Rebuild a policy from a run directory, a policy folder or a checkpoint folder; returns (policy, metadata).

    A run directory gives its final policy/ or, when a kill left none, its newest intact checkpoint (said in a
    CheckpointFallbackWarning). checkpoint= (step_N, or a checkpoint folder) picks one even when policy/ exists.
    No code is run from the files.
    """
    directory = Path(directory)
    recover_dir(directory)
    if checkpoint is not None:
        return _policy_from_checkpoint(find_checkpoint(directory, checkpoint))
    if (directory / STATE_META).is_file():
        return _policy_from_checkpoint(directory)
    recover_dir(directory / "policy")
    if (directory / "policy" / POLICY_META).is_file():
        directory = directory / "policy"
    if (directory / POLICY_META).is_file():
        meta = load_json(directory / POLICY_META)
        tensors = load_tensors(directory / POLICY_TENSORS)
        return _rebuild_policy(meta, tensors, directory / POLICY_META, directory / POLICY_TENSORS), meta
    checkpoints = list_checkpoints(directory)
    if not checkpoints:
        raise CheckpointError(f"no saved policy in {directory}: expected policy/ (policy.json and policy.safetensors) "
                              "or checkpoints/step_*/ (train a run first, or point at its run directory)")
    return _newest_intact_policy(directory, checkpoints)


def find_checkpoint(run_dir: Path, name: str | Path) -> Path:
    """The checkpoint folder `name` picks: a path to one, or step_N (zero padding optional) in run_dir/checkpoints."""
    run_dir, text = Path(run_dir), str(name)
    if Path(text).is_dir():
        recover_dir(Path(text))
        if not (Path(text) / STATE_META).is_file():
            raise CheckpointError(f"checkpoint {text} has no {STATE_META}; give a checkpoints/step_N folder or step_N")
        return Path(text)
    match = re.fullmatch(r"(?:step_)?(\d+)", text)
    if match is None and Path(text).name != text:
        raise CheckpointError(f"checkpoint folder {text} does not exist; give an existing checkpoints/step_N folder "
                              "or a name like step_4096")
    if match is None:
        raise CheckpointError(f"checkpoint {text!r} is neither a checkpoint folder nor a name like step_4096; "
                              "give one of those")
    if (run_dir / STATE_META).is_file():  # a checkpoint folder: its siblings are the run's checkpoints
        run_dir = run_dir.parent.parent
    folder = run_dir / "checkpoints" / f"step_{int(match.group(1)):012d}"
    recover_dir(folder)
    if not (folder / STATE_META).is_file():
        names = [c.name for c in list_checkpoints(run_dir)]
        have = f"it has {', '.join(names[-5:])}" if names else "it has none"
        raise CheckpointError(f"no checkpoint {folder.name} in {run_dir / 'checkpoints'}; {have} (pick one of those)")
    return folder


def _policy_from_checkpoint(folder: Path) -> tuple[ActorCritic, dict[str, Any]]:
    """The policy inside a training checkpoint: the policy.* tensors, and config and spaces from state.json."""
    meta = load_json(folder / STATE_META)
    tensors = load_tensors(folder / STATE_TENSORS)
    policy = _rebuild_policy(meta, unprefixed("policy", tensors), folder / STATE_META, folder / STATE_TENSORS)
    # The keys policy.json has, plus where the weights came from.
    keys = ("format_version", "proximo_version", "env_id", "env_kwargs", "observation_space", "action_space",
            "config", "global_step", "actor_dim", "policy_groups")
    return policy, {**{key: meta[key] for key in keys if key in meta}, "checkpoint": str(folder)}


def _newest_intact_policy(run_dir: Path, checkpoints: list[Path]) -> tuple[ActorCritic, dict[str, Any]]:
    """Load the newest checkpoint that loads, warning which one (and which newer ones were damaged)."""
    damaged: list[tuple[Path, CheckpointError]] = []
    for folder in reversed(checkpoints):
        try:
            policy, meta = _policy_from_checkpoint(folder)
        except CheckpointError as exc:
            damaged.append((folder, exc))
            continue
        note = f"proximo: {run_dir} has no final policy/; using checkpoint {folder.name}"
        if damaged:
            names = ", ".join(f.name for f, _ in damaged)
            note += f" (newer {names} {'is' if len(damaged) == 1 else 'are'} damaged: {damaged[0][1]})"
        warnings.warn(note, CheckpointFallbackWarning, stacklevel=3)
        return policy, meta
    raise CheckpointError(f"{run_dir} has no final policy/ and none of its {len(checkpoints)} checkpoints loads "
                          f"(the newest: {damaged[0][1]}); train the run again")


def _rebuild_policy(meta: dict[str, Any], tensors: dict[str, torch.Tensor], meta_path: Path,
                    tensors_path: Path) -> ActorCritic:
    """Build the policy meta describes and load tensors into it, every misfit as a CheckpointError."""
    try:
        config = PPOConfig.from_dict(meta["config"])
        spaces = space_from_json(meta["observation_space"]), space_from_json(meta["action_space"])
        shape = (meta.get("actor_dim"), meta.get("policy_groups"))
        with torch.device("meta"):  # shapes first, nothing allocated: a damaged file may claim 10^9 actions
            _check_fit(build_policy(*spaces, config, *shape), tensors, tensors_path)
        policy = build_policy(*spaces, config, *shape)
    except KeyError as exc:
        raise CheckpointError(f"{meta_path} lacks {exc}; the file is corrupt") from exc
    except (TypeError, ValueError) as exc:  # ConfigError is a ValueError: a value the file should never hold
        raise CheckpointError(f"{meta_path} is damaged ({exc}); use an earlier checkpoint") from exc
    _load_state_strict(policy, tensors, tensors_path)
    policy.eval()
    return policy


def _load_state_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    _check_fit(module, tensors, source)
    module.load_state_dict(tensors)


def _check_fit(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit this policy: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]} (saved with other normalization or network settings?)")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, this policy needs "
                                  f"{tuple(expected[key].shape)} (a checkpoint from another env?)")


def resume_target(path: Path) -> tuple[Path, Path, Path | None]:
    """(run_dir, checkpoint, the one before it or None) for a run directory or one checkpoint folder."""
    path = Path(path)
    if (path / STATE_META).is_file():
        run_dir = path.parent.parent
        checkpoints = list_checkpoints(run_dir)
        before = [c for c in checkpoints if c.name < path.name]
        return run_dir, path, before[-1] if before else None
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a proximo run directory (no config.json) nor a checkpoint folder "
                              "(no state.json)")
    checkpoints = list_checkpoints(path)
    if not checkpoints:
        raise CheckpointError(f"{path} has no checkpoint to resume from (checkpoints/step_*/state.json)")
    return path, checkpoints[-1], checkpoints[-2] if len(checkpoints) > 1 else None


def read_run_config(run_dir: Path) -> tuple[str | None, dict, PPOConfig]:
    """(env_id, env_kwargs, config) from a run directory's config.json."""
    data = RunDir(run_dir, create=False).read_config()
    env_id = data.pop("env_id", None)
    env_kwargs = data.pop("env_kwargs", {})
    if not isinstance(env_id, (str, type(None))) or not isinstance(env_kwargs, dict):
        raise CheckpointError(f"{Path(run_dir) / 'config.json'} is damaged (env_id {env_id!r:.40}, env_kwargs "
                              f"{env_kwargs!r:.40}); restore it from a copy")
    data.pop("resolved", None)  # what the run's auto settings became: a record, not a setting
    data.pop("world", None)  # how many processes wrote it: a fact of that run, not a setting
    return env_id, env_kwargs, PPOConfig.from_dict(data)


def _describe_space(data: dict[str, Any]) -> str:
    """Short text of a space saved by space_to_json (Box bounds left out: they can be huge)."""
    kind = data.get("type")
    if kind == "Box":
        return f"Box(shape {tuple(data['shape'])}, {data['dtype']})"
    if kind == "Dict":
        return "Dict(" + ", ".join(f"{k}: {_describe_space(v)}" for k, v in data["spaces"].items()) + ")"
    return f"{kind}({', '.join(f'{k}={v}' for k, v in data.items() if k != 'type')})"
