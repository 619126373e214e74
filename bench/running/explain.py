"""Why a cell's candidate is faster or slower than eager: both sides profiled after the timing, per module, in a sentence.

Both sides run the same batch under a profiler (bench.measure.opprofile) a few calls each, after the
paired-block timing has ended, through the `profile` hook of each side's Predictor; a runtime without
one is "not profiled: <why>". Per module of the user's network (its qualified names), the diff of eager
and candidate time names the entries that account for most of the difference, beside what maps to no
module (framework overhead per call, layout reorders, quantize/dequantize) and the FLOPs per module.
`explained_fraction` is the candidate's profiled time over its measured median latency: below
MIN_EXPLAINED the sentence says the profile covers too little to name a cause.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.measure import opprofile
from bench.measure.opprofile import Entry

PROFILE_BUDGET_S = 0.3    # profiled calls per side: about this many seconds of calls ...
PROFILE_CALLS_MIN = 3     # ... but at least this many, so that each entry's median over calls means something
PROFILE_CALLS_MAX = 20    # ... and at most this many (the profiler slows each call)
MIN_EXPLAINED = 0.5       # below this share of the measured latency, a profile names no cause
UNCHANGED = 0.10          # a module whose time moved less than this fraction is "unchanged"
NOTABLE_SHARE = 0.05      # a no-module category named when above this share of the candidate's profile
ZERO_RISE = 0.10          # weights this much more zero than eager's, with the same FLOPs: pruning's zeros
SIMD_LANES = 8            # fp32 lanes of an AVX2 register (16 with AVX-512): widths not a multiple are odd


@dataclass(frozen=True)
class Explanation:
    """A cell's explanation: the row's sentence, the candidate's profiled time over its measured p50
    (NaN: not profiled), and the per-module detail kept in the run's explain.jsonl."""

    sentence: str
    explained_fraction: float = math.nan
    detail: dict[str, Any] = field(default_factory=dict)


def calls_for(p50_s: float) -> int:
    """Profiled calls for a call of `p50_s` seconds: PROFILE_BUDGET_S worth, PROFILE_CALLS_MIN to _MAX."""
    if not p50_s > 0:
        return PROFILE_CALLS_MAX
    return max(PROFILE_CALLS_MIN, min(PROFILE_CALLS_MAX, round(PROFILE_BUDGET_S / p50_s)))


def explain(p: Any, candidate_p50_s: float, baseline_p50_s: float) -> Explanation:
    """Profile both sides of a prepared cell (bench.running.cell.Prepared) on its timing batch and
    explain the difference; `*_p50_s` are the medians the paired blocks measured (s). Never raises for a
    profiling failure: the sentence then says why nothing was profiled."""
    pred = p.predictor
    if pred.profile is None:
        return Explanation(f"not profiled: {pred.profile_unavailable or 'this runtime offers no profile'}")
    base = p.baseline
    try:
        eager = base.profile(p.x, calls_for(baseline_p50_s))
        cand = pred.profile(p.placed, calls_for(candidate_p50_s))
    except Exception as exc:   # a profiler that fails must not cost the row its measured figures
        return Explanation(f"not profiled: the profiler failed ({type(exc).__name__}: {str(exc)[:120]})")
    # torch's FLOP counter sees no arithmetic in int8 kernels: an int8 candidate gets no FLOPs per module
    flops_eager = opprofile.module_flops(p.base_model, p.x)
    flops_cand = {} if p.flops_of_float_network else opprofile.module_flops(p.model, p.x)
    zeros = (zero_fraction(p.base_model), zero_fraction(p.model))
    widths = conv_widths(p.model)
    out = diff(eager, cand, candidate_p50_s, baseline_p50_s, flops_eager, flops_cand, zeros, widths,
               conv_bn_pairs(p.base_model))
    if getattr(p.spec.pipeline, "spec", "") == "eager" and out.sentence and not out.sentence.startswith("not "):
        # the same network on both sides: any module "faster" or "slower" is the profile's own noise
        out = Explanation("eager against itself, so module differences are the profile's noise: " + out.sentence,
                          out.explained_fraction, out.detail)
    return out


def zero_fraction(model: torch.nn.Module) -> float:
    """Share of exactly-zero values among the weights of conv and linear layers (float modules only)."""
    total = zero = 0
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.is_floating_point() and w.dim() >= 2:
            total += w.numel()
            zero += int((w == 0).sum())
    return zero / total if total else math.nan


def conv_bn_pairs(model: torch.nn.Module) -> dict[str, str]:
    """{module path: shared label} for each BatchNorm that directly follows a Conv2d in `model`'s module
    order under the same parent, and that Conv2d: a runtime that folds the BN into the convolution
    (ONNX export, fusion) credits the pair to one of them, so both sides are compared as `conv+bn`."""
    out: dict[str, str] = {}
    prev: tuple[str, torch.nn.Module] | None = None
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and prev is not None and \
                isinstance(prev[1], torch.nn.Conv2d) and prev[0].rpartition(".")[0] == name.rpartition(".")[0]:
            label = f"{prev[0]}+{name.rpartition('.')[2]}"
            out[prev[0]] = out[name] = label
        prev = (name, m)
    return out


