"""`accelbench recommend`: its options, and the search run from the command line to a one-screen answer."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

from bench.api import UserError
from bench.recommend.request import RECORD, SearchRequest, State, Target

EXIT_OK, EXIT_TARGET_MISSED, EXIT_INTERRUPTED = 0, 1, 130
DEFAULT_BUDGET_MIN = 10.0


def add_parser(sub, parser_class) -> None:
    """The `recommend` subcommand's options, on the CLI's subparsers."""
    r = sub.add_parser("recommend", help="search pipelines under an accuracy budget and a target; name the fastest")
    r.add_argument("--model", metavar="NAME", help="model name or package.module:factory")
    r.add_argument("--data", metavar="SPEC", help="as for run (default digits)")
    r.add_argument("--weights", action="append", default=[], metavar="PATH", help="trained weights, as for run")
    r.add_argument("--input-shape", metavar="CxHxW", help="the model's input (channels x height x width), as for run")
    r.add_argument("--train-epochs", type=int, metavar="N",
                   help="epochs of a model trained here (default: the model's registration), as for run")
    r.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                   help="percentage points of top-1 accuracy you accept to lose against eager (0: eager's outputs only)")
    r.add_argument("--batch-size", type=int, default=None, metavar="B", help="target: latency at batch B (default 1)")
    r.add_argument("--scenario", choices=("server", "offline"),
                   help="target: samples/s served under MLPerf LoadGen (server: with p99 under --latency-bound-ms)")
    r.add_argument("--latency-bound-ms", type=float, metavar="MS", help="server: the p99 bound")
    r.add_argument("--budget-min", type=float, metavar="N",
                   help="wall minutes to spend measuring (default 10; with --resume: a new total for that search)")
    r.add_argument("--technique", action="append", default=[], metavar="NAME",
                   help="search only pipelines made of these techniques (repeatable; default: every one registered)")
    r.add_argument("--max-transforms", type=int, metavar="K", help="transforms per pipeline at most (default 2)")
    r.add_argument("--out", type=Path, default=Path("results/recommend"), help="output folder (default results/recommend)")
    r.add_argument("--resume", type=Path, metavar="OUT", help="finish the search in OUT (its recommend.json)")
    r.add_argument("--timeout", type=float, metavar="S", help="per-cell time-out in seconds (default 600)")
    r.add_argument("--mem-limit", type=float, metavar="MIB", help="per-cell memory limit in MiB (default 8192)")
    r.add_argument("--no-isolate", action="store_true", help="run cells in this process (debugging)")


# What a search is, fixed when it starts: --resume refuses these rather than ignore them (a search that
# changed its model or budget half-way would mix two questions' rows in one answer).
_FIXED_BY_SEARCH = ("model", "data", "weights", "input_shape", "train_epochs", "max_accuracy_drop", "batch_size",
                    "scenario", "latency_bound_ms", "technique", "max_transforms", "timeout", "mem_limit")
_SEARCHED_KINDS = ("transform", "runtime")


def request_of(args: argparse.Namespace) -> tuple[State, Path]:
    """The search state of the command line (a new search, or the one in --resume's folder)."""
    if args.resume is not None:
        given = [n for n in _FIXED_BY_SEARCH if getattr(args, n, None) not in (None, [])]
        if given:
            raise UserError(f"recommend: --resume continues the search recorded in {args.resume}/{RECORD}; it "
                            f"takes only --budget-min, not --{given[0].replace('_', '-')} (start a new search with "
                            f"another --out to change it)")
        state = State.load(args.resume)
        if args.budget_min is not None:   # a search that ran out of time may be given more
            state.request = replace(state.request, budget_s=args.budget_min * 60)
        return state, args.resume
    if not args.model:
        raise UserError("recommend: --model is required (or --resume OUT)")
    if args.max_accuracy_drop is None:
        raise UserError("recommend: --max-accuracy-drop POINTS is required (0: only pipelines keeping eager's outputs)")
    if args.scenario and args.batch_size is not None:
        raise UserError("recommend: give --batch-size or --scenario, not both (a serving scenario sets its own batch)")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"recommend: --batch-size must be >= 1, got {args.batch_size}")
    if (args.out / RECORD).exists():
        raise UserError(f"recommend: {args.out} holds a search already; finish it with --resume {args.out}, "
                        f"or give another --out")
    from bench import api
    kinds = {n: cls.kind for n, cls in api.TECHNIQUES.items()}
    searched = [n for n, kind in kinds.items() if kind in _SEARCHED_KINDS]
    for t in args.technique:
        if t in searched:
            continue
        if t in kinds:
            raise UserError(f"recommend: --technique {t!r} is a {kinds[t]} technique, not a part of an "
                            f"inference pipeline; recommend searches transforms and runtimes: "
                            f"{', '.join(searched)}")
        raise UserError(f"recommend: --technique {t!r} is not a registered technique; choose from "
                        f"{', '.join(searched)} (accelbench list)")
    from bench.running.plan import canonical_model
    target = Target(args.scenario or "inference", args.batch_size or 1, args.latency_bound_ms)
    given = {k: v for k, v in (("data", args.data), ("max_transforms", args.max_transforms),
                                ("timeout_s", args.timeout), ("mem_limit_mb", args.mem_limit)) if v is not None}
    req = SearchRequest(model=canonical_model(args.model), max_accuracy_drop_points=args.max_accuracy_drop,
                        target=target, weights=tuple(args.weights), input_shape=args.input_shape,
                        train_epochs=args.train_epochs,
                        budget_s=(args.budget_min if args.budget_min is not None else DEFAULT_BUDGET_MIN) * 60,
                        techniques=tuple(args.technique), isolate=not args.no_isolate, **given)
    return State(req), args.out


