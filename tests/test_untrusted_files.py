"""Files a run reads but did not write (data pickles, links planted in the output folder) run no code and
reach nothing outside the output folder."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import data as data_mod
from bench.api import UserError

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """What a hostile batch holds: unpickling it runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _cifar_folder(root: Path, hostile: dict[str, object] | None = None, n: int = 20) -> Path:
    """The six CIFAR-10 python batches, each a dict with `data` and `labels`; `hostile` adds entries
    to data_batch_1's dict (pickled by the real pickle module, as an attacker would)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)],
             b"batch_label": name.encode(), b"filenames": [f"{i}.png".encode() for i in range(n)]}
        if name == "data_batch_1" and hostile:
            d.update(hostile)
        (root / name).write_bytes(pickle.dumps(d, protocol=2))
    return root


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_plain_batch_of_any_protocol_still_loads(tmp_path, protocol):
    root = _cifar_folder(tmp_path / "c")
    x = np.arange(20 * 3072, dtype=np.uint64).astype(np.uint8).reshape(20, 3072)
    (root / "test_batch").write_bytes(pickle.dumps({b"data": x, b"labels": [np.int64(i % 10) for i in range(20)]},
                                                   protocol=protocol))
    ds = data_mod.load(f"cifar10:{root};mean=0,0,0;std=1,1,1", (3, 32, 32))
    assert len(ds.train_y) == 100 and ds.test_y.tolist() == [i % 10 for i in range(20)]
    assert np.allclose(ds.test_x[3].numpy() * 255, x[3].reshape(3, 32, 32), atol=1e-3)


def test_a_batch_that_runs_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "marker"
    root = _cifar_folder(tmp_path / "c", hostile={b"extra": _Payload(marker)})
    # The real pickle module would run it: the payload is live.
    pickle.loads((root / "data_batch_1").read_bytes(), encoding="bytes")
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError, match=r"data_batch_1: not a CIFAR-10 python batch .*refused to load posix\.system"):
        data_mod.load(f"cifar10:{root}", (3, 32, 32))
    assert not marker.exists()


def test_accelbench_run_on_a_hostile_batch_says_one_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    root = _cifar_folder(tmp_path / "c", hostile={b"extra": _Payload(marker)})
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--model", "lenet", "--pipeline", "eager",
                           "--data", f"cifar10:{root}", "--input-shape", "lenet=3x32x32", "--out", str(tmp_path / "out"),
                           "--no-history", "--no-report"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "data_batch_1: not a CIFAR-10 python batch" in lines[0] and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_the_rendezvous_roll_call_rebuilds_torch_state_but_no_payload(tmp_path):
    from datetime import datetime, timezone

    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

    from bench import restricted_pickle
    from bench.training.multihost import _rendezvous_state_globals

    state = dr._RendezvousState()
    node = dr._NodeDesc("10.0.0.2", 7, 0)
    state.participants[node], state.complete = 0, True
    state.last_heartbeats[node] = datetime.now(timezone.utc)
    got = restricted_pickle.loads(pickle.dumps(state), _rendezvous_state_globals())
    assert got.participants == {node: 0} and got.complete
    marker = tmp_path / "marker"
    with pytest.raises(pickle.UnpicklingError, match="refused to load posix.system"):
        restricted_pickle.loads(pickle.dumps(_Payload(marker)), _rendezvous_state_globals())
    assert not marker.exists()


def _victim(tmp_path: Path) -> tuple[Path, bytes]:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"the user's own file\n")
    return victim, victim.read_bytes()


@pytest.mark.parametrize("name", [".lock", "samples.jsonl", "records.csv", "errors.log", "charts"])
def test_accelbench_run_refuses_a_planted_link_and_leaves_its_target_alone(tmp_path, name):
    victim, before = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim)
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--model", "lenet", "--pipeline", "eager",
                           "--out", str(out), "--no-history", "--no-report"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{out / name}: is a symbolic link" in lines[0], proc.stderr
    assert victim.read_bytes() == before and (out / name).is_symlink()


def test_every_writer_refuses_a_link_even_when_planted_after_the_check(tmp_path):
    from bench.records import write

    victim, before = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    write.ensure_writable(out)   # the link arrives after the up-front check: each open refuses it itself
    for name in (".lock", "samples.jsonl", "records.csv"):
        (out / name).symlink_to(victim)
    with pytest.raises(UserError, match=r"\.lock: is a symbolic link"):
        write.OutputLock(out).__enter__()
    with pytest.raises(UserError, match=r"samples\.jsonl: is a symbolic link"):
        write.write_jsonl(out / "samples.jsonl", [{"model": "lenet", "samples_s": [0.001]}])
    with pytest.raises(UserError, match=r"records\.csv: is a symbolic link"):
        write.RecordWriter(out / "records.csv")
    assert victim.read_bytes() == before


def test_an_atomic_rewrite_replaces_a_link_and_never_writes_through_it(tmp_path):
    from bench.records import write

    victim, before = _victim(tmp_path)
    (tmp_path / "report.md").symlink_to(victim)
    write.atomic_write(tmp_path / "report.md", "# report\n")
    assert victim.read_bytes() == before
    assert not (tmp_path / "report.md").is_symlink() and (tmp_path / "report.md").read_text() == "# report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "victim.txt"]   # no temporary file left


def test_a_fifo_in_place_of_an_output_file_is_refused_not_waited_on(tmp_path):
    from bench.records import write

    os.mkfifo(tmp_path / "samples.jsonl")
    with pytest.raises(UserError, match=r"samples\.jsonl: not a regular file"):
        write.write_jsonl(tmp_path / "samples.jsonl", [{"x": 1}])


def test_sigterm_during_report_removes_its_staging_folder(tmp_path):
    import signal
    import time

    out = tmp_path / "rep"
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "report", str(REPO / "results" / "reference-cpu"),
                             "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob(".charts-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None and list(out.glob(".charts-*")), "the report finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert not list(out.glob(".charts-*")) and "Traceback" not in err


def test_the_default_history_database_stays_out_of_a_folder_every_user_can_write(tmp_path, monkeypatch):
    from bench.history import store

    monkeypatch.delenv(store.DB_ENV_VAR, raising=False)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)   # as /tmp is
    assert store.default_db(shared / "run") == str(shared / "run" / store.HISTORY_FILENAME)
    mine = tmp_path / "results"
    mine.mkdir(mode=0o755)
    mine.chmod(0o755)
    assert store.default_db(mine / "run") == str(mine / store.HISTORY_FILENAME)
