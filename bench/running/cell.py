"""One cell of the matrix (model x pipeline x batch size): prepare it, measure it, return a CellResult."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bench import api
from bench import data as data_mod
from bench.api import Context, Env, NotApplicable, Predictor
from bench.measure import ceilings, metrics, stats
from bench.measure.disturbance import snapshot, thread_ids, wait_until_quiet
from bench.measure.memory import PeakRSS, release_free_memory, rss_mb
from bench.measure.stats import Measurement
from bench.measure.timing import MIN_ROUNDS_FOR_INTERVAL, TimingConfig, time_alone, time_paired_blocks
from bench.pipeline import Pipeline
from bench.records.reasons import Failure, Invalid, Why
from bench.running import validity
from bench.running.result import CellResult, Fidelity, MemoryFigures, ModelStats
from bench.training.cache import trained

MEMORY_CALLS = 3   # calls of the candidate inside the peak-memory window
FAULT_CALLS = 5    # at most this many warm calls' minor page faults are counted, after the timing
FAULT_WINDOW_S = 0.5


@dataclass(frozen=True)
class CellSpec:
    """Everything a worker process needs to run one cell. `pipeline` is parsed once, at start-up,
    and travels whole (it pickles): a cell never parses a pipeline string again."""

    model: str
    pipeline: Pipeline
    batch_size: int
    data: str = "digits"
    quick: bool = False
    timing: TimingConfig = field(default_factory=TimingConfig)
    peak_gflops: float = math.nan                            # CPU matmul peak (GFLOP/s)
    cuda_peaks_gflops: tuple[tuple[str, float], ...] = ()   # (precision, GFLOP/s) on CUDA; see bench.measure.ceilings
    threads: int = 0            # torch intra-op threads; 0 keeps torch's default
    seed: int = 0
    # The group's eager reference so far (ms), or NaN. A worker whose eager baseline, timed before any
    # technique is prepared, is further than validity.BASELINE_DEPARTURE from it stops there (an
    # OFF_AT_START error: the runner tries the cell again later): not part of the cell's identity.
    reference_ms: float = math.nan
    # A serving scenario (bench.serving): the cell serves candidate and eager under MLPerf LoadGen
    # instead of timing them in paired blocks; its logs go under `loadgen_dir`.
    serving: str = ""
    latency_bound_ms: float = math.nan
    loadgen_official: bool = False
    loadgen_dir: str = ""
    explain: bool = True   # profile both sides after the timing and explain the verdict (bench.running.explain)

    def __post_init__(self) -> None:
        if not isinstance(self.pipeline, Pipeline):
            raise TypeError(f"CellSpec.pipeline must be a parsed bench.pipeline.Pipeline (parse(...) once at "
                            f"start-up), got {type(self.pipeline).__name__}")

    @classmethod
    def of(cls, model: str, pipeline: str | Pipeline, batch_size: int, **fields: Any) -> "CellSpec":
        """A CellSpec from a pipeline string (parsed here) or an already parsed Pipeline."""
        from bench.pipeline import parse
        return cls(model, pipeline if isinstance(pipeline, Pipeline) else parse(pipeline), batch_size, **fields)

    @property
    def scenario(self) -> str:
        return self.serving or self.pipeline.scenario

    def key(self) -> tuple[str, str, str, int, int]:
        """The identity of the cell inside one run (what --resume matches on; see schema.cell_key)."""
        return (self.model, self.pipeline.spec, self.scenario, self.batch_size, self.threads)


@dataclass
class Prepared:
    """A cell ready to measure: the transformed model, its predictor, the eager baseline on the
    untransformed model, the data and the timing batch. `candidate()` is the very callable the harness
    times (one run on the placed batch, then the device synchronized); the pytest plugin times it too.
    `nondeterministic` says why eager disagreed with itself, if it did. `before_prepare` is the eager
    baseline timed alone before any technique ran in this process; `home_threads` the threads alive
    then, so `threads_started` and `processes_started` count what the preparation left running."""

    spec: CellSpec
    ctx: Context
    model: nn.Module
    predictor: Predictor
    baseline: Predictor
    x: torch.Tensor
    placed: Any
    setup_s: float
    figures: dict[str, Any]
    rss0_mb: float
    flops: float                      # per batch, of the float network before an int8 transform (else NaN: counted in measure)
    notes: list[str] = field(default_factory=list)
    nondeterministic: str = ""
    before_prepare: Measurement | None = None
    home_threads: frozenset[int] = frozenset()
    threads_started: int = 0
    processes_started: int = 0
    base_model: nn.Module | None = None   # the untransformed network eager runs (FLOPs per module, zeros)

    @property
    def flops_of_float_network(self) -> bool:
        return not math.isnan(self.flops)

    def candidate(self) -> None:
        self.predictor.run(self.placed)
        self.predictor.synchronize()

    def eager(self) -> None:
        self.baseline.run(self.x)


class Skip(Exception):
    """The cell cannot run here; carries the row's reason."""


