"""Process set-up every trainer shares: seeding, thread counts and how freed memory is kept."""
from __future__ import annotations

import ctypes
import os
import random
import sys

import numpy as np
import torch
from threadpoolctl import threadpool_limits


def seed_everything(seed: int) -> random.Random:
    """Seed Python, NumPy and torch; returns a private random.Random(seed) for a trainer's own draws."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return random.Random(seed)


def set_threads(threads: int) -> None:
    """Use `threads` threads in torch and in NumPy's BLAS alike (0: leave both as they are).

    NumPy's OpenBLAS otherwise starts one thread per core; on a busy 2-core machine its spinning
    second thread turned a 0.35 ms NumPy minibatch update into ~10 ms.
    """
    if threads > 0:
        torch.set_num_threads(threads)
        threadpool_limits(limits=threads, user_api="blas")


# glibc's mallopt parameter numbers (malloc.h) and the values keep_freed_memory sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_TRIM_BYTES, _MMAP_BYTES = 256 << 20, 32 << 20  # 32 MiB: glibc's largest mmap threshold on 64-bit


def keep_freed_memory() -> bool:
    """Make glibc keep freed heap memory in the process; returns whether it did (False off glibc, or when
    the user set glibc's MALLOC_TRIM_THRESHOLD_ / MALLOC_MMAP_THRESHOLD_ themselves, which then rule).

    The NumPy kernels allocate temporaries of ~1 MB every minibatch (a population's [K, B, W] stacks).
    glibc's defaults hand such blocks back to the kernel on free, so each new one faults its pages in
    again: a 16-agent CartPole tanh backward took ~460 us that way, ~115 us with the memory kept
    (benchmarks/results/hotpath-malloc.md). Blocks under 32 MiB now come from the heap, and the heap
    keeps up to 256 MiB of free memory at its top.
    """
    if not sys.platform.startswith("linux") or any(
            name in os.environ for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries: nothing to set
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES)) and bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_BYTES))
