"""The multi-host launcher: torchrun on this host, with the settings a plain Linux network needs.

`accelbench train-node` runs, on each host of a training job,

    GLOO_SOCKET_IFNAME=NIC python -m torch.distributed.run --nnodes=N --nproc-per-node=K \\
        --rdzv-backend=c10d --rdzv-endpoint=ADDR:PORT --rdzv-id=accelbench \\
        --rdzv-conf=is_host=0|1,join_timeout=S,read_timeout=S --local-addr=HOST --max-restarts=0 \\
        --log-dir=DIR/torchrun-logs -m bench.training.distributed ...

Each setting exists because a plain torchrun got it wrong on two hosts made of network namespaces:
- `is_host=1` on the rendezvous host (0 elsewhere): torchrun starts the rendezvous store only where
  the machine's hostname resolves to the endpoint's address, and it commonly resolves to loopback;
- `--local-addr`: else the workers are told to reach rank 0's host at `localhost`;
- `GLOO_SOCKET_IFNAME`: else gloo advertises the loopback address and the peers cannot connect;
- `join_timeout` / `read_timeout`: else a missing host is waited for silently for 600 s.

The launcher also watches the rendezvous (who has joined, read from its store), so a host that never
came is named; on SIGTERM or Ctrl-C it stops torchrun and every rank on this host within
`STOP_GRACE_S` (a rank blocked in a collective on a cut network otherwise outlives its torchrun).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from base64 import b64decode
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psutil

from bench import restricted_pickle
from bench.api import UserError
from bench.terminal import inert

DEFAULT_PORT = 29500
JOIN_TIMEOUT_S = 300.0     # how long a host waits for the others before it gives up
STOP_GRACE_S = 5.0         # after SIGTERM, how long torchrun and the ranks get before SIGKILL
ROLL_CALL_PERIOD_S = 0.25   # often: with a short --join-timeout the store lives only seconds
STORE_CONNECT_TIMEOUT_S = 2.0
RDZV_ID = "accelbench"     # the run id: the rendezvous store's key is torch.rendezvous.<id>
EXIT_FAILED = 1
KILLED_BY = re.compile(r"exitcode\s*:\s*-\d+ .*\((SIG[A-Z]+)\)")


@dataclass(frozen=True)
class NodeConfig:
    """One host's part of a multi-host job: where it is and how many hosts and ranks there are."""

    host: str                      # this host's address on the network the hosts share
    nic: str                       # the network interface that holds `host` (gloo binds to it)
    rendezvous: str                # ADDR:PORT of the host that holds the rendezvous store (PORT default 29500)
    nnodes: int                    # hosts in the job
    nproc_per_node: int = 1        # ranks on each host
    join_timeout_s: float = JOIN_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("host", "nic", "rendezvous"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} must be given (an address, a network interface, ADDR:PORT), got ''")
        for name in ("nnodes", "nproc_per_node"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)}")
        if not self.join_timeout_s > 0:
            raise ValueError(f"join_timeout_s must be > 0 seconds, got {self.join_timeout_s}")
        addr, port = self.endpoint
        if not addr or not 0 < port < 65536:
            raise ValueError(f"rendezvous must be ADDR:PORT with PORT in 1..65535, got {self.rendezvous!r}")

    @property
    def endpoint(self) -> tuple[str, int]:
        """(address, port) of the rendezvous; ValueError when PORT is not a number."""
        text = self.rendezvous.strip()
        addr, colon, port = text.rpartition(":")
        if not colon or "]" in port or (addr.count(":") and not addr.startswith("[")):
            addr, port = text, str(DEFAULT_PORT)      # no port (an IPv6 address without brackets)
        if not port.isdigit():
            raise ValueError(f"rendezvous must be ADDR:PORT with PORT in 1..65535, got {self.rendezvous!r}")
        return addr.strip("[]"), int(port)


def check_machine(cfg: NodeConfig) -> bool:
    """That `cfg.nic` exists here and holds `cfg.host`; returns whether this host holds the rendezvous
    (its address is `cfg.host`). UserError names the wrong option and what this machine has."""
    nics = psutil.net_if_addrs()
    if cfg.nic not in nics:
        raise UserError(f"train-node: --nic {cfg.nic}: no such network interface here "
                        f"(have: {', '.join(sorted(nics))})")
    on_nic = {a.address.split("%")[0] for a in nics[cfg.nic] if a.family in (socket.AF_INET, socket.AF_INET6)}
    if cfg.host not in on_nic:
        where = [n for n, addrs in nics.items() if cfg.host in {a.address.split("%")[0] for a in addrs}]
        raise UserError(f"train-node: --host {cfg.host} is not an address of {cfg.nic} (it has: "
                        f"{', '.join(sorted(on_nic)) or 'none'}"
                        f"{'; ' + cfg.host + ' is on ' + where[0] if where else ''})")
    addr, _ = cfg.endpoint
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(addr, None)}
    except socket.gaierror as exc:
        raise UserError(f"train-node: --rendezvous {cfg.rendezvous}: cannot resolve {addr} ({exc.strerror})") from None
    return cfg.host in resolved


