"""A prepared cell served under its MLPerf scenario: the row's serving columns from both sides' LoadGen runs."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from bench import api
from bench.records.reasons import Failure, Invalid, Why
from bench.running.result import CellResult
from bench.serving.scenarios import ServingConfig, serve

QSL_SAMPLES = 1024   # test images the query sample library holds (all of the split when it is smaller)
# Default batch of a serving cell: what the scenario's queries or batcher hand the predictor.
SCENARIO_BATCH = {"single-stream": 1, "multi-stream": 8, "server": 8, "offline": 64}


def measure_serving(p, log_dir: Path) -> CellResult:
    """Serve `p` (a bench.running.cell.Prepared) and its eager baseline under `p.spec.serving`; the
    LoadGen logs stay in `log_dir`. A side whose predictor raised or stalled makes an error row; a
    side LoadGen judged INVALID makes the row invalid with LoadGen's reason."""
    spec = p.spec
    cfg = ServingConfig(spec.serving, quick=spec.quick, official=spec.loadgen_official,
                        latency_bound_ms=spec.latency_bound_ms, samples_per_query=SCENARIO_BATCH["multi-stream"])
    samples = p.ctx.place_input(p.ctx.data.test_x[:QSL_SAMPLES].contiguous())
    tolerance = api.EXACT_TOLERANCE * max(1.0, p.baseline.predict(samples[:spec.batch_size]).abs().max().item())

    def candidate(x: torch.Tensor) -> torch.Tensor:
        return p.predictor.predict(x)

    def baseline(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return p.baseline.predict(x)

    served = serve(candidate, baseline, samples, cfg, spec.batch_size, log_dir, tolerance)
    params = spec.pipeline.params()
    for side, name in ((served.candidate, "candidate"), (served.baseline, "eager")):
        if side.outcome.error:
            return CellResult.error(f"{name} under LoadGen ({spec.serving}): {side.outcome.error}", params=params,
                                    failure=Failure.EXCEPTION)
    c, b = served.candidate.outcome, served.baseline.outcome
    reasons = tuple(Why(Invalid.LOADGEN_INVALID, f"LoadGen judged {name}'s {spec.serving} run INVALID: {o.reason}")
                    for o, name in ((c, "the candidate"), (b, "eager")) if not o.valid)
    notes = list(p.notes) + list(served.notes)
    if not cfg.official:
        notes.append(f"LoadGen test overrides ({cfg.duration_ms} ms minimum per run): not MLPerf-compliant; "
                     f"--loadgen-official applies LoadGen's own rules")
    if spec.batch_size > 1:
        notes.append(f"the batcher hands the predictor up to {spec.batch_size} samples, padded to {spec.batch_size} "
                     f"(the shape it was prepared for), for both sides")
    if not served.outputs_equal:
        notes.append(f"served outputs differ from direct calls of the same predictor (max |diff| "
                     f"{served.max_abs_diff:.3g}, top-1 agreement {served.top1_agreement:.1%})")
    figures = dict(p.figures)
    if served.candidate.steps:
        figures["serving.server_steps"] = list(served.candidate.steps)
        figures["serving.baseline_server_steps"] = list(served.baseline.steps)
    row = {"qps": served.candidate.qps, "baseline_qps": served.baseline.qps, "speedup": served.speedup,
           "latency_ms_p50": c.latency_ms_p50, "latency_ms_p90": c.latency_ms_p90, "latency_ms_p99": c.latency_ms_p99,
           "baseline_latency_ms_p99": b.latency_ms_p99, "loadgen_valid": bool(served.valid),
           "loadgen_reason": "; ".join(w.text for w in reasons), "loadgen_official": bool(cfg.official),
           "latency_bound_ms": served.latency_bound_ms if spec.serving == "server" else math.nan,
           "served_outputs_equal": bool(served.outputs_equal), "served_max_abs_diff": served.max_abs_diff,
           "loadgen_log": f"loadgen/{log_dir.name}",
           "served_call_ms_p90": c.call_ms_p90,
           "loadgen_own_ms_p90": served.own.latency_ms_p90 if served.own is not None and served.own.valid else math.nan}
    return CellResult("ok", device=p.predictor.device, params=params, setup_s=p.setup_s,
                      providers=tuple(p.predictor.providers), kernel_precision=p.predictor.kernel_precision,
                      figures=figures, promise=spec.pipeline.promise(),
                      valid=not reasons, invalid=reasons, notes=tuple(notes), serving=row,
                      torch_threads=torch.get_num_threads(),
                      runtime_threads=p.predictor.threads if p.predictor.threads is not None else torch.get_num_threads(),
                      before_prepare=p.before_prepare, threads_started=p.threads_started,
                      processes_started=p.processes_started)
