"""Many machines, one benchmark: `run --shard K/N` parts, their union, and `report DIR1 DIR2 ...` merged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import cli
from bench.api import UserError
from bench.history import store
from bench.records.read import load
from bench.running.matrix import parse_shard, shard

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ["run", "--model", "lenet", "--model", "resnet8", "--model", "convnet", "--batch-size", "1",
          "--batch-size", "16", "--batch-size", "64", "--threads", "1", "--threads", "2"]


def _cells(*extra: str) -> list:
    args = cli.build_parser().parse_args([*MATRIX, *extra])
    return [c.key() for c in cli._build_run_config(args).cells]


@pytest.fixture(scope="module")
def whole() -> list:
    """The CellSpecs of MATRIX, as `accelbench run` builds them."""
    return list(cli._build_run_config(cli.build_parser().parse_args(MATRIX)).cells)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 18])
def test_shards_are_disjoint_and_their_union_is_the_whole_matrix(whole, n):
    parts = [[c.key() for c in shard(whole, k, n)] for k in range(1, n + 1)]
    keys = [c.key() for c in whole]
    assert sum(len(p) for p in parts) == len(keys)
    assert sorted(k for p in parts for k in p) == sorted(keys)
    assert all(parts)                                          # no shard is empty
    assert max(map(len, parts)) - min(map(len, parts)) <= len(keys) // 18   # balanced to within one group
    for p in parts:   # each (model, batch size, threads) group whole, its eager cell with it
        groups = {(m, b, t) for m, _, _, b, t in p}
        assert {(m, b, t) for m, pipe, _, b, t in p if pipe == "eager"} == groups
    # the same split from the matrix in another order (every machine computes it alone)
    assert parts == [[c.key() for c in shard(whole[::-1], k, n)][::-1] for k in range(1, n + 1)]


def test_run_shard_option_selects_that_part(whole):
    assert _cells("--shard", "2/3") == [c.key() for c in shard(whole, 2, 3)]


def test_bad_shards_are_refused_in_one_line():
    for text in ("0/2", "3/2", "2", "a/b", "1/0"):
        with pytest.raises(UserError, match=r"--shard .*: expected K/N with 1 <= K <= N"):
            parse_shard(text)
    with pytest.raises(UserError, match="only 18 .* group"):
        _cells("--shard", "1/19")


def test_two_shards_run_land_in_the_history_beside_out_and_merge_into_one_report(tmp_path, capsys):
    common = ["run", "--model", "lenet", "--pipeline", "eager", "--pipeline", "jit", "--batch-size", "1",
              "--batch-size", "2", "--threads", "1", "--no-isolate", "--min-time", "0.05", "--no-report"]
    for k in (1, 2):
        assert cli.main([*common, "--shard", f"{k}/2", "--out", str(tmp_path / "runs" / f"shard{k}")]) == 0
    capsys.readouterr()
    parts = [load(tmp_path / "runs" / f"shard{k}")[0] for k in (1, 2)]
    assert [sorted(set(p["batch_size"])) for p in parts] == [[1], [2]] or [sorted(set(p["batch_size"])) for p in
                                                                            parts] == [[2], [1]]
    assert all(len(p) == 2 for p in parts)
    # the default history database: beside the output folders, not in the repository
    db = tmp_path / "runs" / "history.sqlite"
    engine = store.connect(db, create=False)
    runs = store.read_runs(engine)
    engine.dispose()
    assert len(runs) == 2 and runs["uid"].nunique() == 2
    assert runs["git_commit"].str.len().min() >= 40 and set(runs["machine"]) == {runs["machine"][0]}

    # the second shard as if from another machine: one report, a machine column, both machines' figures
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "runs" / "shard2", other)
    env = json.loads((other / "env.json").read_text())
    (other / "env.json").write_text(json.dumps({**env, "cpu_model": "Other CPU 9000", "cpu_affinity": 64}))
    assert cli.main(["report", str(tmp_path / "runs" / "shard1"), str(tmp_path / "runs" / "shard2"), str(other),
                     "--out", str(tmp_path / "merged")]) == 0
    md = (tmp_path / "merged" / "report.md").read_text()
    assert "3 runs on 2 machines" in md and "| M2 | Other CPU 9000 x64 |" in md
    across = md.split("## Across machines")[1].split("## Machine M1")[0]
    lines = [l for l in across.splitlines() if l.startswith("| lenet |")]
    assert len(lines) == 4                                  # 2 pipelines x 2 batch sizes
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        bs = cells[2]
        assert cells[4] != "–"                              # M1 (both shards) has every cell
        assert (cells[7] == "–") == (bs != str(int(parts[1]["batch_size"].iloc[0])))   # M2: shard 2's only
    assert "## Machine M1" in md and "## Machine M2" in md
    assert (tmp_path / "merged" / "charts" / "M2").is_dir() and (tmp_path / "merged" / "report.html").is_file()


def test_merging_needs_an_output_folder(capsys):
    assert cli.main(["report", str(ROOT / "results" / "baseline-ci"), str(ROOT / "results" / "baseline-ci")]) == 2
    assert "--out" in capsys.readouterr().err