def conv_widths(model: torch.nn.Module) -> dict[str, int]:
    """{module path: output channels} of the float Conv2d layers of `model`."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def detail_entries(detail: dict[str, Any], side: str) -> list[Entry]:
    """One side's profile (`eager` or `candidate`) as stored in an explain record."""
    return [(str(m), str(op), float(t)) for m, op, t in detail.get(side, [])]


def scaled(entries: list[Entry], measured_s: float) -> list[Entry]:
    """`entries` with each time multiplied so that they sum to `measured_s` (their shares of it)."""
    total = opprofile.total_s(entries)
    if not total > 0 or not measured_s > 0:
        return entries
    return [(m, op, t * measured_s / total) for m, op, t in entries]


def by_module(entries: list[Entry], known: set[str] | None = None) -> dict[str, float]:
    """Seconds per call per module; with `known`, a module path the other side lacks is credited to its
    nearest ancestor that side has (separable's `conv1.depthwise` to `conv1`)."""
    out: dict[str, float] = {}
    for module, _, t in entries:
        out[rollup(module, known)] = out.get(rollup(module, known), 0.0) + t
    return out


def rollup(module: str, known: set[str] | None) -> str:
    if known is None or module in known:
        return module
    parts = module.split(".")
    while len(parts) > 1:
        parts.pop()
        if ".".join(parts) in known:
            return ".".join(parts)
    return module


def by_category(entries: list[Entry]) -> dict[str, float]:
    out: dict[str, float] = {}
    for module, op, t in entries:
        cat = "overhead" if module == opprofile.OUTSIDE else opprofile.category(op)
        out[cat] = out.get(cat, 0.0) + t
    return out


def _ms(s: float) -> str:
    return f"{s * 1e3:.3g} ms"


def _ops_of(entries: list[Entry], cat: str) -> str:
    ops = sorted({op.split(" (")[0] for m, op, _ in entries if opprofile.category(op) == cat and m != opprofile.OUTSIDE})
    return "/".join(o.replace("aten::", "") for o in ops[:3])


def diff(eager: list[Entry], cand: list[Entry], candidate_p50_s: float, baseline_p50_s: float,
         flops_eager: dict[str, float], flops_cand: dict[str, float], zeros: tuple[float, float] = (math.nan, math.nan),
         widths: dict[str, int] | None = None, pairs: dict[str, str] | None = None) -> Explanation:
    """The sentence for two profiles (entries of bench.measure.opprofile, s per call) and the measured
    medians (s); FLOPs per module of each side ({} when not counted), the share of zero weights of each
    side, the candidate's conv widths and the conv+bn pairs compared as one (`conv_bn_pairs`)."""
    pairs = pairs or {}
    totals = (flops_eager.get(""), flops_cand.get(""))
    flops_eager, flops_cand = own_flops(flops_eager), own_flops(flops_cand)
    eager = [(pairs.get(m, m), op, t) for m, op, t in eager]
    cand = [(pairs.get(m, m), op, t) for m, op, t in cand]
    flops_eager, flops_cand = _paired(flops_eager, pairs), _paired(flops_cand, pairs)
    widths = {pairs.get(m, m): w for m, w in (widths or {}).items()}
    e_total, c_total = opprofile.total_s(eager), opprofile.total_s(cand)
    fraction = c_total / candidate_p50_s if candidate_p50_s > 0 else math.nan
    detail = {"eager": [list(x) for x in eager], "candidate": [list(x) for x in cand],
              "flops_eager": flops_eager, "flops_candidate": flops_cand,
              "candidate_ms_p50": candidate_p50_s * 1e3, "baseline_ms_p50": baseline_p50_s * 1e3,
              "baseline_explained_fraction": e_total / baseline_p50_s if baseline_p50_s > 0 else math.nan,
              "explained_fraction": fraction}
    if not cand or not eager:
        return Explanation("not profiled: the profiler recorded no operator", math.nan, detail)
    # The profiler's own cost per operator and the machine's drift make profiled times larger than measured
    # ones by different factors on the two sides: each side's profile shares are applied to its measured
    # median, so the figures below add up to the measured latencies and their difference to the verdict's.
    eager, cand = scaled(eager, baseline_p50_s), scaled(cand, candidate_p50_s)
    e_mod = by_module(eager)
    c_mod = by_module(cand, set(e_mod))
    # the candidate's FLOPs are credited to the same modules as its time (separable's conv1.depthwise
    # and conv1.pointwise to conv1, which as a container computes nothing itself)
    rolled: dict[str, float] = {}
    for m, f in flops_cand.items():
        rolled[rollup(m, set(e_mod))] = rolled.get(rollup(m, set(e_mod)), 0.0) + f
    flops_cand = rolled
    parts: list[str] = []
    if not fraction >= MIN_EXPLAINED:
        # shares of a profile that saw a different machine than the timing did are no evidence: say so and
        # give what it recorded, unscaled, rather than a cause
        raw = sorted(((m, t) for m, t in by_module(detail_entries(detail, "candidate")).items()), key=lambda kv: -kv[1])
        return Explanation(f"profile covers only {fraction:.0%} of the measured {_ms(candidate_p50_s)}: too little "
                           f"to name a cause (largest profiled: " + ", ".join(f"{m} {_ms(t)}" for m, t in raw[:3])
                           + ")", fraction, detail)
    shared = [m for m in c_mod if m in e_mod and m != opprofile.OUTSIDE]
    mapped = len(shared) > 1
    if mapped:
        moved = sorted(shared, key=lambda m: -abs(e_mod[m] - c_mod[m]))
        gap = sum(abs(e_mod[m] - c_mod[m]) for m in moved) or 1e-12
        named, covered = [], 0.0
        for m in moved[:3]:
            if covered >= 0.7 * gap and named:
                break
            named.append(_module_change(m, e_mod[m], c_mod[m], flops_eager.get(m), flops_cand.get(m), widths))
            covered += abs(e_mod[m] - c_mod[m])
        parts.extend(named)
        still = [m for m in moved[len(named):] if abs(c_mod[m] - e_mod[m]) <= UNCHANGED * e_mod[m]]
        if still and len(parts) < 5:
            parts.append(f"{still[0]} unchanged")
    else:
        top = sorted(((op, t) for m, op, t in cand if m != opprofile.OUTSIDE), key=lambda kv: -kv[1])[:3]
        where = next((m for m, _, _ in cand if m != opprofile.OUTSIDE), "")
        parts.append(f"{where}: top operators of the candidate "
                     + ", ".join(f"{_op_label(op)} {_ms(t)}" for op, t in top))
    cats_c, cats_e = by_category(cand), by_category(eager)
    for cat, words in (("quantize/dequantize", "added"), ("layout reorder", "took")):
        added = cats_c.get(cat, 0.0) - cats_e.get(cat, 0.0)
        if cats_c.get(cat, 0.0) > NOTABLE_SHARE * candidate_p50_s and added > 0:
            parts.append(f"{cat} ({_ops_of(cand, cat)}) {words} {_ms(added)} ({cats_c[cat] / candidate_p50_s:.0%} "
                         f"of the candidate)")
    over_c, over_e = cats_c.get("overhead", 0.0), cats_e.get("overhead", 0.0)
    if over_c > NOTABLE_SHARE * candidate_p50_s and abs(over_c - over_e) > NOTABLE_SHARE * candidate_p50_s:
        parts.append(f"framework overhead (Python, dispatch, per-call) {_ms(over_e)} -> {_ms(over_c)} "
                     f"({over_c / candidate_p50_s:.0%} of the candidate)")
    fe, fc = totals
    if fe and fc is not None and fc == fe and zeros[1] - zeros[0] > ZERO_RISE:
        parts.append(f"0 FLOPs removed: {zeros[1]:.0%} of the weights are zero (eager {zeros[0]:.0%}) but the same "
                     f"dense kernels multiply them")
    return Explanation("; ".join(parts), fraction, detail)