class OffAtStart(Exception):
    """This process runs eager off its group's reference before any technique ran; carries why."""


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


def _figure_prefixes(pipe: Pipeline) -> list[str]:
    """`prune`, then `prune#2` for a second prune in the same pipeline: figures never overwrite."""
    seen: dict[str, int] = {}
    out = []
    for t in pipe.techniques:
        seen[t.name] = seen.get(t.name, 0) + 1
        out.append(t.name if seen[t.name] == 1 else f"{t.name}#{seen[t.name]}")
    return out


def _context(spec: CellSpec, env: Env, scratch_dir: Path) -> Context:
    m = api.model_spec(spec.model)
    dataset = data_mod.load(spec.data, m.input_shape, m.num_classes)
    return Context(spec.model, dataset, env, batch_size=spec.batch_size, quick=spec.quick, seed=spec.seed,
                   scratch_dir=scratch_dir, threads=spec.threads)


class NonFiniteOutputs(Exception):
    """The baseline's or the candidate's logits hold NaN or inf: no figure of the cell means anything
    (NaN equals nothing, so it would otherwise pass for a nondeterministic model or for exact)."""


def check_finite(logits: torch.Tensor, side: str, where: str) -> None:
    """Raise NonFiniteOutputs naming `side` (baseline or candidate) and `where` (which images) when
    `logits` hold any NaN or inf."""
    bad = ~torch.isfinite(logits)
    if bool(bad.any()):
        n, nan = int(bad.sum()), int(torch.isnan(logits).sum())
        raise NonFiniteOutputs(f"outputs contain NaN/inf: {side} gave {nan} NaN and {n - nan} inf among "
                               f"{logits.numel()} logits on {where}")


BASELINE_SIDE = "the baseline (eager, the model as given)"


def _self_disagreement(model: nn.Module, x: torch.Tensor) -> str:
    """Why eager disagrees with itself on the same batch, or "" when two calls are bit-identical.
    Raises NonFiniteOutputs when its logits hold NaN or inf."""
    with torch.inference_mode():
        a, b = model(x), model(x)
    check_finite(a, BASELINE_SIDE, "the timing batch")
    if torch.equal(a, b):
        return ""
    diff = (a.float() - b.float()).abs().max().item()
    return (f"nondeterministic model: two eager calls on the same batch differ by up to {diff:.3g} (likely "
            f"dropout active in eval mode, e.g. F.dropout without training=self.training, or batch statistics "
            f"used in eval mode); verdicts withheld")


