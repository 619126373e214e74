"""One MLPerf LoadGen test of one predictor: a system under test with a dynamic batcher, and what LoadGen logged.

LoadGen (MLCommons, `mlcommons-loadgen`, module `mlperf_loadgen`) issues queries by the rules of an
MLPerf Inference scenario (SingleStream, MultiStream, Server, Offline) and measures each from issue to
completion. Our system under test (SUT) does what a serving system does: `issue_query` only queues the
samples (work done inside it blocks LoadGen's issue thread: Server then completed 911 of 1981 scheduled
samples/s), and one worker thread takes up to `max_batch` queued samples, waiting at most
`batch_timeout_ms` after the first for more, runs them as one batch and completes them. SingleStream,
whose next query waits for the last, runs each query inside `issue_query` instead.

Guards, because LoadGen cannot survive its callbacks failing: an exception inside a callback kills the
process (a traceback, then SIGSEGV), and a sample never completed makes `StartTest` wait forever. So
every callback catches everything; a batch that raises completes its samples empty and the test is an
error; a predictor that has not returned `stall_s` after its batch started is abandoned: its samples
(and all later ones) are completed empty so LoadGen returns, and the test is an error saying so. (A
SingleStream query runs inside LoadGen's issue thread, which nothing can interrupt: a predictor that
never returns there is ended by the cell's time-out, which kills the worker.)
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.records.columns import SERVING_SCENARIOS as SCENARIOS



@dataclass(frozen=True)
class Settings:
    """What one LoadGen test runs. Durations in ms, latencies in ms, rates in queries (Server) or
    samples (Offline) per second. `official` leaves LoadGen's own rules (mlperf.conf: 600 s minimum,
    its query counts) in force; otherwise `min_duration_ms` and `min_query_count` are test overrides
    and the result is not MLPerf-compliant."""

    scenario: str
    min_duration_ms: int = 1000
    min_query_count: int = 100
    target_qps: float = math.nan          # Server: the Poisson arrival rate scheduled
    latency_bound_ms: float = math.nan    # Server: the p99 bound a VALID run must meet
    expected_qps: float = math.nan        # Offline: samples LoadGen sizes its one query for
    expected_latency_ms: float = math.nan  # SingleStream/MultiStream: sizes the pre-generated queries
    samples_per_query: int = 8            # MultiStream
    official: bool = False
    accuracy: bool = False                # AccuracyOnly: every sample once, outputs kept

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"Settings.scenario must be one of {', '.join(SCENARIOS)}; got {self.scenario!r}")
        if self.scenario == "server" and not (self.target_qps > 0 and self.latency_bound_ms > 0):
            raise ValueError(f"Settings for server need target_qps > 0 and latency_bound_ms > 0; got "
                             f"{self.target_qps} and {self.latency_bound_ms}")


@dataclass(frozen=True)
class Outcome:
    """What LoadGen reported for one test (from mlperf_log_detail.txt), and our SUT's own error.
    Latencies in ms (MultiStream: per query of `samples_per_query` samples); `qps`: completed queries
    per second (SingleStream, MultiStream, Server) or samples per second (Offline)."""

    valid: bool
    reason: str                 # why LoadGen judged it INVALID, or the SUT's error; "" when VALID
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    qps: float
    queries: int
    log_dir: str
    error: str = ""             # the SUT failed (an exception, a stall): no figure of this test stands
    # p90 of the predictor's own calls as the SUT timed them during this test (perf_counter around each
    # call, in ms): what serving adds is LoadGen's latency less this; this against a direct call's p90
    # says whether the predictor itself ran slower served (a fresh sample per query, parked threads)
    call_ms_p90: float = math.nan
    detail: dict = field(default_factory=dict, repr=False)   # every result_* entry LoadGen logged


def _lg():
    import mlperf_loadgen
    return mlperf_loadgen


class _SUT:
    """The system under test: queue in `issue`, batch and complete on one worker thread."""

    def __init__(self, predict: Callable[[torch.Tensor], torch.Tensor], samples: torch.Tensor, max_batch: int,
                 batch_timeout_ms: float, stall_s: float, keep_outputs: bool, inline: bool = False):
        self.predict, self.samples = predict, samples
        self.max_batch, self.timeout_s, self.stall_s = max_batch, batch_timeout_ms / 1e3, stall_s
        self.pending: "queue.Queue" = queue.Queue()
        self.outputs: dict[int, torch.Tensor] = {}
        self.keep_outputs = keep_outputs
        self.inline = inline
        self.error = ""
        self.open: dict[int, int] = {}          # issued, not yet completed: response id -> sample index
        self.lock = threading.Lock()
        self.busy_since = math.inf              # when the batch in flight started (monotonic s)
        self.call_ns: list[int] = []            # each predictor call's duration, as the SUT timed it
        self.stop = threading.Event()
        self.worker = threading.Thread(target=self._work, name="accelbench-sut", daemon=True)
        self.watchdog = threading.Thread(target=self._watch, name="accelbench-sut-watchdog", daemon=True)

    # LoadGen's callbacks: never raise out of them.
    def issue(self, query_samples) -> None:
        try:
            with self.lock:
                for s in query_samples:
                    self.open[s.id] = s.index
            if self.error:
                self._complete([(s.id, s.index) for s in query_samples], None)
                return
            if self.inline:
                self._run([(s.id, s.index) for s in query_samples])
                return
            for s in query_samples:
                self.pending.put((s.id, s.index))
        except BaseException as exc:  # noqa: BLE001 - LoadGen dies on an exception here
            self._fail(f"issue_query: {type(exc).__name__}: {exc}")

    def flush(self) -> None:
        pass

    def _work(self) -> None:
        while not self.stop.is_set():
            try:
                first = self.pending.get(timeout=0.05)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.timeout_s
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    batch.append(self.pending.get(timeout=left) if left > 0 else self.pending.get_nowait())
                except queue.Empty:
                    break
            if self.error:
                self._complete(batch, None)
                continue
            self._run(batch)

    def _run(self, batch: list[tuple[int, int]]) -> None:
        try:
            self.busy_since = time.monotonic()
            x = self.samples[[i for _, i in batch]]
            t0 = time.perf_counter_ns()
            out = self.predict(x)
            self.call_ns.append(time.perf_counter_ns() - t0)
            self.busy_since = math.inf
            self._complete(batch, out)
        except BaseException as exc:  # noqa: BLE001 - becomes the test's error, samples completed empty
            self.busy_since = math.inf
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self._fail(f"the predictor raised {type(exc).__name__}: {first}")

    def _watch(self) -> None:
        while not self.stop.wait(0.1):
            if time.monotonic() - self.busy_since > self.stall_s:
                self._fail(f"the predictor did not return within {self.stall_s:.0f} s of a batch's start (a stall); "
                           f"the batch was abandoned")
                self.busy_since = math.inf

    def _fail(self, why: str) -> None:
        if not self.error:
            self.error = why
        with self.lock:
            left = list(self.open.items())
        self._complete(left, None)
        while True:   # anything still queued: complete it too, so LoadGen can finish
            try:
                self._complete([self.pending.get_nowait()], None)
            except queue.Empty:
                break

    def _complete(self, batch: list[tuple[int, int]], out: torch.Tensor | None) -> None:
        lg = _lg()
        with self.lock:
            batch = [(rid, idx) for rid, idx in batch if self.open.pop(rid, None) is not None]
        if not batch:
            return
        responses, buffers = [], []
        for k, (rid, idx) in enumerate(batch):
            if out is not None and self.keep_outputs:
                logits = out[k].detach().float().cpu()
                self.outputs[idx] = logits
                buf = np.array([int(logits.argmax())], dtype=np.int32)   # the accuracy log's entry: top-1
                buffers.append(buf)
                responses.append(lg.QuerySampleResponse(rid, buf.ctypes.data, buf.nbytes))
            else:
                responses.append(lg.QuerySampleResponse(rid, 0, 0))
        try:
            lg.QuerySamplesComplete(responses)   # the buffers stay alive until this returns
        except BaseException as exc:  # noqa: BLE001
            self.error = self.error or f"QuerySamplesComplete: {type(exc).__name__}: {exc}"


_SCENARIO_NAMES = {"single-stream": "SingleStream", "multi-stream": "MultiStream", "server": "Server",
                   "offline": "Offline"}
# LoadGen's own rules per scenario, read once per process (see official_rules)
_OFFICIAL: dict[str, dict[str, int]] = {}
_RULES = ("min_duration_ms", "max_duration_ms", "min_query_count", "max_query_count",
          "performance_sample_count_override")


def official_rules(scenario: str) -> dict[str, int]:
    """LoadGen's built-in rules (its mlperf.conf) for `scenario`: minimum duration and query counts.
    `TestSettings.FromConfig` applies mlperf.conf only on its first call in a process, so the rules
    are read once, into a template, and copied onto every later TestSettings of the process. Raises
    RuntimeError when this process had already used FromConfig (the rules cannot be read then)."""
    if scenario not in _OFFICIAL:
        import tempfile

        lg = _lg()
        ts = lg.TestSettings()
        ts.scenario = getattr(lg.TestScenario, _SCENARIO_NAMES[scenario])
        with tempfile.NamedTemporaryFile("w", suffix=".conf") as user_conf:   # no user overrides
            ts.FromConfig(user_conf.name, "accelbench", _SCENARIO_NAMES[scenario], 1)
        rules = {k: int(getattr(ts, k)) for k in _RULES}
        if _OFFICIAL or rules["min_duration_ms"] < 600_000:
            raise RuntimeError(f"LoadGen's official rules for {scenario} could not be read in this process "
                               f"(mlperf.conf is applied only on the first FromConfig call of a process)")
        _OFFICIAL[scenario] = rules
    return _OFFICIAL[scenario]


def _test_settings(s: Settings):
    lg = _lg()
    ts = lg.TestSettings()
    ts.scenario = {"single-stream": lg.TestScenario.SingleStream, "multi-stream": lg.TestScenario.MultiStream,
                   "server": lg.TestScenario.Server, "offline": lg.TestScenario.Offline}[s.scenario]
    ts.mode = lg.TestMode.AccuracyOnly if s.accuracy else lg.TestMode.PerformanceOnly
    if s.official and not s.accuracy:
        for key, value in official_rules(s.scenario).items():
            setattr(ts, key, value)
    else:
        ts.min_duration_ms = int(s.min_duration_ms)
        ts.min_query_count = int(s.min_query_count)
    if s.scenario == "server":
        ts.server_target_qps = float(s.target_qps)
        ts.server_target_latency_ns = int(s.latency_bound_ms * 1e6)
    if s.scenario == "offline" and s.expected_qps > 0:
        ts.offline_expected_qps = float(s.expected_qps)
    if s.expected_latency_ms > 0:
        ts.single_stream_expected_latency_ns = int(s.expected_latency_ms * 1e6)
        ts.multi_stream_expected_latency_ns = int(s.expected_latency_ms * 1e6)
    if s.scenario == "multi-stream":
        ts.multi_stream_samples_per_query = int(s.samples_per_query)
    return ts


def run(predict: Callable[[torch.Tensor], torch.Tensor], samples: torch.Tensor, settings: Settings, log_dir: Path,
        max_batch: int = 1, batch_timeout_ms: float = 0.0, stall_s: float = 60.0,
        ) -> tuple[Outcome, dict[int, torch.Tensor]]:
    """Run one LoadGen test of `predict` (a batch of samples [n, C, H, W] -> logits [n, classes]) on
    `samples` (the query sample library, all held in memory: performance_sample_count = len(samples)).
    The logs go to `log_dir`. Returns the outcome and, in accuracy mode, the outputs by sample index."""
    lg = _lg()
    log_dir.mkdir(parents=True, exist_ok=True)
    # SingleStream issues the next query only when the last completes: nothing queues, so the work is
    # done inside issue_query, as MLPerf's single-stream SUTs do. A hand-off to the worker thread there
    # added 0.1-0.4 ms per query (lenet int8 ONNX: p90 0.19 ms served vs 0.06 ms direct).
    inline = settings.scenario == "single-stream" and not settings.accuracy
    sut = _SUT(predict, samples, max(1, max_batch), batch_timeout_ms, stall_s, keep_outputs=settings.accuracy,
               inline=inline)
    n = len(samples)
    lg_sut = lg.ConstructSUT(sut.issue, sut.flush)
    qsl = lg.ConstructQSL(n, n, lambda idx: None, lambda idx: None)
    log = lg.LogSettings()
    out = lg.LogOutputSettings()
    out.outdir = str(log_dir)
    log.log_output = out
    sut.worker.start()
    sut.watchdog.start()
    try:
        lg.StartTestWithLogSettings(lg_sut, qsl, _test_settings(settings), log)
    finally:
        sut.stop.set()
        lg.DestroyQSL(qsl)
        lg.DestroySUT(lg_sut)
    outcome = parse(log_dir, settings.scenario)
    if sut.call_ns:
        outcome = replace(outcome, call_ms_p90=float(np.percentile(np.asarray(sut.call_ns) / 1e6, 90)))
    if sut.error:
        outcome = replace(outcome, valid=False, reason=sut.error, error=sut.error)
    return outcome, sut.outputs


def parse(log_dir: Path, scenario: str) -> Outcome:
    """The Outcome LoadGen wrote to `log_dir`/mlperf_log_detail.txt (`:::MLLOG {json}` lines)."""
    detail: dict = {}
    path = log_dir / "mlperf_log_detail.txt"
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if line.startswith(":::MLLOG"):
            try:
                entry = json.loads(line[len(":::MLLOG"):].strip())
            except json.JSONDecodeError:
                continue
            key = entry.get("key", "")
            if key.startswith("result_") or key.startswith("early_stopping") or key == "num_errors":
                detail[key] = entry.get("value")
    per_query = "per_query_" if scenario == "multi-stream" else ""
    ms = lambda q: float(detail.get(f"result_{q}_percentile_{per_query}latency_ns", math.nan)) / 1e6  # noqa: E731
    if scenario == "offline":
        qps = float(detail.get("result_samples_per_second", math.nan))
    elif scenario == "server":
        qps = float(detail.get("result_completed_samples_per_sec", math.nan))
    elif scenario == "multi-stream":   # queries are issued back to back: one per mean query latency
        mean_ns = float(detail.get("result_mean_query_latency_ns", math.nan))
        qps = 1e9 / mean_ns if mean_ns > 0 else math.nan
    else:
        qps = float(detail.get("result_qps_with_loadgen_overhead", math.nan))
    valid = detail.get("result_validity") == "VALID"
    return Outcome(valid, "" if valid else _why_invalid(detail), ms("50.00"), ms("90.00"), ms("99.00"), qps,
                   int(detail.get("result_query_count", 0) or 0), str(log_dir), detail=detail)


def _why_invalid(detail: dict) -> str:
    if not detail:
        return "LoadGen wrote no result (no mlperf_log_detail.txt)"
    out = []
    if detail.get("result_min_duration_met") is False:
        out.append("minimum duration not met")
    if detail.get("result_min_queries_met") is False:
        out.append("minimum query count not met")
    if detail.get("result_perf_constraints_met") is False:
        out.append("latency bound not met (p99 over it)")
    if detail.get("early_stopping_met") is False:
        es = " ".join(str(detail.get("early_stopping_result", "")).split())
        out.append(f"early stopping not met ({es.lstrip('* ')})" if es else "early stopping not met")
    reason = str(detail.get("result_invalid_reason", "")).strip()
    if reason:
        out.append(reason)
    return "; ".join(out) or "LoadGen judged the run INVALID"