def torchrun_command(cfg: NodeConfig, is_host: bool, worker_args: list[str],
                     log_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The torchrun command line for this host and the environment it adds (see the module docstring)."""
    from bench.training.distributed import HOST_ENV

    t = max(1, round(cfg.join_timeout_s))
    addr, port = cfg.endpoint   # the port made explicit: torchrun's own default (29400) is not ours
    endpoint = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={cfg.nnodes}",
            f"--nproc-per-node={cfg.nproc_per_node}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}", f"--rdzv-id={RDZV_ID}",
            f"--rdzv-conf=is_host={int(is_host)},join_timeout={t},read_timeout={t}",
            f"--local-addr={cfg.host}", "--max-restarts=0", f"--log-dir={log_dir}",
            "-m", "bench.training.distributed", *worker_args]
    return argv, {"GLOO_SOCKET_IFNAME": cfg.nic, HOST_ENV: cfg.host}


def _rendezvous_state_globals() -> dict[tuple[str, str], object]:
    """What a pickle of torch's `_RendezvousState` names: that class, its `_NodeDesc`, aware datetimes, sets."""
    import datetime

    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

    mod = dr.__name__
    return {(mod, "_RendezvousState"): dr._RendezvousState, (mod, "_NodeDesc"): dr._NodeDesc,
            ("datetime", "datetime"): datetime.datetime, ("datetime", "timezone"): datetime.timezone,
            ("datetime", "timedelta"): datetime.timedelta, ("builtins", "set"): set}


class RollCall(threading.Thread):
    """Who has joined the rendezvous, read from its store 4 times a second until the round completes.

    The store holds torch's own rendezvous state (base64 of a pickled _RendezvousState, the object
    every torchrun of the job unpickles too); a torch whose format differs leaves `joined` empty and
    the messages say less, never something false."""

    def __init__(self, addr: str, port: int) -> None:
        super().__init__(daemon=True)
        self.addr, self.port = addr, port
        self.reached = False                   # the store answered at least once
        self.joined: list[str] = []            # addresses of the hosts seen in the round so far
        self.rank0_host: str | None = None     # the host of node rank 0 once the round is complete
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        import torch.distributed as dist

        key, store = f"torch.rendezvous.{RDZV_ID}", None
        while not self._stop_event.wait(ROLL_CALL_PERIOD_S):
            try:
                if store is None:
                    # A plain connect first: TCPStore logs a C++ stack trace for every refused attempt.
                    socket.create_connection((self.addr, self.port), timeout=STORE_CONNECT_TIMEOUT_S).close()
                    store = dist.TCPStore(self.addr, self.port, is_master=False,
                                          timeout=timedelta(seconds=STORE_CONNECT_TIMEOUT_S), wait_for_workers=False)
                self.reached = True
                if not store.check([key]):
                    continue
                raw = store.get(key)
            except Exception:  # noqa: BLE001 - not up yet, or gone: connect anew next time
                store = None
                continue
            try:
                # Any host that reaches the store can write this key: rebuild torch's rendezvous state
                # only, never a callable it names (torch's own agent unpickles the same bytes unguarded).
                state = restricted_pickle.loads(b64decode(raw), _rendezvous_state_globals())
            except Exception:  # noqa: BLE001 - the store's "no state yet" sentinel, another format, a refused pickle
                continue
            nodes = {**getattr(state, "participants", {}), **dict.fromkeys(getattr(state, "wait_list", ()))}
            # Every host seen so far: a host that gives up removes itself from the state before it exits.
            self.joined = sorted(set(self.joined) | {getattr(n, "addr", "?") for n in nodes})
            if getattr(state, "complete", False):
                self.rank0_host = next((n.addr for n, r in state.participants.items() if r == 0), None)
                return


def _error_line(log_dir: Path, since: float) -> str | None:
    """The first line of the newest error a rank on this host recorded (torchrun's error.json)."""
    files = sorted((p for p in log_dir.glob("*/attempt_*/*/error.json") if p.stat().st_mtime >= since),
                   key=lambda p: p.stat().st_mtime)
    for path in files:
        try:
            msg = json.loads(path.read_text())["message"]
            text = msg["message"] if isinstance(msg, dict) else str(msg)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        rank = path.parent.name
        return f"local rank {rank}: {text.strip().splitlines()[-1][:400]}"
    return None


def _stop_tree(proc: subprocess.Popen) -> None:
    """SIGTERM torchrun and every process under it, SIGKILL what is left after STOP_GRACE_S.

    The tree is read before anything is signalled: torchrun starts its ranks in sessions of their
    own, and once torchrun is gone they would no longer be found under it."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=STOP_GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=STOP_GRACE_S)


def run_node(cfg: NodeConfig, worker_args: list[str], out: Path) -> int:
    """Run this host's part of the job; return the exit code (0 ok, 1 failed, 128+signal if stopped).

    torchrun's output passes through; the last line is the launcher's own verdict: where rank 0 and
    the summary are, or which host never came, or the error a rank on this host recorded."""
    is_host = check_machine(cfg)
    out.mkdir(parents=True, exist_ok=True)
    log_dir = out / "torchrun-logs"
    argv, extra_env = torchrun_command(cfg, is_host, worker_args, log_dir)
    addr, port = cfg.endpoint
    roll = RollCall(addr, port)
    said: set[str] = set()
    stopped: list[int] = []

    def on_signal(signum, _frame) -> None:
        stopped.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    t0 = time.time()
    proc = subprocess.Popen(argv, env={**os.environ, **extra_env}, stderr=subprocess.PIPE)

    def forward() -> None:   # torchrun's stderr to ours, noting the failures it reports
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            said.update(name for name in ("RendezvousTimeoutError", "RendezvousConnectionError") if name in line)
            killed = KILLED_BY.search(line)   # torchrun's summary of a rank that died of a signal
            if killed:
                said.add(killed.group(1))
            sys.stderr.write(line)
            sys.stderr.flush()

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    roll.start()
    try:
        while proc.poll() is None and not stopped:
            time.sleep(0.1)
        if stopped:
            _stop_tree(proc)
    finally:
        proc.wait()
        reader.join(timeout=STOP_GRACE_S)
        roll.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    waited = f"within {cfg.join_timeout_s:g} s (--join-timeout)"
    if stopped:
        name = signal.Signals(stopped[0]).name
        return _say(f"stopped by {name}: torchrun and the ranks on this host were stopped", 128 + stopped[0])
    if proc.returncode == 0:
        summary = out / "summary.json"
        if summary.is_file() and summary.stat().st_mtime >= t0:
            return _say(f"done; rank 0 ran on this host ({cfg.host}): summary in {summary}", 0)
        where = roll.rank0_host or "the host whose --host sorts first as text"
        return _say(f"done; rank 0 ran on {where}: the summary is in its {summary}", 0)
    joining = roll.rank0_host is None   # the round never completed: the failure is in joining
    if joining and "RendezvousConnectionError" in said and not roll.reached:
        return _say(f"the rendezvous host {addr} never answered at {addr}:{port} {waited}: is "
                    f"`accelbench train-node` running there, and can this host reach it from {cfg.nic}?", EXIT_FAILED)
    if joining and ("RendezvousTimeoutError" in said or "RendezvousConnectionError" in said):
        missing = cfg.nnodes - len(roll.joined) if roll.joined else None
        came = f" (joined: {', '.join(roll.joined)})" if roll.joined else ""
        count = f"{missing} of {cfg.nnodes} hosts" if missing else f"some of the {cfg.nnodes} hosts"
        return _say(f"{count} never joined the rendezvous at {addr}:{port} {waited}{came}; start "
                    f"`accelbench train-node` on each missing host with --nnodes {cfg.nnodes}", EXIT_FAILED)
    signals = sorted(name for name in said if name.startswith("SIG"))
    error = _error_line(log_dir, t0) or (f"a rank on this host was killed by {signals[0]} (it recorded no error)"
                                         if signals else "no rank on this host recorded an error")
    return _say(f"training failed on this host (torchrun exit code {proc.returncode}): {error}; "
                f"torchrun's failure summary is above, rank logs under {log_dir}", EXIT_FAILED)


def _say(message: str, code: int) -> int:
    print(inert(f"accelbench: train-node: {message}"), file=sys.stderr, flush=True)
    return code
