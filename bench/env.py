"""The environment a run happened in: machine, library versions, git commit, the exact command."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from bench.api import Env
from bench.measure.allocator import applied_policy


def detect() -> Env:
    """What techniques need to know about this machine (cheap: no benchmarks here)."""
    try:
        import onnxruntime as ort
        providers = tuple(ort.get_available_providers())
    except Exception:
        providers = ()
    cuda = torch.cuda.is_available()
    return Env(
        cuda=cuda,
        cuda_device=torch.cuda.get_device_name(0) if cuda else None,
        cuda_count=torch.cuda.device_count() if cuda else 0,
        cpu_count=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
        ort_providers=providers,
        has_cxx=bool(shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")),
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def record(env: Env, argv: list[str] | None = None) -> dict:
    """Everything env.json holds."""
    try:
        import onnxruntime as ort
        ort_version = ort.__version__
    except Exception:
        ort_version = None
    import psutil
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpu_cores_logical": psutil.cpu_count(logical=True),
        "cpu_affinity": env.cpu_count,
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        # A busy machine makes absolute times swing; the ratios survive, but a reader should know.
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "onnxruntime_providers": list(env.ort_providers),
        "cuda_available": env.cuda,
        "cuda_device": env.cuda_device,
        "cuda_device_count": env.cuda_count,
        "cuda_version": torch.version.cuda,
        # Whether freed activations are kept or handed back (and faulted in again) moves latencies 2x.
        "malloc_policy": applied_policy(),
        "git_commit": _git_commit(),
        "command": " ".join(argv if argv is not None else sys.argv),
    }


# What identifies the environment a speedup was measured in: a change in any of these can move a
# figure without any change to the code (load average, the commit and the command are not here: the
# first is noise, the others are recorded beside it).
FINGERPRINT_KEYS = ("cpu_model", "cpu_cores_logical", "cpu_affinity", "torch_threads", "memory_gb", "platform",
                    "python", "torch", "onnxruntime", "onnxruntime_providers", "cuda_device", "cuda_device_count",
                    "cuda_version", "malloc_policy")


def fingerprint(env_record: dict) -> dict:
    """The environment fingerprint of an env.json record: FINGERPRINT_KEYS that it holds (None when absent)."""
    return {k: env_record.get(k) for k in FINGERPRINT_KEYS}


def fingerprint_diff(before: dict, after: dict) -> list[str]:
    """`key: old -> new` for every fingerprint key that differs between two fingerprints."""
    return [f"{k}: {before.get(k)} -> {after.get(k)}" for k in FINGERPRINT_KEYS if before.get(k) != after.get(k)]


def machine_label(env_record: dict) -> str:
    """A short name for the machine of an env.json record: CPU model and usable cores, plus the CUDA
    device when there is one (e.g. `Intel(R) Xeon(R) Processor x2 + NVIDIA H100`)."""
    cpu = env_record.get("cpu_model") or "unknown CPU"
    cores = env_record.get("cpu_affinity") or env_record.get("cpu_cores_logical")
    label = f"{cpu} x{cores}" if cores else str(cpu)
    return f"{label} + {env_record['cuda_device']}" if env_record.get("cuda_device") else label
