"""report.html in headless Chromium: it loads with no console error and no fetch, every chart renders, and a
screenshot is not blank. Chromium is driven over the DevTools protocol on a pipe (no port, no network)."""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest

from bench.reporting import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
TIMEOUT_S = 60.0
WINDOW = (1280, 2000)


class Browser:
    """Headless Chromium with --remote-debugging-pipe: we write commands to its fd 3, read replies from fd 4."""

    def __init__(self, profile: Path) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._res_r, res_w = os.pipe()

        def fds() -> None:  # in the child, before exec: the pipe ends become fds 3 and 4
            os.dup2(cmd_r, 3)
            os.dup2(res_w, 4)
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", "--remote-debugging-pipe"],
            preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(res_w)
        self._buf, self._id, self.events = b"", 0, []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._res_r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._res_r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit code {self.proc.poll()})")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            m = self._read(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, method: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(deadline))

    def settle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read(deadline))
        except TimeoutError:
            pass

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:  # noqa: BLE001 - it is going away either way
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self._cmd_w)
        os.close(self._res_r)


def load_page(page: Path, profile: Path) -> dict:
    """Open `page`; return its console errors, exceptions, failed loads, non-local requests, what the
    DOM holds, and a screenshot (PNG bytes)."""
    b = Browser(profile)
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            b.send(f"{domain}.enable", session=s)
        b.send("Emulation.setDeviceMetricsOverride", {"width": WINDOW[0], "height": WINDOW[1],
                                                      "deviceScaleFactor": 1, "mobile": False}, session=s)
        b.send("Page.navigate", {"url": page.resolve().as_uri()}, session=s)
        b.wait_for("Page.loadEventFired")
        b.settle(0.5)
        dom = b.send("Runtime.evaluate", {"returnByValue": True, "expression": """({
            images: document.images.length,
            broken: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length,
            tables: document.querySelectorAll('table').length,
            h2: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
            text: document.body.innerText.length})"""}, session=s)["result"]["value"]
        shot = base64.b64decode(b.send("Page.captureScreenshot", {"format": "png"}, session=s)["data"])
    finally:
        b.close()
    ev = [e for e in b.events if e.get("sessionId") == s]
    p = lambda e: e.get("params", {})  # noqa: E731
    return {
        "console_errors": [p(e)["args"] for e in ev if e.get("method") == "Runtime.consoleAPICalled"
                           and p(e).get("type") in ("error", "assert", "warning")],
        "exceptions": [p(e) for e in ev if e.get("method") == "Runtime.exceptionThrown"],
        "log_errors": [p(e)["entry"] for e in ev if e.get("method") == "Log.entryAdded"
                       and p(e)["entry"].get("level") in ("error", "warning")],
        "failed_loads": [p(e) for e in ev if e.get("method") == "Network.loadingFailed"],
        "remote_requests": [p(e)["request"]["url"] for e in ev if e.get("method") == "Network.requestWillBeSent"
                            and not p(e)["request"]["url"].startswith(("file:", "data:"))],
        "dom": dom, "screenshot": shot,
    }


def _not_blank(png: bytes) -> None:
    img = mpimg.imread(io.BytesIO(png))[..., :3]
    assert img.shape[:2] == (WINDOW[1], WINDOW[0])
    inked = (img.mean(axis=2) < 0.9).mean()
    assert img.std() > 0.05 and inked > 0.01, f"screenshot looks blank (std {img.std():.3f}, inked {inked:.3%})"


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    from test_report import EDGE_CASES, _row
    rows = EDGE_CASES["long_names"] + EDGE_CASES["training"] + EDGE_CASES["all_skipped"] + [
        _row(pipeline="evil<img src=x onerror=alert(1)>", status="error", reason="<script>alert(2)</script>")]
    out = tmp_path_factory.mktemp("browser-report")
    pd.DataFrame(rows).to_csv(out / "records.csv", index=False)
    report.write(out)
    return out


def test_report_html_loads_cleanly_and_renders(report_dir, tmp_path):
    r = load_page(report_dir / "report.html", tmp_path / "profile")
    (report_dir / "screenshot.png").write_bytes(r["screenshot"])  # to look at by hand
    assert r["console_errors"] == [] and r["exceptions"] == [] and r["log_errors"] == []
    assert r["failed_loads"] == [] and r["remote_requests"] == []
    charts = sorted((report_dir / "charts").glob("*.png"))
    assert r["dom"]["images"] == len(charts) > 0 and r["dom"]["broken"] == 0
    assert r["dom"]["tables"] >= 5
    assert {"Best pipeline per model and batch size", "Environment", "Model lenet"} <= set(r["dom"]["h2"])
    _not_blank(r["screenshot"])


def test_the_browser_check_sees_errors_when_there_are_some(tmp_path):
    """The check above can fail: a page with a console error, an exception and a broken image trips it."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><h1>x</h1><script>console.error("boom"); undefinedFn();</script>'
                   '<img src="missing.png"></body></html>')
    r = load_page(bad, tmp_path / "profile")
    assert r["console_errors"] and r["exceptions"]
    assert r["dom"]["broken"] == 1 and (r["failed_loads"] or r["log_errors"])
