"""Open a `dvc plots show/diff` page in headless Chromium with the network off: every chart
must be drawn (counted in the DOM, and as ink in a screenshot), not only present as data.

    python scripts/check_plots.py [dvc_plots/index.html] [--screenshot FILE.png]

The browser runs in a new network namespace (`unshare --net`, no interface but a down
loopback) where that is allowed, and always behind a dead proxy with DNS switched off.
As a control, the same page with DVC's own CDN script tags must draw nothing: that shows
the network really was off and that the check tells a drawn page from an empty one.
Needs Debian's chromium (apt-get install chromium). Exit code 0 when the page passes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from check_report import FLAGS  # the report check's headless flags
from PIL import Image

OFFLINE = ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           "--host-resolver-rules=MAP * ~NOTFOUND"]
CDN_SCRIPTS = "".join(f'<script src="https://cdn.jsdelivr.net/npm/{lib}"></script>'
                      for lib in ("vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"))
INLINE = re.compile(r"<script type=\"text/javascript\">\n\(function \(\) \{.*?</script>",
                    re.DOTALL)


def isolated() -> list[str]:
    """The command prefix that cuts the browser off the network, if the system allows."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "--net", "true"], capture_output=True).returncode == 0:
        return [unshare, "--net"]
    return []


def chromium(*args: str) -> str:
    """Run Chromium offline with a fresh profile; return its stdout."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        sys.exit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([*isolated(), binary, *FLAGS, *OFFLINE,
                               f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=180)
    return done.stdout


def drawn(page: Path, screenshot: Path) -> tuple[int, int, int]:
    """(charts on the page, charts drawn, coloured pixels in a screenshot of them all)."""
    url = page.resolve().as_uri()
    charts = page.read_text(encoding="utf8").count("vegaEmbed('#")
    dom = chromium("--dump-dom", url)
    # vega-embed puts a <canvas class="marks"> (or <svg class="marks">) into each div
    marks = len(re.findall(r'<(?:canvas|svg)[^>]*class="marks"', dom))
    # DVC lays the charts out in rows of one or two, each under 500 px tall
    height = min(16000, 400 + 500 * charts)
    chromium(f"--screenshot={screenshot.resolve()}", f"--window-size=1400,{height}", url)
    rgb = np.asarray(Image.open(screenshot).convert("RGB"), dtype=int)
    # chart marks in DVC's palette are saturated; a page whose charts did not draw is
    # white (its divs hold only scripts), and text and axes are grey
    coloured = int(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).sum())
    return charts, marks, coloured


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("page", type=Path, nargs="?", default=Path("dvc_plots/index.html"))
    parser.add_argument("--screenshot", type=Path,
                        default=Path(tempfile.gettempdir()) / "plots_screenshot.png")
    args = parser.parse_args()
    print("network: " + ("own namespace (unshare --net) + " if isolated() else "")
          + "dead proxy, no DNS")
    charts, marks, coloured = drawn(args.page, args.screenshot)
    print(f"{args.page}: {charts} charts, {marks} drawn; screenshot {args.screenshot}: "
          f"{coloured} coloured pixels")
    with tempfile.TemporaryDirectory() as tmp:
        text = args.page.read_text(encoding="utf8")
        control = Path(tmp) / "cdn.html"
        control.write_text(INLINE.sub(CDN_SCRIPTS, text, count=1), encoding="utf8")
        _, control_marks, control_coloured = drawn(control, Path(tmp) / "cdn.png")
    print(f"control (DVC's CDN scripts): {control_marks} drawn, "
          f"{control_coloured} coloured pixels")
    # a drawn line chart alone has several hundred coloured pixels
    ok = (charts > 0 and marks == charts and coloured >= 200 * charts
          and control_marks == 0 and control_coloured == 0)
    print("plots check: " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
