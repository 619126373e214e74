"""Render report blocks as Markdown and as one self-contained HTML page (charts inlined, no scripts, no fetches)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

# A block is a tuple: ("h1"|"h2"|"h3"|"p"|"note", text), ("list", [items]),
# ("table", headers, rows), ("img", path, caption).

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
 padding:0 1.2em;color:#1d1d1f;background:#fff}
h1{font-size:1.7em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:2px solid #e3e3e8;padding-bottom:.2em}
h3{margin-top:1.3em;color:#333}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #d8d8de;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f3f3f7;position:sticky;top:0}
td:first-child,th:first-child{text-align:left;white-space:normal;overflow-wrap:anywhere;min-width:14em;max-width:26em}
th.t{text-align:left}td.t{text-align:left;white-space:normal;overflow-wrap:anywhere;min-width:7em;max-width:40em}
tr:nth-child(even) td{background:#fafafc}
td.v-faster,td.v-kept{color:#0a6b2e;font-weight:600}td.v-slower,td.v-lost{color:#a3141c;font-weight:600}
td.v-nogain{color:#6b5a00}td.t{text-align:left}td.wide{text-align:left;white-space:normal;min-width:22em;max-width:50em}
figure{margin:1em 0 2em}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#555}.note{color:#555;font-size:14px}
"""

_NUMBER = re.compile(r"^[+-]?\d[\d.,e+-]*( \[[\d.e+-]+–[\d.e+-]+\])?$")
_VERDICT_CLASS = {"faster": "v-faster", "slower": "v-slower", "no gain": "v-nogain",
                  "accuracy kept": "v-kept", "accuracy lost": "v-lost"}


def markdown(blocks: list[tuple], base: Path) -> str:
    """Markdown with images linked relative to `base` (the report's folder)."""
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {b[1]}\n")
        elif kind in ("p", "note"):
            out.append(f"{b[1]}\n")
        elif kind == "list":
            out.append("\n".join(f"- {_md_cell(i)}" for i in b[1]) + "\n")
        elif kind == "table":
            headers, rows = b[1], b[2]
            lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
                     "|" + "|".join("---:" if _numeric(rows, i) else "---" for i in range(len(headers))) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
            out.append("\n".join(lines) + "\n")
        elif kind == "img":
            rel = Path(b[1]).relative_to(base) if Path(b[1]).is_relative_to(base) else Path(b[1])
            out.append(f"![{_md_cell(b[2])}]({rel.as_posix()})\n")
    return "\n".join(out)


def _numeric(rows: list, i: int) -> bool:
    """A column of figures (right-aligned): every cell a number, a dash or a number with a CI."""
    cells = [str(r[i]) for r in rows if str(r[i]) not in ("–", "")]
    return bool(cells) and all(_NUMBER.match(c) for c in cells)


def _md_cell(v) -> str:
    return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def page(blocks: list[tuple], title: str) -> str:
    """The whole HTML document; every string from the data is escaped, every chart is a data: URI."""
    e = html.escape
    body: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{e(str(b[1]))}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{e(str(b[1]))}</p>")
        elif kind == "note":
            body.append(f'<p class="note">{e(str(b[1]))}</p>')
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            num = [_numeric(b[2], i) for i in range(len(b[1]))]
            head = "".join(f"<th>{e(str(h))}</th>" if n else f'<th class="t">{e(str(h))}</th>' for h, n in zip(b[1], num))
            # pipeline strings may break only after their own separators (+ @ , :), never mid-word
            pipe = [i == 0 or any(w in str(h).lower() for w in ("pipeline", "strategy")) for i, h in enumerate(b[1])]
            rows = "".join("<tr>" + "".join(_td(h, c, n, w) for h, c, n, w in zip(b[1], r, num, pipe))
                           + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(str(b[2]))}">'
                        f"<figcaption>{e(str(b[2]))}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<link rel=\"icon\" href=\"data:,\"><title>{e(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _td(header: str, cell, numeric: bool, pipeline: bool) -> str:
    text = str(cell)
    wide = str(header).lower().startswith(("reason", "figures"))
    cls = " ".join(filter(None, [_VERDICT_CLASS.get(text), "wide" if wide else "" if numeric else "t"]))
    inner = html.escape(text)
    if pipeline:
        inner = re.sub(r"([+@,:])", r"\1<wbr>", inner)
    return f'<td class="{cls}">{inner}</td>' if cls else f"<td>{inner}</td>"
