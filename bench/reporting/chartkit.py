"""Chart helpers shared by the report's plots: labels that stay distinct, colours, log ticks, atomic PNG saves."""

from __future__ import annotations

import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here, and none needed: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from bench.records.write import atomic_write  # noqa: E402
from bench.reporting.verdicts import BASELINE_PIPELINE  # noqa: E402

DPI = 110
LABEL_WIDTH_CHARS = 30
MAX_LABEL_LINES = 4
LOG_SPAN_RATIO = 30.0     # a value axis spanning more than this factor gets a log scale
BAR_HEIGHT_IN = 0.42


def slug(text: str) -> str:
    """A file-name-safe form of a model name. A name that had to change gets a hash of the original,
    so `pkg.mod:net` and `pkg.mod_net` cannot write (and show) each other's charts."""
    text = str(text)
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"
    if clean == text:
        return clean
    import hashlib
    return f"{clean}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def short_labels(names: list[str], width: int = LABEL_WIDTH_CHARS) -> list[str]:
    """Wrap long pipeline strings at their own separators (+ @ , :) so each stays readable; if a
    label must be cut, the cut is in the middle, and labels that would collide keep their full text."""
    out = [_wrap(n, width, MAX_LABEL_LINES) for n in names]
    seen: dict[str, int] = {}
    for lab in out:
        seen[lab] = seen.get(lab, 0) + 1
    return [(_wrap(n, width, 99) if seen[lab] > 1 else lab) for n, lab in zip(names, out)]


def _wrap(text: str, width: int, max_lines: int) -> str:
    tokens = [t for t in re.split(r"(?<=[+@,:])", text) if t]
    lines, cur = [], ""
    for tok in tokens:
        while len(tok) > width:  # a single over-long token: hard split
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(tok[:width])
            tok = tok[width:]
        if len(cur) + len(tok) > width and cur:
            lines.append(cur)
            cur = tok
        else:
            cur += tok
    if cur:
        lines.append(cur)
    if len(lines) > max_lines:
        keep_tail = lines[-1]
        lines = lines[:max_lines - 1] + ["…" + keep_tail[-(width - 1):]]
    return "\n".join(lines)


def colours(pipelines: list[str]) -> dict[str, tuple]:
    """One colour per pipeline, the same in every chart of a report (eager is always black)."""
    cmap = plt.get_cmap("tab10" if len(pipelines) <= 10 else "tab20")
    others = [p for p in sorted(pipelines) if p != BASELINE_PIPELINE]
    out = {p: cmap(i % cmap.N) for i, p in enumerate(others)}
    out[BASELINE_PIPELINE] = (0.1, 0.1, 0.1, 1.0)
    return out


def save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    # A 256-colour palette is visually the same for these flat charts and ~2.5x smaller, which
    # keeps the self-contained report.html (every chart inlined) a reasonable size.
    from PIL import Image
    buf.seek(0)
    small = io.BytesIO()
    Image.open(buf).convert("RGB").quantize(256).save(small, format="PNG", optimize=True)
    atomic_write(path, small.getvalue())
    return path


def wants_log(values) -> bool:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], dtype=float)
    return len(v) > 1 and v.max() / v.min() > LOG_SPAN_RATIO


def plain_log_ticks(axis) -> None:
    """Log-axis labels as plain numbers (0.1, 20, 300) instead of 10^-1 and crowded 3x10^0 minors;
    1-2-5 steps when the axis spans under three decades, so it never shows a single label. Call it
    after the limits are set."""
    lo, hi = sorted(axis.get_view_interval())
    few = lo > 0 and hi / lo < 1e3
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if few else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _p=None: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def times_formatter(v: float, _pos=None) -> str:
    return f"{v:g}x"


def footnote(ax, text: str) -> None:
    if text:
        # below the x label (bbox_inches="tight" grows the canvas to include it), so it covers nothing
        ax.annotate(text, xy=(0, 0), xycoords="axes fraction", xytext=(0, -44), textcoords="offset points",
                    fontsize=8, color="0.35", va="top", annotation_clip=False)


def not_shown(g: pd.DataFrame) -> str:
    bad = g[g["status"] != "ok"]
    if not len(bad):
        return ""
    counts = bad["status"].value_counts()
    what = ", ".join(f"{n} {s}" for s, n in counts.items())
    names, shown = sorted(set(bad["pipeline"])), []
    for name in names:  # whole names only: a name cut mid-way reads as another pipeline
        if len(", ".join(shown + [name])) > 90:
            break
        shown.append(name)
    more = f", +{len(names) - len(shown)} more" if len(shown) < len(names) else ""
    return f"not shown: {what} ({', '.join(shown)}{more}); reasons in the report"
