"""Render a qpass report in headless Chromium and check that its plots are visible.

    python scripts/screenshot_report.py exports/smollm2-135m-w8a8_dynamic.report.html

Writes <report>.png (a full-page screenshot) and exits 0 when every <img> of the page loaded
with a non-zero size and the screenshot shows the plots (enough non-white pixels in it);
otherwise it says what is wrong and exits 1. Needs Debian's chromium (apt-get install -y
chromium); CI does not run it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECK_JS = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !i.complete || i.naturalWidth === 0);
  document.title = 'QPASS-IMAGES ' + imgs.length + ' BROKEN ' + bad.length;
});</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("no chromium found: apt-get install -y chromium")


def run(browser: str, *args: str) -> str:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", type=Path)
    p.add_argument("--height", type=int, default=2400, help="screenshot height in pixels")
    a = p.parse_args(argv)
    browser = chromium()
    page = a.report.read_text(encoding="utf-8").replace("</body>", CHECK_JS + "</body>")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / a.report.name
        probe.write_text(page, encoding="utf-8")
        dom = run(browser, "--virtual-time-budget=20000", "--dump-dom", probe.as_uri())
    m = re.search(r"QPASS-IMAGES (\d+) BROKEN (\d+)", dom)
    if not m:
        print(f"chromium did not render {a.report} (no title set by the check script)")
        return 1
    images, broken = int(m.group(1)), int(m.group(2))
    shot = a.report.with_suffix(".png")
    run(browser, f"--screenshot={shot}", f"--window-size=1280,{a.height}",
        a.report.resolve().as_uri())
    from PIL import Image

    gray = Image.open(shot).convert("L")
    ink = gray.point(lambda v: 255 if v < 200 else 0).histogram()[255] / (gray.width * gray.height)
    print(f"{a.report}: {images} images, {broken} broken; screenshot {shot} "
          f"({100 * ink:.1f}% non-white pixels)")
    return 0 if images > 0 and broken == 0 and ink > 0.02 else 1


if __name__ == "__main__":
    raise SystemExit(main())
