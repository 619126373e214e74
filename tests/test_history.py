"""The results history on real database files: transactional append, concurrent writers, trends, steps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from bench import cli
from bench.history import steps, store, trends
from bench.records.read import load

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "results" / "baseline-ci"
START = datetime(2026, 11, 1, tzinfo=timezone.utc)


def make_run(tmp: Path, i: int, level: dict[str, float] | None = None, *, noise_sd: float = 0.0, seed: int = 0,
             commit: str | None = None, torch: str = "2.13.0+cpu") -> Path:
    """Run folder `i` made of the committed baseline's rows: each pipeline's speedup multiplied by
    `level[pipeline]` (default 1) and by exp(N(0, noise_sd)), its interval kept as wide (relative);
    a run id, timestamps one hour apart, its own commit and torch version in env.json."""
    df, env = load(BASELINE)
    rng = np.random.default_rng(seed * 1000 + i)
    when = START + timedelta(hours=i)
    df["run_id"] = when.strftime("%Y%m%dT%H%M%SZ")
    df["timestamp"] = when.isoformat(timespec="seconds")
    for j in df.index:
        f = (level or {}).get(df.at[j, "pipeline"], 1.0) * float(np.exp(rng.normal(0, noise_sd)))
        for c in ("speedup", "speedup_ci_low", "speedup_ci_high"):
            df.at[j, c] *= f
    out = tmp / f"run-{i:02d}"
    out.mkdir(parents=True)
    df.to_csv(out / "records.csv", index=False)
    (out / "env.json").write_text(json.dumps({**env, "git_commit": commit or f"c{i:03d}".ljust(40, "0"), "torch": torch,
                                              "run_id": df.at[0, "run_id"]}))
    return out


# --- the database, SQLite and (where a server can be started) PostgreSQL ----------------------------

def _start_postgres(tmp: Path) -> str:
    """A throw-away PostgreSQL server with its data in `tmp`, run as the `postgres` user when we are root
    (the server refuses root); its URL. Skips, saying why, when no server or driver is installed."""
    import socket

    initdb = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
    if not initdb:
        pytest.skip("PostgreSQL: no initdb on this machine (install postgresql to test against a server)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL: the psycopg driver is not installed (pip install 'psycopg[binary]')")
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg and not shutil.which("runuser"):
        pytest.skip("PostgreSQL: the server refuses to run as root, and runuser is missing")
    data = tmp / "pgdata"
    data.mkdir()
    if as_pg:
        os.chmod(tmp, 0o711)
        shutil.chown(data, "postgres")
    bindir = Path(initdb).resolve().parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(as_pg + [str(bindir / "initdb"), "-D", str(data), "-U", "bench", "--auth=trust"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run(as_pg + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(data / "log"), "-w", "-t", "60",
                            "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True, timeout=90)
    return f"postgresql+psycopg://bench@127.0.0.1:{port}/postgres"


@pytest.fixture(scope="module")
def postgres():
    """One server for the module (initdb takes seconds); each test gets its own database in it."""
    import tempfile

    # pytest's tmp folders are closed to other users, and so may be a private $TMPDIR: the server runs as
    # `postgres`, which must reach its data folder, so it goes under /tmp when $TMPDIR is closed to others.
    base = Path(tempfile.gettempdir()).resolve()
    if not all(p.stat().st_mode & 0o001 for p in (base, *base.parents)):
        base = Path("/tmp")
    tmp = Path(tempfile.mkdtemp(prefix="accelbench-pg-", dir=base))
    try:
        url = _start_postgres(tmp)
        yield url
        pg_ctl = Path(shutil.which("pg_ctl") or "pg_ctl").resolve()
        subprocess.run((["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])
                       + [str(pg_ctl), "-D", str(tmp / "pgdata"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "history.sqlite")
    url = request.getfixturevalue("postgres")
    name = f"t{abs(hash(request.node.name)) % 10**9}"
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


def _counts(url: str) -> tuple[int, int]:
    engine = store.connect(url)
    try:
        with engine.connect() as conn:
            return (conn.execute(sa.select(sa.func.count()).select_from(store.runs)).scalar(),
                    conn.execute(sa.select(sa.func.count()).select_from(store.records)).scalar())
    finally:
        engine.dispose()


CRASH = textwrap.dedent("""
    import os, sys
    from bench.history import store, trends
    real = store._write_rows
    def half_then_die(conn, pk, rows):      # the process dies with half the rows written, uncommitted
        real(conn, pk, rows[: len(rows) // 2])
        os._exit(9)
    store._write_rows = half_then_die
    trends.add(sys.argv[1], [sys.argv[2]], log=print)
""")


def test_a_crash_mid_write_leaves_the_database_as_before(db, tmp_path):
    trends.add(db, [make_run(tmp_path, 1)], log=print)
    before = _counts(db)
    assert before == (1, 8)
    proc = subprocess.run([sys.executable, "-c", CRASH, db, str(make_run(tmp_path, 2))], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert _counts(db) == before
    if db.endswith(".sqlite"):
        with sa.create_engine(f"sqlite:///{db}").connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    # an error inside the transaction (a row the database refuses) rolls back too
    engine = store.connect(db)
    with pytest.raises(sa.exc.IntegrityError):
        _append_with_null_key(engine, load(make_run(tmp_path, 3))[0])
    engine.dispose()
    assert _counts(db) == before


def _append_with_null_key(engine, df: pd.DataFrame) -> None:
    """Append whose second chunk violates a NOT NULL constraint: the first chunk must not stay."""
    real = store._write_rows

    def broken(conn, pk, rows):
        real(conn, pk, rows[:4])
        real(conn, None, rows[4:])   # run_pk is NOT NULL
    store._write_rows = broken
    try:
        store.append(engine, df, {"git_commit": "y"})
    finally:
        store._write_rows = real


WRITER = textwrap.dedent("""
    import sys, time
    from bench.history import trends
    db, start, dirs = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    while time.time() < start:   # both writers begin together
        time.sleep(0.001)
    for d in dirs:
        trends.add(db, [d], log=lambda m: None)
""")


def test_two_concurrent_writers_both_land(db, tmp_path):
    import time

    dirs = [make_run(tmp_path, i) for i in range(1, 13)]
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, db, str(start), *map(str, part)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for part in (dirs[:6], dirs[6:])]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    assert _counts(db) == (12, 12 * 8)


def test_adding_a_run_again_replaces_it(db, tmp_path):
    run = make_run(tmp_path, 1)
    first, again = trends.add(db, [run], log=print) + trends.add(db, [run], log=print)
    assert not first.replaced and again.replaced and _counts(db) == (1, 8)


# --- trends and steps ----------------------------------------------------------------------------

def _history(tmp_path: Path, n: int, level_of, noise_sd: float = 0.02, **kw) -> str:
    db = str(tmp_path / "history.sqlite")
    dirs = [make_run(tmp_path / "runs", i, level_of(i), noise_sd=noise_sd, seed=kw.pop("seed", 1),
                     torch="2.14.0+cpu" if kw.get("torch_from") is not None and i >= kw["torch_from"] else "2.13.0+cpu")
            for i in range(n)]
    assert cli.main(["history", "add", *map(str, dirs), "--db", db]) == 0
    return db


def test_history_prints_each_cell_over_runs_and_writes_a_trend_page(tmp_path, capsys):
    db = _history(tmp_path, 8, lambda i: None, noise_sd=0.0, torch_from=5)
    capsys.readouterr()
    assert cli.main(["history", "--db", db, "--html", str(tmp_path / "trend.html")]) == 0
    out = capsys.readouterr().out
    assert "history: 8 runs, 8 cells" in out
    block = out.split("lenet jit bs=64 threads=1\n")[1].split("\n\n")[0].splitlines()
    assert len(block) == 1 + 8                       # the header and one line per run
    assert "torch: 2.13.0+cpu -> 2.14.0+cpu" in block[1 + 5] and "->" not in block[1 + 4]
    base = load(BASELINE)[0].set_index(["pipeline", "batch_size"])
    assert f"{base.loc[('jit', 64), 'speedup']:.2f}x [" in block[1]     # run 0 carries the baseline's figures
    assert f"{base.loc[('jit', 64), 'accuracy'] * 100:.2f}" in block[1]
    page = (tmp_path / "trend.html").read_text()
    pngs = sorted((tmp_path / "trend-charts").glob("*.png"))
    assert len(pngs) == 8 and page.count("data:image/png;base64,") == 8
    assert "lenet onnx:ep=cpu bs=1 threads=1" in page


def test_a_planted_step_is_found_at_its_first_run_with_its_commit_and_environment(tmp_path, capsys):
    # onnx at batch 64 becomes 25% slower from run 12 on, when torch was upgraded; 2% run-to-run noise
    db = _history(tmp_path, 20, lambda i: {"onnx:ep=cpu": 0.75 if i >= 12 else 1.0}, torch_from=12)
    capsys.readouterr()
    assert cli.main(["history", "--db", db, "--model", "lenet", "--pipeline", "onnx:ep=cpu"]) == 0
    out = capsys.readouterr().out
    found = [l for l in out.splitlines() if l.startswith("STEP ")]
    assert len(found) == 2, out                              # batch 1 and batch 64, nothing else
    for line in found:
        assert "from run 2026-11-01T12:00:00+00:00 commit c012000000 " in line
        assert "(previous run 2026-11-01T11:00:00+00:00 commit c011000000)" in line
        assert "torch: 2.13.0+cpu -> 2.14.0+cpu" in line and "-25" in line.split("(")[1][:6]
    engine = store.connect(db)
    cell = next(c for c in trends.cells(engine, "lenet", "onnx:ep=cpu")[0] if "bs=64" in c.label)
    engine.dispose()
    assert [s.step.index for s in cell.steps] == [12]
    trends.chart(cell, trends.read_runs(store.connect(db)), tmp_path / "step.png")
    assert (tmp_path / "step.png").stat().st_size > 5000


@pytest.mark.parametrize("seed", range(10))
def test_a_step_beyond_noise_is_found_and_noise_alone_is_not(seed):
    rng = np.random.default_rng(seed)
    noise = 2.0 * np.exp(rng.normal(0, 0.02, 24))
    assert steps.detect(noise) == []
    stepped = noise * np.where(np.arange(24) >= 15, 0.85, 1.0)       # a 15% slowdown, 7.5 noise sd
    assert [s.index for s in steps.detect(stepped)] == [15]


@pytest.mark.parametrize("seed", range(10))
def test_a_drift_within_noise_is_not_flagged(seed):
    rng = np.random.default_rng(100 + seed)
    # 30 runs drifting 2% in all (one noise sd) from first to last, with 2% run-to-run noise
    drift = 1.5 * np.exp(np.linspace(0, -0.02, 30) + rng.normal(0, 0.02, 30))
    assert steps.detect(drift) == []


def test_one_outlier_or_a_change_in_the_last_runs_is_not_a_step():
    x = np.full(20, 2.0) * np.exp(np.random.default_rng(0).normal(0, 0.01, 20))
    spike = x.copy()
    spike[10] *= 0.5
    assert steps.detect(spike) == []
    late = x.copy()
    late[-2:] *= 0.5                    # too few runs to call it lasting yet
    assert steps.detect(late) == []


def test_history_of_a_missing_database_is_one_line(tmp_path, capsys):
    assert cli.main(["history", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "no history database there" in capsys.readouterr().err


def test_a_bad_db_url_is_refused_before_the_run(tmp_path, capsys):
    code = cli.main(["run", "--model", "lenet", "--pipeline", "eager", "--batch-size", "1", "--out",
                     str(tmp_path / "out"), "--db", "nosuchdb+driver://x/y"])
    assert code == 2 and "--db nosuchdb+driver://x/y: no driver for it" in capsys.readouterr().err
    assert not (tmp_path / "out" / "records.csv").exists()


@pytest.mark.parametrize("cut", ["mid_row", "header_only"])
def test_a_cut_or_empty_run_is_refused_and_the_stored_run_kept(db, tmp_path, capsys, cut):
    """A records.csv cut in the middle of a row (a run killed mid-write, a truncated copy) would store
    an `ok` row without figures over the good run; a header-only one, a run of nothing."""
    run = make_run(tmp_path, 1)
    trends.add(db, [run], log=print)
    text = (run / "records.csv").read_text()
    lines = text.splitlines(keepends=True)
    (run / "records.csv").write_text(lines[0] + lines[1][:100] if cut == "mid_row" else lines[0])
    capsys.readouterr()
    assert cli.main(["history", "add", str(run), "--db", db]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("cut short" in err or "fields" in err or "holds no rows" in err), err
    assert _counts(db) == (1, 8)   # the complete run stays as it was
    if cut == "mid_row":
        assert cli.main(["compare", str(make_run(tmp_path / "base", 1)), str(run)]) == 2


def test_environment_changes_are_worked_out_once_per_pair_of_runs(monkeypatch):
    """The stored fingerprint hash says two runs share an environment; a pair that differs is diffed once
    for the steps, the table and the chart alike."""
    from bench.history import trends

    envs = [{"torch": "2.13.0"}, {"torch": "2.13.0"}, {"torch": "2.14.0"}]
    runs = pd.DataFrame({"id": [1, 2, 3], "fingerprint": [store.fingerprint_hash(e) for e in envs], "env": envs})
    calls = []
    real = trends.fingerprint_diff
    monkeypatch.setattr(trends, "fingerprint_diff", lambda a, b: calls.append((a, b)) or real(a, b))
    changes = trends.EnvChanges(runs)
    assert changes.between(1, 2) == [] and calls == []
    assert changes.between(2, 3) == ["torch: 2.13.0 -> 2.14.0"] == changes.between(2, 3)
    assert len(calls) == 1
