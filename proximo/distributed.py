"""One run over many processes: the process group, its collectives, and rank helpers (torch.distributed).

Synchronous data parallelism as DD-PPO does it: every rank steps its own envs, parameters start
equal (broadcast from rank 0), the flat gradient is all-reduced once per minibatch (by the
learner), statistics that must be global are all-reduced, and rank 0 alone does I/O. torchrun
launches the processes and does the rendezvous; init_world() joins the group it set up.

Objects cross between ranks as JSON (all_gather_object, broadcast_object), tensors as raw bytes,
never as pickle: the same rule as the checkpoints.
"""
from __future__ import annotations

import datetime
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist

from proximo.errors import PEER_LOST_EXIT, ConfigError, DistributedError, EchoedError, ProximoError
from proximo.rundir import list_checkpoints

TIMEOUT_ENV = "PROXIMO_DIST_TIMEOUT_S"
# How long a live rank waits inside one collective for a silent peer. A peer that dies closes its
# sockets and the others fail at once (gloo: "connection reset"); the timeout only bounds a hung or
# unreachable peer. It must exceed the longest legitimate wait between two collectives: rank 0
# writing a checkpoint and a metrics row while the others are already in the next step's all-reduce
# (well under a second for MLPs, a few seconds for Atari frame stacks on a slow disk), plus the
# rollout-speed skew between ranks. 60 s is a >10x margin for that and still ends a hang in a minute.
DEFAULT_TIMEOUT_S = 60.0
# Rank r seeds its envs, torch, NumPy and Python with seed + r * RANK_SEED_STRIDE (gymnasium then
# gives sub-env i seed + r * stride + i): rank 0 keeps the single-process seeds, and no two ranks
# share an env seed while num_envs < the stride.
RANK_SEED_STRIDE = 1_000_000
__all__ = ["World", "LocalWorld", "init_world", "launch_local", "broadcast_module_", "broadcast_optimizer_",
           "broadcast_parameters_",
           "rank_seed", "check_divides", "DistributedError", "EchoedError", "PEER_LOST_EXIT"]


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank` in a run seeded with `seed` (rank 0: seed itself)."""
    return seed + rank * RANK_SEED_STRIDE


def timeout_s() -> float:
    """The process-group timeout in seconds: $PROXIMO_DIST_TIMEOUT_S, else DEFAULT_TIMEOUT_S."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={text!r} is not a positive number of seconds; set it to e.g. 60")
    return value


def check_divides(batch_size: int, size: int, flag: str = "--nproc") -> None:
    """Raise ConfigError unless `size` processes split the global minibatch `batch_size` evenly."""
    if size < 1:
        raise ConfigError(f"{flag} must be at least 1, got {size}")
    if batch_size % size:
        fits = [k for k in range(1, min(batch_size, 64) + 1) if batch_size % k == 0]
        raise ConfigError(
            f"{size} processes do not divide batch_size {batch_size} (the global minibatch, split evenly over the "
            f"processes); use {flag} {', '.join(map(str, fits))} (under torchrun: that many processes in all), or "
            f"a batch_size that is a multiple of {size}")


@dataclass
class World:
    """This process's place in the run: rank, size, local_rank, backend, and the collectives.

    A size-1 World (World.local()) needs no process group and its collectives return at once, so
    single-process code calls them unconditionally. A collective runs where its tensor lives: gloo
    for host tensors, nccl for CUDA ones when the group has it. comm_calls and comm_s count the
    collectives run and the seconds spent inside them (waiting for the slowest rank included).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None          # "gloo", or "gloo+nccl" on GPUs; None for a single process
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # this rank's accelerator, or cpu
    comm_calls: int = 0
    comm_s: float = 0.0

    @classmethod
    def local(cls) -> "World":
        """The world of a process that runs alone (size 1, no process group)."""
        return LocalWorld()

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that does all I/O."""
        return self.rank == 0

    def describe(self) -> str:
        """'1 process' or 'K processes (backend)', for progress lines and summaries."""
        return "1 process" if self.size == 1 else f"{self.size} processes ({self.backend})"

    # collectives -----------------------------------------------------------------------------
    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum tensor over all ranks, in place; returns it."""
        if self.size > 1:
            self._collective(lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM), "all_reduce")
        return tensor

    def all_reduce_max_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum of tensor over all ranks, in place; returns it."""
        if self.size > 1:
            self._collective(lambda: dist.all_reduce(tensor, op=dist.ReduceOp.MAX), "all_reduce")
        return tensor

    def broadcast_(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Overwrite tensor with rank src's, in place; returns it."""
        if self.size > 1:
            self._collective(lambda: dist.broadcast(tensor, src), "broadcast")
        return tensor

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.size > 1:
            self._collective(dist.barrier, "barrier")

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's JSON-serializable obj, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        payload = _to_bytes(obj)
        sizes = torch.zeros(self.size, dtype=torch.int64)
        sizes[self.rank] = payload.numel()
        self.all_reduce_sum_(sizes)
        longest = int(sizes.max())
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[:payload.numel()] = payload
        gathered = [torch.empty_like(padded) for _ in range(self.size)]
        self._collective(lambda: dist.all_gather(gathered, padded), "all_gather")
        return [_from_bytes(chunk[:int(n)]) for chunk, n in zip(gathered, sizes)]

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank src's JSON-serializable obj on every rank (what the other ranks pass is ignored)."""
        if self.size == 1:
            return obj
        payload = _to_bytes(obj) if self.rank == src else torch.zeros(0, dtype=torch.uint8)
        size = self.broadcast_(torch.tensor([payload.numel()], dtype=torch.int64), src)
        if self.rank != src:
            payload = torch.zeros(int(size), dtype=torch.uint8)
        return _from_bytes(self.broadcast_(payload, src))

    def broadcast_tensors(self, tensors: dict[str, torch.Tensor] | None, src: int = 0) -> dict[str, torch.Tensor]:
        """Rank src's dict of CPU tensors on every rank: one JSON header, then one byte buffer."""
        if self.size == 1:
            return dict(tensors or {})
        header = None
        if self.rank == src:
            header = [[name, str(t.dtype).removeprefix("torch."), list(t.shape)] for name, t in tensors.items()]
        header = self.broadcast_object(header, src)
        if self.rank == src:
            flat = torch.cat([t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors.values()]) \
                if tensors else torch.zeros(0, dtype=torch.uint8)
        else:
            nbytes = sum(_dtype(d).itemsize * int(np.prod(shape)) for _, d, shape in header)
            flat = torch.zeros(nbytes, dtype=torch.uint8)
        self.broadcast_(flat, src)
        out, offset = {}, 0
        for name, dtype_name, shape in header:
            dtype = _dtype(dtype_name)
            n = dtype.itemsize * int(np.prod(shape))
            out[name] = flat[offset:offset + n].clone().view(dtype).reshape(shape)
            offset += n
        return out

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """fn() run on rank 0 alone; its JSON result on every rank. A ProximoError from fn is raised on every
        rank (as EchoedError on the others), so no rank is left waiting for a result that never comes."""
        if self.size == 1:
            return fn()
        failure: ProximoError | None = None
        reply = None
        if self.is_main:
            try:
                reply = {"result": fn()}
            except ProximoError as exc:
                failure, reply = exc, {"error": str(exc)}
        reply = self.broadcast_object(reply)
        if failure is not None:
            raise failure
        if "error" in reply:
            raise EchoedError(reply["error"])
        return reply["result"]

    def close(self) -> None:
        """Leave the process group (a no-op for a single process)."""
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    # plumbing --------------------------------------------------------------------------------
    def _collective(self, run: Callable[[], Any], name: str) -> None:
        start = time.perf_counter()
        try:
            run()
        except (RuntimeError, dist.DistError) as exc:
            raise DistributedError(
                f"rank {self.rank} of {self.size} lost contact with the other ranks in {name} ({_short(exc)}): "
                f"another rank died, or stayed silent past the {timeout_s():g} s timeout (${TIMEOUT_ENV}); its own "
                "output says why") from exc
        self.comm_calls += 1
        self.comm_s += time.perf_counter() - start


class LocalWorld(World):
    """A run in one process: rank 0 of 1, every collective a no-op (World's defaults, named)."""


def init_world(device: torch.device) -> World:
    """Join the process group torchrun set up; size 1 when torchrun did not launch this process.

    Reads RANK, WORLD_SIZE, LOCAL_RANK (and, inside init_process_group, MASTER_ADDR/MASTER_PORT).
    device cpu: gloo. device cuda: this rank takes GPU LOCAL_RANK and the group has nccl for CUDA
    tensors (the gradient of a GPU policy) beside gloo for host ones (the observation statistics,
    flags, checkpoint parts), so nothing crosses to the GPU just to be reduced; nccl builds its
    communicator at the first CUDA collective, so a CPU policy on a GPU machine never pays for it.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World.local()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and local_rank < torch.cuda.device_count():
        backend, group_backend, device = "gloo+nccl", "cpu:gloo,cuda:nccl", torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        backend, group_backend, device = "gloo", "gloo", torch.device("cpu")
    seconds = timeout_s()
    if not dist.is_initialized():
        # torch._dynamo, imported lazily by the first torch.optim optimizer, takes references to a process group
        # that exists when it is imported, which destroy_process_group cannot drop (measured on torch 2.13: the
        # group's refcount 10 -> 20, 12 after destroy). The group then outlives World.close() with its gloo
        # threads, and one of them freeing a tensor while the interpreter shuts down aborts the rank (SIGABRT,
        # "terminate called without an active exception"). Imported before the group exists, it holds none.
        importlib.import_module("torch._dynamo")
        try:
            dist.init_process_group(group_backend, rank=rank, world_size=size,
                                    timeout=datetime.timedelta(seconds=seconds))
        except (RuntimeError, ValueError, dist.DistError) as exc:
            raise DistributedError(f"rank {rank} of {size} could not join the {backend} process group at "
                                   f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} ({_short(exc)}); "
                                   "launch with torchrun and check that every node reaches that address") from exc
    return World(rank=rank, size=size, local_rank=local_rank, backend=backend, device=device)


def launched_by_torchrun() -> bool:
    """True inside a process torchrun (or another launcher that sets WORLD_SIZE and RANK) started."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def launch_local(nproc: int, argv: list[str], run_dir: Path | None = None) -> int:
    """Run `python -m proximo <argv>` as nproc ranks on this machine under torchrun --standalone; returns the
    exit status (0, 128 + signal after a stop, or the failed rank's status with one line saying which).

    torchrun runs in this process: it picks a free port on localhost, starts each rank in its own
    session (so a terminal's Ctrl-C reaches them once, forwarded by torchrun, which then waits up
    to $TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s, before SIGKILL), and stops every rank when one fails.
    Its log lines and failure report are replaced by that one line.
    """
    import logging

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun would set, without its banner about it
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        torchrun.main(["--standalone", "--nproc-per-node", str(nproc), "-m", "proximo", *argv])
    except SignalException as exc:
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        return _report_failure(exc.failures, nproc, run_dir)
    return 0


def _report_failure(failures: dict, nproc: int, run_dir: Path | None) -> int:
    """One stderr line naming the rank that failed first; returns the launcher's exit status."""
    import signal
    stops = {128 + signal.SIGINT, 128 + signal.SIGTERM}
    codes = {failure.exitcode for failure in failures.values()}
    if codes <= stops:
        return max(codes)  # every rank stopped after a signal, with the checkpoint rank 0 reported
    # The ranks torchrun terminated, or that lost their peer, are victims; the cause is among the others.
    victims = {-signal.SIGTERM, PEER_LOST_EXIT} | stops
    rank, failure = min(failures.items(), key=lambda item: (item[1].exitcode in victims, item[1].timestamp, item[0]))
    how = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
           else f"exited with status {failure.exitcode} (its error is above)")
    hint = ""
    if run_dir is not None:
        checkpoints = list_checkpoints(run_dir)
        if checkpoints:
            hint = (f"; the last checkpoint, {checkpoints[-1]}, stays loadable (`proximo train --resume {run_dir} "
                    f"--nproc {nproc}`)")
    print(f"proximo: error: rank {rank} of {nproc} (pid {failure.pid}) {how}; torchrun stopped the other ranks"
          f"{hint}", file=sys.stderr, flush=True)
    return failure.exitcode if failure.exitcode > 0 else 1


