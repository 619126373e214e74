"""The `accelbench` command: list, run, recommend, report, compare, history, calibrate, train-node."""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bench.api import UserError
from bench.terminal import inert

if TYPE_CHECKING:
    from bench.running.plan import RunRequest
    from bench.running.runner import RunConfig

EXIT_OK, EXIT_FAILED_CELLS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# A full disk (or quota, or file size limit) under --out ends a run with exit 1 and its rows kept
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
SCHEDULES = ("cosine", "step", "constant")   # bench.training.loop.SCHEDULES (not imported: `--help` stays fast)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _positive_float(text: str) -> float:
    v = _float(text)
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return v


def _positive_seconds(text: str) -> float:
    v = _float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    if v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text}")
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as argparse does, but no usage dump
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="accelbench", description="Benchmark acceleration techniques on ConvNets.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    lst = sub.add_parser("list", help="models and techniques, and whether each can run here")
    lst.add_argument("--markdown", action="store_true",
                     help="print the technique table of README.md (generated from the registry)")

    r = sub.add_parser("run", help="run the benchmark matrix")
    r.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="model name or package.module:factory (repeatable; default: all, or lenet with --quick)")
    r.add_argument("--pipeline", action="append", dest="pipelines", metavar="SPEC",
                   help="e.g. eager, fusion@jit, prune:amount=0.5@onnx:ep=cpu (repeatable; default: every technique)")
    r.add_argument("--batch-size", action="append", dest="batch_sizes", type=_positive_int, metavar="N",
                   help="repeatable; default 1 16 64 256 (1 64 with --quick)")
    r.add_argument("--scenario", action="append", metavar="NAME",
                   choices=("inference", "training", "single-stream", "multi-stream", "server", "offline"),
                   help="inference or training: which default pipelines to run (default inference; each --pipeline "
                        "says its own); single-stream, multi-stream, server, offline: serve each inference pipeline "
                        "and eager under MLPerf LoadGen (repeatable; alone they run no paired-block cells)")
    r.add_argument("--latency-bound-ms", type=float, metavar="MS",
                   help="server scenario: the p99 bound (default 10x eager's median direct call at the cell's batch, "
                        ">= 10 ms)")
    r.add_argument("--loadgen-official", action="store_true",
                   help="LoadGen's own rules (600 s per run, its query counts) instead of short test overrides")
    r.add_argument("--data", default="digits",
                   help="digits (default), mnist:DIR, imagefolder:DIR, cifar10:DIR, npz:FILE, "
                        "package.module:factory or synthetic; options ;mean=..;std=..")
    r.add_argument("--weights", action="append", default=[], metavar="[MODEL=]PATH",
                   help="trained weights: a state dict (torch.save) or .safetensors file; no training then")
    r.add_argument("--input-shape", action="append", default=[], metavar="[MODEL=]CxHxW",
                   help="the model's input (channels x height x width) when it does not declare it")
    r.add_argument("--output", action="append", default=[], metavar="[MODEL=]INDEX_OR_KEY",
                   help="which element of a tuple/dict output holds the logits")
    r.add_argument("--train-epochs", type=_positive_int, metavar="N",
                   help="epochs of training a model that has no --weights (default: the model's registered "
                        "epochs, else 15); part of the checkpoint key")
    r.add_argument("--train-lr", type=_positive_float, metavar="LR",
                   help="Adam learning rate of that training (default: the model's registered lr, else 0.003)")
    r.add_argument("--train-schedule", choices=SCHEDULES,
                   help="learning rate over the epochs: cosine (default), step (x0.1 at 1/2 and 3/4) or constant")
    r.add_argument("--eval-limit", type=_positive_int, metavar="N",
                   help="evaluate accuracy on a fixed stratified subset of N test images")
    r.add_argument("--quick", action="store_true", help="lenet, batch 1 and 64, short timing: a few minutes")
    r.add_argument("--out", type=Path, default=Path("results/latest"), help="output folder (default results/latest)")
    r.add_argument("--resume", type=Path, metavar="OUT", help="finish the missing cells of the run in OUT")
    r.add_argument("--timeout", type=_float, default=600.0, help="per-cell time-out in seconds (default 600)")
    r.add_argument("--mem-limit", type=_float, default=8192.0, help="per-cell memory limit in MiB (0: none)")
    r.add_argument("--min-time", type=_float, help="minimum timed seconds per cell (default 1.0, 0.4 with --quick)")
    r.add_argument("--threads", action="append", dest="threads", type=_positive_int, metavar="N",
                   help="torch threads per cell, repeatable: a dimension of the matrix, since a verdict can "
                        "flip with it (default: torch's choice for inference, 1 for training)")
    r.add_argument("--no-isolate", action="store_true", help="run cells in this process (debugging; no crash guard)")
    r.add_argument("--no-report", action="store_true", help="do not write report.md/html and charts at the end")
    r.add_argument("--shard", metavar="K/N", help="run only the K-th of N deterministic parts of the matrix "
                                                  "(whole model/batch size/threads groups; the N parts make the matrix)")
    r.add_argument("--db", metavar="URL|PATH", help="history database the run is added to (default: "
                                                    "$ACCELBENCH_HISTORY_DB, else history.sqlite beside --out's folder)")
    r.add_argument("--no-history", action="store_true", help="do not add this run to the history database")
    r.add_argument("--no-explain", action="store_true", help="do not profile each cell after its timing (no "
                                                             "explanation column, no explain.jsonl)")

    from bench.reporting import explain as explain_cmd
    explain_cmd.add_parser(sub)

    from bench.recommend.command import add_parser as add_recommend
    add_recommend(sub, _Parser)

    rep = sub.add_parser("report", help="write report.md, report.html and charts for a results folder or JSON")
    rep.add_argument("sources", type=Path, nargs="+", metavar="SOURCE",
                     help="a results folder, a records.csv or a pytest-benchmark JSON; several (shards, machines) "
                          "are merged into one report with a machine column (then --out is required)")
    rep.add_argument("--out", type=Path, help="where to write (default: the results folder)")

    t = sub.add_parser("train-node", help="this host's part of data/model-parallel training across machines")
    t.add_argument("--host", required=True, metavar="ADDR", help="this host's address on the network the hosts share")
    t.add_argument("--nic", required=True, metavar="IFACE", help="the network interface holding --host (e.g. eth0)")
    t.add_argument("--rendezvous", required=True, metavar="ADDR:PORT",
                   help="address and port of the host that holds the rendezvous (one of the hosts; port default 29500)")
    t.add_argument("--nnodes", required=True, type=_positive_int, metavar="N", help="how many hosts take part")
    t.add_argument("--nproc-per-node", type=_positive_int, default=1, metavar="K",
                   help="ranks on each host (default 1)")
    t.add_argument("--join-timeout", type=_positive_seconds, default=300.0, metavar="S",
                   help="seconds to wait for the other hosts before giving up, naming who came (default 300)")
    from bench.training.distributed import add_job_arguments
    add_job_arguments(t)

    c = sub.add_parser("compare", help="gate regressions: BASELINE vs CURRENT")
    c.add_argument("baseline", type=Path)
    c.add_argument("current", type=Path)
    from bench.reporting.thresholds import DEFAULT_THRESHOLDS, MEMORY_FLOOR_MB
    gate = DEFAULT_THRESHOLDS.as_options()
    c.add_argument("--max-slowdown", default=gate["max_slowdown"],
                   help="a speedup lower than the baseline's by more than this is a regression when the two "
                        "intervals are apart too (default %(default)s)")
    c.add_argument("--max-accuracy-drop", default=gate["max_accuracy_drop"],
                   help="percentage points (default %(default)s)")
    c.add_argument("--max-memory-growth", default=gate["max_memory_growth"],
                   help=f"relative, with a floor in MiB: 20%%+64MiB (default %(default)s, floor {MEMORY_FLOOR_MB:g} MiB)")
    c.add_argument("--no-calibration", action="store_true",
                   help="ignore the per-cell thresholds `accelbench calibrate` wrote into BASELINE/gate.json")

    h = sub.add_parser("history", help="speedup, accuracy and memory of each cell over the stored runs; steps")
    h.add_argument("--db", metavar="URL|PATH", help="history database (default: $ACCELBENCH_HISTORY_DB, else "
                                                    "results/history.sqlite)")
    h.add_argument("--model", help="only this model")
    h.add_argument("--pipeline", help="only this pipeline")
    h.add_argument("--last", type=_positive_int, default=20, metavar="N", help="runs shown per cell (default 20)")
    h.add_argument("--html", type=Path, metavar="OUT", help="also write a trend page (charts in OUT's stem-charts/)")
    hs = h.add_subparsers(dest="history_cmd", parser_class=_Parser)
    ha = hs.add_parser("add", help="add finished runs to the history: results folders, records.csv or "
                                   "pytest-benchmark JSON files")
    ha.add_argument("sources", type=Path, nargs="+", metavar="SOURCE")
    ha.add_argument("--db", metavar="URL|PATH", dest="add_db", help="history database (default as for history)")

    cal = sub.add_parser("calibrate", help="fit per-cell gate thresholds to this machine's noise (A/A runs)")
    cal.add_argument("baseline", type=Path, nargs="?", default=Path("results/baseline-ci"),
                     help="baseline folder holding gate.json (default results/baseline-ci)")
    cal.add_argument("--runs", type=_positive_int, default=10, help="A/A runs of the gate's command to fit (default 10)")
    cal.add_argument("--holdout", type=int, default=0, metavar="M",
                     help="M further A/A runs, not fitted, to measure the false-alarm and detection rates")
    cal.add_argument("--false-alarm-rate", default="1%", help="target share of cells falsely flagged per run (default 1%%)")
    cal.add_argument("--from", dest="from_runs", type=Path, nargs="+", metavar="DIR",
                     help="fit these finished A/A runs of the gate's command instead of running it")
    cal.add_argument("--holdout-from", type=Path, nargs="+", metavar="DIR", help="finished held-out A/A runs")
    cal.add_argument("--keep", type=Path, metavar="DIR", help="keep the A/A runs in DIR (default: a temporary folder)")
    cal.add_argument("--dry-run", action="store_true", help="print the thresholds; do not write gate.json")
    return p