def missed_target(confirmed, screened, serving: str | None, bound_ms: float | None) -> str:
    """For a server target: when no confirmed pipeline (eager included) was served VALID with p99 under
    the bound, one line saying so and naming the closest (lowest p99); "" otherwise."""
    if serving != "server":
        return ""
    rows = [r for r in confirmed.to_dict("records") if r.get("scenario") == "server" and r["status"] == "ok"]
    if any(_true(r.get("loadgen_valid")) and _p99(r) < math.inf and float(r.get("qps") or 0) > 0 for r in rows):
        return ""
    near = min(rows, key=lambda r: _p99(r), default=None)
    bound = f"{bound_ms:g} ms" if bound_ms is not None else "the serving cell's default bound"
    if near is None:
        return (f"no pipeline was served under LoadGen's server scenario (p99 under {bound}); see the rows' "
                f"reasons in the report")
    return (f"no pipeline meets the server target (p99 under {bound}): the closest is {near['pipeline']} "
            f"(p99 {_p99(near):.3g} ms: {near.get('loadgen_reason') or 'INVALID'})")


def nothing_measured(screened, progress, unavailable, techniques: tuple[str, ...]) -> str:
    """When the search has no valid measurement of any candidate beside eager, one line saying why (eager
    itself failed, every setting of the asked techniques cannot run here, every candidate's cell was
    skipped or failed: counts and the first reason, or the budget ran out first); "" otherwise."""
    rows = screened.to_dict("records") if len(screened) else []
    eager = next((r for r in rows if r["pipeline"] == "eager"), None)
    if eager is not None and eager["status"] != "ok":
        return f"eager itself did not run ({eager['status']}: {_reason(eager)}): no pipeline can be judged against it"
    others = [r for r in rows if r["pipeline"] != "eager"]
    if any(r["status"] == "ok" for r in others):
        return ""
    if not others and not progress.unmeasured:
        if techniques:
            why = "; ".join(f"{label}: {reason}" for label, reason in unavailable
                            if label.split(":")[0] in techniques)
            return (f"no candidate pipeline: --technique {', '.join(techniques)} has no setting that runs here"
                    + (f" ({why})" if why else ""))
        return "no candidate pipeline: no registered transform or runtime runs here"
    parts = []
    for status in ("error", "skipped", "mismatch"):
        hit = [r for r in others if r["status"] == status]
        if hit:
            parts.append(f"{len(hit)} {status} (first: {hit[0]['pipeline']}: {_reason(hit[0])})")
    if progress.unmeasured:
        parts.append(f"{len(progress.unmeasured)} not measured ({next(iter(progress.unmeasured.values()))})")
    return f"no candidate pipeline gave a measurement: " + "; ".join(parts)


def _reason(row: dict) -> str:
    r = row.get("reason")
    return str(r) if isinstance(r, str) and r else "no reason recorded; see errors.log"


