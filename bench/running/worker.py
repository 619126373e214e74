"""The isolated cell: a forked worker process that runs one cell and sends back its row."""

from __future__ import annotations

import os
import pickle
import resource
import signal
import sys
import tempfile
import traceback
from dataclasses import asdict
from typing import Any

from bench.api import Env

MIB = 1024 * 1024


def _vm_data_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main(conn, spec_blob: bytes, env_dict: dict[str, Any], mem_limit_mb: float,
         sys_path: list[str] | None = None, setup: dict[str, Any] | None = None, call: bool = False,
         scratch_root: str | None = None) -> None:
    """Entry point in the child. Its own process group lets the parent kill it with every process
    it started (DDP workers) in one signal. `scratch_root`: the parent's folder for every temporary
    file of this worker and its children (the parent removes it, whatever happens here)."""
    # Ctrl-C belongs to the parent: it stops the run and kills this process group. A worker
    # started in the instant before setpgrp() would otherwise catch the terminal's SIGINT too and
    # report an interrupted cell as an error row.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys_path is not None:
        # The fork server was started with the parent's sys.path of that moment; a user's
        # package.module:object spec must import here exactly as it did in the parent.
        sys.path[:] = sys_path
    try:
        os.setpgrp()
    except OSError:
        pass
    from bench.running import reaper
    # Orphans of the processes this cell starts (a double fork) are reparented here, not to init, so
    # that they stay in this worker's tree where the parent and `finish` below find them.
    reaper.adopt_orphans()
    if scratch_root is not None:
        os.environ["TMPDIR"] = scratch_root   # for processes this worker starts
        tempfile.tempdir = scratch_root
    if mem_limit_mb and mem_limit_mb > 0:
        # The kernel refuses heap growth past the limit, so a runaway allocation becomes a
        # MemoryError/RuntimeError here instead of the machine's OOM killer; the parent's RSS
        # watchdog is the second line for whatever escapes this.
        limit = _vm_data_bytes() + int(mem_limit_mb * MIB)
        try:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        except (ValueError, OSError):
            pass
    from bench.api import apply_process_setup
    from bench.measure.allocator import apply_policy
    from bench.records.reasons import Failure
    from bench.running.cell import run
    from bench.running.result import CellResult

    try:
        apply_policy()   # before any tensor: the heap policy every figure of this worker is taken under
        # The registries first (before any technique's library can put a foreign `models` on
        # sys.path), then the user's modules and model settings exactly as the parent had them.
        apply_process_setup(setup)
        # Unpickled only now, with the parent's sys.path in place: the pipeline holds technique
        # instances, and a user's technique class must import here as it did in the parent. Unrestricted
        # on purpose: the bytes are the parent's own pickle of its spec, handed over a pipe it created.
        spec = pickle.loads(spec_blob)
        # `call`: spec is (function, args), run here; its return value (or error) is the result.
        result = spec[0](*spec[1], Env(**env_dict)) if call else run(spec, Env(**env_dict))
    except MemoryError as exc:
        result = CellResult.error(f"out of memory (cell limit {mem_limit_mb:.0f} MiB): MemoryError {exc}"[:300],
                                  failure=Failure.OUT_OF_MEMORY)
    except BaseException as exc:  # noqa: BLE001 - everything becomes a row
        result = failed(exc, traceback.format_exc(), mem_limit_mb)
    try:
        conn.send(result)
        conn.close()
    except OSError:  # BrokenPipeError included: the parent stopped listening (Ctrl-C); nobody is
        pass         # left to read this row, and a traceback here would only litter its terminal
    finish()


def finish() -> None:
    """End the worker once its result is sent: every process the cell started is killed (the parent
    checks again), and the worker exits without waiting for threads the model left running (a
    non-daemon thread would otherwise hold the normal interpreter exit, and the cell, until the
    parent's grace period ran out)."""
    from bench.running import reaper

    reaper.Descendants(os.getpid()).end()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(0)


def error_reason(exc: BaseException, mem_limit_mb: float = 0.0) -> str:
    """`ExceptionType: first line of its message` (an out-of-memory named as such)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "can't allocate memory" in str(exc) or "not enough memory" in str(exc):
        msg = f"out of memory (cell limit {mem_limit_mb:.0f} MiB): {msg}"
    return f"{type(exc).__name__}: {msg}"[:500]


def failed(exc: BaseException, tb: str = "", mem_limit_mb: float = 0.0, params: tuple = ()) -> Any:
    """The error CellResult of an exception: its reason (`error_reason`), and its message apart from the
    type, which for a UserError is what the user is told as it stands."""
    from bench.api import UserError
    from bench.records.reasons import Failure
    from bench.running.result import CellResult

    reason = error_reason(exc, mem_limit_mb)
    return CellResult.error(reason, tb, params=params,
                            failure=Failure.USER_ERROR if isinstance(exc, UserError) else Failure.EXCEPTION,
                            message=reason[len(type(exc).__name__) + 2:])


def env_to_dict(env: Env) -> dict[str, Any]:
    return asdict(env)
