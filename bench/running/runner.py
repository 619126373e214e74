"""Run the matrix models x pipelines x batch sizes, one isolated cell at a time, appending each row as it lands."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil

from bench.api import Env
from bench.records import read, write
from bench.records.columns import cell_key
from bench.records.outfiles import open_output
from bench.records.reasons import Failure, Why
from bench.running import reaper, validity
from bench.running.cell import CellSpec
from bench.running.plan import MatrixRecord
from bench.running.result import CellResult, timing_samples
from bench.terminal import inert

POLL_S = 0.05
MAX_WORKER_DRAWS = 3   # fresh workers a cell may start in before one is measured whatever its start


@dataclass(frozen=True)
class RunConfig:
    """One `accelbench run`: the matrix, where it goes, and the per-cell guards."""

    out: Path
    cells: tuple[CellSpec, ...]
    timeout_s: float = 600.0
    mem_limit_mb: float = 8192.0
    isolate: bool = True
    resume: bool = False
    argv: tuple[str, ...] = ()
    matrix: MatrixRecord | None = None   # what run.json keeps, so that --resume plans `cells` again
    # Measure a disturbed cell once more at the end. A search's short screening rung turns it off: its
    # rows only rank candidates, and the survivors are measured again at full length anyway.
    remeasure: bool = True

    def __post_init__(self) -> None:
        from bench.running.limits import check_guards
        check_guards(self.timeout_s, self.mem_limit_mb)


# --- one isolated cell --------------------------------------------------------------------------

_ctx: Any = None


def _mp_context():
    """A fork server that has torch and the harness imported: each cell then starts in ~50 ms
    instead of ~2 s, yet shares no state (threads, allocator, CUDA) with this process."""
    global _ctx
    if _ctx is None:
        _ctx = mp.get_context("forkserver")
        # Everything every cell imports anyway (scikit-learn for the data, dynamo for FLOP counting
        # and exporters): imported once here instead of ~7 s in every cell.
        _ctx.set_forkserver_preload(["torch", "torch._dynamo", "torch.utils.flop_counter", "sklearn.datasets",
                                     "sklearn.model_selection", "bench.data", "bench.measure.metrics", "bench.running.cell",
                                     "bench.running.worker", "techniques.eager"])
        _start_forkserver_deaf_to_ctrl_c()
    return _ctx


def start_worker_server() -> None:
    """Start the workers' fork server now. A front end calls it before it tells the user the run has
    begun: the server is started with SIGINT ignored in this process for a few milliseconds (below),
    and a Ctrl-C that landed in them would be lost."""
    _mp_context()


def _stop_worker_server() -> None:
    """Kill the fork server and any child it has: for a Process.start() that did not return (a Ctrl-C
    while the server was still importing, or while the child's pid was on its way back). The server
    would otherwise fork the worker after we are gone, and the worker, which ignores SIGINT, would run
    its cell (a training: minutes) into the terminal. multiprocessing starts a new server when the
    next worker needs one."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid is None:
        return
    try:
        server = psutil.Process(pid)
        doomed = server.children(recursive=True) + [server]
    except psutil.Error:
        doomed = []
    for p in doomed:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(doomed[:-1], timeout=5)
    # multiprocessing's own stop reaps the server and forgets it, so the next worker starts a new one
    # (reaped here instead, its pid would be waited on again there, and fail)
    forkserver._forkserver._stop()


def _start_forkserver_deaf_to_ctrl_c() -> None:
    """The fork server shares this terminal's process group, and it ignores SIGINT only once its
    preload imports are done: a Ctrl-C in those first seconds printed its KeyboardInterrupt
    traceback over our one-line message. A signal ignored at exec stays ignored in the new
    interpreter, so start it with SIGINT ignored; this process still owns Ctrl-C."""
    import threading
    from multiprocessing import forkserver

    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal() is main-thread only; the server then starts lazily as before
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _rss_mb(procs: list[psutil.Process]) -> float:
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def run_isolated(spec: CellSpec, env: Env, timeout_s: float, mem_limit_mb: float) -> CellResult:
    """Run one cell in a fresh worker; crashes, hangs and memory blow-ups become error results."""
    return _in_worker(spec, False, env, timeout_s, mem_limit_mb, spec.pipeline.params())


def call_isolated(fn: Callable, args: tuple, env: Env, timeout_s: float, mem_limit_mb: float) -> Any:
    """`fn(*args, env)` in a fresh worker under the same guards as a cell: its return value, or a
    CellResult with status error (exception, crash, time-out, memory limit). `fn` must be importable
    by name and its return value must pickle."""
    return _in_worker((fn, args), True, env, timeout_s, mem_limit_mb, ())


def _in_worker(payload: Any, call: bool, env: Env, timeout_s: float, mem_limit_mb: float, params) -> Any:
    import pickle

    from bench.api import process_setup
    from bench.running.worker import env_to_dict, main

    ctx = _mp_context()
    recv, send = ctx.Pipe(duplex=False)
    # The worker's temporary files (its cell's scratch folder, exports, libraries' own temp files,
    # distributed ranks' files) all go under a folder this process owns and removes: a worker that
    # is killed (time-out, memory limit, crash, Ctrl-C) cannot clean up after itself.
    scratch_root = tempfile.mkdtemp(prefix="accelbench-worker-")
    proc = ctx.Process(target=main, args=(send, pickle.dumps(payload), env_to_dict(env), mem_limit_mb, list(sys.path),
                                          process_setup(), call, scratch_root), daemon=False)
    survivors: list[int] = []
    tree: reaper.Descendants | None = None
    interrupted = False
    try:
        # Started inside the try: a Ctrl-C that lands between start() and the loop must still
        # reach the finally below, or the worker outlives the run and writes into its terminal.
        proc.start()
        send.close()
        tree = reaper.Descendants(proc.pid)
        result = _awaited(proc, recv, tree, timeout_s, mem_limit_mb, params)
    except KeyboardInterrupt:
        # the run ends here: the fork server goes too (still importing, it would not notice we are
        # gone until it is done, and would fork the worker we asked for first)
        interrupted = True
        raise
    finally:
        if proc.pid is None or interrupted:
            _stop_worker_server()
        if proc.pid is not None:
            # Whatever the outcome (a row, a crash, a time-out, Ctrl-C): every process the cell started
            # dies with it, the worker last.
            try:
                root = psutil.Process(proc.pid) if proc.is_alive() else None
            except psutil.Error:
                root = None
            survivors = (tree or reaper.Descendants(proc.pid)).end(root)
            proc.join(5)
        recv.close()
        shutil.rmtree(scratch_root, ignore_errors=True)
    if survivors and isinstance(result, CellResult):
        result = replace(result, notes=result.notes + (reaper.survivors_note(survivors),))
    return result


def _awaited(proc, recv, tree: "reaper.Descendants", timeout_s: float, mem_limit_mb: float, params) -> Any:
    """The worker's result, or the error result of its crash, time-out or memory blow-up; `tree`
    remembers the worker's descendants as they come (a crashed worker's orphans are found only so)."""
    deadline = time.monotonic() + timeout_s
    next_check = 0.0
    while True:
        if recv.poll(POLL_S):
            try:
                row = recv.recv()
            except EOFError:  # died without a word
                proc.join(5)
                return CellResult.error(_death_reason(proc.exitcode), params=params, failure=Failure.CRASH)
            proc.join(10)   # the worker ends its own tree and exits once its row is sent
            return row
        if not proc.is_alive():
            if recv.poll(0):
                continue
            return CellResult.error(_death_reason(proc.exitcode), params=params, failure=Failure.CRASH)
        now = time.monotonic()
        if now > deadline:
            return CellResult.error(f"timed out after {timeout_s:g} s (cell time-out; --timeout)", params=params,
                                    failure=Failure.TIME_OUT)
        if now >= next_check:
            next_check = now + 0.1
            kids = tree.scan()
            if mem_limit_mb:
                try:
                    rss = _rss_mb([psutil.Process(proc.pid)] + kids)
                except psutil.Error:
                    rss = 0.0
                if rss > mem_limit_mb:
                    return CellResult.error(f"out of memory: resident memory {rss:.0f} MiB passed the cell limit "
                                            f"of {mem_limit_mb:.0f} MiB (--mem-limit)", params=params,
                                            failure=Failure.OUT_OF_MEMORY)


def _death_reason(code: int | None) -> str:
    if code is None:
        return "worker vanished without an exit code"
    if code < 0:
        return f"worker crashed: killed by {_signal_name(code)}"
    return f"worker exited with code {code} before reporting a result"


def run_inline(spec: CellSpec, env: Env) -> CellResult:
    """Same as run_isolated, in this process (for debugging with --no-isolate): no crash protection."""
    import traceback

    from bench.running.cell import run
    from bench.running.worker import failed
    with reaper.in_this_process() as survivors:   # processes the cell starts die with it here too
        try:
            result = run(spec, env)
        except Exception as exc:  # noqa: BLE001
            result = failed(exc, traceback.format_exc(), params=spec.pipeline.params())
    if survivors:
        result = replace(result, notes=result.notes + (reaper.survivors_note(survivors),))
    return result


# --- the matrix -----------------------------------------------------------------------------------

def _progress(i: int, n: int, spec: CellSpec, judged: "_Judged", wall_s: float) -> str:
    row = judged.row
    status = row.get("status")
    head = f"[{i}/{n}] {spec.model} {spec.pipeline.spec} bs={spec.batch_size}" + (
        f" threads={spec.threads}" if spec.threads else "")
    if spec.serving:
        head += f" {spec.serving}"
    if status == "ok" and spec.serving:
        if row.get("loadgen_valid") is not True:
            return f"{head}: INVALID: {row.get('loadgen_reason', '')} ({wall_s:.1f} s)"
        p99 = "" if spec.serving == "offline" else f", p99 {row['latency_ms_p99']:.3g} ms"   # offline: one query
        return (f"{head}: ok {row['qps']:.4g}/s vs eager {row['baseline_qps']:.4g}/s "
                f"({row['speedup']:.2f}x){p99} ({wall_s:.1f} s)")
    if status == "ok" and row.get("latency_ms_p50") not in (None, ""):
        sp = row.get("speedup")
        invalid = f"; INVALID: {row['validity']}" if judged.reasons else ""
        return (f"{head}: ok {row['latency_ms_p50']:.3f} ms p50, {sp:.2f}x "
                f"[{row['speedup_ci_low']:.2f}-{row['speedup_ci_high']:.2f}] vs eager ({wall_s:.1f} s){invalid}")
    if status == "ok":
        return f"{head}: ok ({wall_s:.1f} s)"
    return f"{head}: {status}: {row.get('reason', '')} ({wall_s:.1f} s)"


def run(cfg: RunConfig, env: Env, env_record: dict, log: Callable[[str], None] | None = None) -> dict[str, int]:
    """Run every cell not already in OUT/records.csv; return counts by status."""
    log = log or (lambda m: print(inert(m), file=sys.stderr, flush=True))
    out = cfg.out
    write.ensure_writable(out)
    records = out / "records.csv"
    counts = {"ok": 0, "mismatch": 0, "skipped": 0, "error": 0, "invalid": 0}
    with write.OutputLock(out):
        done: set = set()
        prior: list[dict] = []
        run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        if cfg.resume and records.exists():
            prior = read.read_csv(records).to_dict("records")
            done = {cell_key(r) for r in prior}
            run_id = prior[0]["run_id"] if prior else run_id
            write.repair(records)  # drop a torn last line before appending
        elif records.exists():
            os.replace(records, out / "records.prev.csv")
            log(f"previous {records} kept as records.prev.csv")
            for stale in ("samples.jsonl", "errors.log", "explain.jsonl"):
                if (out / stale).exists():
                    os.replace(out / stale, out / stale.replace(".", ".prev.", 1))
        write.atomic_write(out / "env.json", json.dumps({**env_record, "run_id": run_id}, indent=2) + "\n")
        matrix = cfg.matrix.to_json() if cfg.matrix is not None else {}
        write.atomic_write(out / "run.json", json.dumps({**matrix, "timeout_s": cfg.timeout_s,
                                                          "mem_limit_mb": cfg.mem_limit_mb}, indent=2) + "\n")
        todo = eager_first([c for c in cfg.cells if c.key() not in done])
        if done:
            log(f"resuming {out}: {len(cfg.cells) - len(todo)} cells already done, {len(todo)} to run")
        # Every eager measurement of each group (model, batch size, threads) so far: the reference an
        # in-cell baseline is judged against is their median, not one eager cell (bench.running.validity).
        prior_ms = _eager_groups(prior)
        group_ms = {k: list(v) for k, v in prior_ms.items()}
        weights, broken = prepare_models(todo, cfg, env, log)
        for model, failure in broken.items():
            if failure.traceback:
                with open_output(out / "errors.log", "a") as f:
                    f.write(f"=== model {model} (contract check / training)\n{failure.traceback}\n")
        writer = write.RecordWriter(records)
        written: list[tuple[CellSpec, _Judged]] = []

        def once(spec: CellSpec, reference_ms: float) -> CellResult:
            if spec.model in broken:   # the model itself failed: its cells are not run
                return CellResult.error(broken[spec.model].reason, params=spec.pipeline.params())
            if not cfg.isolate:        # one process for every cell: no fresh worker to draw
                return run_inline(spec, env)
            if spec.serving:   # LoadGen's logs stay with the run; an interrupted try's are cleared first
                logs = out / "loadgen" / loadgen_folder(spec)
                if logs.is_symlink():   # a planted link: LoadGen would write wherever it points
                    logs.unlink()
                shutil.rmtree(logs, ignore_errors=True)
                spec = replace(spec, loadgen_dir=str(logs))
            return run_isolated(replace(spec, reference_ms=reference_ms), env, cfg.timeout_s, cfg.mem_limit_mb)

        def reference_ms(spec: CellSpec) -> float:
            ref = validity.reference(group_ms.get((spec.model, spec.batch_size, spec.threads), []))
            return ref.ms if ref else math.nan

        try:
            for i, (spec, result, wall_s) in enumerate(drawn(todo, once, reference_ms, log), 1):
                key = (spec.model, spec.batch_size, spec.threads)
                row = _judged_row(result, spec, group_ms.get(key, []), run_id, weights)
                group_ms.setdefault(key, []).extend(validity.eager_measurements(row.row, not row.own))
                row = row.with_wall(wall_s)
                writer.write(row.row)
                written.append((spec, row))
                _side_files(out, spec, result)
                log(_progress(i, len(todo), spec, row, row.row["wall_s"]))
        finally:
            writer.close()
        # Each row was judged against its group's eager measurements so far. Now that every group is
        # complete, each is judged again against the final medians, and a cell whose only faults are
        # disturbances is measured once more: now, minutes later, not right away, since a machine
        # slowed for a while (a neighbour on the host, a burst of kernel work) is often still slow a
        # second later, and the immediate second try then only repeats the first.
        final = _judged_again(written, prior_ms)
        redo = [i for i, (_, f) in enumerate(final) if f.reasons and all(w.kind.disturbed for w in f.reasons)
                and cfg.remeasure]
        for i in redo:
            spec, first = final[i]
            log(f"[re-measure] {spec.model} {spec.pipeline.spec} bs={spec.batch_size}"
                f"{f' threads={spec.threads}' if spec.threads else ''}: {first.row['validity']}")
        for n, (spec, result, wall_s) in enumerate(drawn([final[i][0] for i in redo], once, reference_ms, log), 1):
            i = next(i for i in redo if final[i][0] is spec)
            first = final[i][1]
            result = replace(result, notes=result.notes + ("re-measured once after the run's other cells: the first "
                                                           f"measurement was disturbed ({first.row['validity']})",))
            row = _judged_row(result, spec, group_ms.get(eager_key(first.row), []), run_id, weights)
            final[i] = (spec, row.with_wall(first.row["wall_s"] + wall_s))
            _side_files(out, spec, result, remeasured=True)
            log(_progress(n, len(redo), spec, final[i][1], wall_s))
        # The reference of the rows as they now stand: a re-measured cell's new figures replace its first.
        final = _judged_again(final, prior_ms)
        changed = [f for (_, w), (_, f) in zip(written, final) if w.reasons != f.reasons]
        for f in changed:
            log(f"{f.row['model']} {f.row['pipeline']} bs={f.row['batch_size']}: against the final reference "
                f"{'INVALID: ' + f.row['validity'] if f.reasons else 'valid'}")
        if final != written:
            write.replace_rows(records, keep=len(prior), rows=[f.row for _, f in final])
        for status in counts:
            counts[status] = sum(f.row["status"] == status for _, f in final)
        counts["invalid"] = sum(bool(f.reasons) for _, f in final)
    return counts


def loadgen_folder(spec: CellSpec) -> str:
    """The folder name of a serving cell's LoadGen logs: model, pipeline, scenario, batch, threads."""
    text = f"{Path(spec.model).name}-{spec.pipeline.spec}-{spec.serving}-bs{spec.batch_size}" + (
        f"-t{spec.threads}" if spec.threads else "")
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in text)


