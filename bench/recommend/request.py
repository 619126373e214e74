"""What `accelbench recommend` was asked (model, accuracy budget, target, time budget), kept as recommend.json for --resume."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.api import UserError

TARGETS = ("inference", "server", "offline")
RECORD = "recommend.json"


@dataclass(frozen=True)
class Target:
    """What "fastest" means: `inference`, the paired-block speedup at `batch_size`; `server`, the
    samples/s served under MLPerf LoadGen's Server scenario with p99 under `latency_bound_ms` (None:
    the serving cell's default bound); `offline`, the samples/s of LoadGen's Offline scenario."""

    scenario: str = "inference"
    batch_size: int = 1
    latency_bound_ms: float | None = None

    def __post_init__(self) -> None:
        if self.scenario not in TARGETS:
            raise UserError(f"--scenario must be one of {', '.join(TARGETS[1:])} (or none: --batch-size), "
                            f"got {self.scenario!r}")
        if self.latency_bound_ms is not None and self.scenario != "server":
            raise UserError("--latency-bound-ms is the p99 bound of --scenario server; give both, or neither")
        if self.latency_bound_ms is not None and not 0 < self.latency_bound_ms < math.inf:
            raise UserError(f"--latency-bound-ms must be a number of ms > 0, got {self.latency_bound_ms}")

    @property
    def serving(self) -> str | None:
        """The LoadGen scenario measured in the confirming rung, or None for paired-block cells."""
        return None if self.scenario == "inference" else self.scenario

    def words(self) -> str:
        if self.scenario == "inference":
            return f"latency at batch {self.batch_size}"
        if self.scenario == "server":
            bound = f"{self.latency_bound_ms:g} ms" if self.latency_bound_ms is not None else "the default bound"
            return f"samples/s served (LoadGen server, p99 under {bound})"
        return "samples/s (LoadGen offline)"


# More transforms per pipeline multiply the candidates (and the budget they need) without a technique
# the registry has to offer: there are not this many that compose.
MAX_TRANSFORMS = 4


@dataclass(frozen=True)
class SearchRequest:
    """One search. `max_accuracy_drop_points`: percentage points of top-1 accuracy below eager's that the
    user accepts (0: only pipelines that keep eager's outputs). `budget_s`: wall seconds the search may
    spend measuring. `techniques`: when given, only pipelines made of these techniques (eager always)."""

    model: str
    max_accuracy_drop_points: float
    target: Target = field(default_factory=Target)
    data: str = "digits"
    weights: tuple[str, ...] = ()
    budget_s: float = 600.0
    techniques: tuple[str, ...] = ()
    max_transforms: int = 2
    input_shape: str | None = None       # CxHxW of the model's input, as `run --input-shape` takes it
    train_epochs: int | None = None      # the recipe of a model trained here (None: its default)
    timeout_s: float = 600.0
    mem_limit_mb: float = 8192.0
    isolate: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", tuple(self.weights))
        object.__setattr__(self, "techniques", tuple(self.techniques))
        if not 0 <= self.max_accuracy_drop_points <= 100:
            raise UserError(f"--max-accuracy-drop must be percentage points between 0 and 100, "
                            f"got {self.max_accuracy_drop_points}")
        if not 0 < self.budget_s < math.inf:
            raise UserError(f"--budget-min must be a number of minutes > 0, got {self.budget_s / 60:g}")
        if isinstance(self.max_transforms, bool) or not isinstance(self.max_transforms, int) \
                or not 0 <= self.max_transforms <= MAX_TRANSFORMS:
            raise UserError(f"--max-transforms must be a whole number from 0 (runtimes only) to {MAX_TRANSFORMS}, "
                            f"got {self.max_transforms!r}")
        if self.train_epochs is not None and (isinstance(self.train_epochs, bool)
                                              or not isinstance(self.train_epochs, int) or self.train_epochs < 1):
            raise UserError(f"--train-epochs must be a whole number >= 1, got {self.train_epochs!r}")
        from bench.running.limits import check_guards
        check_guards(self.timeout_s, self.mem_limit_mb)   # the cells' own guards, refused before any is run

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Any, where: str) -> "SearchRequest":
        try:
            return cls(**{**doc, "target": Target(**doc["target"])})
        except (TypeError, KeyError) as exc:
            raise UserError(f"{where}: not a recommend.json of this version ({exc})") from None


@dataclass
class State:
    """What recommend.json holds: the request and the wall seconds spent so far (over interrupted tries)."""

    request: SearchRequest
    spent_s: float = 0.0

    def save(self, out: Path) -> None:
        from bench.records.write import atomic_write
        atomic_write(out / RECORD, json.dumps({"request": self.request.to_json(), "spent_s": self.spent_s},
                                              indent=2) + "\n")

    @classmethod
    def load(cls, out: Path) -> "State":
        path = out / RECORD
        if not path.is_file():
            raise UserError(f"--resume {out}: no {RECORD} there; is it an accelbench recommend folder?")
        try:
            doc = json.loads(path.read_text())
            return cls(SearchRequest.from_json(doc["request"], str(path)), float(doc.get("spent_s", 0.0)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"--resume {out}: {RECORD} is corrupt ({type(exc).__name__})") from None