# rank helpers ------------------------------------------------------------------------------------
def broadcast_module_(module: torch.nn.Module, world: World, src: int = 0) -> None:
    """Copy rank src's parameters and buffers into every rank's module (one broadcast per dtype)."""
    _broadcast_all_(world, [*module.parameters(), *module.buffers()], src)


def broadcast_parameters_(tensors: Iterable[torch.Tensor], world: World, src: int = 0) -> None:
    """Copy rank src's values of these tensors (some of a module's parameters, e.g. a LoRA adapter) into every rank's."""
    _broadcast_all_(world, tensors, src)


def broadcast_optimizer_(optimizer, world: World, src: int = 0) -> None:
    """Copy rank src's optimizer state tensors (Adam's moments and step) into every rank's optimizer.

    optimizer: a torch optimizer or a FlatOptimizer (anything with state_dict(), whose "state" holds
    the live tensors). The ranks' optimizers must have the same state layout (all fresh, or all
    loaded from one checkpoint).
    """
    _broadcast_all_(world, [value for state in optimizer.state_dict()["state"].values() for value in state.values()
                            if torch.is_tensor(value)], src)


def _broadcast_all_(world: World, tensors: Iterable[torch.Tensor], src: int) -> None:
    if world.size == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    with torch.no_grad():
        for group in by_dtype.values():
            packed = world.broadcast_(torch.cat([t.detach().reshape(-1) for t in group]), src)
            offset = 0
            for tensor in group:
                tensor.copy_(packed[offset:offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()


DTYPES = {name: getattr(torch, name) for name in ("float64", "float32", "float16", "bfloat16", "int64", "int32",
                                                   "int16", "int8", "uint8", "bool")}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise DistributedError(f"a peer sent a tensor of dtype {name!r}, not one of {sorted(DTYPES)}")
    return DTYPES[name]


def _to_bytes(obj: Any) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(obj, separators=(",", ":")).encode()), dtype=torch.uint8)


def _from_bytes(data: torch.Tensor) -> Any:
    return json.loads(bytes(data.numpy()).decode())


def _short(exc: BaseException) -> str:
    """The gist of a torch.distributed error: its first line without the C++ source location."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". This is typically")[0][:200]