def prepare(spec: CellSpec, env: Env, scratch_dir: Path) -> Prepared:
    """Data, trained model, transforms, runtime and the first call (all of it `setup_s`), and the
    eager baseline; exported files go to `scratch_dir` (the caller's to remove). Raises Skip (cannot
    run here), NotApplicable (does not fit this model), or the technique's own exception (an error
    row)."""
    pipe = spec.pipeline
    why = skipped_reason(pipe, env)
    if why:
        raise Skip(why)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    for tech in pipe.techniques:
        for module in tech.heavy_imports:
            importlib.import_module(module)
    ctx = _context(spec, env, scratch_dir)
    base_model = trained(spec.model, ctx.data)
    x = _timing_batch(ctx.data.test_x, spec.batch_size)
    nondeterministic = _self_disagreement(base_model, x)
    metrics.flops(base_model, x[:1])   # loads the FLOP counter's own machinery now, outside the memory window
    baseline = api.technique("eager")().prepare(base_model, ctx)
    # The baseline as it runs before any technique touched this process (its OpenMP team is up:
    # the calls above ran the model), and the threads and processes alive now: after the preparation,
    # a baseline slower than this, or threads it started and left busy, name what slowed the pair.
    before_prepare = time_alone(lambda: baseline.run(x), spec.timing, batch_size=spec.batch_size)
    off = validity.off_at_start(before_prepare.median_s * 1e3, spec.reference_ms)
    if off:
        raise OffAtStart(off)
    home_threads, home_children = thread_ids(), _child_processes()
    # peak_mem_mb counts from here: the candidate's own weights, runtime state, workspace and
    # activations, not the baseline's copy of the weights, which the cell keeps for comparison.
    release_free_memory()
    rss0 = rss_mb()

    t0 = time.perf_counter()
    counting_s = 0.0
    model = copy.deepcopy(base_model)
    n_flops, notes = math.nan, []
    figures: dict[str, Any] = {}
    prefixes = _figure_prefixes(pipe)
    # Each part's context carries the input layout the parts before it declared (channels_last hands
    # on NHWC); the eager baseline keeps `ctx` itself: plain eager on NCHW batches, as the eager cell.
    layouts = pipe.memory_formats()
    for tech, prefix, layout in zip(pipe.transforms, prefixes, layouts):
        before = model
        try:
            model, figs, *said = tech.apply(model, dataclasses.replace(ctx, memory_format=layout))
        except NotApplicable as exc:   # in a pipeline of several parts, the reason names the part
            raise NotApplicable(f"{tech.label()}: {exc}") from None
        _check_figures(tech, figs)
        figures.update({f"{prefix}.{k}": v for k, v in figs.items()})
        notes.extend(f"{prefix}: {note}" for note in (said[0] if said else ()))
        if tech.produces() != api.FLOAT and math.isnan(n_flops):
            # torch's FLOP counter sees no arithmetic in int8 kernels: count the float network that
            # was quantized (the same multiply-adds, done in int8) now, before it is freed, and say so.
            c0 = time.perf_counter()
            n_flops = metrics.flops(before, x)
            counting_s += time.perf_counter() - c0
            notes.append(f"flops: of the float network before {tech.label()} (its int8 kernels do the same "
                         f"multiply-adds); no int8 peak is measured, so no peak fraction")
        del before
    model.eval()
    pred = pipe.runtime.prepare(model, dataclasses.replace(ctx, memory_format=layouts[-1]))
    _check_figures(pipe.runtime, pred.figures)
    figures.update({f"{prefixes[-1]}.{k}": v for k, v in pred.figures.items()})
    placed = pred.place(x)
    pred.run(placed)
    pred.synchronize()
    setup_s = time.perf_counter() - t0 - counting_s
    return Prepared(spec, ctx, model, pred, baseline, x, placed, setup_s, figures, rss0, n_flops, notes,
                    nondeterministic, before_prepare, home_threads, len(thread_ids() - home_threads),
                    max(0, _child_processes() - home_children), base_model)


def _child_processes() -> int:
    import psutil
    try:
        return len(psutil.Process().children(recursive=True))
    except psutil.Error:
        return 0


