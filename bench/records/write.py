"""records.csv written row by row (a crash loses no finished row) as text, atomic rewrites, the output lock."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from bench.api import UserError
from bench.records.columns import BY_NAME, COLUMNS, SCHEMA
from bench.records.outfiles import new_beside, open_output, refuse_links

_COLUMN_SET = frozenset(COLUMNS)
_STRING_COLUMNS = frozenset(c.name for c in SCHEMA if c.dtype == "string")
# A spreadsheet runs a cell that begins with = + - @ (or tab, CR before one) as a formula
# (OWASP, "CSV Injection"). Quotes already in front count too, so that adding one is always undone exactly.
FORMULA_START = re.compile(r"'*[=+\-@\t\r]")


def render(v: Any) -> str:
    """A typed value as records.csv text: missing (None, NA, NaN) empty, a bool `true`/`false`, a float
    in full precision, a dict or list as JSON."""
    if v is None or v is pd.NA:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return ""
        return repr(v) if abs(v) >= 1e-4 or v == 0 else f"{v:.6e}"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    if isinstance(v, np.integer):
        return str(int(v))
    return str(v)


def csv_cell(column: str, v: Any) -> str:
    """`render(v)` as records.csv holds it: a text column's value that a spreadsheet would run as a
    formula (`=cmd|' /C calc'!A0`, `@SUM(...)`, `-2+3`) gets a leading single quote, which spreadsheets
    show as text; bench.records.read removes it again. Numbers (-0.5) and JSON stay as they are, and
    so does a lone "-" (the harness's "none", no formula)."""
    text = render(v)
    if column in _STRING_COLUMNS and text != "-" and FORMULA_START.match(text):
        return "'" + text
    return text


def csv_value(text: str) -> str:
    """The value a text cell of records.csv stands for: `csv_cell`'s quote removed."""
    return text[1:] if text.startswith("'") and FORMULA_START.match(text) else text


def plain(column: str, v: Any) -> Any:
    """A typed value for strict JSON (pytest-benchmark's extra_info) and SQL: numbers stay numbers
    (None when missing or not finite), every other column its records.csv text."""
    if BY_NAME[column].dtype in ("int", "float"):
        if v is None or v is pd.NA or isinstance(v, str):
            return None if v is None or v is pd.NA or v == "" else v
        f = float(v)
        if not math.isfinite(f):
            return None
        return int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else f
    return render(v)


def plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """`plain` of each schema column the row holds."""
    return {k: plain(k, row[k]) for k in COLUMNS if k in row}


class RecordWriter:
    """Appends rows to a CSV with the schema's columns; each row is flushed and fsynced as written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        self._f = open_output(path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=COLUMNS)
        if new:
            self._w.writeheader()
            self._flush()

    def _flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def write(self, row: dict[str, Any]) -> None:
        unknown = [k for k in row if k not in _COLUMN_SET]
        if unknown:  # never drop a figure silently: a column must be added to the schema first
            raise ValueError(f"records.csv has no column(s) {unknown}; declare them in bench.records.columns.SCHEMA")
        # Render to a string first, then write once: a row is all there or not at all.
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=COLUMNS).writerow({k: csv_cell(k, v) for k, v in row.items()})
        self._f.write(buf.getvalue())
        self._flush()

    def close(self) -> None:
        self._f.close()


def repair(path: Path) -> None:
    """Rewrite a records.csv with this schema's header (an older run's file gains the newer columns,
    empty) and without a torn last line (power loss mid-write), before a resumed run appends to it.
    Cells are copied as text: a row reads back exactly as it was written."""
    replace_rows(path, keep=None, rows=[])


def replace_rows(path: Path, *, keep: int | None, rows: list[dict[str, Any]]) -> None:
    """Rewrite a records.csv atomically: its first `keep` rows (all with None) copied as text under this
    schema's header, a torn last line dropped, then `rows` rendered as RecordWriter renders them (a run
    rewrites the rows it wrote once they are judged against their whole group)."""
    with open(path, newline="", encoding="utf-8") as f:
        text = f.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    kept = list(csv.DictReader(io.StringIO(text)))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(kept if keep is None else kept[:keep])
    w.writerows({k: csv_cell(k, v) for k, v in r.items()} for r in rows)
    atomic_write(path, buf.getvalue())


def atomic_write(path: Path, content: str | bytes) -> None:
    """Write to a new temporary file beside `path`, fsync, then rename over it: readers see the old
    file or the new one, never a truncated one. A symbolic link at `path` is replaced by the file, and
    what it pointed to is left as it was (rename acts on the name, never on a link's target)."""
    path = Path(path)
    tmp = staged(path, content)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def staged(path: Path, content: str | bytes) -> Path:
    """`content` written and fsynced to a new temporary file beside `path`, returned for the caller to
    rename over `path` (atomic_write's first half: several files can be staged, then all renamed)."""
    tmp, f = new_beside(Path(path), binary=isinstance(content, bytes))
    try:
        with f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


class OutputLock:
    """An exclusive lock on an output folder, so two runs never interleave rows in one records.csv."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".lock"

    def __enter__(self) -> "OutputLock":
        self._f = open_output(self.path, "a+")
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.seek(0)
            holder = self._f.read().strip() or "another process"
            self._f.close()
            raise UserError(f"{self.path.parent}: another accelbench run (pid {holder}) is writing here; "
                            f"wait for it or use another --out") from None
        self._f.seek(0)
        self._f.truncate()
        self._f.write(str(os.getpid()))
        self._f.flush()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


def ensure_writable(out: Path) -> None:
    """Create `out` and check that a file can be written there and that none of the files a run or a
    report writes there is a symbolic link; UserError naming it otherwise."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe, f = new_beside(out / "write-test")
        f.close()
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{out}: cannot write results there ({exc.strerror or exc}); choose another --out") from None
    refuse_links(out)


def write_jsonl(path: Path, items: Iterable[dict]) -> None:
    """Append one JSON line per item to `path`, fsynced (samples.jsonl)."""
    with open_output(path, "a") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
        f.flush()
        os.fsync(f.fileno())
