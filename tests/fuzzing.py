"""Hypothesis strategies and checks shared by the fuzz suites (tests/test_fuzz_cli.py, tests/test_fuzz_files.py).

The number of examples comes from a Hypothesis profile chosen by $ACCELBENCH_FUZZ: `ci` (the default,
bounded so `make test` stays short) or `long` (for a fuzzing session: ACCELBENCH_FUZZ=long make test).
No example database is kept (nothing is written into the repository).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from bench.cli import EXIT_FAILED_CELLS, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, main

PROFILE_ENV_VAR = "ACCELBENCH_FUZZ"
_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=10, **_COMMON)
settings.register_profile("long", max_examples=1000, **_COMMON)
FUZZ = settings.get_profile(os.environ.get(PROFILE_ENV_VAR, "ci"))
EXIT_CODES = {EXIT_OK, EXIT_FAILED_CELLS, EXIT_USAGE, EXIT_INTERRUPTED}


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str


def call(argv: list[str]) -> Outcome:
    """`accelbench ARGV` in this process, its stdout and stderr captured. Python warnings (a library's
    deprecation notice) are not the harness's message and are silenced."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("ignore")
        code = main(argv)
    return Outcome(code, out.getvalue(), err.getvalue())


def assert_clean(o: Outcome, argv: list[str]) -> None:
    """The guarantee for every input: a known exit code; a refusal (2) is one line, no traceback."""
    assert o.code in EXIT_CODES, (argv, o)
    assert "Traceback" not in o.err and "Traceback" not in o.out, (argv, o.err)
    if o.code == EXIT_USAGE:
        lines = [ln for ln in o.err.splitlines() if ln.strip()]
        assert len(lines) == 1, (argv, o.err)
        assert lines[0].startswith("accelbench"), (argv, o.err)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# --- strategies -------------------------------------------------------------------------------------

NUMBER_TEXT = st.one_of(
    st.integers(-10, 10 ** 15).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "0", "-0", "1e400", "nan", "inf", "-inf", "0x10", "1_000", " 3", "3 ", "٣", "1/2"]),
)
JUNK = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
TOKEN = st.text(alphabet="abcdefgxyz019:@+=,;.-_/ ", max_size=16)

TECHNIQUE_NAMES = ["eager", "jit", "fusion", "prune", "quantize", "channels_last", "onnx", "separable", "gpu",
                   "data_parallel", "no_such_technique"]
PARAMS = st.sampled_from(["amount", "mode", "ep", "backend", "microbatches", "bogus"])


@st.composite
def pipelines(draw) -> str:
    """Pipeline strings: transforms joined by +, then @ and a runtime, each with name=value params, or junk."""
    def one() -> str:
        name = draw(st.sampled_from(TECHNIQUE_NAMES))
        params = draw(st.lists(st.tuples(PARAMS, st.one_of(NUMBER_TEXT, TOKEN)), max_size=2))
        return name + "".join(f":{k}={v}" for k, v in params)
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(TOKEN)
    if kind == 1:
        return one()
    transforms = "+".join(one() for _ in range(draw(st.integers(0, 2))))
    return f"{transforms}@{one()}" if transforms or draw(st.booleans()) else one()


SHAPES = st.one_of(
    st.tuples(st.integers(-2, 4), st.integers(-2, 64), st.integers(-2, 64)).map(lambda t: "x".join(map(str, t))),
    st.tuples(st.integers(1, 3), st.integers(1, 10 ** 6), st.integers(1, 10 ** 6)).map(lambda t: "x".join(map(str, t))),
    TOKEN,
)


def data_specs(folder: Path) -> st.SearchStrategy[str]:
    """Data specs: every kind, pointing at missing, empty or garbage paths, with good and bad options.
    Module factories come from a fixed list: a random module name could import anything installed."""
    base = st.sampled_from(["digits", "synthetic", f"mnist:{folder}/missing", f"imagefolder:{folder}/empty",
                            f"cifar10:{folder}/empty", f"npz:{folder}/garbage.bin", f"npz:{folder}/empty.npz",
                            "npz:", "no_such_module_xyz:load", "json:loads", "math:pi", "digits:extra", "nope"])
    option = st.one_of(st.tuples(st.sampled_from(["mean", "std", "eval", "bogus"]), NUMBER_TEXT)
                       .map(lambda kv: f";{kv[0]}={kv[1]}"), st.just(";"), st.just(";eval"))
    return st.one_of(st.builds(lambda b, opts: b + "".join(opts), base, st.lists(option, max_size=2)), TOKEN)


def weights_files(folder: Path) -> st.SearchStrategy[str]:
    """--weights values: a missing file, an empty one, garbage, a folder, with or without MODEL=."""
    path = st.sampled_from([f"{folder}/missing.pt", f"{folder}/empty.pt", f"{folder}/garbage.bin",
                            f"{folder}/empty", f"{folder}/state.safetensors", ""])
    return st.builds(lambda m, p: f"{m}{p}", st.sampled_from(["", "lenet=", "nosuch=", "="]), path)


MODELS = st.sampled_from(["lenet", "resnet8", "no_such_model", "exits_at_import:build", "raises_at_import:build",
                          "json:loads", "missing_file.py:build", "lenet:extra", ":", ""])


def make_scratch(folder: Path) -> Path:
    """The files the strategies point at: empty and garbage files, an empty folder, bad modules."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty").mkdir(exist_ok=True)
    (folder / "empty.pt").write_bytes(b"")
    (folder / "empty.npz").write_bytes(b"")
    (folder / "garbage.bin").write_bytes(bytes(range(256)) * 8)
    (folder / "state.safetensors").write_bytes(b"\xff" * 64)
    (folder / "exits_at_import.py").write_text("import sys\nsys.exit(3)\n")
    (folder / "raises_at_import.py").write_text("raise ValueError('broken at import')\n")
    return folder