def _page_faults_per_call(fn: Callable[[], None], per_call_s: float) -> float:
    """Minor page faults per call of `fn`, all threads of this process. Kept out of the timed region
    (getrusage costs ~1 us), it explains speedups the FLOPs cannot: glibc malloc hands big
    activation buffers back to the kernel (mmap/munmap), so every call first-touches them again,
    and two models with the same arithmetic can fault very differently."""
    import resource

    # Faults per call barely vary from call to call, so slow calls (a 224x224 batch: 0.3-1 s) are
    # counted over fewer of them: about FAULT_WINDOW_S of calls, between 1 and FAULT_CALLS.
    calls = max(1, min(FAULT_CALLS, round(FAULT_WINDOW_S / max(per_call_s, 1e-9))))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def _fidelity(p: Prepared) -> Fidelity:
    """Accuracy (with 95% Wilson intervals and an exact McNemar test against eager on the same
    images) and agreement with eager's logits, over the whole test split."""
    data, bs = p.ctx.data, p.spec.batch_size
    cand = _batched_predict(p.predictor, data.test_x, bs)
    base = _batched_predict(p.baseline, data.test_x, bs)
    check_finite(base, BASELINE_SIDE, f"the {len(data.test_x)} test images")
    check_finite(cand, f"the candidate ({p.spec.pipeline.spec})", f"the {len(data.test_x)} test images")
    agree, max_diff = metrics.fidelity(cand, base)
    tolerance = api.EXACT_TOLERANCE * max(1.0, base.abs().max().item())
    n = len(data.test_y)
    if not data.labelled:
        return Fidelity(math.nan, math.nan, agree, max_diff, tolerance=tolerance, images=n, classes=base.shape[1])
    right, base_right = cand.argmax(1) == data.test_y, base.argmax(1) == data.test_y
    gained, lost = int((right & ~base_right).sum()), int((~right & base_right).sum())
    lo, hi = stats.wilson_interval(int(right.sum()), n)
    top5 = lambda logits: metrics.topk_accuracy(logits, data.test_y, 5) if logits.shape[1] > 5 else math.nan  # noqa: E731
    return Fidelity(right.float().mean().item(), base_right.float().mean().item(), agree, max_diff,
                    accuracy_ci=(lo, hi), p_value=stats.mcnemar_exact_p(gained, lost), tolerance=tolerance,
                    top5=top5(cand), baseline_top5=top5(base), images=n, classes=base.shape[1])


def _memory_window(p: Prepared) -> tuple[float, float]:
    """(peak, inference-only) MiB over a window of candidate calls only."""
    pred = p.predictor
    release_free_memory()
    if pred.reset_peak_memory and pred.peak_memory_mb:
        pred.reset_peak_memory()
        for _ in range(MEMORY_CALLS):
            pred.run(p.placed)
        pred.synchronize()
        peak = pred.peak_memory_mb()
        return peak, peak
    with PeakRSS() as mem:
        for _ in range(MEMORY_CALLS):
            pred.run(p.placed)
        pred.synchronize()
    return mem.peak_mb - p.rss0_mb, mem.delta_mb


def measure(p: Prepared) -> CellResult:
    """Fidelity and accuracy on the whole test split, memory, paired-block timing against eager,
    page faults and model statistics of a prepared cell, and whether the row kept its promise."""
    spec, pred = p.spec, p.predictor
    fidelity = _fidelity(p)
    peak_mb, infer_mb = _memory_window(p)
    # Each block starts once the threads the candidate's preparation started have gone quiet: an ONNX
    # Runtime pool spinning on after the candidate's block took 0.12-0.13 cores of the baseline's blocks.
    timing = time_paired_blocks(p.candidate, p.eager, spec.timing, batch_size=spec.batch_size,
                                probe=lambda: snapshot(p.home_threads),
                                quiet=lambda: wait_until_quiet(p.home_threads))
    memory = MemoryFigures(peak_mb, infer_mb, _page_faults_per_call(p.candidate, timing.candidate.median_s),
                           _page_faults_per_call(p.eager, timing.baseline.median_s))
    explanation = None
    if spec.explain:   # after the timing, never during it: the profiler slows every operator it records
        from bench.running.explain import explain
        explanation = explain(p, timing.candidate.median_s, timing.baseline.median_s)
    notes = list(p.notes) + list(pred.notes)
    promise = spec.pipeline.promise()
    broken = ""
    if promise == api.EXACT and not p.nondeterministic and not fidelity.max_abs_diff <= fidelity.tolerance:
        broken = (f"promised eager's outputs (exact) but top-1 agreement is {fidelity.top1_agreement:.1%} and "
                  f"max |logit diff| {fidelity.max_abs_diff:.3g} (tolerance {fidelity.tolerance:.2g}): it computes "
                  f"something else (e.g. a trace froze one branch of data-dependent control flow)")
    n_flops = p.flops if p.flops_of_float_network else metrics.flops(p.model, p.x)
    if broken:
        n_flops = math.nan
        notes.append("flops: not counted, since what ran is not the network the FLOP counter sees")
    gflops = n_flops / timing.candidate.median_s / 1e9 if not math.isnan(n_flops) else math.nan
    peak = ceilings.peak_for(pred.device, pred.precision, spec.peak_gflops, spec.cuda_peaks_gflops)
    if p.flops_of_float_network:
        peak = math.nan
    elif gflops > peak:
        notes.append(f"achieved {gflops:.1f} GFLOP/s is above the measured matmul peak {peak:.1f} GFLOP/s at "
                     f"this thread count: the runtime computed fewer FLOPs than the eager network has")
    model_bytes = pred.model_bytes if pred.model_bytes is not None else metrics.state_dict_bytes(p.model)
    stats_ = ModelStats(metrics.count_params(p.model), n_flops, model_bytes, gflops, peak)
    nondeterministic = Why(Invalid.NONDETERMINISTIC, p.nondeterministic) if p.nondeterministic else None
    too_wide = validity.interval_too_wide(len(timing.ratios), timing.halfwidth(), MIN_ROUNDS_FOR_INTERVAL)
    invalid = tuple(why for why in (nondeterministic, too_wide) if why)
    return CellResult("mismatch" if broken else "ok", broken, device=pred.device, params=spec.pipeline.params(),
                      setup_s=p.setup_s, providers=tuple(pred.providers), kernel_precision=pred.kernel_precision,
                      figures=p.figures, timing=timing,
                      memory=memory, fidelity=fidelity, model_stats=stats_, promise=promise,
                      valid=not invalid, invalid=invalid, notes=tuple(notes),
                      torch_threads=torch.get_num_threads(),
                      runtime_threads=pred.threads if pred.threads is not None else torch.get_num_threads(),
                      before_prepare=p.before_prepare, threads_started=p.threads_started,
                      processes_started=p.processes_started, explanation=explanation)


