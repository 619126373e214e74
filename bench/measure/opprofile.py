"""Where one call's time goes: torch and ONNX Runtime operator profiles mapped to the user's module names.

A profile is a list of `(module path, operator kind, seconds per call)` entries. The module path is the
qualified name from the user's own `nn.Module` (`features.0`, `layer1.0.conv2`); time that belongs to no
module carries one of the bracketed labels below (framework overhead per call, a compiled or scripted
graph whose modules were inlined, nodes of an ONNX graph that no module produced).

Profiling costs a few calls of the model under the profiler (each slower than an unprofiled call: the
profiler adds a few microseconds per operator, so tiny ops are over-counted) and is always taken after
the timing, never during it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

Entry = tuple[str, str, float]   # (module path, operator kind, seconds per call)

OUTSIDE = "(framework, outside the model)"   # per-call overhead around the model: Python, dispatch, session
MODULE_SELF = "Python/module overhead"        # a module scope's own time, not inside any of its operators
GRAPH = "(graph, no module)"                  # ONNX nodes no module produced (layout reorders, Q/DQ pairs)
TOP = "(top level)"                           # the root module: functional calls in its forward
WARMUP_CALLS = 2                              # oneDNN's first call costs ~10 ms of start-up: keep it out
CALL = "accelbench::call"
_SCOPE = "module::"

# Operator kinds that carry no arithmetic of the network: what a cause sentence names.
QDQ_OPS = ("quantize_per_tensor", "quantize_per_channel", "dequantize", "QuantizeLinear", "DequantizeLinear",
           "DynamicQuantizeLinear")
LAYOUT_OPS = ("aten::contiguous", "aten::copy_", "aten::clone", "aten::to", "aten::_to_copy", "aten::to_dense",
              "aten::to_mkldnn", "ReorderInput", "ReorderOutput", "Transpose")


def category(op: str) -> str:
    """quantize/dequantize, layout reorder, overhead or compute, for an operator kind of a profile."""
    if any(q in op for q in QDQ_OPS):
        return "quantize/dequantize"
    if any(op == lay or op.startswith(lay + " ") for lay in LAYOUT_OPS):
        return "layout reorder"
    if op == MODULE_SELF or op.startswith("framework"):
        return "overhead"
    return "compute"


def module_flops(model: nn.Module, example: Any) -> dict[str, float]:
    """FLOPs per module of one forward pass on `example` ({qualified name: FLOP}, "" for the root, the
    whole network), from torch.utils.flop_counter (2 per multiply-add); {} when the counter cannot run
    the model (int8 kernels, scripted graphs)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(example)
    except Exception:   # e.g. a quantized module the counter cannot see: no figure rather than a wrong one
        return {}
    out: dict[str, float] = {}
    for name, ops in counter.get_flop_counts().items():
        # keys are "Global" and "<RootClass>.<qualified name>"
        path = "" if name == "Global" else name.partition(".")[2]
        if name != "Global" and "." not in name:
            continue
        out[path] = float(sum(ops.values()))
    return out


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null: kineto writes a "USDT: ... profiler_start" line to the
    process's stderr (not Python's sys.stderr) at each start and stop, which would land among the
    run's progress lines. Only the profiler's start and stop are wrapped, never the model's calls."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_torch(run: Callable[[Any], Any], arg: Any, calls: int, model: nn.Module | None = None,
                  inlined: str = "") -> list[Entry]:
    """Profile `calls` calls of `run(arg)` with torch.profiler (CPU), after WARMUP_CALLS unprofiled ones.

    With `model`, forward pre/post hooks on every one of its modules enter and leave
    `record_function("module::<qualified name>")`, so each operator is credited to the innermost module
    it ran in; its kind is the outermost operator under that module (`aten::conv2d`, not the
    `aten::mkldnn_convolution` inside it). Without `model` (a scripted or compiled graph whose modules were
    inlined), operators are credited to `inlined`. Time is each event's self CPU time, per call, in s.
    """
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    for _ in range(WARMUP_CALLS):
        run(arg)
    handles = []
    if model is not None:
        stacks: dict[str, list[Any]] = {}

        def enter(name: str) -> Callable[..., None]:
            def hook(*_: Any) -> None:
                rf = record_function(_SCOPE + name)
                rf.__enter__()
                stacks.setdefault(name, []).append(rf)
            return hook

        def leave(name: str) -> Callable[..., None]:
            def hook(*_: Any) -> None:
                if stacks.get(name):
                    stacks[name].pop().__exit__(None, None, None)
            return hook

        for name, mod in model.named_modules():
            handles.append(mod.register_forward_pre_hook(enter(name)))
            handles.append(mod.register_forward_hook(leave(name)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the profiler's own notices about kineto, not the model's
            prof = profile(activities=[ProfilerActivity.CPU])
            with _quiet_stderr():
                prof.__enter__()
            try:
                for _ in range(calls):
                    with record_function(CALL):
                        run(arg)
            finally:
                with _quiet_stderr():
                    prof.__exit__(None, None, None)
    finally:
        for h in handles:
            h.remove()
    return _attribute(prof.events(), calls, inlined or TOP)


def _attribute(events: Any, calls: int, default_module: str) -> list[Entry]:
    per_call: dict[tuple[str, str], dict[int, float]] = {}
    for ev in events:
        name = ev.name
        if name == CALL:
            key, call = (OUTSIDE, "framework (per call)"), ev.id
        elif name.startswith(_SCOPE):
            key, call = (_module_name(name), MODULE_SELF), _call_of(ev)
        else:
            op, parent = name, ev.cpu_parent
            while parent is not None and parent.name != CALL and not parent.name.startswith(_SCOPE):
                op, parent = parent.name, parent.cpu_parent
            if parent is None:
                continue   # outside the profiled calls (the profiler's own bookkeeping)
            if name in LAYOUT_OPS and op != name:
                # a copy inside another operator (flatten of an NHWC tensor, a weight reorder inside a
                # convolution) is a layout reorder wherever it happens: named as such, under its caller
                op = f"{name} (in {op})"
            key = (_module_name(parent.name) if parent.name.startswith(_SCOPE) else default_module, op)
            call = _call_of(ev)
        if call is None:
            continue
        slot = per_call.setdefault(key, {})
        slot[call] = slot.get(call, 0.0) + ev.self_cpu_time_total * 1e-6
    return _medians(per_call, calls)


def _call_of(ev: Any) -> int | None:
    while ev is not None and ev.name != CALL:
        ev = ev.cpu_parent
    return ev.id if ev is not None else None


def _medians(per_call: dict[tuple[str, str], dict[Any, float]], calls: int) -> list[Entry]:
    """Each key's median over the calls (a call without the key counts 0): one call slowed by the
    machine's other work moves the mean, not the median."""
    import statistics

    out = []
    for (module, op), by_call in per_call.items():
        t = statistics.median(list(by_call.values()) + [0.0] * max(0, calls - len(by_call)))
        if t > 0:
            out.append((module, op, t))
    return out


def _module_name(scope: str) -> str:
    return scope[len(_SCOPE):] or TOP


def onnx_scopes(path: str | Path) -> dict[str, str]:
    """{node name: module path} of an ONNX file from the dynamo exporter's metadata
    (`pkg.torch.onnx.name_scopes`: the enclosing modules' qualified names, then the operator; a folded
    Conv+BN is credited to the BN module), plus, per output tensor, "tensor:<name>" -> its producer's
    module and "producer:<name>" -> "<op_type> <first input>" (to find the convolution a fusion kept)."""
    import onnx

    out: dict[str, str] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        for o in node.output:
            out["producer:" + o] = f"{node.op_type} {node.input[0] if node.input else ''}"
        props = {p.key: p.value for p in node.metadata_props}
        try:
            names = json.loads(props.get("pkg.torch.onnx.name_scopes", "").replace("'", '"'))
        except ValueError:
            continue
        if not isinstance(names, list) or not names:
            continue
        module = names[-2] if len(names) >= 3 and names[-2] else TOP
        out[node.name] = module
        for o in node.output:
            out["tensor:" + o] = module
    return out


def profile_ort(path: str | Path, options: Any, providers: list[str], feed: dict[str, Any], calls: int,
                scopes: dict[str, str]) -> list[Entry]:
    """Profile `calls` runs of a fresh ONNX Runtime session on `path` built with `options`' optimisation
    level and threads (SessionOptions.enable_profiling; node events give `dur` in us), after
    WARMUP_CALLS unprofiled runs. Nodes are mapped to modules by `scopes` (from `onnx_scopes` of the
    exported file): by name, by the longest known name the rewritten node's name starts with (the
    optimiser's `_nchwc`, the quantizer's `_quant` suffixes), else by the module that produced one of its
    inputs in the rewritten graph (dumped with `optimized_model_filepath`); the rest is GRAPH. Each run's
    time outside its nodes is OUTSIDE."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="accelbench-explain-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = options.graph_optimization_level
        so.intra_op_num_threads = options.intra_op_num_threads
        so.inter_op_num_threads = options.inter_op_num_threads
        so.execution_mode = options.execution_mode
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        # Serializing a graph optimized past ORT_ENABLE_EXTENDED makes ORT warn on the terminal that the
        # file is machine-specific; it is only read here for node names, so only errors are logged.
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            session = ort.InferenceSession(str(path), so, providers=providers)
        for _ in range(WARMUP_CALLS + calls):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
        rewritten = {n.name: list(n.input) for n in onnx.load(str(Path(tmp) / "optimized.onnx")).graph.node}
    # the warm-up runs are in the same profile: keep only events after the last of them ended
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    if len(runs) > WARMUP_CALLS:
        cutoff = runs[WARMUP_CALLS - 1]["ts"] + runs[WARMUP_CALLS - 1]["dur"]
        events = [e for e in events if e.get("ts", 0) >= cutoff]
    return _ort_entries(events, calls, scopes, rewritten)


def _ort_entries(events: list[dict], calls: int, scopes: dict[str, str],
                 rewritten: dict[str, list[str]]) -> list[Entry]:
    names = sorted((k for k in scopes if ":" not in k), key=len, reverse=True)
    modules = set(v for k, v in scopes.items() if ":" not in k)
    runs = sorted(((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("cat") == "Session" and e.get("name") == "model_run"))
    per_call: dict[tuple[str, str], dict[int, float]] = {}
    in_nodes = [0.0] * len(runs)
    for ev in events:
        args = ev.get("args") or {}
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        ts = ev.get("ts", 0)
        run = next((i for i, (a, b) in enumerate(runs) if a <= ts <= b), None)
        if run is None:
            continue
        node = ev["name"][: -len("_kernel_time")]
        op = str(args.get("op_name", "?"))
        key = (_onnx_module(node, op, scopes, names, rewritten, modules), op)
        dur = float(ev.get("dur", 0.0)) * 1e-6
        per_call.setdefault(key, {})[run] = per_call.setdefault(key, {}).get(run, 0.0) + dur
        in_nodes[run] += dur
    if runs:   # each run's time outside its nodes: the session's own work (and the profiler's)
        per_call[(OUTSIDE, "framework (session run)")] = {
            i: max(0.0, (b - a) * 1e-6 - in_nodes[i]) for i, (a, b) in enumerate(runs)}
    return _medians(per_call, len(runs) or calls)


def _onnx_module(node: str, op: str, scopes: dict[str, str], names: list[str],
                 rewritten: dict[str, list[str]], modules: set[str]) -> str:
    if node in scopes:
        return scopes[node]
    for known in names:   # longest first: node_conv2d_1 before node_conv2d
        if node.startswith(known) and not node[len(known):len(known) + 1].isdigit():
            return scopes[known]
    # ORT's NCHWc rewrite names a fused node after the tensor it now produces (`relu_3_nchwc`): that
    # tensor's producer, walked up through the activations and adds the fusion swallowed to the
    # operator of the same kind, is the module this node computes
    candidates = [_SUFFIXES.sub("", t) for t in (node, *rewritten.get(node, ()))]
    for tensor in candidates:
        # a parameter's own Q/DQ node (`convs.4.weight_DequantizeLinear`) belongs to the parameter's module
        if tensor.rpartition(".")[0] in modules:
            return tensor.rpartition(".")[0]
        for _ in range(4):
            if "tensor:" + tensor not in scopes:
                break
            kind, _, upstream = scopes.get("producer:" + tensor, "").partition(" ")
            if kind == op or kind not in FUSABLE:
                return scopes["tensor:" + tensor]
            tensor = upstream
    return GRAPH


_SUFFIXES = re.compile(r"(_nchwc|_quantized|_QuantizeLinear|_DequantizeLinear|_Output|_scale|_zero_point)+$")
FUSABLE = ("Relu", "Add", "Clip", "Sigmoid", "HardSigmoid", "Mul", "BatchNormalization")


def total_s(entries: list[Entry]) -> float:
    """Seconds per call the profile accounts for (NaN for no profile)."""
    return sum(t for _, _, t in entries) if entries else math.nan
