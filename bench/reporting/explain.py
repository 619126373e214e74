"""`accelbench explain RUN_DIR`: one row's (or every slower and no-gain row's) time per module, eager beside candidate.

Reads the run's explain.jsonl (written by the runner from each cell's profiles, bench.running.explain)
and records.csv (for the verdicts), prints a table per row and draws a chart per row (PNG, time per
module, eager beside the candidate) into RUN_DIR/explain/.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from bench.api import UserError
from bench.records.read import records

EXPLAIN_FILE = "explain.jsonl"
WANTED_VERDICTS = ("slower", "no gain")   # without --pipeline, the rows a user asks "why" about


def load(run_dir: Path) -> list[dict[str, Any]]:
    """The explain.jsonl records of a run folder, a re-measured cell's last record winning.
    UserError (one line) when the folder or its file is missing or unreadable."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    path = run_dir / EXPLAIN_FILE
    if not path.is_file() and not (run_dir / "records.csv").is_file():
        raise UserError(f"{run_dir}: not a run folder (no records.csv); give the --out folder of accelbench run")
    if not path.is_file():
        raise UserError(f"{path}: no such file; this run was made with --no-explain or before explanations existed")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; it is not an explain.jsonl written by accelbench run") from None
    out: dict[tuple, dict[str, Any]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = _checked(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:{n}: not an explain record ({type(exc).__name__}: {exc})") from None
        out[_key(doc)] = doc
    return list(out.values())


def _number(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} is {type(v).__name__}, not a number")
    return float(v)


def _checked(doc: Any) -> dict[str, Any]:
    """`doc` when it has the fields and types the runner writes (the rest of this module reads them
    unchecked); TypeError/ValueError/KeyError naming the first field that is not."""
    if not isinstance(doc, dict):
        raise TypeError(f"a JSON {type(doc).__name__}, not an object")
    for name in ("model", "pipeline"):
        if not isinstance(doc[name], str):
            raise TypeError(f"{name} is {type(doc[name]).__name__}, not text")
    for name, least, optional in (("batch_size", 1, False), ("threads", 0, True)):
        v = doc.get(name) if optional else doc[name]
        if (v is not None or not optional) and (isinstance(v, bool) or not isinstance(v, int) or v < least):
            raise ValueError(f"{name} is {v!r}, not a whole number >= {least}")
    for name in ("baseline_ms_p50", "candidate_ms_p50"):
        _number(doc[name], name)
    if "explained_fraction" in doc and doc["explained_fraction"] is not None:
        _number(doc["explained_fraction"], "explained_fraction")
    if not isinstance(doc.get("explanation", ""), str):
        raise TypeError("explanation is not text")
    for side in ("eager", "candidate"):
        entries = doc[side]
        if not isinstance(entries, list):
            raise TypeError(f"{side} is {type(entries).__name__}, not a list of [module, op, seconds]")
        for e in entries:
            if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[1], str)):
                raise TypeError(f"an entry of {side} is {e!r}, not [module, op, seconds]")
            _number(e[2], f"an entry's seconds in {side}")
    for name in ("flops_eager", "flops_candidate"):
        flops = doc.get(name)
        if flops is None:
            continue
        if not isinstance(flops, dict):
            raise TypeError(f"{name} is {type(flops).__name__}, not an object of module: FLOPs")
        for v in flops.values():
            _number(v, f"a value of {name}")
    return doc


def module_table(doc: dict[str, Any]) -> list[tuple[str, float, float, float, float]]:
    """(module, eager ms, candidate ms, eager MFLOP, candidate MFLOP) per module of one record, times as
    shares of each side's measured median (bench.running.explain.scaled), largest eager first; modules
    the candidate lacks are credited to their nearest ancestor eager has."""
    from bench.measure.opprofile import OUTSIDE
    from bench.running.explain import by_module, scaled
    eager = scaled([tuple(e) for e in doc["eager"]], doc["baseline_ms_p50"] / 1e3)
    cand = scaled([tuple(e) for e in doc["candidate"]], doc["candidate_ms_p50"] / 1e3)
    e_mod = by_module(eager)
    c_mod = by_module(cand, set(e_mod))
    fe, fc = doc.get("flops_eager") or {}, doc.get("flops_candidate") or {}   # each module's own, conv+bn paired
    names = sorted(set(e_mod) | set(c_mod), key=lambda m: (m == OUTSIDE, -e_mod.get(m, 0.0), m))
    return [(m, e_mod.get(m, 0.0) * 1e3, c_mod.get(m, 0.0) * 1e3, fe.get(m, math.nan) / 1e6, fc.get(m, math.nan) / 1e6)
            for m in names]


