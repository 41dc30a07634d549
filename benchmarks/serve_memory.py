"""Peak memory of the prediction server under a burst of large-but-legal images: run on
purpose, prints numbers.

    python benchmarks/serve_memory.py [--model models/model.pt] [--uploads 32] [--side 6200]
        [--smoke]

Starts ``python -m pipeline serve`` on 127.0.0.1 (with ``--model``, or timm's tiny
``test_efficientnet`` trained one epoch on tiny images in a temporary folder: decoding,
not the model, is what takes the memory), sends ``--uploads`` concurrent POST /predict
requests of one ``side`` x ``side`` PNG (6200 x 6200 = 38.4 Mpx, under the server's
40 Mpx limit, about 0.1 MB on the wire) and prints the server process's resident memory
before, its peak (``VmHWM`` of /proc/<pid>/status, Linux) and after. ``--smoke``: 2
uploads of a 64 x 64 PNG.
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from common import add_smoke, tiny_model
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def big_png(side: int) -> bytes:
    """A side x side RGB PNG with a little noise (compresses to about 0.1 MB)."""
    pixels = np.zeros((side, side, 3), np.uint8)
    pixels[::97, ::89] = np.random.default_rng(0).integers(0, 255, (3,), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def memory_mib(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--uploads", type=int, default=32)
    parser.add_argument("--side", type=int, default=6200)
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.uploads, args.side = 2, 64
    with tempfile.TemporaryDirectory() as tmp:
        measure(args.model or tiny_model(Path(tmp)), args.uploads, args.side)


def measure(model: Path, uploads: int, side: int) -> None:
    """Serve ``model``, send the burst, print the server's memory."""
    data = big_png(side)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--model",
                               str(model), "--port", str(port), "--device", "cpu"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        before = memory_mib(server.pid)["VmRSS"]

        def send(_: int) -> int:
            return httpx.post(f"{url}/predict?k=1", files={"file": ("big.png", data)},
                              timeout=600).status_code

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=uploads) as pool:
            codes = list(pool.map(send, range(uploads)))
        seconds = time.perf_counter() - start
        time.sleep(1.0)
        after = memory_mib(server.pid)
        print(f"{uploads} concurrent uploads of a {side}x{side} PNG "
              f"({len(data) / 1e6:.2f} MB) in {seconds:.1f} s, status codes "
              f"{sorted(set(codes))}: server RSS {before:.0f} MiB before, peak "
              f"{after['VmHWM']:.0f} MiB, {after['VmRSS']:.0f} MiB after")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
