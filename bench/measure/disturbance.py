"""What else took the CPU while one side of a pair was timed: other processes, the hypervisor, preemptions.

A latency on a 2-core machine is only as good as the cores it had. When torch runs its default two
threads, every core is in the team: a kernel worker flushing a cache file, a compile worker left
alive, the parent's watchdog or a neighbour on the host takes a core for a few milliseconds and the
whole OpenMP team waits for its slowest thread. The timing loop snapshots these counters at the edges
of every timed block (never inside one), so a row can say *why* its two sides disagreed instead of
only *that* they did:

- `other_cpu_s`: CPU time the whole machine spent busy (Linux `/proc/stat`: user, nice, system, irq,
  softirq) minus this process's own CPU time (`time.process_time`, all its threads): other processes,
  this process's children (compile workers, distributed ranks) and the kernel's own threads.
- `steal_s`: time the hypervisor ran other guests on our virtual CPUs (`/proc/stat` steal).
- `involuntary_switches`: how often this process's threads were preempted (`getrusage` ru_nivcsw).
- `foreign_cpu_s`: CPU time of this process's threads that were not alive when the probe was made
  (`/proc/self/task/<tid>/schedstat`, else `stat`): in a cell, the threads the candidate's preparation started (ONNX
  Runtime's intra-op pool, a calibration session's pool, compile helpers). During the baseline's
  blocks they should be idle; when they are not, they take the cores the baseline's OpenMP team needs.

`/proc/stat` counts in clock ticks (USER_HZ, 100 per second on Linux), so one block's figure is
coarse; summed over a side's blocks (about a second) it resolves a few hundredths of a core. Where
`/proc/stat` cannot be read, the machine-wide figures are NaN and only the process's own are kept.
"""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_PROC_STAT = Path("/proc/stat")
try:
    _TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
except (ValueError, OSError, AttributeError):
    _TICK_S = 0.01


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative counters at one instant: wall clock, this process's CPU, the machine's busy and
    stolen CPU (seconds, summed over all CPUs; NaN where unknown) and this process's preemptions."""

    wall_s: float
    own_cpu_s: float
    busy_s: float
    steal_s: float
    involuntary_switches: int
    foreign_cpu_s: float = 0.0


def _machine_busy_and_steal_s() -> tuple[float, float]:
    try:
        with open(_PROC_STAT) as f:
            fields = f.readline().split()
    except OSError:
        return math.nan, math.nan
    # cpu user nice system idle iowait irq softirq steal guest guest_nice (guest time is already in user)
    if len(fields) < 9 or fields[0] != "cpu":
        return math.nan, math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq) * _TICK_S, steal * _TICK_S


def thread_ids() -> frozenset[int]:
    """This process's live thread ids (empty where /proc cannot be read)."""
    try:
        return frozenset(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:
        return frozenset()


def _thread_cpu_s(tid: int) -> float:
    """CPU time of one of this process's threads: the scheduler's own count in ns (schedstat) where
    the kernel keeps it, else utime + stime in clock ticks; 0 when the thread has ended."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[0]) * 1e-9
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            # the command name (field 2) may hold spaces: count fields after its closing parenthesis
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * _TICK_S   # utime, stime (fields 14 and 15 of stat)
    except (OSError, IndexError, ValueError):
        return 0.0


def _threads_cpu_s(exclude: frozenset[int]) -> float:
    return sum(_thread_cpu_s(tid) for tid in thread_ids() - exclude)


# A thread pool that spins after its work (ONNX Runtime's intra-op workers spin-wait for the next
# request: about 40 ms after the last call on this project's 2-core VM, a whole core meanwhile) takes
# a core from whatever runs next. The timing loop waits for such threads to go quiet before a block.
QUIET_POLL_S = 0.005
QUIET_CPU_S = 0.0005        # less CPU than this between two polls is quiet
QUIET_MAX_S = 0.5           # a pool that never goes quiet delays each block by at most this


def wait_until_quiet(home_threads: frozenset[int], *, max_s: float = QUIET_MAX_S,
                     clock: Callable[[], float] = time.perf_counter,
                     sleep: Callable[[float], None] = time.sleep) -> float:
    """Wait until the threads outside `home_threads` use no CPU between two polls (or `max_s` has
    passed); return the seconds waited. Returns at once when there are none."""
    if not thread_ids() - home_threads:
        return 0.0
    start = clock()
    used = _threads_cpu_s(home_threads)
    while clock() - start < max_s:
        sleep(QUIET_POLL_S)
        now = _threads_cpu_s(home_threads)
        if now - used < QUIET_CPU_S:
            break
        used = now
    return clock() - start


def snapshot(home_threads: frozenset[int] | None = None) -> CpuSnapshot:
    """The counters now (tens of microseconds: call it between timed calls, never inside one).
    With `home_threads`, also the CPU time of this process's threads outside that set."""
    busy, steal = _machine_busy_and_steal_s()
    foreign = _threads_cpu_s(home_threads) if home_threads is not None else 0.0
    return CpuSnapshot(time.perf_counter(), time.process_time(), busy, steal,
                       resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw, foreign)


@dataclass(frozen=True)
class Load:
    """What the machine did besides this process over one side's timed blocks (seconds summed over
    the blocks; `wall_s` is their total wall time). Zero everywhere when nothing was recorded."""

    wall_s: float = 0.0
    own_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    steal_s: float = 0.0
    involuntary_switches: int = 0
    foreign_cpu_s: float = 0.0

    def __add__(self, other: "Load") -> "Load":
        return Load(self.wall_s + other.wall_s, self.own_cpu_s + other.own_cpu_s,
                    self.other_cpu_s + other.other_cpu_s, self.steal_s + other.steal_s,
                    self.involuntary_switches + other.involuntary_switches, self.foreign_cpu_s + other.foreign_cpu_s)

    @classmethod
    def between(cls, before: CpuSnapshot, after: CpuSnapshot) -> "Load":
        own = after.own_cpu_s - before.own_cpu_s
        busy = after.busy_s - before.busy_s
        # Tick rounding can make busy a little less than own over a short block: never negative.
        other = max(0.0, busy - own) if not math.isnan(busy) else math.nan
        return cls(after.wall_s - before.wall_s, own, other, after.steal_s - before.steal_s,
                   after.involuntary_switches - before.involuntary_switches,
                   max(0.0, after.foreign_cpu_s - before.foreign_cpu_s))

    @property
    def other_cores(self) -> float:
        """Cores' worth of CPU used by everything else (other processes, children, kernel threads)."""
        return self.other_cpu_s / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def steal_cores(self) -> float:
        """Cores' worth of time the hypervisor gave to other guests."""
        return self.steal_s / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def foreign_cores(self) -> float:
        """Cores' worth of CPU used by this process's threads started after the probe was made."""
        return self.foreign_cpu_s / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def preemptions_per_s(self) -> float:
        return self.involuntary_switches / self.wall_s if self.wall_s > 0 else math.nan


Probe = Callable[[], CpuSnapshot]
