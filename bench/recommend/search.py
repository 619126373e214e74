"""The search under a time budget: a short screen of every candidate, cheap ones first, then a confirming rung for the survivors (successive halving)."""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import pandas as pd

from bench.api import Env
from bench.recommend import judge
from bench.recommend.candidates import Candidate, Space, space
from bench.recommend.request import SearchRequest, State
from bench.reporting.verdicts import SPEEDUP_MARGIN, prepare
from bench.running import plan, runner
from bench.running.plan import RunRequest

SCREEN = "screen"                 # the first rung's run folder, inside the search's folder
SCREEN_MIN_TIME_S = 0.2           # timed seconds per screening cell (a full cell times 1 s at least)
ETA = 3                           # successive halving: a third of the screened candidates go on
MIN_SURVIVORS = 2                 # ... but at least this many, so a near tie is decided by the long timing
MAX_COMPOSITIONS = 12             # compositions screened, best prior first: the rest are left unmeasured
CHUNK_CELLS = 4                   # cells per runner call: the budget is checked between calls
SCREEN_TIMEOUT_FACTOR = 4.0       # a screening cell's time-out, in typical (median) cell wall times
CONFIRM_SHARE = 0.35              # of the whole budget, kept from the screen for the confirming rung
# Before a cell of a kind has been measured, its wall time is guessed (s): a lenet cell took 3-6 s on a
# 2-core VM, a training one (distillation, retraining) 30-120 s.
GUESS_CELL_S = {False: 8.0, True: 60.0}


@dataclass
class Progress:
    """What the search did: candidates screened and confirmed, those left unmeasured (and why), seconds."""

    screened: list[str] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)
    unmeasured: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0


class Budget:
    """Wall seconds left of the user's --budget-min (less what earlier tries of this search spent), and
    per-cell cost estimates learnt from the cells measured so far (`wall_s` of their rows)."""

    def __init__(self, state: State, out: Path) -> None:
        self.state, self.out = state, out
        self.t0, self.spent0 = time.monotonic(), state.spent_s
        self.walls: dict[bool, list[float]] = {False: [], True: []}

    def spent(self) -> float:
        return self.spent0 + time.monotonic() - self.t0

    def left(self, reserve_s: float = 0.0) -> float:
        return self.state.request.budget_s - reserve_s - self.spent()

    def guess(self, trains: bool) -> float:
        seen = self.walls[trains]
        typical = statistics.median(seen) if seen else GUESS_CELL_S[trains]
        # a cell that trains costs at least what a cell that does not costs on this machine now
        return max(typical, self.guess(False)) if trains else typical

    def learn(self, rows: pd.DataFrame, trains_of: dict[str, bool]) -> None:
        for kind in (False, True):
            self.walls[kind] = [float(w) for p, w in zip(rows["pipeline"], rows["wall_s"])
                                if trains_of.get(p) == kind and not math.isnan(float(w))]

    def save(self) -> None:
        self.state.spent_s = self.spent()
        self.state.save(self.out)


def run_request(req: SearchRequest, pipelines: list[str], screen: bool) -> RunRequest:
    """The ordinary run request of one rung: the screen times each cell SCREEN_MIN_TIME_S at the target's
    batch; the confirming rung times as `accelbench run` does, and serves a serving target under LoadGen."""
    from bench.serving.cell import SCENARIO_BATCH

    t = req.target
    batch = t.batch_size if t.serving is None else SCENARIO_BATCH[t.serving]
    serving = () if screen or t.serving is None else (t.serving,)
    return RunRequest(models=(req.model,), pipelines=tuple(pipelines), batch_sizes=(batch,), data=req.data,
                      weights=req.weights, input_shapes=(req.input_shape,) if req.input_shape else (),
                      train_epochs=req.train_epochs, min_time_s=SCREEN_MIN_TIME_S if screen else None, serving=serving,
                      serving_only=bool(serving), latency_bound_ms=t.latency_bound_ms if serving else None,
                      no_history=True)


