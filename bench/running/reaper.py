"""Every process a cell starts ends with the cell: its worker adopts orphans, and the tree is killed and checked.

How the processes a model starts are found, and why this way:

- A worker's process group does not hold them all: a child that calls setsid() leaves the group.
- The parent/child tree does not hold them all either: a double-forked grandchild, once its parent
  exits, is reparented to init, and nothing links it to the cell any more. Unless the worker is a
  *child subreaper* (Linux `prctl(PR_SET_CHILD_SUBREAPER)`): orphans of its descendants are then
  reparented to the worker itself, so while the worker lives every process the cell started is in
  its tree, whatever sessions, groups or forks they went through.
- An environment marker scanned in /proc does not work: /proc/PID/environ shows the environment
  of the process's last exec, and a worker forked from the fork server (and its forked children)
  never exec; a process can also clear its environment.

So the worker becomes a subreaper, the parent remembers every descendant it sees while the cell runs
(a worker that crashes orphans them to init, where only the memory finds them), and at the end of
the cell, whatever its outcome, the worker is stopped (it starts nothing more), its descendants are
killed until none is left, the worker last, and each is checked to be gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from typing import Iterator

import psutil

PR_SET_CHILD_SUBREAPER = 36   # linux/prctl.h
MAX_KILL_ROUNDS = 50          # a process may fork while it is being killed: kill what is found, again
GONE_WAIT_S = 5.0             # how long a killed process may take to disappear before it counts as a survivor


def adopt_orphans(on: bool = True) -> bool:
    """Make this process the child subreaper of everything it starts (Linux 3.4+), or stop being one
    (`on=False`). Returns whether the kernel accepted it; elsewhere False, and double-forked
    processes of a cell are then found only if seen while the cell ran."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Descendants:
    """The processes started under `root_pid` (not counting `root_pid`): each seen so far is
    remembered (by pid and start time, so a reused pid is never mistaken for it), and `end()` kills
    them all. `exclude`: processes alive before the cell (the harness's own, in --no-isolate mode)."""

    def __init__(self, root_pid: int, exclude: set[int] | None = None) -> None:
        self.root_pid = root_pid
        self.exclude = set(exclude or ())
        self.seen: dict[int, psutil.Process] = {}

    def scan(self) -> list[psutil.Process]:
        """The live descendants of the root now (all remembered); [] once the root is gone."""
        try:
            kids = psutil.Process(self.root_pid).children(recursive=True)
        except psutil.Error:
            return []
        kids = [k for k in kids if k.pid not in self.exclude]
        for k in kids:
            known = self.seen.get(k.pid)
            if known is None or known != k:   # psutil compares pid and start time
                self.seen[k.pid] = k
        return kids

    def end(self, root: psutil.Process | None = None) -> list[int]:
        """Kill every descendant (and `root`, the worker, last: while it is alive and a subreaper,
        orphans of killed processes land in its tree, where the next round finds them). Returns the
        pids still alive GONE_WAIT_S after SIGKILL (normally none)."""
        if root is not None:
            try:
                root.send_signal(signal.SIGSTOP)   # it starts nothing more while its tree is killed
            except psutil.Error:
                pass
        for _ in range(MAX_KILL_ROUNDS):
            self.scan()
            live = [p for p in self.seen.values() if _alive(p)]
            if not live:
                break
            for p in live:
                try:
                    p.kill()
                except psutil.Error:
                    pass
        if root is not None:
            try:
                os.killpg(root.pid, signal.SIGKILL)   # the worker leads its own process group
            except OSError:
                pass
            try:
                root.kill()
            except psutil.Error:
                pass
        return self._survivors()

    def _survivors(self) -> list[int]:
        procs = list(self.seen.values())
        deadline = time.monotonic() + GONE_WAIT_S
        while True:
            for p in procs:   # our own children (--no-isolate, or adopted orphans) are reaped here
                try:
                    if p.ppid() == os.getpid():
                        os.waitpid(p.pid, os.WNOHANG)
                except (psutil.Error, ChildProcessError, OSError):
                    pass
            live = [p.pid for p in procs if _alive(p)]
            if not live or time.monotonic() > deadline:
                return live
            time.sleep(0.02)


@contextlib.contextmanager
def in_this_process() -> Iterator[list[int]]:
    """Run a cell (or a model's preparation) in this process (--no-isolate) so that the processes it
    starts die with it: this process adopts their orphans meanwhile, and at the end kills every
    descendant it did not have before. Yields a list that then holds the pids that survived SIGKILL."""
    try:
        home = {p.pid for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        home = set()
    tree = Descendants(os.getpid(), exclude=home)
    adopted = adopt_orphans()
    survivors: list[int] = []
    try:
        yield survivors
    finally:
        survivors.extend(tree.end())
        if adopted:
            adopt_orphans(False)


def survivors_note(pids: list[int]) -> str:
    """The note a row carries when processes of its cell outlived SIGKILL."""
    return (f"{len(pids)} process(es) the cell started are still alive after SIGKILL (pids "
            f"{', '.join(map(str, pids[:10]))}): probably stuck in the kernel (uninterruptible I/O)")


def exit_without_waiting_for_threads(status: int) -> list[str]:
    """In --no-isolate mode, the cells ran in this process: a model's non-daemon thread still alive
    would hold the interpreter's exit forever. Ends the process with `status` at interpreter exit,
    before the wait for those threads (the worker of an isolated cell does the same). Returns the
    names of the threads it will not wait for; [] (and nothing changes) when there are none."""
    import threading

    left = [t for t in threading.enumerate()
            if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if not left:
        return []

    def _exit() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(status)

    # threading._register_atexit (Python 3.9+) runs its functions before the interpreter joins the
    # non-daemon threads; atexit's own run after that join, too late.
    register = getattr(threading, "_register_atexit", None)
    if register is None:
        _exit()
    register(_exit)
    return [t.name for t in left]