def own_flops(inclusive: dict[str, float]) -> dict[str, float]:
    """FLOPs each module computes itself, from the counter's totals per module (which include its
    submodules'), keyed as profiles name modules (the root as opprofile.TOP)."""
    out = {}
    for m, f in inclusive.items():
        children = sum(g for k, g in inclusive.items() if k and k != m and k.rpartition(".")[0] == m)
        out[m or opprofile.TOP] = f - children
    return out


def _paired(flops: dict[str, float], pairs: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m, f in flops.items():
        out[pairs.get(m, m)] = out.get(pairs.get(m, m), 0.0) + f
    return out


def _op_label(op: str) -> str:
    if op == "forward":   # a scripted method's own time: prepacked oneDNN convolutions have no row of their own
        return "forward self time (incl. prim::mkldnn_convolution)"
    return op.replace("aten::", "")


def _module_change(m: str, e: float, c: float, fe: float | None, fc: float | None,
                   widths: dict[str, int] | None) -> str:
    if abs(c - e) <= UNCHANGED * e:
        text = f"{m} unchanged ({_ms(e)})"
    elif c < e:
        text = f"{m} {e / c:.1f}x faster ({_ms(e)} -> {_ms(c)})" if c > 0 else f"{m} gone ({_ms(e)})"
    else:
        text = f"{m} {c / e:.1f}x slower ({_ms(e)} -> {_ms(c)})" if e > 0 else f"{m} added {_ms(c)}"
    if fe and fc is not None and fc < 0.8 * fe and c > 0 and e > 0:
        flop_cut, time_cut = 1 - fc / fe, 1 - c / e
        text += f" with {flop_cut:.0%} fewer FLOPs"
        if time_cut < flop_cut / 2:
            text += (f" but {max(time_cut, 0):.0%} less time (achieved {fe / e / 1e9:.2g} -> {fc / c / 1e9:.2g} "
                     f"GFLOP/s)")
            width = (widths or {}).get(m)
            if width is not None and width % SIMD_LANES:
                text += (f"; its {width} output channels are not a multiple of {SIMD_LANES} (SIMD lanes), "
                         f"which the profile shows but cannot prove is the cause")
    return text
