"""The report's first screen in headless Chromium at 1400x900: each run's answer and heat map are on screen
without scrolling, no table is wider than the window, the detail sections are folded and their tables sort.
Asserted from the DOM (element bounding boxes); the screenshot is kept beside the report."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.reporting import report
from test_report_browser import CHROMIUM, Browser

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
ROOT = Path(__file__).resolve().parents[1]
VIEW = (1400, 900)

FIRST_SCREEN_JS = """(() => {
  const box = e => { const r = e.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, left: r.left,
                                                                   right: r.right, width: r.width}; };
  const answer = Array.from(document.querySelectorAll('h2')).find(h => h.textContent.startsWith('Answer for'));
  const heat = document.querySelector('table.heat');
  let answerTable = answer; while (answerTable && answerTable.tagName !== 'TABLE') answerTable = answerTable.nextElementSibling;
  return {answer: answer ? {text: answer.textContent, box: box(answer)} : null,
          answerTable: answerTable ? box(answerTable) : null,
          answerText: answerTable ? answerTable.innerText : '',
          heat: heat ? {box: box(heat), rows: heat.tBodies[0].rows.length,
                        shaded: Array.from(heat.querySelectorAll('td[style]')).length} : null,
          tables: Array.from(document.querySelectorAll('table')).map(t => box(t).width),
          window: {width: window.innerWidth, height: window.innerHeight},
          scrollWidth: document.documentElement.scrollWidth,
          details: document.querySelectorAll('details').length,
          open: document.querySelectorAll('details[open]').length};
})()"""

SORT_JS = """(() => {
  const d = Array.from(document.querySelectorAll('details')).find(d => d.querySelector('table th.sortable'));
  d.open = true;
  const t = d.querySelector('table');
  const col = Array.from(t.tHead.rows[0].cells).findIndex(th => th.textContent.startsWith('Speedup'));
  const i = col < 0 ? 0 : col;
  t.tHead.rows[0].cells[i].click();
  const first = Array.from(t.tBodies[0].rows).map(r => r.cells[i].textContent);
  t.tHead.rows[0].cells[i].click();
  const second = Array.from(t.tBodies[0].rows).map(r => r.cells[i].textContent);
  return {first, second, numeric: col >= 0};
})()"""


def first_screen(page: Path, profile: Path) -> dict:
    """Open `page` at 1400x900; the first screen's boxes (FIRST_SCREEN_JS), a sort test, a screenshot."""
    b = Browser(profile)
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Page"):
            b.send(f"{domain}.enable", session=s)
        b.send("Emulation.setDeviceMetricsOverride", {"width": VIEW[0], "height": VIEW[1], "deviceScaleFactor": 1,
                                                      "mobile": False}, session=s)
        b.send("Page.navigate", {"url": page.resolve().as_uri()}, session=s)
        b.wait_for("Page.loadEventFired")
        b.settle(0.5)
        dom = b.send("Runtime.evaluate", {"returnByValue": True, "expression": FIRST_SCREEN_JS}, session=s)
        shot = base64.b64decode(b.send("Page.captureScreenshot", {"format": "png"}, session=s)["data"])
        sort = b.send("Runtime.evaluate", {"returnByValue": True, "expression": SORT_JS}, session=s)
        errors = [e for e in b.events if e.get("method") == "Runtime.exceptionThrown"]
    finally:
        b.close()
    return {"dom": dom["result"]["value"], "sort": sort["result"].get("value"), "shot": shot, "errors": errors}


def assert_first_screen(folder: Path, profile: Path, expect_answer: str | None = None, min_heat_rows: int = 2) -> dict:
    """The checks of the module docstring on folder/report.html; keeps folder/first-screen.png."""
    r = first_screen(folder / "report.html", profile)
    (folder / "first-screen.png").write_bytes(r["shot"])
    print(f"first screen kept in {folder / 'first-screen.png'}")
    d = r["dom"]
    assert r["errors"] == []
    assert d["window"] == {"width": VIEW[0], "height": VIEW[1]}
    assert d["answer"] is not None and d["answer"]["box"]["top"] >= 0
    assert d["answerTable"]["bottom"] <= VIEW[1], "the answer is below the first screen"
    assert d["heat"] is not None and d["heat"]["rows"] >= min_heat_rows and d["heat"]["shaded"] >= min_heat_rows
    assert d["heat"]["box"]["bottom"] <= VIEW[1], f"the heat map ends at {d['heat']['box']['bottom']} px, below 900"
    assert max(d["tables"]) <= VIEW[0] and d["scrollWidth"] <= VIEW[0], "a table is wider than the window"
    assert d["details"] >= 3 and d["open"] == 0
    if expect_answer:
        assert expect_answer in d["answerText"]
    s = r["sort"]
    assert s["first"] and s["first"] != s["second"] or len(set(s["first"])) == 1
    if s["numeric"]:
        nums = [float(v.split()[0].rstrip("x")) for v in s["first"] if v.strip() not in ("–", "")]
        assert nums == sorted(nums)
    return d


def test_a_real_runs_report_opens_with_its_answer_and_heat_map_on_one_screen(tmp_path):
    # the committed reference run: real rows of five models, 22 pipelines at batch 1 and 64
    src = ROOT / "results" / "reference-cpu"
    for name in ("records.csv", "env.json"):
        if (src / name).is_file():
            shutil.copy(src / name, tmp_path / name)
    df = pd.read_csv(tmp_path / "records.csv")
    df[df["model"] == "lenet"].to_csv(tmp_path / "records.csv", index=False)   # one model, as a user's run
    report.write(tmp_path)
    d = assert_first_screen(tmp_path, tmp_path / "profile", expect_answer="batch 1")
    assert d["answer"]["text"] == "Answer for lenet"