def drawn(cells: list[CellSpec], once: Callable[[CellSpec, float], CellResult], reference_ms: Callable[[CellSpec], float],
          log: Callable[[str], None]) -> Iterator[tuple[CellSpec, CellResult, float]]:
    """(cell, result, wall seconds) for each of `cells`, each run by `once(cell, reference_ms)` in a fresh
    worker. A worker whose eager baseline, timed before any technique is prepared, is off the group's
    reference (an OFF_AT_START result) stops there, and its cell goes to the back of the queue, to be
    tried again later, at most MAX_WORKER_DRAWS workers in all; the last is measured whatever its start.

    Why later and not at once: this kind of machine runs eager slower for periods of seconds to a
    minute, with no steal time and no load the guest can see (lenet batch 1 eager at 0.27-0.29 ms in
    fresh processes, then 0.33-0.37 ms in each of the next four, ~10 s). A pair timed inside such a
    period has a baseline its group's reference rejects, and the speedup it gives is not the one the
    machine gives otherwise (eager and candidate are not slowed alike). A worker costs its start and
    one eager timing; the result's notes and `worker_draws` say how many were started and why."""
    queue: deque[tuple[CellSpec, tuple[str, ...], float]] = deque((c, (), 0.0) for c in cells)
    while queue:
        spec, tries, wall_s = queue.popleft()
        last = len(tries) + 1 >= MAX_WORKER_DRAWS
        t0 = time.perf_counter()
        result = once(spec, math.nan if last else reference_ms(spec))
        wall_s += time.perf_counter() - t0
        if result.failure is Failure.OFF_AT_START:
            log(f"[later] {spec.model} {spec.pipeline.spec} bs={spec.batch_size}: {result.reason}; tried again "
                f"after the cells queued behind it")
            queue.append((spec, tries + (result.reason,), wall_s))
            continue
        if tries:
            result = replace(result, notes=result.notes + (
                f"measured in worker {len(tries) + 1}: " + "; ".join(
                    f"worker {i} gave way before preparing ({why})" for i, why in enumerate(tries, 1)),))
        if result.status in ("ok", "mismatch"):
            result = replace(result, worker_draws=len(tries) + 1)
        yield spec, result, wall_s


