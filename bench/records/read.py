"""Read a run back, typed once: a results folder, a records.csv or a pytest-benchmark JSON -> (rows, env).

Every reader (resume, report, compare, calibrate, history, the pytest plugin's JSON) gets the same frame
from `typed`: the schema's columns in order, strings as str ("" when empty), ints as pandas Int64, floats
as float64 (NaN when empty), `valid` as pandas "boolean" (True, False, or <NA>: not judged), and the JSON
columns parsed (figures a dict, technique_params and curve lists).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.api import UserError
from bench.records.columns import BY_NAME, COLUMNS, SCHEMA
from bench.records.write import csv_value


def load(source: Path) -> tuple[pd.DataFrame, dict]:
    """The typed rows (see `typed`) and the environment record (env.json) of a run."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"{source}: no such file or folder; give a results folder, a records.csv or a "
                        f"pytest-benchmark .json")
    if source.is_dir():
        csv_path, env_path = source / "records.csv", source / "env.json"
    elif source.suffix == ".csv":
        csv_path, env_path = source, source.with_name("env.json")
    elif source.suffix == ".json":
        return load_benchmark_json(source)
    else:
        raise UserError(f"{source}: expected a results folder, a records.csv or a pytest-benchmark .json")
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: no such file; expected an accelbench records.csv")
    try:
        # Read once: checked for a cut row, then parsed. utf-8-sig drops a byte-order mark, as
        # pandas does when it opens the file itself.
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{csv_path}: not a readable CSV ({type(exc).__name__}: {exc})") from None
    _refuse_torn(csv_path, text)
    df = _parse(csv_path, text)
    _refuse_unreadable(df, csv_path, first_line=2)
    env = {}
    if env_path.is_file():
        try:
            env = json.loads(env_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{env_path}: corrupt JSON ({exc})") from None
        if not isinstance(env, dict):   # every reader looks keys up in it
            raise UserError(f"{env_path}: expected a JSON object (the run's environment), got {type(env).__name__}")
    return typed(df), env


def read_csv(path: Path) -> pd.DataFrame:
    """The typed rows of a records.csv that a run may have been cut off writing (what --resume reads):
    a torn last line is left out, not refused; the runner rewrites the file without it."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a readable CSV ({type(exc).__name__}: {exc})") from None
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return typed(_parse(Path(path), text, empty_ok=True))


def _parse(csv_path: Path, text: str, empty_ok: bool = False) -> pd.DataFrame:
    """Every cell as the text it holds (typing is `typed`'s); UserError naming the file when it is not
    a records.csv. `empty_ok`: an empty file (a run stopped before its header) is no rows."""
    if empty_ok and not text.strip():
        return pd.DataFrame(columns=COLUMNS, dtype=str)
    try:
        # bytes, not a StringIO: a StringIO of a large file holds it again at up to 4 bytes a character
        df = pd.read_csv(io.BytesIO(text.encode("utf-8")), dtype=str, keep_default_na=False, encoding="utf-8")
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds
        raise UserError(f"{csv_path}: not a readable CSV ({type(exc).__name__}: {exc})") from None
    missing = {"model", "pipeline", "status", "batch_size"} - set(df.columns)
    if missing:
        raise UserError(f"{csv_path}: not an accelbench records.csv (missing columns {sorted(missing)})")
    for col in SCHEMA:   # text the writer quoted against spreadsheet formulas reads as it was given
        if col.dtype == "string" and col.name in df.columns:
            df[col.name] = df[col.name].map(csv_value)
    # A cell is known by its batch size (compare, --resume, the history match on it): a row without one
    # is not a row of ours.
    bad = df.index[~df["batch_size"].str.fullmatch(r"\s*\d+\s*")]
    if len(bad):
        raise UserError(f"{csv_path}: row {bad[0] + 1} has batch_size {df['batch_size'][bad[0]]!r}, not a "
                        f"whole number; not an accelbench records.csv, or edited by hand")
    return df


def _refuse_torn(csv_path: Path, text: str) -> None:
    """UserError when a row of `text` (the contents of `csv_path`) is cut short (a run killed mid-write,
    a truncated copy): read as it stands, its missing figures would be empty cells of an `ok` row,
    which a gate could pass."""
    import csv

    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    for row in reader:
        if row and len(row) != len(header):
            raise UserError(f"{csv_path}: line {reader.line_num} has {len(row)} of {len(header)} fields (a run stopped "
                            f"mid-write, or a cut copy); complete it with `accelbench run ... --resume`, or run it again")
    if text and not text.endswith("\n"):
        raise UserError(f"{csv_path}: its last line is cut short (a run stopped mid-write, or a cut copy); complete it "
                        f"with `accelbench run ... --resume`, or run it again")


def _refuse_unreadable(df: pd.DataFrame, source: Path, first_line: int | None = None) -> None:
    """UserError naming the first cell of a number or true/false column that holds anything else ("abc",
    "maybe"): `typed` would read it as missing, and a gate could pass a row whose figure nobody can read.
    Empty cells and "nan" are missing figures, which readers handle as such. `first_line`: the file line
    of the first row (a CSV), else rows are counted from 1 (a JSON's benchmarks)."""
    for col in SCHEMA:
        if col.name not in df.columns or col.dtype not in ("int", "float", "bool"):
            continue
        for i, v in enumerate(df[col.name].tolist()):
            if _empty(v) or _readable(col.dtype, v):
                continue
            where = f"line {first_line + i}" if first_line is not None else f"row {i + 1}"
            raise UserError(f"{source}: {where}: {col.name} is {str(v)[:40]!r}, not "
                            f"{'true or false' if col.dtype == 'bool' else 'a number'}; correct or remove that row, "
                            f"or run the benchmark again")


def _readable(dtype: str, v: Any) -> bool:
    if dtype == "bool":
        return isinstance(v, bool) or str(v).strip().lower() in _TRUE | _FALSE
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    try:
        float(str(v))
    except ValueError:
        return False
    return True


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """The one typing of rows read from anywhere (CSV text, JSON values, SQL): every schema column
    present and typed by its declaration (bench.records.columns), in schema order, other columns after.
    An empty cell reads as its column's default (threads 0, scenario inference) or as missing."""
    out = pd.DataFrame(index=df.index)
    for col in SCHEMA:
        raw = df[col.name] if col.name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)
        out[col.name] = _typed_column(col, raw)
    for name in df.columns:
        if name not in BY_NAME:
            out[name] = df[name]
    return out


def records(df: pd.DataFrame | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`df.to_dict("records")`, the same values (Python scalars; None for a missing nullable value), in one conversion of the frame
    instead of one per column per call: pandas' own takes ~10 ms on a frame of the schema's ~150 columns
    whatever its length, which the report pays once per group (thousands of them in a large run)."""
    if isinstance(df, list):   # rows already converted: a caller may hand either
        return df
    cols = list(df.columns)
    if not cols:
        return [{} for _ in range(len(df))]
    na = pd.NA   # pandas' to_dict gives None for a nullable column's missing value: so does this
    return [{c: None if v is na else v for c, v in zip(cols, row)} for row in df.to_numpy(dtype=object)]


def marked_invalid(valid: Any) -> bool:
    """Whether a typed `valid` value says the row was judged and is not valid (NA or None: not judged,
    as for skipped, error and training rows). Safe for numpy's bool, which `is False` is not. Text
    (records.csv's true/false, a to_row dict) is refused: read it through `typed` first."""
    if isinstance(valid, str):
        raise TypeError(f"valid {valid!r} is records.csv text, not a typed value; read rows through "
                        f"bench.records.read (load, typed or typed_row)")
    return valid is not None and valid is not pd.NA and not valid


def typed_row(row: dict[str, Any]) -> dict[str, Any]:
    """One row (a CellResult.to_row dict, an extra_info) typed as `typed` types a frame; missing
    values are None."""
    return typed(pd.DataFrame([row])).astype(object).where(lambda d: d.notna(), None).to_dict("records")[0]


def _empty(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _typed_column(col, raw: pd.Series) -> pd.Series:
    if col.dtype == "string":
        return raw.map(lambda v: (col.default or "") if _empty(v) else str(v)).astype(object)
    if col.dtype in ("int", "float"):
        nums = pd.to_numeric(raw.map(lambda v: None if _empty(v) else v), errors="coerce")
        if col.default is not None:
            nums = nums.fillna(col.default)
        if col.dtype == "float":
            return nums.astype("float64")
        whole = nums.dropna()
        # an int column holding a fraction (a hand-edited file), or a whole number beyond int64, keeps its
        # value as a float rather than lose it (or fail to cast)
        fits = (whole == whole.round()).all() and (whole.abs() < 2.0 ** 63).all()
        return nums.astype("Int64") if fits else nums.astype("float64")
    if col.dtype == "bool":
        return raw.map(_bool).astype("boolean")
    return raw.map(lambda v: _json(v, col.default))


_TRUE, _FALSE = frozenset({"true", "1", "1.0", "yes"}), frozenset({"false", "0", "0.0", "no"})


def _bool(v: Any) -> Any:
    """true/false text (CSV, SQL), a JSON or pandas bool, or a number; anything else is not judged."""
    if isinstance(v, bool):
        return v
    if _empty(v):
        return pd.NA
    text = str(v).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else pd.NA


def _json(v: Any, default: Any) -> Any:
    """A JSON column's value: parsed text, or the value itself from a JSON source; empty or malformed
    text (not an object or a list) reads as the column's default, an empty dict or list, as the report
    always treated it."""
    if isinstance(v, (dict, list)):
        return v
    if _empty(v):
        return type(default)()
    try:
        parsed = json.loads(v)
    except (json.JSONDecodeError, TypeError):
        return type(default)()
    # technique_params of older runs is a dict keyed by technique name: kept as it was written
    return parsed if isinstance(parsed, (dict, list)) else type(default)()


def load_benchmark_json(path: Path) -> tuple[pd.DataFrame, dict]:
    """pytest-benchmark's --benchmark-json: each benchmark's extra_info carries one schema row."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: corrupt JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise UserError(f"{path}: not a pytest-benchmark JSON (no 'benchmarks' list)")
    extra = doc.get("accelbench_unbenchmarked") or []
    machine, commit = doc.get("machine_info") or {}, doc.get("commit_info", {})
    if (not all(isinstance(b, dict) for b in doc["benchmarks"]) or not isinstance(extra, list)
            or not isinstance(machine, dict) or not isinstance(machine.get("accelbench_env", {}), dict)):
        raise UserError(f"{path}: not a pytest-benchmark JSON (its benchmarks, accelbench_unbenchmarked or "
                        f"machine_info are not the lists and objects pytest-benchmark writes)")
    rows = []
    # Cells that were skipped or failed never become benchmarks; the suite keeps their rows under
    # "accelbench_unbenchmarked" (bench.pytest_plugin) so the JSON holds the same table as records.csv.
    infos = [b.get("extra_info") or {} for b in doc["benchmarks"]] + list(extra)
    for info in infos:
        if isinstance(info, dict) and "model" in info and "pipeline" in info:
            rows.append({k: info.get(k) for k in COLUMNS if k in info})
    if not rows:
        raise UserError(f"{path}: holds no accelbench benchmarks (no extra_info with model and pipeline)")
    # extra_info stores NaN as null (strict JSON): `typed` reads it as missing, as an empty CSV cell
    df = pd.DataFrame(rows)
    _refuse_unreadable(df, path)
    env = dict(machine)
    env.update(machine.get("accelbench_env", {}))
    env.setdefault("commit", commit)
    return typed(df), env