class Runs:
    """Runs cells of one rung's folder through the ordinary plan and runner (resume on: cells already
    in its records.csv are not measured again), a chunk at a time so the budget is checked between."""

    def __init__(self, req: SearchRequest, env: Env, env_record: dict, ceil, budget: Budget,
                 log: Callable[[str], None]) -> None:
        self.req, self.env, self.env_record, self.ceil = req, env, env_record, ceil
        self.budget, self.log = budget, log

    def rows(self, folder: Path) -> pd.DataFrame:
        from bench.records import read
        records = folder / "records.csv"
        if not records.is_file():
            return pd.DataFrame(columns=["pipeline", "status", "wall_s"])
        return prepare(read.load(folder)[0])

    def measure(self, folder: Path, planned: list[str], queue: list[Candidate], screen: bool,
                progress: Progress) -> None:
        """Measure `queue` in order into `folder` (whose run already holds `planned` pipelines) while the
        budget lasts (the screen leaves CONFIRM_SHARE of it to the confirming rung); candidates left over
        are recorded in `progress.unmeasured`."""
        reserve = CONFIRM_SHARE * self.req.budget_s if screen else 0.0
        trains_of = {c.spec: c.trains for c in queue} | {"eager": False}
        done = set(self.rows(folder)["pipeline"])
        todo = [c for c in queue if c.spec not in done]
        while todo:
            left = self.budget.left(reserve)
            chunk: list[Candidate] = []
            cost = 0.0
            for c in todo:
                need = self.budget.guess(c.trains)
                # until a cell of its kind has been timed here, the guess may be far off: a short chunk
                most = CHUNK_CELLS if self.budget.walls[c.trains] else 2
                if len(chunk) >= most or cost + need > left:
                    break
                chunk.append(c)
                cost += need
            if not chunk:
                for c in todo:
                    progress.unmeasured[c.spec] = (f"not measured: the {'screen' if screen else 'confirming rung'} "
                                                   f"had {max(left, 0):.0f} s of the budget left, a "
                                                   f"{'training ' if c.trains else ''}cell takes about "
                                                   f"{self.budget.guess(c.trains):.0f} s here")
                return
            planned += [c.spec for c in chunk if c.spec not in planned]
            # the runner measures a disturbed cell once more at the end: only when the budget holds it
            self._run(folder, planned, screen, left, remeasure=not screen and left >= 2 * cost)
            got = self.rows(folder)
            self.budget.learn(got, trains_of)
            self.budget.save()
            # a chunk's cells each leave a row (ok, skipped or error); dropping the chunk too keeps a
            # cell that somehow left none from being run again and again
            todo = [c for c in todo if c.spec not in set(got["pipeline"]) and c not in chunk]

    def _run(self, folder: Path, pipelines: list[str], screen: bool, left_s: float, remeasure: bool) -> None:
        planned = plan.build(run_request(self.req, pipelines, screen))
        cells = tuple(replace(c, **self.ceil.cell_fields(c.threads)) for c in planned.cells)
        # A cell may not run past the budget: its time-out is what is left (at least a minute, so a
        # budget nearly spent still lets the cell it admitted finish).
        timeout = min(self.req.timeout_s, max(60.0, left_s))
        if screen and self.budget.walls[False]:
            # nor may one screening cell take the time of many: a candidate slower to prepare than
            # SCREEN_TIMEOUT_FACTOR typical cells (a compile on a busy machine) becomes a time-out row
            timeout = min(timeout, max(60.0, SCREEN_TIMEOUT_FACTOR * self.budget.guess(False)))
        cfg = runner.RunConfig(out=folder, cells=cells, timeout_s=timeout, mem_limit_mb=self.req.mem_limit_mb,
                               isolate=self.req.isolate, resume=True, argv=tuple(sys.argv), matrix=planned.record,
                               remeasure=remeasure)
        runner.run(cfg, self.env, self.env_record, self.log)


def order(space_: Space, req: SearchRequest) -> list[Candidate]:
    """Candidates of `space_` the request allows (only its --technique names, when given), breadth first:
    eager, then each technique's default setting, then each one's second setting, and so on (a budget that
    ends part-way has then tried every technique once, not every setting of the first few)."""
    allowed = set(req.techniques)
    out = [c for c in space_.candidates
           if not allowed or all(t.name in allowed or t.name == "eager" for t in c.pipeline.techniques)]
    seen: dict[tuple[str, ...], int] = {}
    rank = {}
    for c in out:   # the n-th setting of the same technique(s), in the space's order
        names = tuple(t.name for t in c.pipeline.techniques)
        rank[c.spec] = seen[names] = seen.get(names, -1) + 1
    return sorted(out, key=lambda c: (c.spec != "eager", rank[c.spec]))


def prior(c: Candidate, single: dict[str, float]) -> float:
    """The speedup a composition would have if its parts' gains multiplied (each part's screened speedup
    alone; a transform's on eager): the order compositions are screened in. NaN when a part has none."""
    out = 1.0
    for part in c.parts:
        out *= single.get(part, math.nan)
    return out


