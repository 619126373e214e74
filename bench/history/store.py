"""The results history: every run's rows in a SQL database (a SQLite file by default, any SQLAlchemy URL).

Two tables: `runs` (one row per run: its commit, date, command, machine and environment fingerprint)
and `records` (the run's rows, one column per records.csv column, plus `run_pk`). A run is written in
one transaction: a crash mid-write leaves the database as it was. SQLite writers take the write lock
at BEGIN (`BEGIN IMMEDIATE`) and wait up to BUSY_TIMEOUT_S for one another, so two runs that finish
at once both land; a lock still busy after that is retried LOCK_RETRIES times.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TypeVar

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from bench.api import UserError
from bench.env import fingerprint, machine_label
from bench.records.columns import COLUMNS, FLOAT_COLUMNS, INT_COLUMNS
from bench.records.read import typed
from bench.records.write import plain_row

DEFAULT_DB = Path("results/history.sqlite")
DB_ENV_VAR = "ACCELBENCH_HISTORY_DB"
HISTORY_FILENAME = "history.sqlite"
BUSY_TIMEOUT_S = 60.0
LOCK_RETRIES = 5
INSERT_CHUNK_ROWS = 200

metadata = sa.MetaData()
runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("uid", sa.String(64), nullable=False, unique=True),   # identity: a re-added run replaces itself
    sa.Column("run_id", sa.String(64)),
    sa.Column("date", sa.String(40), index=True),                   # ISO 8601, UTC: the first row's timestamp
    sa.Column("git_commit", sa.String(80)),
    sa.Column("command", sa.Text),
    sa.Column("machine", sa.Text),
    sa.Column("fingerprint", sa.String(16)),                        # hash of the environment fingerprint:
                                                                    # equal hashes, same environment
    sa.Column("env", sa.Text),                                      # the whole env.json, as JSON
    sa.Column("source", sa.Text),
    sa.Column("added_at", sa.String(40)),
)
records = sa.Table(
    "records", metadata,
    sa.Column("run_pk", sa.Integer, sa.ForeignKey("runs.id"), nullable=False, index=True),
    # `valid` is stored as records.csv writes it (true/false/empty); an older database's Float columns
    # that are now Integer keep their type (the values read back the same)
    *[sa.Column(c, sa.Integer if c in INT_COLUMNS else sa.Float if c in FLOAT_COLUMNS else sa.Text) for c in COLUMNS],
)


@dataclass(frozen=True)
class StoredRun:
    """What `append` wrote: the run's key in the database and how many rows."""

    pk: int
    uid: str
    rows: int
    replaced: bool   # the same run was already stored (a resumed run, a second `history add`)


def default_db(out: Path | None = None) -> str:
    """$ACCELBENCH_HISTORY_DB, else `history.sqlite` beside the run's output folder (OUT/..), else
    results/history.sqlite. Beside OUT, so `--out results/x` lands in results/history.sqlite and a
    run into a scratch folder never writes into the repository's history. When OUT/.. is writable by
    every user (/tmp, /var/tmp: `--out /tmp/x`), inside OUT instead: a database there could be
    planted or replaced by anyone on the machine."""
    if os.environ.get(DB_ENV_VAR):
        return os.environ[DB_ENV_VAR]
    if out is None:
        return str(DEFAULT_DB)
    out = Path(out).absolute()
    try:
        shared = bool(out.parent.stat().st_mode & stat.S_IWOTH)
    except OSError:   # not there yet: its nearest existing ancestor is made by the user below it
        shared = False
    return str((out if shared else out.parent) / HISTORY_FILENAME)


def _url(db: str | Path) -> sa.URL:
    text = str(db)
    if "://" not in text:
        path = Path(text).expanduser().absolute()
        if path.is_dir():
            raise UserError(f"--db {db}: is a folder; give a database file (e.g. {path / HISTORY_FILENAME}) or a URL")
        return sa.make_url(f"sqlite:///{path}")
    try:
        return sa.make_url(text)
    except sa.exc.ArgumentError:
        raise UserError(f"--db {db}: not a database URL (e.g. sqlite:///history.sqlite, "
                        f"postgresql+psycopg://user@host/db) nor a file path") from None


