"""`accelbench history`: each cell's speedup, accuracy and memory over the stored runs, its steps, and a trend page.

A cell is (machine, model, pipeline, scenario, batch size, threads): speedups are compared only
within one machine. Steps come from `bench.history.steps` on the cell's valid ok rows; each names the
commits and the environment difference of the runs on its two sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.api import UserError
from bench.env import fingerprint, fingerprint_diff
from bench.history import steps as steps_mod
from bench.history.store import read_records, read_runs
from bench.records.columns import KEY_COLUMNS
from bench.records.read import marked_invalid
from bench.records.write import atomic_write
from bench.terminal import inert

DASH = "–"
CELL_COLUMNS = ["machine", *KEY_COLUMNS]


@dataclass(frozen=True)
class StepReport:
    """A step of one cell, with what changed between the runs on its two sides."""

    cell: str
    step: steps_mod.Step
    before: pd.Series        # the last run before the step (a row of `runs`)
    after: pd.Series         # the step's first run
    env_changes: list[str]   # fingerprint differences between the two runs

    def line(self) -> str:
        env = "; ".join(self.env_changes) or "same environment"
        return (f"STEP {self.cell}: speedup {self.step.before:.2f}x -> {self.step.after:.2f}x "
                f"({self.step.shift:+.1%}, {self.step.sigmas:.1f} noise sd) from run {self.after['date']} "
                f"commit {_short(self.after['git_commit'])} (previous run {self.before['date']} commit "
                f"{_short(self.before['git_commit'])}); environment: {env}")


@dataclass(frozen=True)
class Cell:
    """One cell's history: its rows (one per run, oldest first), the steps found in them, and for each
    row what changed in the environment since the cell's previous run (nothing for the first)."""

    label: str
    rows: pd.DataFrame
    steps: list[StepReport]
    env_changes: list[list[str]]


class EnvChanges:
    """What changed in the environment between two stored runs, each pair worked out once. Runs whose
    fingerprint hashes (the `runs` table) are equal ran in the same environment: no diff to compute."""

    def __init__(self, runs: pd.DataFrame) -> None:
        self._runs = runs.set_index("id")
        self._seen: dict[tuple, list[str]] = {}

    def between(self, before_pk, after_pk) -> list[str]:
        key = (before_pk, after_pk)
        if key not in self._seen:
            a, b = self._runs.loc[before_pk], self._runs.loc[after_pk]
            same = a["fingerprint"] and a["fingerprint"] == b["fingerprint"]
            self._seen[key] = [] if same else fingerprint_diff(_fp_of(a["env"]), _fp_of(b["env"]))
        return self._seen[key]


def _short(commit) -> str:
    text = str(commit or "")
    return (text[:10] + ("-dirty" if text.endswith("-dirty") else "")) if text else "unknown"


def cell_label(key: tuple, several_machines: bool) -> str:
    machine, model, pipeline, scenario, bs, threads = key
    text = (f"{model} {pipeline} bs={bs}" + (f" threads={threads}" if threads else "")
            + ("" if scenario == "inference" else f" ({scenario})"))
    return f"{text} [{machine}]" if several_machines else text


def _usable(rows: pd.DataFrame) -> pd.Series:
    # not marked invalid: valid or not judged
    return ((rows["status"] == "ok") & rows["valid"].fillna(True).astype(bool) & rows["speedup"].notna()
            & (rows["speedup"] > 0))


def cells(engine, model: str | None = None, pipeline: str | None = None) -> tuple[list[Cell], pd.DataFrame]:
    """Every cell in the history (optionally of one model / pipeline) with its steps, and the runs table."""
    recs, runs = read_records(engine), read_runs(engine)
    if model:
        recs = recs[recs["model"] == model]
    if pipeline:
        recs = recs[recs["pipeline"] == pipeline]
    by_pk = runs.set_index("id")
    changes = EnvChanges(runs)
    several = recs["machine"].nunique() > 1
    out = []
    for key, g in recs.groupby(CELL_COLUMNS, sort=True):
        g = g.drop_duplicates("run_pk", keep="last")   # a resumed run may hold a cell twice
        label = cell_label(key, several)
        good = g[_usable(g)]
        found = steps_mod.detect(good["speedup"].to_numpy(float), good["speedup_ci_low"].to_numpy(float),
                                 good["speedup_ci_high"].to_numpy(float))
        reports = []
        for s in found:
            before, after = by_pk.loc[good["run_pk"].iloc[s.index - 1]], by_pk.loc[good["run_pk"].iloc[s.index]]
            reports.append(StepReport(label, s, before, after, changes.between(before.name, after.name)))
        pks = list(g["run_pk"])
        out.append(Cell(label, g.reset_index(drop=True), reports,
                        [[]] + [changes.between(a, b) for a, b in zip(pks, pks[1:])]))
    return out, runs