def screen(runs: Runs, folder: Path, cands: list[Candidate], progress: Progress) -> pd.DataFrame:
    """Rung 1: every single technique (cheap ones, then those that train), then the compositions whose
    parts each ran, kept within the accuracy budget and gained alone, best prior first (at most
    MAX_COMPOSITIONS, cheap before training). Returns the screen's rows."""
    req = runs.req
    planned = list(runs.rows(folder)["pipeline"].unique())
    singles = [c for c in cands if len(c.parts) <= 1]
    for trains in (False, True):
        runs.measure(folder, planned, [c for c in singles if c.trains == trains], True, progress)
    rows = runs.rows(folder)
    ok = {r["pipeline"]: r for r in rows.to_dict("records") if r["status"] == "ok"}
    single = {p: judge.as_speedup(r) for p, r in ok.items()
              if judge.admissible(r, req.max_accuracy_drop_points)[0]}
    comps = []
    for c in cands:
        if len(c.parts) <= 1:
            continue
        p = prior(c, single)
        if math.isnan(p) or p <= 1 + SPEEDUP_MARGIN:
            progress.unmeasured[c.spec] = ("not screened: a part did not run, lost accuracy beyond the budget "
                                           "alone, or the parts' gains do not reach a reliable gain together"
                                           if math.isnan(p) else f"not screened: its parts' gains multiply to "
                                           f"{p:.2f}x, not above {1 + SPEEDUP_MARGIN:.2f}x")
            continue
        comps.append((p, c))
    comps.sort(key=lambda pc: (pc[1].trains, -pc[0]))
    for _, c in comps[MAX_COMPOSITIONS:]:
        progress.unmeasured[c.spec] = f"not screened: beyond the {MAX_COMPOSITIONS} compositions of best prior"
    for trains in (False, True):
        runs.measure(folder, planned, [c for _, c in comps[:MAX_COMPOSITIONS] if c.trains == trains], True, progress)
    rows = runs.rows(folder)
    progress.screened = [p for p in rows["pipeline"].unique()]
    return rows


def survivors(rows: pd.DataFrame, req: SearchRequest) -> list[str]:
    """Successive halving's cut: the screened pipelines that ran and kept accuracy within the budget,
    fastest first (point estimate: the screen's intervals are short), the best third (at least
    MIN_SURVIVORS) of them."""
    good = [r for r in rows.to_dict("records") if r["status"] == "ok" and r["pipeline"] != "eager"
            and judge.admissible(r, req.max_accuracy_drop_points)[0] and judge.as_speedup(r) > 1.0]
    good.sort(key=lambda r: -judge.as_speedup(r))
    keep = max(MIN_SURVIVORS, math.ceil(len(good) / ETA))
    return [r["pipeline"] for r in good[:keep]]


def search(state: State, out: Path, env: Env, env_record: dict, ceil,
           log: Callable[[str], None]) -> tuple[Progress, pd.DataFrame, pd.DataFrame, Space]:
    """Run the whole search into `out` (the confirming rung's run folder; the screen's in out/screen):
    returns what was measured, the screen's rows, the confirming rung's rows and the space searched."""
    req = state.request
    budget = Budget(state, out)
    runs = Runs(req, env, env_record, ceil, budget, log)
    progress = Progress()
    space_ = space(env, req.max_transforms)
    cands = order(space_, req)
    by_spec = {c.spec: c for c in cands}
    log(f"accelbench: {len(cands)} candidate pipelines for {req.model} ({len(space_.unavailable)} technique "
        f"settings cannot run here); budget {req.budget_s / 60:g} min, {budget.spent():.0f} s spent before")
    try:
        screened = screen(runs, out / SCREEN, cands, progress)
        keep = survivors(screened, req)
        log(f"accelbench: screened {len(progress.screened)} pipelines; confirming {', '.join(keep) or 'none'}")
        planned = list(runs.rows(out)["pipeline"].unique())
        runs.measure(out, planned, [by_spec["eager"]] + [by_spec[p] for p in keep], False, progress)
    except KeyboardInterrupt:
        budget.save()   # the time spent counts against the budget of the resumed search too
        raise
    confirmed = runs.rows(out)
    progress.confirmed = [p for p in confirmed["pipeline"].unique()]
    progress.wall_s = budget.spent()
    budget.save()
    return progress, screened, confirmed, space_
