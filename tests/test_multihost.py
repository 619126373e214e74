"""The documented multi-host command (docs/training.md) on two hosts made of network namespaces joined by a veth pair.

Each test gets two fresh namespaces (unique names) holding nothing but loopback and one end of the
veth pair, so all traffic between the hosts crosses the pair; each host's hostname still resolves to
loopback, the set-up where a plain torchrun fails. Every command runs under a time-out, and the
namespaces (and anything still running in them) are removed afterwards, also on failure.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from bench.training.loop import EQUIV_TOLERANCE, max_abs_diff, reference_weights

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "training.md"   # where the multi-host commands are documented
ACCELBENCH = str(Path(sys.executable).with_name("accelbench"))
RUN_TIMEOUT_S = 150        # one host's whole command, start-up and rendezvous included
JOIN_TIMEOUT_S = 30        # how long a host waits for the other in the tests that expect both
FAILURE_BOUND_S = 30       # a host must end this soon after its peer died
STOP_BOUND_S = 15          # a SIGTERMed rank or launcher must be gone this soon

pytestmark = pytest.mark.slow


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


class TwoHosts:
    """Namespaces `<tag>a` and `<tag>b`, addresses 10.15.0.1 and 10.15.0.2 on veth `<tag>a` / `<tag>b`."""

    def __init__(self) -> None:
        tag = f"ab{secrets.token_hex(4)}"
        self.ns = (f"{tag}a", f"{tag}b")
        self.nic = (f"{tag}a", f"{tag}b")       # 10 characters: interface names may have 15
        self.addr = ("10.15.0.1", "10.15.0.2")

    def up(self) -> str | None:
        """Create both hosts; the reason they cannot be made here, or None."""
        steps = [("netns", "add", self.ns[0]), ("netns", "add", self.ns[1]),
                 ("link", "add", self.nic[0], "netns", self.ns[0], "type", "veth",
                  "peer", "name", self.nic[1], "netns", self.ns[1])]
        for i in (0, 1):
            steps += [("-n", self.ns[i], "addr", "add", f"{self.addr[i]}/24", "dev", self.nic[i]),
                      ("-n", self.ns[i], "link", "set", "lo", "up"),
                      ("-n", self.ns[i], "link", "set", self.nic[i], "up")]
        for step in steps:
            r = _ip(*step)
            if r.returncode:
                return f"`ip {' '.join(step)}` failed: {r.stderr.strip() or r.returncode}"
        return None

    def down(self) -> None:
        for ns in self.ns:
            pids = _ip("netns", "pids", ns).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", ns)   # also removes its end of the veth pair, and so the pair

    def start(self, i: int, argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns[i], *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def worker_pids(self, i: int) -> list[int]:
        """The training ranks running in host i (not torchrun, not the launcher)."""
        pids = []
        for pid in _ip("netns", "pids", self.ns[i]).stdout.split():
            try:
                cmd = " ".join(psutil.Process(int(pid)).cmdline())
            except psutil.NoSuchProcess:
                continue
            if "bench.training.distributed" in cmd and "torch.distributed.run" not in cmd:
                pids.append(int(pid))
        return pids


@pytest.fixture
def hosts():
    if shutil.which("ip") is None or shutil.which("ss") is None:
        pytest.skip("no `ip` / `ss` commands (iproute2): cannot make network namespaces and watch them")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (`ip netns add`); run the suite as root")
    h = TwoHosts()
    try:
        why = h.up()
        if why:
            pytest.skip(f"cannot make two hosts from network namespaces: {why}")
        yield h
    finally:
        h.down()
    leftovers = [ns for ns in h.ns if ns in _ip("netns", "list").stdout]
    assert not leftovers, f"namespaces left behind: {leftovers}"


def documented_command(host: int) -> list[str]:
    """The guide's `accelbench train-node` command for host 0 or 1, as a user would copy it."""
    text = GUIDE.read_text()
    lines = text[text.index("## Across machines"):].splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("accelbench train-node ")]
    assert len(starts) == 2, "docs/training.md should show the train-node command of each of two hosts"
    i, joined = starts[host], ""
    while True:
        joined += lines[i].rstrip("\\").rstrip() + " "
        if not lines[i].endswith("\\"):
            return shlex.split(joined)
        i += 1


def command(h: TwoHosts, i: int, out: Path, **options) -> list[str]:
    """The guide's command for host i with this test's hosts, folder and options (`name=value`)."""
    argv = [ACCELBENCH if a == "accelbench" else a for a in documented_command(i)]
    documented_host0 = _value(documented_command(0), "--host")
    values = {"--host": h.addr[i], "--nic": h.nic[i], "--out": str(out),
              "--rendezvous": _value(argv, "--rendezvous").replace(documented_host0, h.addr[0])}
    values.update({f"--{k.replace('_', '-')}": str(v) for k, v in options.items()})
    for opt, value in values.items():
        if opt in argv:
            argv[argv.index(opt) + 1] = value
        else:
            argv += [opt, value]
    return argv