def _counted(rows) -> str:
    """"7 pipelines (5 ok, 2 error)": a rung's rows by status."""
    statuses = list(rows["status"]) if len(rows) else []
    by = ", ".join(f"{statuses.count(s)} {s}" for s in ("ok", "skipped", "error", "mismatch") if s in statuses)
    return f"{len(statuses)} pipelines" + (f" ({by})" if by else "")


def _true(v) -> bool:
    """A boolean cell (Python, numpy or pandas NA) is true."""
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v) not in ("<NA>", "nan") and bool(v)


def _p99(row: dict) -> float:
    v = row.get("latency_ms_p99")
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.inf
    return math.inf if math.isnan(v) else v


def main(args: argparse.Namespace, log: Callable[[str], None] | None = None) -> int:
    """Run `accelbench recommend`; UserError for bad input (the CLI prints it, exit 2)."""
    from bench import api
    from bench import env as env_mod
    from bench.measure import ceilings
    from bench.measure.allocator import apply_policy
    from bench.records.write import ensure_writable

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    api.load_registries()
    state, out = request_of(args)
    req = state.request
    from bench.recommend.search import run_request
    from bench.running import plan
    plan.build(run_request(req, ["eager"], True))   # an unknown model, bad data or weights: one line now
    ensure_writable(out)
    try:
        apply_policy()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    env = env_mod.detect()
    ceil = ceilings.measure(env.cuda, (0,))
    record = {**env_mod.record(env), **ceil.as_record()}
    state.save(out)
    return run_search(state, out, env, record, ceil, log)


def run_search(state: State, out: Path, env, env_record: dict, ceil, log: Callable[[str], None]) -> int:
    """The search, the choice, its evidence and the reports; the answer printed. Exit code."""
    from bench.recommend import evidence, judge, search
    from bench.reporting import report

    req = state.request
    try:
        progress, screened, confirmed, space_ = search.search(state, out, env, env_record, ceil, log)
    except KeyboardInterrupt:
        print(f"accelbench: interrupted; finished cells are kept; finish with: accelbench recommend --resume {out}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    accuracy_of = {r["pipeline"]: r for r in screened.to_dict("records") if r["status"] == "ok"}
    choice = judge.choose(confirmed, accuracy_of if req.target.serving else {}, req.max_accuracy_drop_points,
                          req.target.serving)
    if choice.row is None and not [p for p in progress.confirmed if p != "eager"]:
        ahead = search.survivors(screened, req)
        if ahead and any(p in progress.unmeasured for p in ahead):
            choice = judge.Choice(None, f"the budget ran out before the confirming rung; the screen's fastest within "
                                        f"the accuracy budget was {ahead[0]} (short timing: not a verdict); give "
                                        f"more with --resume {out} --budget-min N")
    missed = (nothing_measured(screened, progress, space_.unavailable, req.techniques)
              or missed_target(confirmed, screened, req.target.serving, req.target.latency_bound_ms))
    pts = evidence.points(screened, confirmed, req)
    doc = evidence.write(out, req, choice, pts, progress, space_.unavailable, missed)
    for folder in (out / search.SCREEN, out):
        if (folder / "records.csv").is_file():
            report.write(folder)
    if missed:
        print(f"accelbench: {missed}", file=sys.stderr)
        return EXIT_TARGET_MISSED
    sp = doc["speedup"]
    ci = f" [{doc['ci_low']:.2f}-{doc['ci_high']:.2f}]" if doc.get("ci_low") is not None else ""
    print(f"recommended for {req.model} ({req.target.words()}, accuracy drop <= {req.max_accuracy_drop_points:g} "
          f"points): {doc['pipeline']}" + (f", {sp:.2f}x{ci} vs eager, accuracy drop {doc['accuracy_drop_points']:+.2f} "
                                           f"points" if sp is not None and doc['pipeline'] != 'eager' else "")
          + f" ({doc['why']})")
    if doc["command"]:
        print(f"reproduce: {doc['command']}")
    print(f"screened {_counted(screened)}, confirmed {_counted(confirmed)}, "
          f"{len(progress.unmeasured)} left unmeasured, in {progress.wall_s / 60:.1f} min; evidence: "
          + ", ".join(str(p) for p in (out / evidence.TABLE, out / evidence.CHART, out / "report.html",
                                       out / search.SCREEN / "report.html") if p.is_file()))
    return EXIT_OK
