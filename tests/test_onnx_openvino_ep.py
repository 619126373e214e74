"""`onnx:ep=openvino` on the real OpenVINO execution provider, in an environment of its own.

`onnxruntime-openvino` provides the same `onnxruntime` module as `onnxruntime` (installed together,
the last install silently wins), so it cannot live in the project's environment. This test installs
it from the package registry, without dependencies, into a folder of its own that is put before the
project's site-packages (PYTHONPATH) of a real `accelbench run`: its `onnxruntime` is the one the run
and its cell workers import, and everything else is the project's. The folder is cached across runs
of the suite under ~/.cache/accelbench/ (ACCELBENCH_ORT_OPENVINO_DIR overrides), keyed by the
versions; the first run downloads about 60 MB (257 MB installed, a few seconds from a local mirror).
Without the registry the test is skipped, saying so.

It proves the provider-fallback and node-share code against a provider other than CPU: the row is
ok, labelled with the provider that ran, which took every node and all kernel time; a device
OpenVINO does not have here (GPU) is a skipped row whose reason is the fallback, never a CPU timing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.training.cache import trained

ROOT = Path(__file__).resolve().parents[1]
ORT_OPENVINO = "1.24.1"   # onnxruntime-openvino's version, pinned so the cached folder stays what was tested
PROVIDER = "OpenVINOExecutionProvider"


def _overlay() -> Path:
    """The folder holding onnxruntime-openvino's `onnxruntime`, installed once per version and Python."""
    tag = f"onnxruntime-openvino-{ORT_OPENVINO}-py{sys.version_info.major}{sys.version_info.minor}"
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "accelbench" / tag
    target = Path(os.environ.get("ACCELBENCH_ORT_OPENVINO_DIR", default))
    if (target / "onnxruntime" / "__init__.py").exists():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-deps", "--target", str(partial), f"onnxruntime-openvino=={ORT_OPENVINO}"],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
        pytest.skip(f"cannot install onnxruntime-openvino=={ORT_OPENVINO} from the registry: "
                    f"{lines[-1] if lines else proc.returncode}")
    partial.rename(target)   # only a complete install becomes the cache
    return target


@pytest.mark.slow
def test_openvino_provider_runs_a_real_cell_and_an_absent_device_is_skipped(digits, tmp_path):
    overlay = _overlay()
    trained("lenet", digits)   # into the session's checkpoint cache, which the run below reads
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(overlay), str(ROOT)]), "TMPDIR": str(tmp_path)}
    probe = subprocess.run([sys.executable, "-c", "import onnxruntime as o; print(o.__file__); "
                            "print(','.join(o.get_available_providers()))"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    where, providers = probe.stdout.split()
    assert Path(where).is_relative_to(overlay) and providers.split(",")[0] == PROVIDER

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--model", "lenet", "--pipeline", "onnx:ep=openvino",
                           "--pipeline", "onnx:ep=openvino,device=gpu", "--batch-size", "1", "--quick",
                           "--no-history", "--no-report", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "env.json").read_text())["onnxruntime"] == ORT_OPENVINO
    rows = pd.read_csv(out / "records.csv").set_index("pipeline")

    ok = rows.loc["onnx:ep=openvino"]
    assert ok["status"] == "ok", ok["reason"]
    assert ok["providers"].split(";")[0] == PROVIDER and ok["device"] == "cpu"
    figures = json.loads(ok["figures"])
    # ONNX Runtime's profiler shows the whole graph as one OpenVINO subgraph event.
    assert figures["onnx.nodes_on_requested_ep"] == 1.0 and figures["onnx.time_on_requested_ep"] == 1.0
    assert ok["fidelity"] == "exact" and ok["max_abs_diff"] < 1e-3 and ok["top1_agreement"] == 1.0
    print(f"\nonnx:ep=openvino lenet bs=1 (shared machine): {ok['latency_ms_p50']:.3f} ms, "
          f"speedup {ok['speedup']:.2f}x, valid={ok['valid']}")

    absent = rows.loc["onnx:ep=openvino,device=gpu"]
    if _openvino_has_gpu():
        pytest.skip("this machine has an OpenVINO GPU device: the absent-device row cannot be shown here")
    assert absent["status"] == "skipped"
    assert absent["reason"].endswith(f"{PROVIDER} requested but the session runs on CPUExecutionProvider "
                                     f"(ONNX Runtime fell back); not timed")
    assert pd.isna(absent["latency_ms_p50"])


def _openvino_has_gpu() -> bool:
    try:
        import openvino as ov
    except ImportError:
        return False
    return any(d.startswith("GPU") for d in ov.Core().available_devices)