def _fp_of(env: dict | None) -> dict:
    return fingerprint(env or {})


def _fmt_speedup(r: pd.Series) -> str:
    if not np.isfinite(r["speedup"]):
        return DASH
    ci = (f" [{r['speedup_ci_low']:.2f}-{r['speedup_ci_high']:.2f}]"
          if np.isfinite(r["speedup_ci_low"]) and np.isfinite(r["speedup_ci_high"]) else "")
    return f"{r['speedup']:.2f}x{ci}" + (" invalid" if marked_invalid(r["valid"]) else "")


def _fmt(v, spec: str, scale: float = 1.0) -> str:
    return format(v * scale, spec) if v is not None and np.isfinite(v) else DASH


def table_rows(cell: Cell, runs: pd.DataFrame) -> list[list[str]]:
    """One line per run of the cell: date, commit, status, speedup [95% CI], accuracy, peak memory,
    and what changed in the environment since the cell's previous run."""
    out = []
    for (_, r), diff in zip(cell.rows.iterrows(), cell.env_changes):
        changed = "; ".join(diff)
        acc = r["accuracy"] if np.isfinite(r["accuracy"]) else r["final_accuracy"]
        status = r["status"] if r["status"] != "ok" else ""
        out.append([str(r["run_date"])[:19].replace("T", " "), _short(r["git_commit"]), status or "ok",
                    _fmt_speedup(r) if not status else DASH, _fmt(acc, ".2f", 100), _fmt(r["peak_mem_mb"], ".1f"),
                    changed])
    return out


HEADERS = ["Run date (UTC)", "Commit", "Status", "Speedup vs eager [95% CI]", "Accuracy (%)", "Peak memory (MiB)",
           "Environment change"]


def format_text(cell_list: list[Cell], runs: pd.DataFrame, last: int) -> str:
    """The plain-text history: per cell, its last `last` runs, then every step found."""
    lines = [f"history: {len(runs)} run{'s' * (len(runs) != 1)}, {len(cell_list)} cells"]
    for c in cell_list:
        rows = table_rows(c, runs)[-last:]
        lines.append(f"\n{c.label}" + (f" (last {last} of {len(c.rows)} runs)" if len(c.rows) > last else ""))
        widths = [max(len(x[i]) for x in [HEADERS] + rows) for i in range(len(HEADERS) - 1)]
        for row in [HEADERS] + rows:
            lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[-1])
    found = [s for c in cell_list for s in c.steps]
    lines.append(f"\nsteps: {len(found)} (PELT change points beyond each cell's noise; see bench/history/steps.py)")
    lines += [s.line() for s in found]
    return "\n".join(lines)


# --- the trend page -------------------------------------------------------------------------------

