"""Render report blocks as Markdown and as one self-contained HTML page (charts inlined, one inline sorting script, no fetches)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Callable

from bench.reporting.blocks import Block, Bullets, Chart, Details, HeatMap, Note, Paragraph, Section, Table

# Headings stop at the third level: a merged report nests each machine's whole report one level down,
# and its sections keep the third level rather than shrinking below the text around them.
MAX_HEADING_LEVEL = 3

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
details>summary{cursor:pointer}details>summary>h2,details>summary>h3{display:inline-block;margin:.6em 0 .2em}
table.heat{font-size:12px;margin-top:.3em}table.heat td{text-align:center;min-width:5em;padding:1px 6px}
table.heat td:first-child{text-align:left;max-width:30em}
th.sortable{cursor:pointer}th.sortable:after{content:" \\2195";color:#aaa;font-size:11px}
"""
# Click a column heading to sort its table (numbers by their first figure, text alphabetically); a second
# click reverses. Inline, no fetch: the page stays one self-contained file.
SORT_JS = """document.querySelectorAll('th.sortable').forEach(function(th){th.addEventListener('click',function(){
var b=th.closest('table').tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th),up=th.dataset.dir!=='up';
th.dataset.dir=up?'up':'down';function k(r){var s=r.cells[i]?r.cells[i].textContent:'',
m=s.match(/[-+]?[0-9]*[.]?[0-9]+(e[-+]?[0-9]+)?/i);return m&&/^[-+0-9.]/.test(s.trim())?parseFloat(m[0]):s}
Array.from(b.rows).sort(function(x,y){var a=k(x),c=k(y),d=(typeof a==='number'&&typeof c==='number')?a-c:
String(a).localeCompare(String(c));return up?d:-d}).forEach(function(r){b.appendChild(r)})})})"""

_NUMBER = re.compile(r"^[+-]?\d[\d.,e+-]*( \[[\d.e+-]+–[\d.e+-]+\])?$")
_VERDICT_CLASS = {"faster": "v-faster", "slower": "v-slower", "no gain": "v-nogain",
                  "accuracy kept": "v-kept", "accuracy lost": "v-lost", "predictions changed": "v-lost",
                  "withheld": "v-nogain", "accuracy not measured": "v-nogain"}


def markdown(doc: Section, link: Callable[[Path], Path] = Path) -> str:
    """Markdown of the whole document; `link` maps a chart's file to the path the page links it by."""
    out: list[str] = []
    _markdown(doc, 1, link, out)
    return "\n".join(out)


def _markdown(block: Block, depth: int, link: Callable[[Path], Path], out: list[str]) -> None:
    match block:
        case Section():
            out.append(f"{'#' * min(depth, MAX_HEADING_LEVEL)} {_md_text(block.title)}\n")
            for b in block.blocks:
                _markdown(b, depth + 1, link, out)
        case Paragraph() | Note():
            out.append(f"{_md_text(block.text)}\n")
        case Bullets():
            out.append("\n".join(f"- {_md_cell(i)}" for i in block.items) + "\n")
        case Table():
            headers, rows = block.headers, block.rows
            lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
                     "|" + "|".join("---:" if _numeric(rows, i) else "---" for i in range(len(headers))) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
            out.append("\n".join(lines) + "\n")
        case Chart():
            out.append(f"![{_md_cell(block.title)}]({link(block.path).as_posix()})\n")
        case _:
            raise TypeError(f"not a report block: {block!r}")


def _numeric(rows: list, i: int) -> bool:
    """A column of figures (right-aligned): every cell a number, a dash or a number with a CI."""
    cells = [str(r[i]) for r in rows if str(r[i]) not in ("–", "")]
    return bool(cells) and all(_NUMBER.match(c) for c in cells)


def _md_text(v) -> str:
    """Text as Markdown shows it, never as HTML: Markdown passes raw HTML through (a model named
    `<script>...` would run in a viewer that renders report.md), so < > & are written as entities."""
    return html.escape(str(v), quote=False)


def _md_cell(v) -> str:
    return _md_text(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def page(doc: Section, title: str) -> str:
    """The whole HTML document; every string from the data is escaped, every chart is a data: URI."""
    body: list[str] = []
    _html(doc, 1, body)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<link rel=\"icon\" href=\"data:,\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + f"\n<script id=\"sortable-tables\">{SORT_JS}</script></body></html>\n")


def _html(block: Block, depth: int, body: list[str]) -> None:
    e = html.escape
    match block:
        case Details():
            h = f"h{min(depth, MAX_HEADING_LEVEL)}"
            body.append(f"<details><summary><{h}>{e(str(block.title))}</{h}></summary>")
            for b in block.blocks:
                _html(b, depth + 1, body)
            body.append("</details>")
        case HeatMap():
            head = "".join(f'<th class="t">{e(str(h))}</th>' for h in block.headers)
            rows = "".join("<tr>" + "".join(f'<td style="background:{e(s)}">{e(str(c))}</td>' if s else
                                            f"<td>{e(str(c))}</td>" for c, s in zip(r, shades)) + "</tr>"
                           for r, shades in zip(block.rows, block.shades))
            body.append(f'<table class="heat"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')
        case Section():
            h = f"h{min(depth, MAX_HEADING_LEVEL)}"
            body.append(f"<{h}>{e(str(block.title))}</{h}>")
            for b in block.blocks:
                _html(b, depth + 1, body)
        case Paragraph():
            body.append(f"<p>{e(str(block.text))}</p>")
        case Note():
            body.append(f'<p class="note">{e(str(block.text))}</p>')
        case Bullets():
            body.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in block.items) + "</ul>")
        case Table():
            headers, rows = block.headers, block.rows
            num = [_numeric(rows, i) for i in range(len(headers))]
            head = "".join(f'<th class="sortable">{e(str(h))}</th>' if n else f'<th class="t sortable">{e(str(h))}</th>'
                           for h, n in zip(headers, num))
            # pipeline strings may break only after their own separators (+ @ , :), never mid-word
            pipe = [i == 0 or any(w in str(h).lower() for w in ("pipeline", "strategy")) for i, h in enumerate(headers)]
            cells = "".join("<tr>" + "".join(_td(h, c, n, w) for h, c, n, w in zip(headers, r, num, pipe))
                            + "</tr>" for r in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        case Chart():
            data = base64.b64encode(Path(block.path).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(str(block.title))}">'
                        f"<figcaption>{e(str(block.title))}</figcaption></figure>")
        case _:
            raise TypeError(f"not a report block: {block!r}")


def _td(header: str, cell, numeric: bool, pipeline: bool) -> str:
    text = str(cell)
    wide = str(header).lower().startswith(("reason", "figures"))
    cls = " ".join(filter(None, [_VERDICT_CLASS.get(text), "wide" if wide else "" if numeric else "t"]))
    inner = html.escape(text)
    if pipeline:
        inner = re.sub(r"([+@,:])", r"\1<wbr>", inner)
    return f'<td class="{cls}">{inner}</td>' if cls else f"<td>{inner}</td>"
