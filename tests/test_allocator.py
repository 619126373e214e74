"""The heap policy: under `steady`, freed activations are reused, so a settled call faults in no fresh
pages; a memory window maps each block apart; a bad $ACCELBENCH_MALLOC is one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BLOCK_MIB = 24   # under glibc's defaults kept or trimmed (and faulted in again) as the heap's history has it
BLOCKS = 8
PAGES = BLOCKS * BLOCK_MIB * 2**20 // 4096   # per call

_PROBE = f"""
import json, resource, torch
from bench.measure.allocator import apply_policy, blocks_mapped_apart

def call():
    # Eight activations alive at once, then all freed: glibc's defaults hand the freed top of the
    # heap (past twice its dynamic mmap threshold) back to the kernel, and the next call faults it
    # in again (36,832 faults a call on glibc 2.36); the steady policy keeps it.
    acts = [torch.ones({BLOCK_MIB} * 2**20 // 4) for _ in range({BLOCKS})]
    del acts

def faults_per_call(warm):
    for _ in range(warm):   # the heap settles (its first frees leave small live pieces between blocks)
        call()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        call()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10

policy = apply_policy()
with blocks_mapped_apart() as ok:    # first, while the heap holds no big free block
    window = faults_per_call(warm=0)
steady = faults_per_call(warm=20)
print(json.dumps(dict(policy=policy, steady=steady, window=window, ok=ok)))
"""


def _probe() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ACCELBENCH_MALLOC"}
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_memory_window_maps_blocks_apart_and_then_the_steady_policy_reuses_them():
    got = _probe()
    if not got["ok"]:
        pytest.skip(f"this C library has no glibc mallopt: {got['policy']}")
    assert got["policy"].startswith("steady"), got
    assert got["window"] > 0.9 * PAGES, got         # inside a memory window: mapped and faulted afresh
    assert got["steady"] < 0.02 * PAGES, got        # afterwards the policy is back: reused, no fresh pages


def test_a_bad_policy_is_one_line_and_exit_2(tmp_path: Path):
    exe = Path(sys.executable).with_name("accelbench")
    proc = subprocess.run([str(exe), "run", "--model", "lenet", "--pipeline", "eager", "--out", str(tmp_path / "o"),
                           "--no-history"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ACCELBENCH_MALLOC": "jemalloc"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "accelbench: error: ACCELBENCH_MALLOC must be one of steady, default; got 'jemalloc'"
