"""Process set-up (proximo/runtime.py): keep_freed_memory stops glibc from handing freed blocks back to the
kernel, so the NumPy kernels' ~1 MiB temporaries stop page-faulting. Each case runs in a fresh subprocess:
the malloc settings are process-wide and cannot be undone."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Three 1 MiB arrays allocated and freed together, 50 times, after a warm-up round: the minor page faults of
# the second round. glibc's defaults trim the freed top of the heap (more than its 2 MiB dynamic threshold) and
# fault the pages in again: up to 256 faults per MiB (24,000 for the round on this machine).
CHURN = """
import resource, sys
import numpy as np
from proximo.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def churn():
    for _ in range(50):
        blocks = [np.ones(1 << 18, dtype=np.float32) for _ in range(3)]
        del blocks
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _churn(mode: str, **env: str) -> tuple[str, int]:
    """(what keep_freed_memory returned, minor page faults of the churn) in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", CHURN, mode], cwd=ROOT, env={**os.environ, **env}, timeout=60,
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_keep_freed_memory_stops_the_page_faults_of_large_temporaries():
    _, plain = _churn("plain")
    applied, kept = _churn("keep")
    if applied != "True":
        pytest.skip("this Linux's C library is not glibc (keep_freed_memory returned False)")
    if plain < 10_000:  # measured 24,000 here under glibc's defaults
        pytest.skip(f"this process's allocator keeps freed memory already ({plain} faults without the call)")
    assert kept < plain // 20  # measured 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_the_users_own_malloc_settings_rule():
    applied, _ = _churn("keep", MALLOC_TRIM_THRESHOLD_="131072")
    assert applied == "False"