def run_training(spec: CellSpec, env: Env, scratch_dir: Path) -> CellResult:
    """Train under the cell's strategy; the strategy returns the training columns and its figures."""
    strategy = spec.pipeline.strategy
    why = skipped_reason(spec.pipeline, env)
    if why:
        raise Skip(why)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    out = dict(strategy.run(_context(spec, env, scratch_dir)))
    figures = out.pop("figures", {})
    _check_figures(strategy, figures)
    device = out.pop("device", "cpu")
    return CellResult("ok", device=device, params=spec.pipeline.params(),
                      figures={f"{strategy.name}.{k}": v for k, v in figures.items()}, training=out)


def run(spec: CellSpec, env: Env) -> CellResult:
    """The whole cell in this process. Skips and does-not-apply become `skipped` results; any other
    exception propagates (the worker turns it into an error result with its traceback)."""
    return run_prepared(spec, env)[0]


def run_prepared(spec: CellSpec, env: Env) -> tuple[CellResult, Prepared | None]:
    """`run`, also handing back the prepared inference cell (None when it did not get that far): the
    pytest plugin times the same `Prepared.candidate` the harness timed. The cell's scratch folder
    (ONNX exports of up to hundreds of MB, distributed ranks' files) is removed when it ends; a
    runtime that needs its file after session creation must keep its own copy."""
    scratch = Path(tempfile.mkdtemp(prefix="accelbench-cell-"))
    try:
        if spec.scenario == "training":
            return run_training(spec, env, scratch), None
        prepared = prepare(spec, env, scratch)
        if spec.serving:
            from bench.serving.cell import measure_serving
            return measure_serving(prepared, Path(spec.loadgen_dir or scratch / "loadgen")), prepared
        return measure(prepared), prepared
    except Skip as exc:
        return CellResult("skipped", str(exc), params=spec.pipeline.params()), None
    except NotApplicable as exc:
        return CellResult("skipped", f"not applicable: {exc}", params=spec.pipeline.params()), None
    except OffAtStart as exc:
        return CellResult.error(str(exc), params=spec.pipeline.params(), failure=Failure.OFF_AT_START), None
    except NonFiniteOutputs as exc:
        return CellResult.error(str(exc), params=spec.pipeline.params(), failure=Failure.NON_FINITE), None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
