"""Bounds on what one run may ask for (threads, input size, per-cell guards), checked before anything is measured.

Each bound stops a request that cannot be meant from reaching code that fails badly on it: torch
given 100,000 threads crashes the process that measures the matmul peak (SIGSEGV); an input of
3x100000x100000 makes the data loader ask the allocator for terabytes; an infinite memory limit
overflows setrlimit in every worker, and a NaN one silently switches the memory guard off.
"""

from __future__ import annotations

import math
import os
from typing import Iterable

from bench.api import UserError

THREADS_PER_CORE_MAX = 4              # --threads above 4x the machine's logical CPUs is refused
FLOAT32_BYTES = 4                     # the harness feeds float32 batches
MAX_INPUT_BATCH_BYTES = 4 * 2 ** 30   # one input batch (batch size x C x H x W float32): 4 GiB
MAX_MEM_LIMIT_MB = 2.0 ** 30          # --mem-limit: 1 PiB, far beyond any machine, far below setrlimit's range
MAX_TIMEOUT_S = 7 * 24 * 3600.0       # --timeout: a week per cell


def max_threads() -> int:
    """The most torch threads a cell may ask for on this machine."""
    return THREADS_PER_CORE_MAX * (os.cpu_count() or 1)


def check_threads(threads: Iterable[int], where: str = "--threads") -> None:
    """UserError naming the bound when a thread count is not an integer in 1..max_threads()."""
    cap = max_threads()
    for n in threads:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= cap:
            raise UserError(f"{where} {n}: at most {cap} threads ({THREADS_PER_CORE_MAX} per logical CPU of "
                            f"this machine's {os.cpu_count()})")


def check_input_batch(model: str, shape: tuple[int, ...], batch_sizes: Iterable[int]) -> None:
    """UserError when one input batch of `model` (batch size x C x H x W float32) exceeds MAX_INPUT_BATCH_BYTES."""
    sizes = list(batch_sizes) or [1]
    per_image = math.prod(shape) * FLOAT32_BYTES
    largest = max(sizes)
    if per_image * largest > MAX_INPUT_BATCH_BYTES:
        dims = "x".join(map(str, shape))
        raise UserError(f"model {model}: input {dims} at batch size {largest} is {per_image * largest / 2 ** 30:,.1f} "
                        f"GiB of float32 per batch; the limit is {MAX_INPUT_BATCH_BYTES / 2 ** 30:g} GiB "
                        f"(give a smaller --input-shape or --batch-size)")


def check_guards(timeout_s: float, mem_limit_mb: float) -> None:
    """UserError for a per-cell time-out or memory limit that is not a finite number in its range."""
    if not 0 < timeout_s <= MAX_TIMEOUT_S:   # NaN fails this too
        raise UserError(f"--timeout must be > 0 seconds and at most {MAX_TIMEOUT_S:.0f} (a week), got {timeout_s}")
    if not 0 <= mem_limit_mb <= MAX_MEM_LIMIT_MB:
        raise UserError(f"--mem-limit must be a number of MiB >= 0 (0 = no limit) and at most "
                        f"{MAX_MEM_LIMIT_MB:.0f} (1 PiB), got {mem_limit_mb}")
