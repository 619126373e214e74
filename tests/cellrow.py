"""Run one cell in this process and return its records.csv row (what the runner would write)."""

from __future__ import annotations

from typing import Any

from bench.api import Env
from bench.running.cell import CellSpec, run


def cell_row(spec: CellSpec, env: Env) -> dict[str, Any]:
    return run(spec, env).to_row(spec, run_id="test", wall_s=0.0)