def connect(db: str | Path, create: bool = True) -> Engine:
    """An engine on `db` (a path: SQLite; or a SQLAlchemy URL) with the tables created or completed.
    With `create=False` the database is only read: opened read-only (SQLite `mode=ro`; PostgreSQL
    read-only transactions), never created nor completed. Raises UserError naming the database when
    it cannot be opened (missing driver, no server, a file that is not a database, `create=False` and
    no history there) or holds `runs`/`records` tables that are not ours (then nothing is written)."""
    url = _url(db)
    sqlite = url.get_backend_name() == "sqlite"
    kwargs: dict = {}
    if sqlite and url.database:
        path = Path(url.database)
        if not create and not path.is_file():
            raise UserError(f"{path}: no history database there; runs add to it (accelbench run, accelbench "
                            f"history add DIR), or give --db")
        if create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"{path}: cannot create the history database's folder ({exc.strerror})") from None
        else:   # read-only: the file is never written, whatever it holds
            ro = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro"
            kwargs["creator"] = lambda: sqlite3.connect(ro, uri=True, timeout=BUSY_TIMEOUT_S)
    kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S} if sqlite else {}
    if not create and url.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"options": "-c default_transaction_read_only=on"}
    try:
        engine = sa.create_engine(url, **kwargs)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        raise UserError(f"--db {url.render_as_string()}: no driver for it ({exc}); for PostgreSQL: "
                        f"pip install 'psycopg[binary]'") from None
    if sqlite and create:
        # pysqlite's own transaction handling begins lazily and as DEFERRED, so two writers can both
        # read, then deadlock on the upgrade to a write lock. Take the write lock at BEGIN instead
        # (the recipe in SQLAlchemy's SQLite dialect documentation).
        @event.listens_for(engine, "connect")
        def _no_pysqlite_transactions(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    where = str(url.database) if sqlite else url.render_as_string()
    try:
        _retry(lambda: _create(engine, where) if create else _check_schema(engine, where, need_tables=True))
    except sa.exc.DatabaseError as exc:
        engine.dispose()
        said = str(exc.orig).strip().splitlines()   # a driver's message may run over lines: the first says it
        raise UserError(f"{where}: cannot open the history database "
                        f"({said[0] if said else type(exc.orig).__name__})") from None
    except UserError:
        engine.dispose()
        raise
    return engine


# What a `runs` / `records` table must hold to be ours: every `runs` column (unchanged since the first
# history), and the `records` columns every version had (newer ones are added to an older database).
_OURS = {"runs": frozenset(c.name for c in runs.columns),
         "records": frozenset({"run_pk", "run_id", "model", "pipeline", "status"})}


def _check_schema(engine_or_conn, where: str, need_tables: bool) -> None:
    """UserError naming the database when a `runs` or `records` table there is not ours (another
    program's), or, with `need_tables`, when it holds no history at all."""
    insp = sa.inspect(engine_or_conn)
    tables = set(insp.get_table_names())
    for name, needed in _OURS.items():
        if name in tables:
            missing = sorted(needed - {c["name"] for c in insp.get_columns(name)})
            if missing:
                raise UserError(f"{where}: not an accelbench history: its {name} table lacks "
                                f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''} (another program's "
                                f"database?); give another --db")
    if need_tables and not set(_OURS) <= tables:
        found = ", ".join(sorted(tables)[:6]) or "no tables"
        raise UserError(f"{where}: no accelbench history there (it holds {found}); runs add to it (accelbench run, "
                        f"accelbench history add DIR), or give --db")


def _create(engine: Engine, where: str) -> None:
    """Create the tables, or add the columns a newer schema has to an older database's `records`,
    after checking that tables of those names are ours."""
    with engine.begin() as conn:
        _check_schema(conn, where, need_tables=False)
        metadata.create_all(conn)
        have = {c["name"] for c in sa.inspect(conn).get_columns("records")}
        for col in records.columns:
            if col.name not in have:
                conn.execute(sa.text(f'ALTER TABLE records ADD COLUMN "{col.name}" '
                                     f"{col.type.compile(dialect=engine.dialect)}"))


T = TypeVar("T")


def _retry(fn: Callable[[], T]) -> T:
    """Run a transaction; again (backing off) when the database was locked past the busy timeout or
    a concurrent writer won a race on a unique key or on creating the tables (PostgreSQL's CREATE TABLE
    is not atomic with its existence check: the loser gets "relation ... already exists")."""
    for attempt in range(LOCK_RETRIES + 1):
        try:
            return fn()
        except (sa.exc.OperationalError, sa.exc.IntegrityError, sa.exc.ProgrammingError) as exc:
            text = str(exc.orig).lower()
            transient = ("locked" in text or "busy" in text or "unique" in text or "duplicate" in text
                         or "already exists" in text)
            if not transient or attempt == LOCK_RETRIES:
                raise
            time.sleep(0.2 * 2 ** attempt)
    raise AssertionError("unreachable")


def fingerprint_hash(env: dict) -> str:
    """A short hash of an env.json's environment fingerprint (bench.env.fingerprint): two runs with the
    same hash ran in the same environment, so the history diffs only runs whose hashes differ."""
    return hashlib.sha1(json.dumps(fingerprint(env), sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_uid(rows: pd.DataFrame, env: dict, matrix: dict | None) -> str:
    """A run's identity: its run id(s), its environment fingerprint and its matrix (run.json). A
    resumed run keeps all three, so adding it again replaces it rather than doubling it."""
    ids = sorted({str(v) for v in rows["run_id"] if str(v)}) if "run_id" in rows else []
    doc = json.dumps([ids, fingerprint(env), matrix or {}], sort_keys=True, default=str)
    return hashlib.sha1(doc.encode()).hexdigest()[:20]


def _run_date(rows: pd.DataFrame) -> str:
    stamps = sorted(str(t) for t in rows.get("timestamp", []) if str(t))
    if stamps:
        return stamps[0]
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_rows(conn: sa.Connection, pk: int, rows: list[dict]) -> None:
    for i in range(0, len(rows), INSERT_CHUNK_ROWS):
        conn.execute(records.insert(), [{**r, "run_pk": pk} for r in rows[i:i + INSERT_CHUNK_ROWS]])


def append(engine: Engine, rows: pd.DataFrame, env: dict, *, matrix: dict | None = None,
           source: str = "") -> StoredRun:
    """Store one run (its rows as in records.csv, and its env.json) in one transaction; a run already
    stored (same uid) is replaced in the same transaction."""
    uid = run_uid(rows, env, matrix)
    ids = sorted({str(v) for v in rows["run_id"] if str(v)}) if "run_id" in rows else []
    run_row = {"uid": uid, "run_id": ",".join(ids) or str(env.get("run_id") or ""), "date": _run_date(rows),
               "git_commit": env.get("git_commit") or "", "command": env.get("command") or "",
               "machine": machine_label(env),
               "fingerprint": fingerprint_hash(env),
               "env": json.dumps(env, sort_keys=True, default=str), "source": source,
               "added_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    body = [{c: None for c in COLUMNS} | plain_row(r) for r in typed(rows).to_dict("records")]

    def tx() -> StoredRun:
        with engine.begin() as conn:
            old = conn.execute(sa.select(runs.c.id).where(runs.c.uid == uid)).scalar()
            if old is not None:
                conn.execute(records.delete().where(records.c.run_pk == old))
                conn.execute(runs.delete().where(runs.c.id == old))
            pk = conn.execute(runs.insert().values(**run_row)).inserted_primary_key[0]
            _write_rows(conn, pk, body)
            return StoredRun(pk=pk, uid=uid, rows=len(body), replaced=old is not None)

    return _retry(tx)


def read_runs(engine: Engine) -> pd.DataFrame:
    """Every stored run, oldest first: id, uid, run_id, date, git_commit, command, machine,
    fingerprint, env (a dict), source."""
    with engine.begin() as conn:
        df = pd.DataFrame(conn.execute(sa.select(runs).order_by(runs.c.date, runs.c.id)).mappings().all(),
                          columns=[c.name for c in runs.columns])
    df["env"] = [_env_of(e) for e in df["env"]]
    return df


def _env_of(text) -> dict:
    """A stored run's env.json; a value another writer left there that is not one reads as unknown ({})."""
    try:
        env = json.loads(text) if isinstance(text, (str, bytes)) and text else {}
    except ValueError:
        return {}
    return env if isinstance(env, dict) else {}


def read_records(engine: Engine) -> pd.DataFrame:
    """Every stored row, with its run's `run_pk`, `date`, `git_commit` and `machine`, oldest run first."""
    # A database opened read-only is not completed: an older one may lack the newest columns (empty here)
    have = {c["name"] for c in sa.inspect(engine).get_columns("records")}
    cols = [records.c[c] if c in have else sa.null().label(c) for c in COLUMNS]
    q = (sa.select(records.c.run_pk, runs.c.date.label("run_date"), runs.c.git_commit, runs.c.machine,
                   runs.c.fingerprint, *cols)
         .join(runs, runs.c.id == records.c.run_pk).order_by(runs.c.date, runs.c.id))
    with engine.begin() as conn:
        df = pd.DataFrame(conn.execute(q).mappings().all(), columns=["run_pk", "run_date", "git_commit", "machine",
                                                                     "fingerprint", *COLUMNS])
    return typed(df)
