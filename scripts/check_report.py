"""Open the report in headless Chromium: every image must load and the page must not be blank.

    python scripts/check_report.py [reports/report.html] [--screenshot FILE.png]

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
from PIL import Image

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000"]


def chromium(*args: str) -> str:
    """Run Chromium with a fresh profile; return its stdout."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        sys.exit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("report", type=Path, nargs="?", default=Path("reports/report.html"))
    parser.add_argument("--screenshot", type=Path,
                        default=Path(tempfile.gettempdir()) / "report_screenshot.png")
    args = parser.parse_args()
    url = args.report.resolve().as_uri()
    dom = chromium("--dump-dom", url)
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken-images="(\d+)"', dom)
    if not images or not broken:
        print("the page's image check did not run (no data-images attribute)")
        return 1
    print(f"images on the page: {images.group(1)}, failed to load: {broken.group(1)}")
    chromium(f"--screenshot={args.screenshot.resolve()}", "--window-size=1200,2400", url)
    pixels = np.asarray(Image.open(args.screenshot).convert("L"), dtype=float)
    inked = float((pixels < 200).mean())
    print(f"screenshot {args.screenshot}: {pixels.shape[1]}x{pixels.shape[0]}, "
          f"{inked:.1%} of pixels darker than light grey, std {pixels.std():.1f}")
    ok = broken.group(1) == "0" and int(images.group(1)) > 0 and inked > 0.01
    print("report check: " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
