"""Command line: ``python -m pipeline predict ...`` and ``python -m pipeline serve ...``."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.predict import Predictor, expand, predict_files, top_k

MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit


def predict_command(args: argparse.Namespace) -> None:
    """Write one CSV row per file: path, pred, confidence, top-k labels and probabilities."""
    predictor = Predictor.load(args.model, device=args.device)
    files = expand(args.inputs)
    if not files:
        raise PipelineError("no image files found in the given paths")
    k = min(args.top_k, len(predictor.classes))
    header = ["path", "pred", "confidence"] + [f"top{i}_{what}" for i in range(1, k + 1)
                                               for what in ("label", "prob")] + ["error"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    with args.out.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        results = predict_files(predictor, files, batch_size=args.batch_size,
                                max_pixels=MAX_PIXELS)
        for path, probs, error in tqdm(results, total=len(files), desc="predict",
                                       mininterval=1.0):
            if probs is None:
                failed += 1
                writer.writerow([str(path), "", ""] + [""] * (2 * k) + [error])
                continue
            best = top_k(probs[None], predictor.classes, k)[0]
            cells = [v for label, p in best for v in (label, f"{p:.6f}")]
            writer.writerow([str(path), best[0][0], f"{best[0][1]:.6f}", *cells, ""])
    print(f"predicted {len(files) - failed} of {len(files)} files into {args.out}"
          + (f"; {failed} could not be read (see the error column)" if failed else ""))


def serve_command(args: argparse.Namespace) -> None:
    """Run the HTTP prediction server."""
    import uvicorn

    from pipeline.serve import create_app

    app = create_app(args.model, device=args.device, max_bytes=args.max_bytes,
                     k_default=args.top_k)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run a subcommand."""
    parser = argparse.ArgumentParser(prog="python -m pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="classify image files or folders (recursive)")
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--model", type=Path, default=Path("models/model.pt"))
    p.add_argument("--out", type=Path, default=Path("predictions.csv"))
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=predict_command)
    s = sub.add_parser("serve", help="HTTP server: POST /predict, GET /health")
    s.add_argument("--model", type=Path, default=Path("models/model.pt"))
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("--max-bytes", type=int, default=10 * 2**20, help="largest upload")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.set_defaults(func=serve_command)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
