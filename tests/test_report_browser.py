"""report.html in a real browser: headless Chromium (Debian's `chromium`, installed by scripts/setup.sh)
renders the page built from hand-written results (test_report.write_runs); every table must be there
with its rows, every image must decode and be painted, and the page must be neither blank nor wider
than the window.

Two renders: a copy of the page with a probe script appended (the report itself has no script)
reports what the browser laid out through --dump-dom; the unmodified page is then screenshot at the
height the probe measured, and the pixels inside each image's box are checked.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report import write_runs

from vitrobust.report import build_report

WIDTH = 1200
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

PROBE = """<script>
addEventListener("load", () => {
  const box = (el) => { const r = el.getBoundingClientRect();
                        return {x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height}; };
  const tables = [...document.querySelectorAll("table")].map((t) => ({
    id: t.id, rows: t.tBodies[0].rows.length, cols: t.tHead.rows[0].cells.length, text: t.innerText,
    ...box(t)}));
  const images = [...document.images].map((img) => ({
    alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth, ...box(img)}));
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({tables, images, title: document.title,
    width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight,
    textLength: document.body.innerText.length});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.fail("headless Chromium is not installed: run scripts/setup.sh (it installs Debian's `chromium` "
                "package with apt-get), or `apt-get install chromium`")


def render(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1",
           f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


@pytest.fixture
def report(tmp_path) -> Path:
    return build_report(write_runs(tmp_path), tmp_path / "out" / "report.html", title="browser check")


def test_report_renders_in_chromium(report, tmp_path):
    probe_page = report.with_name("probe.html")
    probe_page.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom = render(probe_page, tmp_path / "profile", f"--window-size={WIDTH},900", "--dump-dom").stdout
    found = re.search(r"<pre id=\"probe\">(.*?)</pre>", dom, re.S)
    assert found, "the probe script did not run: " + dom[-500:]
    seen = json.loads(html.unescape(found.group(1)))

    assert seen["title"] == "browser check" and seen["textLength"] > 500
    # tables: leaderboard, adversarial, corruptions x2, shifts, relevance, background, tokenizer
    assert [(t["id"], t["rows"]) for t in seen["tables"]] == [
        ("leaderboard-table", 3), ("", 4), ("", 2), ("", 2), ("", 6), ("", 2), ("", 2), ("", 1)]
    assert seen["tables"][0]["cols"] == 19 and "81.25" in seen["tables"][0]["text"]
    assert all(t["w"] > 0 and t["h"] > 0 for t in seen["tables"])
    # every image decoded (a broken data: URI has naturalWidth 0) and laid out with a size
    assert len(seen["images"]) == 7
    for img in seen["images"]:
        assert img["complete"] and img["naturalWidth"] > 0, img["alt"]
        assert img["w"] > 0 and img["h"] > 0, img["alt"]
    assert seen["width"] <= WIDTH, "the page is wider than the window: a table or image overflows"

    height = min(int(seen["height"]) + 20, 12000)
    shot = tmp_path / "page.png"
    render(report, tmp_path / "profile", f"--window-size={WIDTH},{height}", f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (height, WIDTH)
    assert pixels.std() > 20 and (pixels < 200).mean() > 0.02, "the rendered page is (nearly) blank"
    for img in seen["images"]:  # each image's box holds drawn pixels, not an empty frame
        x, y = int(img["x"]), int(img["y"])
        region = pixels[y + 2: y + int(img["h"]) - 2, x + 2: x + int(img["w"]) - 2]
        assert region.size and region.std() > 10, f"image {img['alt']!r} was not painted"
