"""Read a run back: a results folder, a records.csv, or a pytest-benchmark JSON -> (rows DataFrame, env)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from bench.api import UserError
from bench.running.schema import COLUMNS, TEXT_COLUMNS


def load(source: Path) -> tuple[pd.DataFrame, dict]:
    """The rows (schema columns, numeric where numeric) and the environment record of a run."""
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
    try:
        df = pd.read_csv(io.StringIO(text))
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds
        raise UserError(f"{csv_path}: not a readable CSV ({type(exc).__name__}: {exc})") from None
    missing = {"model", "pipeline", "status"} - set(df.columns)
    if missing:
        raise UserError(f"{csv_path}: not an accelbench records.csv (missing columns {sorted(missing)})")
    env = {}
    if env_path.is_file():
        try:
            env = json.loads(env_path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{env_path}: corrupt JSON ({exc})") from None
    return normalise(df), env


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


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = pd.NA
    for col in TEXT_COLUMNS:
        if col != "valid":   # text read back empty is "", from CSV (NaN) and JSON ("") alike
            df[col] = df[col].astype("object").where(df[col].notna(), "")
    # pandas reads a CSV column of true/false as booleans, a JSON one as text: one form for both
    df["valid"] = df["valid"].map(lambda v: "" if v is None or v is pd.NA or v != v else str(v).lower())
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


def load_benchmark_json(path: Path) -> tuple[pd.DataFrame, dict]:
    """pytest-benchmark's --benchmark-json: each benchmark's extra_info carries one schema row."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: corrupt JSON ({exc})") from None
    if not isinstance(doc, dict) or "benchmarks" not in doc:
        raise UserError(f"{path}: not a pytest-benchmark JSON (no 'benchmarks' list)")
    rows = []
    # Cells that were skipped or failed never become benchmarks; the suite keeps their rows under
    # "accelbench_unbenchmarked" (bench.pytest_plugin) so the JSON holds the same table as records.csv.
    infos = [b.get("extra_info") or {} for b in doc["benchmarks"]] + list(doc.get("accelbench_unbenchmarked") or [])
    for info in infos:
        if isinstance(info, dict) and "model" in info and "pipeline" in info:
            rows.append({k: info.get(k) for k in COLUMNS if k in info})
    if not rows:
        raise UserError(f"{path}: holds no accelbench benchmarks (no extra_info with model and pipeline)")
    df = pd.DataFrame(rows)
    # extra_info stores NaN as null (strict JSON); numeric columns must come back as floats, as from a CSV.
    for col in COLUMNS:
        if col in TEXT_COLUMNS:
            continue
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else float("nan")
    env = dict(doc.get("machine_info") or {})
    env.update((doc.get("machine_info") or {}).get("accelbench_env", {}))
    env.setdefault("commit", doc.get("commit_info", {}))
    return normalise(df), env