def chart(cell: Cell, runs: pd.DataFrame, path: Path) -> Path:
    """The cell's speedup over its runs (x: run order, labelled with date and commit) with its 95% band,
    invalid runs hollow, environment changes as grey dashed lines and steps as red lines."""
    from bench.reporting.chartkit import plt, save

    rows = cell.rows
    x = np.arange(len(rows))
    s = rows["speedup"].to_numpy(float)
    lo, hi = rows["speedup_ci_low"].to_numpy(float), rows["speedup_ci_high"].to_numpy(float)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ok = _usable(rows).to_numpy()
    ax.fill_between(x, np.where(ok, lo, np.nan), np.where(ok, hi, np.nan), color="tab:blue", alpha=0.2,
                    label="95% interval", step=None)
    ax.plot(x[ok], s[ok], "o-", color="tab:blue", ms=4, lw=1.2, label="speedup vs eager")
    bad = ~ok & np.isfinite(s)
    if bad.any():
        ax.plot(x[bad], s[bad], "o", mfc="none", color="tab:orange", ms=6, label="invalid run (not used)")
    for i, diff in enumerate(cell.env_changes):
        if diff:
            ax.axvline(i - 0.5, color="0.45", ls="--", lw=1)
            text = "; ".join(d.split(":")[0] + " " + d.split(": ", 1)[1].split(" -> ")[-1] for d in diff)
            ax.annotate(text[:48], xy=(i - 0.5, 0.97), xycoords=("data", "axes fraction"), xytext=(-3, 0),
                        textcoords="offset points", fontsize=7, color="0.3", rotation=90, va="top", ha="right",
                        bbox={"fc": "white", "ec": "none", "alpha": 0.85, "pad": 1})
    good_pks = list(rows.loc[ok, "run_pk"])
    for st in cell.steps:
        i = int(rows.index[rows["run_pk"] == good_pks[st.step.index]][0])
        ax.axvline(i - 0.5, color="crimson", lw=1.6)
        ax.annotate(f"step {st.step.shift:+.0%} from {_short(st.after['git_commit'])[:7]}", xy=(i - 0.5, 0.04),
                    xycoords=("data", "axes fraction"), xytext=(4, 0), textcoords="offset points", fontsize=8,
                    color="crimson")
    labels = [f"{str(r['run_date'])[5:16].replace('T', ' ')}\n{_short(r['git_commit'])[:7]}" for _, r in rows.iterrows()]
    every = max(1, math.ceil(len(rows) / 12))
    ax.set_xticks(x[::every], labels[::every], fontsize=7)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.axhline(1.0, color="0.6", lw=0.8)
    # from just under the lowest figure (or 1x, whichever is lower): the noise stays visible, and so does 1x
    ax.set_ylim(bottom=0.9 * np.nanmin(np.concatenate([lo[np.isfinite(lo)], s[np.isfinite(s)], [1.0]])))
    ax.set_ylabel("speedup vs eager (x)")
    ax.set_title(f"{cell.label}: speedup over runs", fontsize=10)
    ax.legend(loc="lower left", fontsize=7, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


def write_html(cell_list: list[Cell], runs: pd.DataFrame, out: Path, last: int) -> list[Path]:
    """The trend page `out` (self-contained: charts inlined) and its charts in `<out stem>-charts/`."""
    from bench.reporting import html
    from bench.reporting.blocks import Block, Bullets, Chart, Note, Paragraph, Section, Table
    from bench.reporting.chartkit import slug

    charts_dir = out.with_name(out.stem + "-charts")
    charts_dir.mkdir(parents=True, exist_ok=True)
    found = [s for c in cell_list for s in c.steps]
    blocks: list[Block] = [
        Paragraph(f"{len(runs)} runs, {len(cell_list)} cells, {len(found)} step{'s' * (len(found) != 1)} found."),
        Note("Each chart: one cell's speedup against eager (measured in the same run) over the stored runs, "
             "with its 95% interval; grey dashed lines: the environment changed (torch, CPU, ...) before that "
             "run; red lines: a step, the first run of a lasting change beyond the cell's noise "
             "(PELT change points, Killick et al. 2012)."),
    ]
    if found:
        blocks.append(Section("Steps", [Bullets([s.line() for s in found])]))
    paths = []
    for c in cell_list:
        if not _usable(c.rows).any():
            continue
        p = chart(c, runs, charts_dir / f"trend_{slug(c.label)}.png")
        paths.append(p)
        blocks.append(Section(c.label, [Chart(p, f"{c.label}: speedup over runs"),
                                        Table(HEADERS, table_rows(c, runs)[-last:])]))
    atomic_write(out, html.page(Section("accelbench history", blocks), "accelbench history"))
    return [out] + paths


# --- the command ----------------------------------------------------------------------------------

def add(db: str, sources: list[Path], log) -> list:
    """Add finished runs (results folders, records.csv or pytest-benchmark JSON files) to the history
    `db`; each in its own transaction. Returns the StoredRun of each. Raises UserError for a source that
    is not a run."""
    import json

    from bench.history import store
    from bench.records.read import load

    loaded = []
    for src in sources:   # every source read before anything is written: a bad one adds nothing
        df, env = load(Path(src))
        if df.empty:
            raise UserError(f"{src}: holds no rows to add (a run that stopped before its first cell)")
        run_json = (Path(src) if Path(src).is_dir() else Path(src).parent) / "run.json"
        try:
            matrix = json.loads(run_json.read_text()) if run_json.is_file() and Path(src).suffix != ".json" else None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{run_json}: corrupt ({exc}); it identifies the run in the history: restore it or "
                            f"move it aside") from None
        loaded.append((src, df, env, matrix))
    engine = store.connect(db)
    try:
        stored = []
        for src, df, env, matrix in loaded:
            s = store.append(engine, df, env, matrix=matrix, source=str(Path(src).absolute()))
            log(f"{'replaced' if s.replaced else 'added'} run {s.uid} ({s.rows} rows) from {src} in the history {db}")
            stored.append(s)
        return stored
    finally:
        engine.dispose()


def main(args) -> int:
    """`accelbench history [add SOURCE...]`: print (and with --html write) the trends, or add runs."""
    import sys

    from bench.history import store

    if args.history_cmd == "add":
        add(args.add_db or args.db or store.default_db(), args.sources, log=lambda m: print(inert(m)))
        return 0
    db = args.db or store.default_db()
    engine = store.connect(db, create=False)
    try:
        cell_list, runs = cells(engine, args.model, args.pipeline)
    finally:
        engine.dispose()
    if not cell_list:
        print(inert(f"history {db}: no stored rows" + (" for that model/pipeline" if args.model or args.pipeline else "")))
        return 0
    print(inert(format_text(cell_list, runs, args.last), newlines=True))
    if args.html:
        for p in write_html(cell_list, runs, args.html, args.last):
            print(inert(f"accelbench: wrote {p}"), file=sys.stderr)
    return 0
