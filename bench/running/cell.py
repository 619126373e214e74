"""One cell of the matrix (model x pipeline x batch size): prepare it, measure it, return a CellResult."""

from __future__ import annotations

import copy
import importlib
import math
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
from bench.measure import ceilings, metrics
from bench.measure.memory import PeakRSS, release_free_memory, rss_mb
from bench.measure.timing import TimingConfig, time_interleaved
from bench.pipeline import Pipeline
from bench.running.result import CellResult, Fidelity, MemoryFigures, ModelStats, TimingPair
from bench.training.cache import trained

MEMORY_CALLS = 3   # calls of the candidate inside the peak-memory window
FAULT_CALLS = 5    # warm calls whose minor page faults are counted, after the timing


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
        return self.pipeline.scenario

    def key(self) -> tuple[str, str, str, int]:
        """The identity of the cell inside one run (what --resume matches on; see schema.cell_key)."""
        return (self.model, self.pipeline.spec, self.scenario, self.batch_size)


@dataclass
class Prepared:
    """A cell ready to measure: the transformed model, its predictor, the eager baseline on the
    untransformed model, the data and the timing batch. `candidate()` is the very callable the harness
    times (one run on the placed batch, then the device synchronized); the pytest plugin times it too."""

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

    def candidate(self) -> None:
        self.predictor.run(self.placed)
        self.predictor.synchronize()

    def eager(self) -> None:
        self.baseline.run(self.x)


class Skip(Exception):
    """The cell cannot run here; carries the row's reason."""


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


def _context(spec: CellSpec, env: Env) -> Context:
    dataset = data_mod.load(spec.data, api.model_spec(spec.model).input_shape)
    return Context(spec.model, dataset, env, batch_size=spec.batch_size, quick=spec.quick, seed=spec.seed,
                   scratch_dir=Path(tempfile.mkdtemp(prefix="accelbench-cell-")), threads=spec.threads)


def prepare(spec: CellSpec, env: Env) -> Prepared:
    """Data, trained model, transforms, runtime and the first call (all of it `setup_s`), and the
    eager baseline. Raises Skip (cannot run here), NotApplicable (does not fit this model), or the
    technique's own exception (an error row)."""
    pipe = spec.pipeline
    why = skipped_reason(pipe, env)
    if why:
        raise Skip(why)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    for tech in pipe.techniques:
        for module in tech.heavy_imports:
            importlib.import_module(module)
    ctx = _context(spec, env)
    release_free_memory()  # so rss0 counts live memory only, like the window's start in measure()
    rss0 = rss_mb()  # peak_mem_mb is measured from here: model, runtime state, workspace, activations
    base_model = trained(spec.model, ctx.data)

    t0 = time.perf_counter()
    model = copy.deepcopy(base_model)
    figures: dict[str, Any] = {}
    prefixes = _figure_prefixes(pipe)
    for tech, prefix in zip(pipe.transforms, prefixes):
        model, figs = tech.apply(model, ctx)
        _check_figures(tech, figs)
        figures.update({f"{prefix}.{k}": v for k, v in figs.items()})
    model.eval()
    pred = pipe.runtime.prepare(model, ctx)
    _check_figures(pipe.runtime, pred.figures)
    figures.update({f"{prefixes[-1]}.{k}": v for k, v in pred.figures.items()})
    x = _timing_batch(ctx.data.test_x, spec.batch_size)
    placed = pred.place(x)
    pred.run(placed)
    pred.synchronize()
    setup_s = time.perf_counter() - t0

    baseline = api.technique("eager")().prepare(base_model, ctx)
    return Prepared(spec, ctx, model, pred, baseline, x, placed, setup_s, figures, rss0)


def _page_faults_per_call(fn: Callable[[], None], calls: int = FAULT_CALLS) -> float:
    """Minor page faults per call of `fn`, all threads of this process. Kept out of the timed region
    (getrusage costs ~1 us), it explains speedups the FLOPs cannot: glibc malloc hands big
    activation buffers back to the kernel (mmap/munmap), so every call first-touches them again,
    and two models with the same arithmetic can fault very differently."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def _fidelity(p: Prepared) -> Fidelity:
    data, bs = p.ctx.data, p.spec.batch_size
    cand = _batched_predict(p.predictor, data.test_x, bs)
    base = _batched_predict(p.baseline, data.test_x, bs)
    agree, max_diff = metrics.fidelity(cand, base)
    acc = base_acc = math.nan
    if data.labelled:
        acc = (cand.argmax(1) == data.test_y).float().mean().item()
        base_acc = (base.argmax(1) == data.test_y).float().mean().item()
    return Fidelity(acc, base_acc, agree, max_diff)


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
    """Fidelity and accuracy on the whole test split, memory, interleaved timing against eager,
    page faults and model statistics of a prepared cell."""
    spec, pred = p.spec, p.predictor
    fidelity = _fidelity(p)
    peak_mb, infer_mb = _memory_window(p)
    ms = time_interleaved({"candidate": p.candidate, "baseline": p.eager}, spec.timing, batch_size=spec.batch_size)
    timing = TimingPair(ms["candidate"], ms["baseline"])
    memory = MemoryFigures(peak_mb, infer_mb, _page_faults_per_call(p.candidate), _page_faults_per_call(p.eager))
    n_flops = metrics.flops(p.model, p.x)
    gflops = n_flops / timing.candidate.median_s / 1e9 if not math.isnan(n_flops) else math.nan
    peak = ceilings.peak_for(pred.device, pred.precision, spec.peak_gflops, spec.cuda_peaks_gflops)
    model_bytes = pred.model_bytes if pred.model_bytes is not None else metrics.state_dict_bytes(p.model)
    stats = ModelStats(metrics.count_params(p.model), n_flops, model_bytes, gflops, peak)
    return CellResult("ok", device=pred.device, params=spec.pipeline.params(), setup_s=p.setup_s,
                      providers=tuple(pred.providers), figures=p.figures, timing=timing, memory=memory,
                      fidelity=fidelity, model_stats=stats)


def run_training(spec: CellSpec, env: Env) -> CellResult:
    """Train under the cell's strategy; the strategy returns the training columns and its figures."""
    strategy = spec.pipeline.strategy
    why = skipped_reason(spec.pipeline, env)
    if why:
        raise Skip(why)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    out = dict(strategy.run(_context(spec, env)))
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
    pytest plugin times the same `Prepared.candidate` the harness timed."""
    try:
        if spec.scenario == "training":
            return run_training(spec, env), None
        prepared = prepare(spec, env)
        return measure(prepared), prepared
    except Skip as exc:
        return CellResult("skipped", str(exc), params=spec.pipeline.params()), None
    except NotApplicable as exc:
        return CellResult("skipped", f"not applicable: {exc}", params=spec.pipeline.params()), None
