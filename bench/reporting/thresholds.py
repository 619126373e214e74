"""The regression gate's thresholds: their defaults (declared once, here), their command-line text, and parsing it.

Kept apart from compare.py (which reads results with pandas) so that the command-line parser can show the
defaults without importing the reporting stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bench.api import UserError

# Peak memory of a tiny CPU cell is a few MiB of process RSS above its start, and allocator effects
# moved it by up to +19.2 MiB between ten identical gate runs (results/baseline-ci/README.md); a
# relative threshold alone flags that noise. Growth must also exceed this many MiB unless
# --max-memory-growth names its own floor ("20%+64MiB").
MEMORY_FLOOR_MB = 32.0


@dataclass(frozen=True)
class Thresholds:
    """How much worse a figure may get before it is a regression."""

    max_slowdown: float = 0.15          # fraction of the baseline speedup
    max_accuracy_drop_pp: float = 0.5   # percentage points
    max_memory_growth: float = 0.20     # fraction of the baseline peak
    memory_floor_mb: float = MEMORY_FLOOR_MB
    # per cell (schema.cell_key): a slowdown threshold fitted to this machine's A/A noise by
    # `accelbench calibrate`; it replaces max_slowdown *and* the intervals-apart rule for that cell
    calibrated: dict[tuple, float] = field(default_factory=dict)

    def as_options(self) -> dict[str, str]:
        """These thresholds as `accelbench compare` takes them on its command line and gate.json stores
        them: {"max_slowdown": "15%", "max_accuracy_drop": "0.5", "max_memory_growth": "20%"}."""
        growth = f"{self.max_memory_growth * 100:g}%"
        if self.memory_floor_mb != MEMORY_FLOOR_MB:
            growth += f"+{self.memory_floor_mb:g}MiB"
        return {"max_slowdown": f"{self.max_slowdown * 100:g}%", "max_accuracy_drop": f"{self.max_accuracy_drop_pp:g}",
                "max_memory_growth": growth}


# The gate's defaults, declared once: the CLI's option defaults and their help read them, and a
# gate.json that leaves a threshold out gets it from here.
DEFAULT_THRESHOLDS = Thresholds()


def parse_percent(text: str, option: str, *, upper: float | None = None) -> float:
    """`15%` or `15` -> 0.15. A bare number below 1 is refused: `0.15` would silently mean 0.15%."""
    raw = str(text).strip()
    has_sign = raw.endswith("%")
    try:
        value = float(raw.rstrip("%").strip())
    except ValueError:
        raise UserError(f"{option}: {text!r} is not a percentage; write e.g. 15%") from None
    if not math.isfinite(value) or value < 0 or (upper is not None and value >= upper):
        bound = f" and below {upper:g}%" if upper is not None else ""
        raise UserError(f"{option}: must be >= 0%{bound}, got {text!r}")
    if not has_sign and 0 < value < 1:
        raise UserError(f"{option}: {text!r} is read as a percentage; write {value * 100:g}% for "
                        f"{value:g} as a fraction, or {value:g}% if you mean that")
    return value / 100


def parse_points(text: str, option: str) -> float:
    """`0.5`, `0.5pp` or `0.5%` -> 0.5 percentage points."""
    raw = str(text).strip().removesuffix("pp").removesuffix("%").strip()
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{option}: {text!r} is not a number of percentage points; write e.g. 0.5") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{option}: must be >= 0 percentage points, got {text!r}")
    return value


def parse_memory_growth(text: str) -> tuple[float, float]:
    """`20%` -> (0.20, MEMORY_FLOOR_MB); `20%+64MiB` -> (0.20, 64.0): relative growth and absolute floor."""
    rel, plus, floor = str(text).partition("+")
    if not plus:
        return parse_percent(rel, "--max-memory-growth"), MEMORY_FLOOR_MB
    raw = floor.strip()
    for unit in ("MiB", "MB", "M"):
        raw = raw.removesuffix(unit)
    try:
        floor_mb = float(raw)
    except ValueError:
        raise UserError(f"--max-memory-growth: {text!r}: the floor after '+' must be MiB, e.g. 20%+64MiB") from None
    if not math.isfinite(floor_mb) or floor_mb < 0:
        raise UserError(f"--max-memory-growth: the floor must be >= 0 MiB, got {text!r}")
    return parse_percent(rel, "--max-memory-growth"), floor_mb


def thresholds_from_args(args: Any) -> Thresholds:
    """The thresholds of parsed `compare` options (attributes max_slowdown, max_accuracy_drop, max_memory_growth)."""
    return thresholds_from_options({name: getattr(args, name, None) for name in DEFAULT_THRESHOLDS.as_options()})


def thresholds_from_options(options: dict[str, Any]) -> Thresholds:
    """Thresholds from their command-line text (as `Thresholds.as_options` writes it, e.g. gate.json's
    `thresholds`); a threshold not given is DEFAULT_THRESHOLDS'."""
    text = {**DEFAULT_THRESHOLDS.as_options(), **{k: v for k, v in options.items() if v is not None}}
    growth, floor_mb = parse_memory_growth(text["max_memory_growth"])
    return Thresholds(
        max_slowdown=parse_percent(text["max_slowdown"], "--max-slowdown", upper=100),
        max_accuracy_drop_pp=parse_points(text["max_accuracy_drop"], "--max-accuracy-drop"),
        max_memory_growth=growth, memory_floor_mb=floor_mb,
    )
