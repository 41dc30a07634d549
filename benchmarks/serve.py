"""Throughput of the prediction server: run on purpose, prints numbers.

    python benchmarks/serve.py [--model models/model.pt] [--requests 300] [--clients 1 4]

Starts ``python -m pipeline serve`` on 127.0.0.1, sends single-image POST /predict
requests (the demo's test PNGs, or generated images), and prints images per second for
each number of concurrent clients.
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=REPO / "models/model.pt")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    images = sorted((REPO / "data/demo/images").rglob("*.png"))[:50]
    if images:
        payloads = [p.read_bytes() for p in images]
    else:
        rng = np.random.default_rng(0)
        payloads = []
        for _ in range(50):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
            payloads.append(buf.getvalue())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--model",
                               str(args.model), "--port", str(port)], cwd=REPO,
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
        for clients in args.clients:
            def send(i: int) -> int:
                with httpx.Client(timeout=60) as client:
                    return client.post(f"{url}/predict", files={
                        "file": ("x.png", payloads[i % len(payloads)])}).status_code

            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=clients) as pool:
                codes = list(pool.map(send, range(args.requests)))
            seconds = time.perf_counter() - start
            print(f"{clients} client(s): {args.requests} single-image requests in "
                  f"{seconds:.1f} s = {args.requests / seconds:.1f} images/s "
                  f"(status codes {sorted(set(codes))})")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
