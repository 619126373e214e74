"""Peak memory of a window of work: the process's resident-set high-water mark (CPU) or the CUDA allocator's."""

from __future__ import annotations

import re
from pathlib import Path

import psutil

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
MIB = 1024 * 1024


def release_free_memory() -> None:
    """Return freed heap pages to the kernel (glibc malloc_trim), so resident memory afterwards is
    what is live, not what an exporter or a fine-tuning loop freed but the allocator kept."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure then includes freed-but-kept pages
        pass


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / MIB


def _hwm_mb() -> float | None:
    try:
        m = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
        return int(m.group(1)) / 1024 if m else None
    except OSError:
        return None


class PeakRSS:
    """Context manager: peak resident memory inside the block, in MiB.

    Linux lets a process reset its high-water mark (write 5 to /proc/self/clear_refs), so the
    figure is the true kernel-counted peak of this window, not of the whole process life. Where
    that is not possible, it falls back to ru_maxrss-free sampling: start and end RSS (a floor).
    `tracemalloc` would miss tensor memory; this does not.
    """

    def __enter__(self) -> "PeakRSS":
        self.exact = True
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            self.exact = False
        self.start_mb = rss_mb()
        return self

    def __exit__(self, *exc) -> None:
        end = rss_mb()
        hwm = _hwm_mb() if self.exact else None
        self.peak_mb = max(hwm if hwm is not None else end, end, self.start_mb)
        self.delta_mb = self.peak_mb - self.start_mb
