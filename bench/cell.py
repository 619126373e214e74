"""One cell of the matrix (model x pipeline x batch size): prepare, check, measure, return one row."""

from __future__ import annotations

import copy
import importlib
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import data as data_mod
from bench import ceilings, metrics, stats
from bench.memory import PeakRSS, release_free_memory, rss_mb
from bench.pipeline import Pipeline, parse
from bench.timing import TimingConfig, time_interleaved
from bench.train import trained
from techniques import Context, Env, NotApplicable, Predictor

MEMORY_CALLS = 3   # calls of the candidate inside the peak-memory window
FAULT_CALLS = 5    # warm calls whose minor page faults are counted, after the timing


def _page_faults_per_call(fn, calls: int = FAULT_CALLS) -> float:
    """Minor page faults per call of `fn`, all threads of this process. Kept out of the timed region
    (getrusage costs ~1 us), it explains speedups the FLOPs cannot: glibc malloc hands big
    activation buffers back to the kernel (mmap/munmap), so every call first-touches them again,
    and two models with the same arithmetic can fault very differently."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


@dataclass(frozen=True)
class CellSpec:
    """Everything a worker process needs to run one cell (plain data: it crosses a process boundary)."""

    model: str
    pipeline: str
    batch_size: int
    data: str = "digits"
    quick: bool = False
    timing: TimingConfig = field(default_factory=TimingConfig)
    peak_gflops: float = math.nan                            # CPU matmul peak (GFLOP/s)
    cuda_peaks_gflops: tuple[tuple[str, float], ...] = ()   # (precision, GFLOP/s) on CUDA; see bench.ceilings
    threads: int = 0            # torch intra-op threads; 0 keeps torch's default
    seed: int = 0

    @property
    def scenario(self) -> str:
        return parse(self.pipeline).scenario


def skipped_reason(pipe: Pipeline, env: Env) -> str | None:
    for t in pipe.techniques:
        why = t.unavailable(env)
        if why:
            return f"{t.name}: {why}"
    return None


def _batched_predict(pred: Predictor, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits for all of x in batches of exactly batch_size (the last one padded), so static-shape
    runtimes (CUDA graphs, fixed ONNX shapes) see only the shape they were prepared for."""
    outs = []
    for i in range(0, len(x), batch_size):
        chunk = x[i:i + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = torch.cat([chunk, chunk[:1].expand(batch_size - n, *chunk.shape[1:])])
        outs.append(pred.predict(chunk)[:n].detach().float().cpu())
    return torch.cat(outs)


def _timing_batch(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    reps = math.ceil(batch_size / len(x))
    return (x.repeat(reps, 1, 1, 1) if reps > 1 else x)[:batch_size].contiguous()


def _check_figures(tech, figs: dict[str, Any]) -> None:
    declared, got = set(tech.figures), set(figs)
    if declared != got:
        raise RuntimeError(f"technique {tech.name!r} reported figures {sorted(got)} but declares {sorted(declared)}")


def _start(spec: CellSpec, env: Env) -> tuple[Pipeline, dict[str, Any], bool]:
    """Parse the pipeline, start the row, and say whether the machine rules the cell out."""
    pipe = parse(spec.pipeline)
    row: dict[str, Any] = {"technique_params": json.dumps(pipe.params(), sort_keys=True)}
    why = skipped_reason(pipe, env)
    if why:
        return pipe, {**row, "status": "skipped", "reason": why, "device": "-"}, True
    if spec.threads:
        torch.set_num_threads(spec.threads)
    return pipe, row, False


def run_inference(spec: CellSpec, env: Env) -> dict[str, Any]:
    """Measure one inference cell; returns the row (status ok or skipped). Exceptions propagate:
    the runner turns them into error rows."""
    pipe, row, skipped = _start(spec, env)
    if skipped:
        return row
    import models
    dataset = data_mod.load(spec.data, models.spec(spec.model).input_shape)
    for tech in pipe.techniques:
        for module in tech.heavy_imports:
            importlib.import_module(module)
    release_free_memory()  # so rss0 counts live memory only, like the window's start below
    rss0 = rss_mb()  # peak_mem_mb is measured from here: model, runtime state, workspace, activations
    base_model = trained(spec.model, dataset)
    scratch = Path(tempfile.mkdtemp(prefix="accelbench-cell-"))
    ctx = Context(spec.model, dataset, env, batch_size=spec.batch_size, quick=spec.quick, seed=spec.seed,
                  scratch_dir=scratch)

    # --- prepare: transforms, then the runtime, then the first call; all of it is setup_s ----------
    t0 = time.perf_counter()
    model = copy.deepcopy(base_model)
    figures: dict[str, Any] = {}
    for tech in pipe.transforms:
        model, figs = tech.apply(model, ctx)
        _check_figures(tech, figs)
        figures.update({f"{tech.name}.{k}": v for k, v in figs.items()})
    model.eval()
    pred = pipe.runtime.prepare(model, ctx)
    _check_figures(pipe.runtime, pred.figures)
    figures.update({f"{pipe.runtime.name}.{k}": v for k, v in pred.figures.items()})
    x = _timing_batch(dataset.test_x, spec.batch_size)
    placed = pred.place(x)
    pred.run(placed)
    pred.synchronize()
    setup_s = time.perf_counter() - t0

    from techniques.eager import Eager
    base_pred = Eager().prepare(base_model, ctx)

    # --- accuracy and fidelity on the whole test split ---------------------------------------------
    cand_logits = _batched_predict(pred, dataset.test_x, spec.batch_size)
    base_logits = _batched_predict(base_pred, dataset.test_x, spec.batch_size)
    agree, max_diff = metrics.fidelity(cand_logits, base_logits)
    acc = base_acc = math.nan
    if dataset.labelled:
        acc = (cand_logits.argmax(1) == dataset.test_y).float().mean().item()
        base_acc = (base_logits.argmax(1) == dataset.test_y).float().mean().item()

    # --- memory: a window of candidate calls only --------------------------------------------------
    release_free_memory()
    if pred.reset_peak_memory and pred.peak_memory_mb:
        pred.reset_peak_memory()
        for _ in range(MEMORY_CALLS):
            pred.run(placed)
        pred.synchronize()
        peak_mb = infer_mb = pred.peak_memory_mb()
    else:
        with PeakRSS() as mem:
            for _ in range(MEMORY_CALLS):
                pred.run(placed)
            pred.synchronize()
        peak_mb, infer_mb = mem.peak_mb - rss0, mem.delta_mb

    # --- timing: candidate and eager baseline interleaved in this process ---------------------------
    def candidate() -> None:
        pred.run(placed)
        pred.synchronize()

    def baseline() -> None:
        base_pred.run(x)

    ms = time_interleaved({"candidate": candidate, "baseline": baseline}, spec.timing, batch_size=spec.batch_size)
    cand, base = ms["candidate"], ms["baseline"]
    sp, sp_lo, sp_hi = stats.speedup(base, cand)
    lat_lo, lat_hi = stats.bootstrap_median_ci(cand.samples_s)

    faults, base_faults = _page_faults_per_call(candidate), _page_faults_per_call(baseline)

    n_flops = metrics.flops(model, x)
    gflops = n_flops / cand.median_s / 1e9 if not math.isnan(n_flops) else math.nan
    peak = ceilings.peak_for(pred.device, pred.precision, spec.peak_gflops, spec.cuda_peaks_gflops)
    row.update({
        "status": "ok", "reason": "", "device": pred.device,
        "latency_ms_p50": cand.median_s * 1e3, "latency_ms_p90": cand.quantile_s(0.9) * 1e3,
        "latency_ms_p99": cand.quantile_s(0.99) * 1e3, "latency_ms_mean": cand.mean_s * 1e3,
        "latency_ms_iqr": cand.iqr_s * 1e3, "latency_ms_ci_low": lat_lo * 1e3, "latency_ms_ci_high": lat_hi * 1e3,
        "rounds": len(cand.samples_s), "throughput_sps": cand.throughput_sps,
        "baseline_ms_p50": base.median_s * 1e3, "speedup": sp, "speedup_ci_low": sp_lo, "speedup_ci_high": sp_hi,
        "peak_mem_mb": peak_mb, "infer_mem_mb": infer_mb,
        "page_faults_per_call": faults, "baseline_page_faults_per_call": base_faults,
        "accuracy": acc, "baseline_accuracy": base_acc, "accuracy_delta": acc - base_acc,
        "top1_agreement": agree, "max_abs_diff": max_diff,
        "params": metrics.count_params(model), "flops": n_flops,
        "model_bytes": pred.model_bytes if pred.model_bytes is not None else metrics.state_dict_bytes(model),
        "gflops_achieved": gflops, "peak_gflops": peak,
        "peak_fraction": gflops / peak if peak and not math.isnan(peak) else math.nan,
        "setup_s": setup_s, "providers": ";".join(pred.providers), "figures": json.dumps(figures, sort_keys=True),
        "_samples": {"candidate_s": list(cand.samples_s), "baseline_s": list(base.samples_s)},
    })
    return row


def run_training(spec: CellSpec, env: Env) -> dict[str, Any]:
    pipe, row, skipped = _start(spec, env)
    if skipped:
        return row
    import models
    dataset = data_mod.load(spec.data, models.spec(spec.model).input_shape)
    ctx = Context(spec.model, dataset, env, batch_size=spec.batch_size, quick=spec.quick, seed=spec.seed,
                  scratch_dir=Path(tempfile.mkdtemp(prefix="accelbench-cell-")))
    out = pipe.strategy.run(ctx)
    figures = out.pop("figures", {})
    _check_figures(pipe.strategy, figures)
    row.update({"status": "ok", "reason": "", "device": out.pop("device", "cpu"),
                "figures": json.dumps({f"{pipe.strategy.name}.{k}": v for k, v in figures.items()}, sort_keys=True)})
    row.update(out)
    return row


def run(spec: CellSpec, env: Env) -> dict[str, Any]:
    try:
        return run_training(spec, env) if spec.scenario == "training" else run_inference(spec, env)
    except NotApplicable as exc:
        return {"status": "skipped", "reason": f"not applicable: {exc}", "device": "-"}


def spec_to_dict(spec: CellSpec) -> dict:
    return asdict(spec)