def prepare_models(cells: list[CellSpec], cfg: RunConfig, env: Env,
                   log: Callable[[str], None]) -> tuple[dict[str, str], dict[str, CellResult]]:
    """Check each model's contract and make its baseline weights ready (trained, or loaded from its
    --weights file), each model in its own worker under the cell time-out and memory limit.
    Returns (model -> where its weights come from, model -> the error result of a model that failed)."""
    from bench.running.modelcheck import ready

    weights: dict[str, str] = {}
    broken: dict[str, CellResult] = {}
    for model in dict.fromkeys(c.model for c in cells):
        mine = [c for c in cells if c.model == model]
        train = any(c.scenario == "inference" for c in mine)
        if cfg.isolate:
            got = call_isolated(ready, (model, mine[0].data, train), env, cfg.timeout_s, cfg.mem_limit_mb)
        else:
            try:
                with reaper.in_this_process():
                    got = ready(model, mine[0].data, train)
            except Exception as exc:  # noqa: BLE001
                import traceback

                from bench.running.worker import failed
                got = failed(exc, traceback.format_exc())
        if isinstance(got, CellResult):
            # a UserError's message is for the user as it stands; any other failure keeps its type
            reason = got.message if got.failure is Failure.USER_ERROR else got.reason
            if not reason.startswith(f"model {model}"):
                reason = f"model {model}: {reason}"
            broken[model] = replace(got, reason=reason[:500])   # the traceback (the user's line) goes to errors.log
            log(f"{reason}; its {len(mine)} cell(s) become error rows")
        else:
            weights[model] = got["weights"]
            for msg in got.get("said", ()):
                log(f"accelbench: {msg}")
    return weights, broken


