"""Saving and loading policies and training state: safetensors for tensors, JSON for the rest.

No pickle anywhere: loading a file from a stranger runs no code. Every write is atomic (temporary
file, fsync, rename), so a kill at any moment leaves the previous file intact.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from proximo.errors import ProximoError

FORMAT_VERSION = 1
POLICY_TENSORS = "policy.safetensors"
POLICY_META = "policy.json"
# A training checkpoint's state (classic and LLM runs alike): checkpoints/step_N/state.{safetensors,json}.
STATE_TENSORS = "state.safetensors"
STATE_META = "state.json"


class CheckpointError(ProximoError):
    """A checkpoint is missing, corrupt, or does not fit the env/policy it is loaded into."""


class CheckpointFallbackWarning(UserWarning):
    """A load used a checkpoint: the run had no final policy/, or a newer checkpoint was damaged."""


def ensure_run_dir(path: str | Path, create: bool = True) -> Path:
    """Create the run directory path (create=False: only check that it could be) or raise a ProximoError saying why."""
    path = Path(path)
    fix = "choose a --run-dir in a folder you can write to"
    if path.exists() and not path.is_dir():
        raise ProximoError(f"run directory {path} is a file, not a folder; {fix}")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProximoError(f"cannot create run directory {path}: {_os_reason(exc)}; {fix}") from None
        target = path
    else:
        # The nearest folder that exists is the one a later mkdir writes into; nothing is created here,
        # so a run that fails on its env id leaves no empty folder behind.
        target = path.absolute()
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise ProximoError(f"cannot create run directory {path}: {target} is a file, not a folder; {fix}")
    if not os.access(target, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_fs(target) else "permission denied"
        what = "is not writable" if target in (path, path.absolute()) else f"cannot be created in {target}"
        raise ProximoError(f"run directory {path} {what} ({reason}); {fix}")
    return path


def _os_reason(exc: OSError) -> str:
    """An OSError as 'reason (path)', without errno numbers."""
    reason = (exc.strerror or str(exc)).lower()
    return f"{reason} ({exc.filename})" if exc.filename else reason


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _replacing(path: Path) -> Iterator[str]:
    """A temporary sibling of path to write into; once written it is fsynced and renamed over path
    (readers see the old file or the new one, never half of one); on any error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write data to path atomically (a temporary sibling, fsync, rename)."""
    with _replacing(Path(path)) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: Path, data: Any) -> None:
    """Atomically write data as indented JSON."""
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Atomically write a safetensors file of contiguous CPU tensors."""
    with _replacing(Path(path)) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a missing or corrupt file into a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no file {path}; is this a proximo run or checkpoint directory?")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({exc}); use an earlier checkpoint") from exc


def load_json(path: Path) -> dict[str, Any]:
    """Load a JSON file, turning a missing or corrupt file into a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no file {path}; is this a proximo run or checkpoint directory?")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc}); use an earlier checkpoint") from exc
    if not isinstance(data, dict):  # every reader indexes it by key; a list or a number is damage
        raise CheckpointError(f"{path} is corrupt (it holds a JSON {type(data).__name__}, not an object); "
                              "use an earlier checkpoint")
    return data


def atomic_build_dir(final: Path, fill: Callable[[Path], None]) -> None:
    """Build a folder atomically: fill(tmp) writes everything into a hidden temporary sibling, which
    then replaces `final` by rename (a kill between the two renames is undone by recover_dir)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        fill(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_files(folder: Path, files: dict[str, dict[str, torch.Tensor] | dict[str, Any]]) -> None:
    """Write files into folder: name -> tensors for .safetensors, JSON data otherwise."""
    for name, content in files.items():
        if name.endswith(".safetensors"):
            atomic_save_tensors(folder / name, content)  # type: ignore[arg-type]
        else:
            atomic_write_json(folder / name, content)


def atomic_write_dir(final: Path, files: dict[str, dict[str, torch.Tensor] | dict[str, Any]]) -> None:
    """Write a folder of files (name -> tensors for .safetensors, JSON data otherwise) atomically."""
    atomic_build_dir(final, lambda tmp: write_files(tmp, files))


def recover_dir(final: Path) -> None:
    """Undo what a kill between atomic_write_dir's two renames left: bring back the previous folder."""
    final = Path(final)
    old = final.with_name(f".{final.name}.old")
    if not old.is_dir():
        return
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)  # the new folder made it into place
    else:
        os.replace(old, final)


class OptimizerState:
    """An optimizer as a checkpoint component: per-parameter state as tensors "<index>.<key>", the
    param groups and non-tensor per-parameter values (step counts kept as numbers) as JSON."""

    def __init__(self, optimizer) -> None:
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        """Tensors by "<param index>.<key>", plus "param_groups" and "scalars" (JSON)."""
        state = self.optimizer.state_dict()
        flat: dict[str, Any] = {}
        scalars: dict[str, dict[str, Any]] = {}
        for index, per_param in state["state"].items():
            for key, value in per_param.items():
                if torch.is_tensor(value):
                    flat[f"{index}.{key}"] = value
                else:
                    scalars.setdefault(str(index), {})[key] = value
        return {**flat, "param_groups": state["param_groups"], "scalars": scalars}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore what state_dict() gave; a state that does not fit the parameters is a CheckpointError."""
        state: dict[int, dict[str, Any]] = {}
        for name, value in saved.items():
            if torch.is_tensor(value):
                index, key = name.split(".", 1)
                state.setdefault(int(index), {})[key] = value
        for index, values in saved.get("scalars", {}).items():
            state.setdefault(int(index), {}).update(values)
        try:
            self.optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"optimizer state does not fit this policy ({exc})") from exc


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys prefixed with 'prefix.'."""
    return {f"{prefix}.{key}": value for key, value in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries under 'prefix.', with the prefix removed."""
    start = len(prefix) + 1
    return {key[start:]: value for key, value in tensors.items() if key.startswith(prefix + ".")}
