"""Spread of repeated gate runs against the committed baseline: the figures the gate's thresholds come from.

Usage: python results/baseline-ci/spread.py results/baseline-ci RUN_DIR [RUN_DIR ...]
Prints, per cell, the range of current/baseline speedup ratios and of peak-memory growth over the runs,
then the worst of each and how many regressions `accelbench compare` would report at the default and
at the committed (gate.json) thresholds.
"""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

from bench.reporting.compare import compare_runs, thresholds_from_args
from bench.reporting.loaders import load


def _key(r) -> tuple:
    return (r["model"], r["pipeline"], int(r["batch_size"]))


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    base_dir, runs = Path(argv[0]), [Path(a) for a in argv[1:]]
    base, _ = load(base_dir)
    base_rows = {_key(r): r for _, r in base.iterrows() if r["status"] == "ok"}
    gate = json.loads((base_dir / "gate.json").read_text())["thresholds"]
    default_th = thresholds_from_args(Namespace(max_slowdown="15%", max_accuracy_drop="0.5", max_memory_growth="20%"))
    gate_th = thresholds_from_args(Namespace(**gate))
    ratios: dict[tuple, list[float]] = {k: [] for k in base_rows}
    apart: dict[tuple, int] = {k: 0 for k in base_rows}
    growth: dict[tuple, list[float]] = {k: [] for k in base_rows}
    acc: dict[tuple, list[float]] = {k: [] for k in base_rows}
    flagged = {"default": 0, "gate": 0}
    caught, slowed = 0, 0   # sensitivity: each run with every non-eager candidate made 2x slower
    for run in runs:
        cur, _ = load(run)
        for _, c in cur.iterrows():
            k = _key(c)
            if k not in base_rows or c["status"] != "ok":
                continue
            b = base_rows[k]
            ratios[k].append(c["speedup"] / b["speedup"])
            apart[k] += int(c["speedup_ci_high"] < b["speedup_ci_low"] or c["speedup_ci_low"] > b["speedup_ci_high"])
            growth[k].append(c["peak_mem_mb"] - b["peak_mem_mb"])
            acc[k].append((c["accuracy"] - b["accuracy"]) * 100)
        for name, th in (("default", default_th), ("gate", gate_th)):
            flagged[name] += sum(r.regression for r in compare_runs(base, cur, th))
        slow = cur.copy()
        mask = (slow["pipeline"] != "eager") & (slow["status"] == "ok")
        for col in ("speedup", "speedup_ci_low", "speedup_ci_high"):
            slow.loc[mask, col] = slow.loc[mask, col] / 2
        slowed += int(mask.sum())
        caught += sum(r.regression and r.metric == "speedup" for r in compare_runs(base, slow, gate_th))
    print(f"{len(runs)} runs against {base_dir}")
    print(f"{'cell':<36} {'speedup ratio now/baseline':<30} {'CIs apart':<10} {'peak mem growth MiB':<22} acc pp")
    for k in base_rows:
        r, g, a = ratios[k], growth[k], acc[k]
        if not r:
            print(f"{' '.join(map(str, k)):<36} missing in every run")
            continue
        print(f"{' '.join(map(str, k)):<36} {min(r):.3f} .. {max(r):.3f} (median {sorted(r)[len(r) // 2]:.3f})"
              f"{'':<3} {apart[k]}/{len(r):<8} {min(g):+6.1f} .. {max(g):+6.1f}{'':<8} {min(a):+.2f} .. {max(a):+.2f}")
    all_r = [x for v in ratios.values() for x in v]
    all_g = [x for v in growth.values() for x in v]
    print(f"worst slowdown {1 - min(all_r):.1%}, best {max(all_r) - 1:+.1%}; largest memory growth {max(all_g):+.1f} MiB")
    print(f"false regressions: {flagged['default']} at the default thresholds, {flagged['gate']} at gate.json's {gate}")
    print(f"sensitivity: {caught} of {slowed} non-eager cells flagged when made 2x slower (gate.json thresholds)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
