"""Why a row is invalid and why a cell failed, as enumerations; their text is rendered only at the edges."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Invalid(enum.Enum):
    """Why a measured row cannot be trusted (the row stays, marked `valid` false, with no verdict)."""

    NONDETERMINISTIC = "nondeterministic model"
    TOO_FEW_ROUNDS = "too few rounds"
    INTERVAL_TOO_WIDE = "speedup interval too wide"
    BASELINE_DEPARTED = "in-cell baseline departed from its group's reference"
    LOADGEN_INVALID = "LoadGen judged a side's run INVALID"

    @property
    def disturbed(self) -> bool:
        """A disturbed measurement, worth measuring again; a nondeterministic model stays so."""
        return self not in (Invalid.NONDETERMINISTIC, Invalid.LOADGEN_INVALID)


@dataclass(frozen=True)
class Why:
    """One reason a row is invalid: its kind, and the sentence records.csv's `validity` shows."""

    kind: Invalid
    text: str


def validity_text(reasons: tuple[Why, ...]) -> str:
    """The `validity` column: each reason's sentence, '; '-separated."""
    return "; ".join(w.text for w in reasons)


class Failure(enum.Enum):
    """How a cell (or a model's preparation) failed; the `reason` column holds its sentence."""

    USER_ERROR = "user error"         # a UserError: its message is for the user as it stands
    EXCEPTION = "exception"           # any other exception raised by the cell's code
    OUT_OF_MEMORY = "out of memory"   # past the cell's memory limit
    TIME_OUT = "time-out"             # past the cell's time-out
    CRASH = "crash"                   # the worker died (a signal, an exit) without reporting
    NON_FINITE = "non-finite outputs"  # the baseline's or the candidate's logits hold NaN or inf
    # The worker's eager baseline, timed before any technique, was off its group's reference: the
    # runner starts a fresh worker for the cell (never a row of its own; see bench.running.runner).
    OFF_AT_START = "off at start"
