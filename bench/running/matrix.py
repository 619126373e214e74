"""Which cells a run covers: the default and --quick matrices, built from what techniques declare.

Every pipeline string is parsed here, once; the cells carry the parsed `Pipeline`.
"""

from __future__ import annotations

from bench import api
from bench.api import UserError
from bench.pipeline import Pipeline, parse

QUICK_MODELS = ("lenet",)
QUICK_BATCH_SIZES = (1, 64)
DEFAULT_BATCH_SIZES = (1, 16, 64, 256)
QUICK_TRAINING_BATCH_SIZE = 64
SCENARIOS = ("inference", "training")


def default_pipelines(scenario: str) -> list[str]:
    """`eager` first, then every registered technique's example pipelines, in name order."""
    kinds = ("training",) if scenario == "training" else ("transform", "runtime")
    out = [] if scenario == "training" else ["eager"]
    for _, cls in api.TECHNIQUES.items():
        if cls.kind in kinds:
            out += [p for p in cls.examples if p not in out]
    return out


def cells(model_names: list[str] | None, pipelines: list[str] | None, batch_sizes: list[int] | None,
          scenario: str | None, quick: bool) -> list[tuple[str, Pipeline, int]]:
    """(model, pipeline, batch size) triples in run order (model-major, so a model trains once).

    Each pipeline says its own scenario; `scenario` (--scenario) picks the default pipelines when none
    are given, and when given with pipelines it must agree with every one of them. A run may mix
    inference and training pipelines; without --batch-size, each gets its scenario's default sizes.
    """
    if scenario is not None and scenario not in SCENARIOS:
        raise UserError(f"--scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    names = pipelines or default_pipelines(scenario or "inference")
    parsed = {p: parse(p) for p in dict.fromkeys(names)}   # the one parse of each pipeline string
    if scenario is not None:
        for p, pipe in parsed.items():
            if pipe.scenario != scenario:
                raise UserError(f"pipeline {p!r} is a {pipe.scenario} pipeline, but --scenario {scenario} was "
                                f"given; drop --scenario (each pipeline says its own) or the pipeline")
    pipes = list(parsed)
    if model_names:
        plan = {m: list(pipes) for m in model_names}
    elif quick:
        plan = {m: list(pipes) for m in QUICK_MODELS}
        if not pipelines:  # techniques may ask to be shown on another model too (fusion -> lenet_bn)
            for _, cls in api.TECHNIQUES.items():
                for m in cls.quick_models:
                    extra = [p for p in cls.examples if p in pipes]
                    base = ["eager"] if (scenario or "inference") != "training" else []
                    plan.setdefault(m, [])
                    plan[m] += [p for p in base + extra if p not in plan[m]]
    else:
        plan = {m: list(pipes) for m in api.MODELS.names()}

    def sizes(pipe: Pipeline) -> list[int]:
        if batch_sizes:
            return list(batch_sizes)
        if pipe.scenario == "training":
            return [QUICK_TRAINING_BATCH_SIZE]
        return list(QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES)

    return [(m, parsed[p], b) for m, ps in plan.items() for p in ps for b in sizes(parsed[p])]


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` (1 <= K <= N) -> (K, N); anything else is a UserError naming the option."""
    k, slash, n = str(text).partition("/")
    try:
        kk, nn = int(k), int(n)
    except ValueError:
        kk = nn = 0
    if not slash or nn < 1 or not 1 <= kk <= nn:
        raise UserError(f"--shard {text}: expected K/N with 1 <= K <= N, e.g. --shard 2/4")
    return kk, nn


def shard(cells: list, k: int, n: int) -> list:
    """The K-th of N disjoint parts of `cells` (CellSpec-like: `.key()` = model, pipeline, scenario,
    batch size, threads), whose union over K = 1..N is `cells`. The unit is a (model, batch size, threads)
    group, so each part keeps a group's eager cell beside the cells checked against it; groups go, largest
    first (then by key), to the part with the fewest cells so far (ties: the lowest K). Depends only on
    the set of cells, so every machine of a CI matrix computes the same split. Order within a part is
    that of `cells`. Raises UserError when there are fewer groups than parts (a part would be empty)."""
    groups: dict[tuple, list] = {}
    for c in cells:
        model, _, _, bs, threads = c.key()
        groups.setdefault((model, bs, threads), []).append(c.key())
    if len(groups) < n:
        raise UserError(f"--shard {k}/{n}: the matrix has only {len(groups)} (model, batch size, threads) group(s) "
                        f"and each shard runs whole groups; use N <= {len(groups)}")
    load = [0] * n
    mine: set = set()
    for key in sorted(groups, key=lambda g: (-len(groups[g]), str(g))):
        part = min(range(n), key=lambda i: (load[i], i))
        load[part] += len(groups[key])
        if part == k - 1:
            mine.update(groups[key])
    return [c for c in cells if c.key() in mine]
