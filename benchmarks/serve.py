"""Throughput of the prediction server: run on purpose, prints numbers.

    python benchmarks/serve.py [--model models/model.pt] [--requests 300] [--clients 1 4]
        [--smoke]

Starts ``python -m pipeline serve`` on 127.0.0.1, sends single-image POST /predict
requests (the demo's test PNGs, or generated images), and prints images per second for
each number of concurrent clients. ``--smoke``: timm's tiny test model trained one epoch
on tiny images in a temporary folder, generated images, 10 requests from 1 and 2 clients.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=REPO / "models/model.pt")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    add_smoke(parser)
    args = parser.parse_args()
    if not args.smoke:
        images = sorted((REPO / "data/demo/images").rglob("*.png"))[:50]
        measure(args.model, [p.read_bytes() for p in images] or generated(50), args.requests,
                args.clients)
        return
    with tempfile.TemporaryDirectory() as tmp:
        measure(tiny_model(Path(tmp)), generated(10), 10, [1, 2])


def generated(n: int) -> list[bytes]:
    """``n`` PNGs of 64x64 random pixels."""
    rng = np.random.default_rng(0)
    payloads = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        payloads.append(buf.getvalue())
    return payloads


def measure(model: Path, payloads: list[bytes], requests: int, clients_list: list[int]
            ) -> None:
    """Serve ``model``; print the throughput for each number of concurrent clients."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--model",
                               str(model), "--port", str(port)], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        with httpx.Client(timeout=60) as client:
            for data in payloads[:10]:  # warm-up
                client.post(f"{url}/predict", files={"file": ("x.png", data)})
        for clients in clients_list:
            def send(i: int) -> int:
                with httpx.Client(timeout=60) as client:
                    return client.post(f"{url}/predict", files={
                        "file": ("x.png", payloads[i % len(payloads)])}).status_code

            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=clients) as pool:
                codes = list(pool.map(send, range(requests)))
            seconds = time.perf_counter() - start
            print(f"{clients} client(s): {requests} single-image requests in "
                  f"{seconds:.1f} s = {requests / seconds:.1f} images/s "
                  f"(status codes {sorted(set(codes))})")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
