"""Files in an output folder, opened without following a link planted in their place.

An output folder may be shared or prepared by someone else: `OUT/records.csv -> ~/.bashrc` would make
a run append its rows to that file. Every file the harness writes in OUT is opened with `O_NOFOLLOW`
(a link as the last component is an error, not a path to follow) and must be a regular file; new files
for atomic rewrites are created with `O_EXCL`, which refuses any existing name, links included.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from pathlib import Path
from typing import IO

from bench.api import UserError

# Everything a run or a report writes directly in OUT: checked once up front, so a planted link stops
# the command before it runs anything rather than part-way through.
OUTPUT_NAMES = (".lock", "records.csv", "records.prev.csv", "samples.jsonl", "samples.prev.jsonl", "errors.log",
                "errors.prev.log", "env.json", "run.json", "report.md", "report.html", "charts", "loadgen")

_FLAGS = {"r": os.O_RDONLY, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
          "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND, "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL}


def _refusal(path: Path) -> UserError:
    return UserError(f"{path}: is a symbolic link; accelbench writes no file through a link in its output folder "
                     f"(it would change what the link points to); remove the link or choose another --out")


def open_output(path: Path, mode: str = "a", *, binary: bool = False, encoding: str = "utf-8",
                newline: str | None = None) -> IO:
    """`open(path, mode)` (mode r, w, a, a+ or x; text unless `binary`) that never follows a symbolic link
    at `path` and opens only a regular file (a FIFO would block the run, a device swallow its rows).

    Raises UserError naming `path` for a link or a non-regular file; OSError for anything else."""
    flags = _FLAGS[mode] | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK   # NONBLOCK: a FIFO cannot hang open()
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.EEXIST and os.path.islink(path)):
            raise _refusal(Path(path)) from None
        if exc.errno == errno.ENXIO:   # a FIFO with no reader
            raise UserError(f"{path}: not a regular file; remove it or choose another --out") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{path}: not a regular file; remove it or choose another --out")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        fmode = {"r": "r", "w": "w", "a": "a", "a+": "a+", "x": "w"}[mode] + ("b" if binary else "")
        return os.fdopen(fd, fmode, **({} if binary else {"encoding": encoding, "newline": newline}))
    except BaseException:
        os.close(fd)
        raise


def new_beside(path: Path, *, binary: bool = False) -> tuple[Path, IO]:
    """A new, uniquely named hidden file in `path`'s folder (created with O_EXCL, so no existing name or
    link is reused) and its open handle: the temporary file of an atomic rewrite of `path`."""
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, open_output(tmp, "x", binary=binary)
        except UserError:   # a link under a random name: someone is racing us; draw another name
            continue


def refuse_links(out: Path, names: tuple[str, ...] = OUTPUT_NAMES) -> None:
    """UserError naming the first of `names` that is a symbolic link in `out` (files and folders alike)."""
    for name in names:
        if (Path(out) / name).is_symlink():
            raise _refusal(Path(out) / name)


def real_folder(folder: Path) -> Path:
    """`folder`, created if missing; UserError when it is a symbolic link (files moved into it would land
    wherever it points)."""
    folder = Path(folder)
    if folder.is_symlink():
        raise _refusal(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
