"""The C heap policy a measuring process runs under (glibc malloc), so a latency does not depend on the process's history.

With glibc's defaults, a block of 128 KiB or more is mmapped, and freed memory at the top of the heap
is handed back to the kernel once more than the (dynamic) trim threshold of it is free. Whether a
network's freed activations are kept for the next call or handed back, and faulted in again page by
page, then depends on what the process allocated before. On this project's 2-core reference VM, eager
resnet8 at batch 64 ran at 17-21 ms with 5,000-10,000 minor page faults per call in fresh processes
under glibc's defaults and at 10-11 ms with none when freed memory was kept, and one run's worker
processes timed the same gap_convnet cell at 17 ms or at 8 ms, each process at its own figure. The `steady`
policy (the default) fixes glibc where its own dynamic thresholds settle after the first big frees,
and stops the trim: blocks up to 32 MiB (M_MMAP_THRESHOLD, glibc's dynamic ceiling) come from the
heap, and freed memory stays there for reuse (M_TRIM_THRESHOLD = 2 GiB, the largest a C int holds),
as jemalloc and tcmalloc keep it, which PyTorch's CPU performance-tuning guide recommends. Bigger
blocks are mmapped and faulted in on every call, as under glibc's defaults (taking them from the
heap too fragments it: a 48 MiB block freed and asked for again grew the heap by 48 MiB a call for
several calls, since posix_memalign needs a little more than the freed block). Memory windows still start from
an explicit malloc_trim, so peak memory counts what is live. `ACCELBENCH_MALLOC=default` keeps glibc's
defaults instead: the figures are then those of a default deployment, history and all (the
`page_faults_per_call` column shows when a row paid for it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from typing import Iterator

ENV_VAR = "ACCELBENCH_MALLOC"
POLICIES = ("steady", "default")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc mallopt parameter numbers
KEEP_TRIM_THRESHOLD_BYTES = 2**31 - 1        # mallopt takes a C int: the largest threshold it can hold
STEADY_MMAP_THRESHOLD_BYTES = 32 * 2**20     # glibc's ceiling for its dynamic mmap threshold (64-bit)
WINDOW_MMAP_THRESHOLD_BYTES = 64 * 1024

_applied: str | None = None     # the description recorded with a run
_steady_set = False             # whether the steady thresholds are this process's policy


def requested_policy() -> str:
    """The policy named by $ACCELBENCH_MALLOC: `steady` when unset or empty, surrounding whitespace
    ignored. Raises ValueError naming the allowed values."""
    value = os.environ.get(ENV_VAR, "steady").strip() or "steady"
    if value not in POLICIES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(POLICIES)}; got {value!r}")
    return value


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - raises AttributeError where the C library has no mallopt
        return libc
    except (OSError, AttributeError):
        return None


def _mallopt(*pairs: tuple[int, int]) -> bool:
    assert all(-2**31 <= v < 2**31 for _, v in pairs), "mallopt values are C ints"
    libc = _libc()
    return libc is not None and all(libc.mallopt(param, value) == 1 for param, value in pairs)


def _steady() -> bool:
    return _mallopt((M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD_BYTES))


def apply_policy(policy: str | None = None) -> str:
    """Set this process's heap policy (`steady` or `default`; None reads $ACCELBENCH_MALLOC) and
    return the description recorded with a run. Only glibc is changed; with another C library (or a
    preloaded jemalloc/tcmalloc, which ignore glibc's settings) the description says so."""
    global _applied, _steady_set
    policy = policy or requested_policy()
    _steady_set = False
    preload = os.environ.get("LD_PRELOAD", "")
    if policy == "default":
        _applied = "glibc defaults (ACCELBENCH_MALLOC=default)"
    elif _steady():
        _steady_set = True
        _applied = ("steady: freed memory kept for reuse (glibc M_MMAP_THRESHOLD=32 MiB, "
                    "M_TRIM_THRESHOLD=2 GiB)")
    else:
        _applied = "C library without glibc's mallopt: its own defaults"
    if "jemalloc" in preload or "tcmalloc" in preload:
        _applied += f"; LD_PRELOAD={preload} (its allocator decides)"
    return _applied


def applied_policy() -> str:
    """What apply_policy set in this process, or that nothing was set."""
    return _applied or "glibc defaults (not set in this process)"


@contextlib.contextmanager
def blocks_mapped_apart() -> Iterator[bool]:
    """Inside: every block of 64 KiB or more is mmapped and handed back on free, so a resident-set
    peak shows what is live rather than what the heap kept; afterwards the process policy is back.
    Yields False where glibc's mallopt is missing (the peak is then a floor)."""
    ok = _mallopt((M_MMAP_THRESHOLD, WINDOW_MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, 2 * WINDOW_MMAP_THRESHOLD_BYTES))
    try:
        yield ok
    finally:
        if _steady_set:
            _steady()
        else:
            # glibc cannot go back to its dynamic thresholds; its dynamic ceiling is the closest
            # setting that does not mmap (and fault in) every activation afresh.
            _mallopt((M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, 2 * STEADY_MMAP_THRESHOLD_BYTES))