def technique_table() -> str:
    """The Markdown table of every registered technique: name, kind, what it does (the first line of
    its docstring) and its parameters. README.md embeds exactly this; a test keeps them equal."""
    from bench import api
    from bench.pipeline import describe_params

    lines = ["| name | kind | what it does | parameters |", "|---|---|---|---|"]
    for name, cls in api.TECHNIQUES.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        cells = [f"`{name}`", cls.kind, doc, describe_params(cls)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def cmd_list(markdown: bool = False) -> int:
    from bench import api
    from bench.env import detect
    from bench.pipeline import describe_params

    if markdown:
        print(technique_table(), end="")
        return EXIT_OK
    env = detect()
    print("models:")
    for name in api.MODELS.names():
        s = api.model_spec(name)
        doc = (s.factory.__doc__ or "").strip().splitlines()[0] if s.factory.__doc__ else ""
        print(inert(f"  {name:<14} input {'x'.join(map(str, s.input_shape)):<8} {doc}"))
    print("techniques:")
    for name, cls in api.TECHNIQUES.items():
        try:
            why = cls().unavailable(env)
        except Exception as exc:  # noqa: BLE001 - a technique needing parameters, say
            why = f"cannot check ({exc})"
        state = "runs here" if not why else f"not here: {why}"
        print(inert(f"  {name:<14} {cls.kind:<9} {state}"))
        print(inert(f"  {'':<14} params: {describe_params(cls)}"))
    return EXIT_OK


def run_request(args: argparse.Namespace) -> "RunRequest":
    """`accelbench run`'s command line as a run request (checked and resolved by bench.running.plan)."""
    from bench.running.plan import RunRequest
    from bench.serving.loadgen import SCENARIOS as SERVING

    named = list(dict.fromkeys(args.scenario or []))
    plain = [n for n in named if n not in SERVING]
    serving = tuple(n for n in named if n in SERVING)
    return RunRequest(models=args.models, pipelines=args.pipelines, batch_sizes=args.batch_sizes,
                      scenario=plain[0] if len(plain) == 1 else None, serving=serving,
                      serving_only=bool(serving) and not plain, latency_bound_ms=args.latency_bound_ms,
                      loadgen_official=args.loadgen_official, data=args.data, weights=args.weights, input_shapes=args.input_shape,
                      outputs=args.output, eval_limit=args.eval_limit, quick=args.quick, min_time_s=args.min_time,
                      threads=args.threads, shard=args.shard, resume=args.resume, train_epochs=args.train_epochs,
                      train_lr=args.train_lr, train_schedule=args.train_schedule, no_history=args.no_history,
                      no_explain=args.no_explain)


def _build_run_config(args: argparse.Namespace) -> "RunConfig":
    from bench.running import plan
    from bench.running.runner import RunConfig

    planned = plan.build(run_request(args))
    cfg = RunConfig(out=args.resume if args.resume is not None else args.out, cells=planned.cells,
                    timeout_s=args.timeout, mem_limit_mb=args.mem_limit, isolate=not args.no_isolate,
                    resume=args.resume is not None, argv=tuple(sys.argv), matrix=planned.record)
    for note in planned.notes():   # after every check of the command line: a refused command prints its one line only
        print(inert(f"accelbench: {note}"), file=sys.stderr)
    return cfg


def cmd_run(args) -> int:
    from bench import env as env_mod
    from bench.measure import ceilings
    from bench.running import runner
    from dataclasses import replace

    cfg = _build_run_config(args)
    from bench.records.write import ensure_writable
    ensure_writable(cfg.out)  # before minutes of training, not after
    db = None
    # A --resume finishes the run in OUT as it was started: one started with --no-history stays out of it.
    if not (args.no_history or (cfg.matrix is not None and cfg.matrix.no_history)):
        from bench.history import store
        db = args.db or store.default_db(cfg.out)
        store.connect(db).dispose()   # a bad --db is refused now, not after the run
    from bench.measure.allocator import apply_policy
    try:
        apply_policy()   # this process too: --no-isolate cells and the matmul peak run here
    except ValueError as exc:
        raise UserError(str(exc)) from None
    env = env_mod.detect()
    ceil = ceilings.measure(env.cuda, tuple({c.threads for c in cfg.cells}))
    peak = ceil.cpu_matmul_gflops
    cells = tuple(replace(c, **ceil.cell_fields(c.threads)) for c in cfg.cells)
    cfg = replace(cfg, cells=cells)
    record = {**env_mod.record(env), **ceil.as_record()}
    gpu = (f"; CUDA: {', '.join(f'{k} {v:,.0f}' for k, v in ceil.cuda_matmul_gflops)} GFLOP/s, "
           f"launch floor {ceil.cuda_launch_floor_ms * 1e3:.1f} us" if ceil.cuda_matmul_gflops else "")
    if cfg.isolate:
        runner.start_worker_server()   # before the header: see its docstring
    print(inert(f"accelbench: {len(cfg.cells)} cells -> {cfg.out}/records.csv (matmul peak {peak:.1f} GFLOP/s{gpu})"),
          file=sys.stderr, flush=True)
    try:   # a SIGTERM stops it like Ctrl-C (main installs the handler): workers killed, rows kept
        counts = runner.run(cfg, env, record)
        print(inert(f"accelbench: {counts.get('ok', 0)} ok ({counts.get('invalid', 0)} of all rows marked invalid), "
                    f"{counts.get('mismatch', 0)} mismatch, {counts.get('skipped', 0)} skipped, "
                    f"{counts.get('error', 0)} error -> {cfg.out}/records.csv"), file=sys.stderr)
        if not args.no_report:
            _report(cfg.out, None)
    except KeyboardInterrupt:
        print(inert(f"accelbench: interrupted; finished rows are in {cfg.out}/records.csv; "
                    f"finish with: accelbench run --resume {cfg.out}"), file=sys.stderr)
        return _leaving_model_threads(cfg, EXIT_INTERRUPTED)
    except OSError as exc:
        if exc.errno not in OUT_OF_SPACE:
            raise
        # Every row is fsynced as written and rewrites are atomic: what records.csv holds is whole.
        where = f" ({Path(exc.filename).name})" if exc.filename else ""
        print(inert(f"accelbench: {cfg.out}: {exc.strerror}{where}; "
                    f"{_rows_kept(cfg.out / 'records.csv')} rows kept in {cfg.out}/records.csv; free space, then "
                    f"finish with: accelbench run --resume {cfg.out}"), file=sys.stderr)
        return _leaving_model_threads(cfg, EXIT_FAILED_CELLS)
    if db is not None:
        _add_to_history(cfg.out, db)
    return _leaving_model_threads(cfg, EXIT_FAILED_CELLS if counts.get("error") or counts.get("mismatch") else EXIT_OK)


def _leaving_model_threads(cfg: "RunConfig", status: int) -> int:
    """`status`; with --no-isolate, a model's threads still running do not keep this process alive."""
    if not cfg.isolate:
        from bench.running.reaper import exit_without_waiting_for_threads
        left = exit_without_waiting_for_threads(status)
        if left:
            print(f"accelbench: {len(left)} thread(s) a model started still run ({', '.join(left[:5])}); "
                  f"exiting without waiting for them", file=sys.stderr)
    return status


def _rows_kept(records: Path) -> int:
    """The whole rows of a records.csv (a torn last line is not one); 0 when it cannot be read."""
    import csv
    import io
    try:
        with open(records, newline="", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return 0
    rows = list(csv.reader(io.StringIO(text[: text.rfind("\n") + 1])))
    return max(len(rows) - 1, 0)   # less the header


def _report(source: Path, out: Path | None) -> None:
    try:
        from bench.reporting import report
    except ImportError:
        return
    paths = report.write(source, out)
    for p in paths:
        print(inert(f"accelbench: wrote {p}"), file=sys.stderr)


def _add_to_history(out: Path, db: str) -> None:
    """Append the finished run to the history; a failure says how to add it later (records.csv keeps it)."""
    from bench.history import trends
    try:
        trends.add(db, [out], log=lambda m: print(inert(f"accelbench: {m}"), file=sys.stderr))
    except Exception as exc:  # noqa: BLE001 - the run's results are safe in records.csv whatever happened here
        print(inert(f"accelbench: the run was not added to the history {db} ({type(exc).__name__}: {exc}); add it "
                    f"with: accelbench history add {out} --db {db}"), file=sys.stderr)


def cmd_report(args) -> int:
    from bench.reporting import report
    if len(args.sources) > 1:
        if args.out is None:
            raise UserError("report: several sources are merged into one report; say where with --out DIR")
        paths = report.write_merged(args.sources, args.out)
    else:
        paths = report.write(args.sources[0], args.out)
    for p in paths:
        print(inert(p))
    return EXIT_OK


def train_node_plan(args: argparse.Namespace) -> tuple:
    """`accelbench train-node`'s command line checked: (the node, its ranks' arguments, the output
    folder). Every refusal (UserError) comes here, before a rank starts or a host is waited for."""
    from bench import api
    from bench.training import distributed, multihost

    try:
        node = multihost.NodeConfig(host=args.host, nic=args.nic, rendezvous=args.rendezvous, nnodes=args.nnodes,
                                    nproc_per_node=args.nproc_per_node, join_timeout_s=args.join_timeout)
    except ValueError as exc:
        raise UserError(f"train-node: {exc}") from None
    args.out = args.out.expanduser().absolute()
    distributed.job_from_args(args)   # a bad strategy or value now, not in every rank of every host
    from bench.running.limits import check_threads
    check_threads([args.threads])     # torch with 100,000 threads crashes each rank
    api.model_spec(args.model)
    worker_args = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in distributed.JOB_OPTIONS]
    return node, worker_args, args.out


def cmd_train_node(args) -> int:
    from bench.training import multihost

    node, worker_args, out = train_node_plan(args)
    return multihost.run_node(node, worker_args, out)


def cmd_compare(args) -> int:
    from bench.reporting import compare
    return compare.main(args)


def main(argv: list[str] | None = None) -> int:
    """Run the command `argv` names; its exit code. A SIGTERM (kill, a CI time-out) stops any command
    as Ctrl-C does: `finally` blocks run, so a report's staging folder (.charts-*) and a run's workers
    are cleaned up and finished rows kept."""
    import signal
    import threading

    def _stop(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():   # handlers live in the main thread only
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        if args.cmd in ("list", "run", "recommend", "train-node"):
            import os
            from bench.api import load_registries
            load_registries()
            # After the registries (a foreign `models` package must not shadow ours): the working
            # folder on the import path, as `python -m` has it, so `--model mynets:build` and
            # `--data mydata:load` find the user's modules there.
            if os.getcwd() not in sys.path:
                sys.path.append(os.getcwd())
        if args.cmd == "list":
            return cmd_list(args.markdown)
        if args.cmd == "run":
            return cmd_run(args)
        if args.cmd == "report":
            return cmd_report(args)
        if args.cmd == "recommend":
            from bench.recommend import command
            return command.main(args)
        if args.cmd == "compare":
            return cmd_compare(args)
        if args.cmd == "train-node":
            return cmd_train_node(args)
        if args.cmd == "history":
            from bench.history import trends
            return trends.main(args)
        if args.cmd == "explain":
            from bench.reporting import explain as explain_cmd
            return explain_cmd.main(args)
        if args.cmd == "calibrate":
            from bench.reporting import calibrate
            return calibrate.main(args)
    except UserError as exc:
        msg = str(exc)
        print(inert(msg if msg.startswith("accelbench") else f"accelbench: error: {msg}"), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("accelbench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