def eager_key(row: dict) -> tuple[str, int, int]:
    model, _, _, batch_size, threads = cell_key(row)
    return (model, batch_size, threads)


def eager_first(cells: list[CellSpec]) -> list[CellSpec]:
    """Each model's eager cells before its other cells (otherwise in the given order), so every other
    cell's in-cell baseline has the eager cell's measurements in its group's reference from the start."""
    order = {m: i for i, m in enumerate(dict.fromkeys(c.model for c in cells))}
    return sorted(cells, key=lambda c: (order[c.model], c.pipeline.spec != "eager"))


@dataclass(frozen=True)
class _Judged:
    """A row as judged, with the cell's own reasons (interval, determinism), which a later judgement
    against the group's reference starts from again, and all its reasons."""

    row: dict
    own: tuple[Why, ...]
    reasons: tuple[Why, ...]

    def again(self, ref: validity.Reference | None) -> "_Judged":
        row, reasons = validity.judge(self.row, self.own, ref)
        return _Judged(row, self.own, reasons)

    def with_wall(self, wall_s: float) -> "_Judged":
        return replace(self, row={**self.row, "wall_s": wall_s})


def _eager_groups(prior: list[dict]) -> dict[tuple[str, int, int], list[float]]:
    """The eager measurements of a resumed run's rows, by group (rows marked invalid add none)."""
    group: dict[tuple[str, int, int], list[float]] = {}
    for r in prior:
        group.setdefault(eager_key(r), []).extend(validity.eager_measurements(r, not read.marked_invalid(r["valid"])))
    return group


