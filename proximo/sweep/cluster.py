"""Connecting to Ray: a local cluster sized by --workers, or an existing one at --address; one-line errors."""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from proximo.errors import ConfigError, ProximoError
from proximo.extras import install_hint

RAY_EXTRA = install_hint("ray")


def import_ray():
    """The ray module, or a ProximoError naming the extra that brings it."""
    try:
        import ray
    except ImportError:
        raise ProximoError(f"sweeps run on Ray and need {RAY_EXTRA}") from None
    return ray


def project_path() -> str:
    """The folder holding the imported proximo package: put on every worker's PYTHONPATH, so trials run this
    checkout's code (on another machine of a cluster the folder need not exist; proximo must be installed there)."""
    return str(Path(__file__).resolve().parents[2])  # proximo/sweep/cluster.py -> the folder above proximo/


def worker_env(threads: int) -> dict[str, str]:
    """Environment variables of every trial's worker: this proximo first on the path, BLAS/OpenMP at its CPU share."""
    path = os.pathsep.join(p for p in (project_path(), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "OPENBLAS_NUM_THREADS": str(threads)}


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail in one line, within seconds, when HOST:PORT does not answer (ray.init would retry for a minute)."""
    host, _, port = address.rpartition(":")
    host = host.removeprefix("ray://").strip("[]")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} must be auto or HOST:PORT (e.g. 127.0.0.1:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot reach a Ray cluster at --address {address} ({reason.lower()}); start one with "
                          "`ray start --head` there, or leave out --address for a local cluster") from None


def check_address(address: str | None, workers: int | None) -> int:
    """Check --address and --workers before anything starts; returns the local cluster's CPU count (0 with --address)."""
    if address is None:
        cpus = workers if workers is not None else (os.cpu_count() or 1)
        if cpus < 1:
            raise ConfigError(f"--workers must be at least 1, got {cpus}")
        return cpus
    if workers is not None:
        raise ConfigError("--workers sizes a local cluster; with --address the cluster's own CPUs are used "
                          "(leave out --workers, or --address)")
    if address != "auto":
        _check_reachable(address)
    return 0


def connect(address: str | None, workers: int | None, threads: int) -> Any:
    """Start (address None) or join (auto | HOST:PORT) a Ray cluster; returns the ray module.

    A local cluster listens on 127.0.0.1 only and has `workers` CPUs (default: this machine's); the driver's
    and the workers' logs stay out of the terminal (each trial logs to its run directory).
    """
    ray = import_ray()
    cpus = check_address(address, workers)
    if ray.is_initialized():
        return ray  # a caller (a test, a notebook) already holds a cluster: use it as it is
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                  runtime_env={"env_vars": worker_env(threads)}, configure_logging=True)
    try:
        if address is None:
            ray.init(num_cpus=cpus, _node_ip_address="127.0.0.1", **common)
        else:
            ray.init(address=address, **common)
    except Exception as exc:  # Ray raises many kinds; the user needs the reason in one line
        if address is None:
            raise ProximoError(f"could not start a local Ray cluster: {_first_line(exc)}") from None
        raise ConfigError(f"cannot join the Ray cluster at --address {address}: {_first_line(exc)}; start one with "
                          "`ray start --head`, or leave out --address for a local cluster") from None
    return ray


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def cluster_cpus(ray) -> int:
    """CPUs the connected cluster has in all."""
    return int(ray.cluster_resources().get("CPU", 1))