def render(doc: dict[str, Any], verdict: str = "") -> str:
    """The text table of one record, headed by the row's identity, verdict and explanation."""
    head = (f"{doc['model']} {doc['pipeline']} bs={doc['batch_size']}" + (f" [{verdict}]" if verdict else "")
            + f": measured eager {doc['baseline_ms_p50']:.3g} ms, candidate {doc['candidate_ms_p50']:.3g} ms; "
            f"profile covers {doc.get('explained_fraction', math.nan):.2f} of the candidate's latency")
    lines = [head, f"  {doc.get('explanation', '')}",
             f"  {'module':<34} {'eager ms':>9} {'cand ms':>9} {'ratio':>7} {'eager MFLOP':>11} {'cand MFLOP':>10}"]
    for m, e, c, fe, fc in module_table(doc):
        ratio = f"{e / c:.2f}x" if c > 0 and e > 0 else "-"
        lines.append(f"  {m[:34]:<34} {e:>9.3f} {c:>9.3f} {ratio:>7} {_num(fe):>11} {_num(fc):>10}")
    from bench.running.explain import by_category, scaled
    cats = by_category(scaled([tuple(e) for e in doc["candidate"]], doc["candidate_ms_p50"] / 1e3))
    lines.append("  candidate by kind: " + ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in sorted(cats.items())))
    return "\n".join(lines)


def _num(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.3g}"