def _judged_again(rows: list[tuple[CellSpec, "_Judged"]],
                  prior_ms: dict[tuple[str, int, int], list[float]]) -> list[tuple[CellSpec, "_Judged"]]:
    """Every row judged against the median of its whole group: all eager measurements of `rows` (those
    valid on their own terms) and of a resumed run's rows (`prior_ms`, from _eager_groups)."""
    group = {k: list(v) for k, v in prior_ms.items()}
    for _, j in rows:
        group.setdefault(eager_key(j.row), []).extend(validity.eager_measurements(j.row, not j.own))
    return [(spec, j.again(validity.reference(group.get(eager_key(j.row), [])))) for spec, j in rows]


def _side_files(out: Path, spec: CellSpec, result: CellResult, remeasured: bool = False) -> None:
    """A cell's raw timing samples (samples.jsonl; a re-measured cell's second line is marked and
    replaces the first) and its traceback (errors.log)."""
    if result.timing is not None:
        write.write_jsonl(out / "samples.jsonl", [{"model": spec.model, "pipeline": spec.pipeline.spec,
                                                    "batch_size": spec.batch_size, "threads": spec.threads,
                                                    **({"remeasured": True} if remeasured else {}),
                                                    **timing_samples(result.timing)}])
    if result.explanation is not None and result.explanation.detail:
        write.write_jsonl(out / "explain.jsonl", [{"model": spec.model, "pipeline": spec.pipeline.spec,
                                                    "batch_size": spec.batch_size, "threads": spec.threads,
                                                    **({"remeasured": True} if remeasured else {}),
                                                    "explanation": result.explanation.sentence,
                                                    **result.explanation.detail}])
    if result.traceback:
        with open_output(out / "errors.log", "a") as f:
            f.write(f"=== {spec.model} {spec.pipeline.spec} bs={spec.batch_size}\n{result.traceback}\n")


def _judged_row(result: CellResult, spec: CellSpec, group: list[float], run_id: str,
                weights: dict[str, str]) -> _Judged:
    """The row of `result`, judged against the median of its group's eager measurements so far and its own."""
    row = result.to_row(spec, run_id=run_id, wall_s=math.nan, weights=weights.get(spec.model, ""))
    ref = validity.reference(group + validity.eager_measurements(row, not result.invalid))
    return _Judged(row, result.invalid, result.invalid).again(ref)