def _value(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


def finish(proc: subprocess.Popen, timeout_s: float = RUN_TIMEOUT_S) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout_s} s; its stderr ends: {err[-2000:]}")
    return proc.returncode, out, err


def last_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("accelbench: train-node:")]
    return lines[-1] if lines else f"(no verdict line; stderr ends: {err[-1500:]})"


def strict_json(text: str) -> dict:
    def refuse(name: str):
        raise AssertionError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("strategy, nproc", [("data_parallel", 1), ("model_parallel:microbatches=4", 2)])
def test_the_documented_command_trains_across_two_hosts_as_one_process_would(hosts, tmp_path, digits, strategy, nproc):
    outs = [tmp_path / "host0" / "DIR", tmp_path / "host1" / "DIR"]   # each host its own disk
    opts = dict(strategy=strategy, nproc_per_node=nproc, epochs=1, seeds=1, join_timeout=JOIN_TIMEOUT_S)
    procs = [hosts.start(i, command(hosts, i, outs[i], **opts)) for i in (0, 1)]
    results = [finish(p) for p in procs]
    for i, (code, _, err) in enumerate(results):
        assert code == 0, f"host {i} failed: {last_line(err)}\n{err[-3000:]}"
    world = 2 * nproc
    # 10.15.0.1 sorts first as text: rank 0 and the summary are on host 0, and both hosts say so.
    assert last_line(results[0][2]).startswith(
        f"accelbench: train-node: done; rank 0 ran on this host ({hosts.addr[0]})")
    assert f"rank 0 ran on {hosts.addr[0]}" in last_line(results[1][2])
    summary = strict_json((outs[0] / "summary.json").read_text())
    assert summary == strict_json(results[0][1].strip().splitlines()[-1])   # what rank 0 printed
    assert not (outs[1] / "summary.json").exists()
    assert summary["strategy"] == strategy.split(":")[0] and summary["world_size"] == world
    assert summary["epochs"] == 1 and summary["seeds"] == 1 and summary["global_batch_size"] == 64
    assert summary["hosts"] == list(hosts.addr)
    assert summary["rank_hosts"] == [hosts.addr[r // nproc] for r in range(world)]
    assert len(summary["peak_mem_mb_per_rank"]) == world and all(m > 0 for m in summary["peak_mem_mb_per_rank"])
    assert summary["time_to_target_s"] is None and 0.5 < summary["final_accuracy"] <= 1.0   # 1 epoch: < 97%
    assert sorted(p.name for p in outs[0].glob("rank*.pt")) == [f"rank{r}.pt" for r in range(nproc)]
    assert sorted(p.name for p in outs[1].glob("rank*.pt")) == [f"rank{r}.pt" for r in range(nproc, world)]
    # The equivalence figure, checked here against single-process training computed in this process.
    # With one thread, as rank 0 computed it, the reference is rounded the same way: the same figure.
    rank0 = torch.load(outs[0] / "rank0.pt", weights_only=True)
    params = [n for n, _ in _lenet().named_parameters()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        diff = max_abs_diff(rank0["equiv"], reference_weights("lenet", digits, 64, seed=0), params)
    finally:
        torch.set_num_threads(threads)
    assert diff < EQUIV_TOLERANCE and summary["equivalent"] is True
    assert summary["equivalence_max_abs_diff"] == diff


def _lenet():
    from bench import api
    return api.create_model("lenet")


def _gloo_connected(h: TwoHosts) -> bool:
    """Whether host 1 holds a TCP connection to host 0 other than the rendezvous store's (port 29500):
    gloo's connections, made once the process group has formed."""
    r = subprocess.run(["ip", "netns", "exec", h.ns[1], "ss", "-Htn", "state", "established"],
                       capture_output=True, text=True, timeout=30)
    for line in r.stdout.splitlines():
        local, peer = line.split()[-2:]
        if peer.rpartition(":")[0] == h.addr[0] and "29500" not in (peer.rpartition(":")[2], local.rpartition(":")[2]):
            return True
    return False


def _wait_for_training(h: TwoHosts, procs, timeout_s: float = 90) -> list[int]:
    """Wait until the ranks of both hosts form their process group; host 1's rank pids."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            pytest.fail(f"a host ended before training started: {[last_line(finish(p)[2]) for p in procs]}")
        if h.worker_pids(1) and _gloo_connected(h):
            time.sleep(2)   # into the training steps
            return h.worker_pids(1)
        time.sleep(0.5)
    pytest.fail(f"the ranks did not connect within {timeout_s} s")


@pytest.mark.parametrize("victim", ["worker", "launcher"])
def test_a_host_whose_rank_dies_or_is_stopped_ends_the_other_with_a_clear_error(hosts, tmp_path, victim):
    opts = dict(epochs=40, seeds=1, join_timeout=JOIN_TIMEOUT_S)   # far longer than the test waits
    procs = [hosts.start(i, command(hosts, i, tmp_path / f"host{i}", **opts)) for i in (0, 1)]
    try:
        workers = _wait_for_training(hosts, procs)
        assert workers, "host 1's rank ended early"
        t0 = time.monotonic()
        target = workers[0] if victim == "worker" else procs[1].pid
        os.kill(target, signal.SIGTERM)
        code1, _, err1 = finish(procs[1], STOP_BOUND_S + 10)
        assert time.monotonic() - t0 < STOP_BOUND_S, f"host 1 took {time.monotonic() - t0:.0f} s to stop"
        assert not psutil.pid_exists(workers[0]) or psutil.Process(workers[0]).status() == psutil.STATUS_ZOMBIE
        code0, _, err0 = finish(procs[0], FAILURE_BOUND_S)
        took = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert took < FAILURE_BOUND_S, f"host 0 ended {took:.0f} s after its peer stopped"
    if victim == "launcher":
        assert code1 == 128 + signal.SIGTERM and "stopped by SIGTERM" in last_line(err1)
    else:
        assert code1 == 1 and "a rank on this host was killed by SIGTERM" in last_line(err1), last_line(err1)
    assert code0 == 1, last_line(err0)
    verdict = last_line(err0)
    # host 0's rank recorded why it failed, naming the peer that went away
    assert "training failed on this host" in verdict and "local rank 0" in verdict, verdict
    assert hosts.addr[1] in verdict and re.search(r"Connection (reset|closed)|closed by peer", verdict), verdict
    assert "error_file: <N/A>" not in err0   # torchrun's own summary has the recorded error too


def test_a_missing_host_is_named_within_the_join_timeout(hosts, tmp_path):
    # Host 0 holds a rendezvous nobody else joins; host 1 points at a rendezvous host that never runs
    # (host 0's address, another port).
    argv0 = command(hosts, 0, tmp_path / "host0", epochs=1, join_timeout=5)
    argv1 = command(hosts, 1, tmp_path / "host1", epochs=1, join_timeout=5, rendezvous=f"{hosts.addr[0]}:29511")
    t0 = time.monotonic()
    procs = [hosts.start(0, argv0), hosts.start(1, argv1)]
    results = [finish(p, 60) for p in procs]
    assert time.monotonic() - t0 < 60
    (code0, _, err0), (code1, _, err1) = results
    assert code0 == 1 and last_line(err0) == (
        f"accelbench: train-node: 1 of 2 hosts never joined the rendezvous at {hosts.addr[0]}:29500 within 5 s "
        f"(--join-timeout) (joined: {hosts.addr[0]}); start `accelbench train-node` on each missing host "
        f"with --nnodes 2"), err0[-2000:]
    assert code1 == 1 and last_line(err1).startswith(
        f"accelbench: train-node: the rendezvous host {hosts.addr[0]} never answered at {hosts.addr[0]}:29511 "
        f"within 5 s"), err1[-2000:]


def test_bad_input_is_one_line_before_anything_starts(hosts, tmp_path):
    cases = [({"nic": "nosuchnic0"}, "--nic nosuchnic0: no such network interface here"),
             ({"host": "10.15.0.9"}, f"--host 10.15.0.9 is not an address of {hosts.nic[0]}"),
             ({"strategy": "plain"}, "--strategy 'plain' is not a distributed training strategy"),
             ({"rendezvous": "10.15.0.1:99999"}, "rendezvous must be ADDR:PORT with PORT in 1..65535"),
             ({"join_timeout": 0}, "argument --join-timeout: must be > 0 seconds, got 0")]
    for opts, message in cases:
        code, _, err = finish(hosts.start(0, command(hosts, 0, tmp_path, **opts)), 60)
        assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_the_documented_torchrun_equivalent_is_what_train_node_runs():
    """Needs no namespaces: the raw torchrun line the guide gives is train-node's own for that host."""
    from bench.training.multihost import NodeConfig, torchrun_command

    text = GUIDE.read_text()
    block = text[text.index("GLOO_SOCKET_IFNAME=eth0 torchrun"):]
    raw = shlex.split(block[:block.index("```")].replace("\\\n", " "))
    node = NodeConfig(host="10.0.0.1", nic="eth0", rendezvous="10.0.0.1:29500", nnodes=2, join_timeout_s=300)
    worker_args = raw[raw.index("bench.training.distributed") + 1:]
    argv, env = torchrun_command(node, True, worker_args, Path("DIR/torchrun-logs"))
    assert env["GLOO_SOCKET_IFNAME"] == "eth0" and raw[0] == "GLOO_SOCKET_IFNAME=eth0"
    ours = [a for a in argv[3:] if not a.startswith("--log-dir=")]   # after `python -m torch.distributed.run`
    assert sorted(ours) == sorted(raw[2:]), "docs/training.md's torchrun line differs from what train-node runs"
    client = torchrun_command(node, False, [], Path("logs"))[0]
    assert "--rdzv-conf=is_host=0,join_timeout=300,read_timeout=300" in client