def chart(doc: dict[str, Any], path: Path) -> Path:
    """A horizontal bar chart of time per module (ms), eager beside the candidate; written atomically."""
    from bench.reporting.chartkit import plt, save

    rows = module_table(doc)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.6))
    y = list(range(len(rows)))
    ax.barh([i + 0.2 for i in y], [r[1] for r in rows], height=0.4, label="eager", color="#999999")
    ax.barh([i - 0.2 for i in y], [r[2] for r in rows], height=0.4, label=doc["pipeline"], color="#1f77b4")
    ax.set_yticks(y)
    ax.set_yticklabels([r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time per call (ms; profile shares of each side's measured median)")
    ax.set_title(f"{doc['model']} bs={doc['batch_size']}: where the time went", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save(fig, path)


def chart_path(run_dir: Path, doc: dict[str, Any]) -> Path:
    from bench.reporting.chartkit import slug
    name = f"explain_{slug(doc['model'])}_{slug(doc['pipeline'])}_bs{doc['batch_size']}"
    if doc.get("threads"):
        name += f"_t{doc['threads']}"
    # explain/, not charts/: a later `accelbench report` replaces charts/ with its own charts
    return Path(run_dir) / "explain" / f"{name}.png"


def select(docs: list[dict[str, Any]], verdicts: dict[tuple, str], model: str | None, pipeline: str | None,
           batch_size: int | None) -> list[dict[str, Any]]:
    """The records asked for; without --pipeline, only rows judged slower or no gain."""
    out = [d for d in docs if (model is None or d["model"] == model) and (pipeline is None or d["pipeline"] == pipeline)
           and (batch_size is None or int(d["batch_size"]) == batch_size)]
    if pipeline is None:
        out = [d for d in out if verdicts.get(_key(d)) in WANTED_VERDICTS]
    return out


def _key(d: dict[str, Any]) -> tuple:
    return (d["model"], d["pipeline"], int(d["batch_size"]), int(d.get("threads") or 0))


def verdicts_of(run_dir: Path) -> dict[tuple, str]:
    """{(model, pipeline, batch size, threads): speed verdict} of the run's inference rows."""
    from bench.records.read import load as load_rows
    from bench.reporting.verdicts import speed_verdict

    df, _ = load_rows(Path(run_dir))
    out = {}
    for row in records(df):
        threads = row.get("threads")
        key = (row["model"], row["pipeline"], int(row["batch_size"]),
               int(threads) if isinstance(threads, (int, float)) and threads == threads else 0)
        out[key] = speed_verdict(row)
    return out


def main(args: argparse.Namespace) -> int:
    """Print the table of each selected row and write its chart; exit 2 (UserError) when none matches."""
    run_dir = Path(args.run_dir)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"explain: --batch-size must be >= 1, got {args.batch_size}")
    docs = load(run_dir)
    verdicts = verdicts_of(run_dir)
    chosen = select(docs, verdicts, args.model, args.pipeline, args.batch_size)
    if not chosen and args.pipeline is None and args.model is None and args.batch_size is None:
        print(f"{run_dir}: no explained row was judged slower or no gain ({len(docs)} explained rows); give "
              f"--model, --pipeline and --batch-size to see one")
        return 0
    if not chosen:
        asked = ", ".join(f"{k} {v}" for k, v in (("model", args.model), ("pipeline", args.pipeline),
                                                  ("batch size", args.batch_size)) if v is not None)
        raise UserError(f"{run_dir}: no explained row with {asked}"
                        + ("" if args.pipeline else " judged slower or no gain")
                        + f" ({len(docs)} explained rows; give --model, --pipeline and --batch-size)")
    for doc in chosen:
        print(render(doc, verdicts.get(_key(doc), "")))
        print(f"  chart: {chart(doc, chart_path(run_dir, doc))}\n")
    return 0


def add_parser(sub: Any) -> None:
    """The `explain` subcommand's arguments."""
    e = sub.add_parser("explain", help="where the time went, per module, eager beside the candidate, for one "
                                       "row or every slower / no-gain row of a run")
    e.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    e.add_argument("--model")
    e.add_argument("--pipeline")
    e.add_argument("--batch-size", type=int)


def records_for_report(source: Path) -> dict[tuple, dict[str, Any]]:
    """{(model, pipeline, batch size, threads): explain record} of a results folder; {} when it has none
    (a run made with --no-explain, a records.csv or a pytest-benchmark JSON given alone)."""
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    if not (folder / EXPLAIN_FILE).is_file():
        return {}
    try:
        return {_key(d): d for d in load(folder)}
    except UserError:   # a damaged side file costs the report its charts, not the report itself
        return {}


def report_blocks(ok: Any, explained: dict[tuple, dict[str, Any]], folder: Path, title: str,
                  model: str) -> list[Any]:
    """The report's section (under `title`) for one batch size's ok rows (a DataFrame with speed_verdict):
    a table of every row's explanation and explained fraction, then a chart per row judged slower or no
    gain; none when no row but eager's ran."""
    from bench.reporting.blocks import Chart, Section, Table

    rows, charts = [], []
    for r in records(ok):
        if r["pipeline"] == "eager":
            continue
        text = r.get("explanation")
        fraction = r.get("explained_fraction")
        rows.append((r["pipeline"], r.get("speed_verdict") or "–",
                     text if isinstance(text, str) and text else "not profiled (run made with --no-explain or "
                                                                 "before explanations existed)",
                     f"{fraction:.2f}" if isinstance(fraction, float) and fraction == fraction else "–"))
        threads = r.get("threads")
        key = (r["model"], r["pipeline"], int(r["batch_size"]),
               int(threads) if isinstance(threads, (int, float)) and threads == threads else 0)
        if r.get("speed_verdict") in WANTED_VERDICTS and key in explained:
            doc = explained[key]
            # drawn into the report's staging folder, which the report moves into charts/
            path = chart(doc, Path(folder) / chart_path(folder, doc).name)
            charts.append(Chart(path, f"{r['pipeline']} ({r['speed_verdict']}): time per module, eager beside it"))
    if not rows:
        return []
    return [Section(title, [Table(("Pipeline", "Speed verdict", "Why (from both sides' profiles)",
                                   "Explained fraction"), rows), *charts], model)]
