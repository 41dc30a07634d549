"""Classify images with models/model.onnx and models/model.json, without PyTorch.

    pip install onnxruntime numpy pillow
    python scripts/onnx_predict.py models/model.onnx models/model.json IMAGE_OR_FOLDER...

Prints a CSV (path,pred,confidence,error) to standard output, one row per image; a
folder stands for every image file under it (recursive). A file that cannot be read
gets its reason in the error column (and on standard error) and the others still run;
the exit code is then 1.

Decoding follows the pipeline's rules (EXIF orientation applied, transparency on white,
any mode to RGB; 16-bit images are not handled here), then the model's own resize
(model.json: size and fit) and normalisation (mean, std).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
BATCH = 64  # images per ONNX Runtime call


def prepare(path: str, spec: dict) -> np.ndarray:
    """One image file -> (3, S, S) float32, normalised as the model expects."""
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in ("RGBA", "LA", "PA"):
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img.convert("RGBA"))
        img = img.convert("RGB")
    size = (spec["image_size"], spec["image_size"])
    if spec["fit"] == "crop":
        img = ImageOps.fit(img, size, method=Image.Resampling.BICUBIC)
    elif spec["fit"] == "pad":
        img = ImageOps.pad(img, size, method=Image.Resampling.BICUBIC, color=(0, 0, 0))
    else:
        img = img.resize(size, Image.Resampling.BICUBIC)
    x = np.asarray(img, dtype=np.float32) / 255
    x = (x - np.array(spec["mean"], np.float32)) / np.array(spec["std"], np.float32)
    return x.transpose(2, 0, 1)


def expand(inputs: list[str]) -> list[str]:
    """Files as given; a folder becomes the image files under it, sorted."""
    files: list[str] = []
    for item in inputs:
        if Path(item).is_dir():
            files += sorted(str(p) for p in Path(item).rglob("*")
                            if p.is_file() and p.suffix.lower() in SUFFIXES)
        else:
            files.append(item)
    return files


def predict(session: ort.InferenceSession, spec: dict, files: list[str],
            writer: csv.writer) -> int:
    """Write one row per file, in the given order; return how many could not be read."""
    failed = 0
    for start in range(0, len(files), BATCH):
        rows = [[path, "", "", ""] for path in files[start:start + BATCH]]
        ready, arrays = [], []
        for row in rows:
            try:
                arrays.append(prepare(row[0], spec))
                ready.append(row)
            except Exception as exc:  # noqa: BLE001 - any unreadable file: say why, go on
                row[3] = f"{type(exc).__name__}: {exc}"
                print(f"{row[0]}: {row[3]}", file=sys.stderr)
                failed += 1
        if ready:
            logits = session.run(None, {"images": np.stack(arrays)})[0]
            z = np.exp(logits - logits.max(1, keepdims=True))
            for row, p in zip(ready, z / z.sum(1, keepdims=True)):
                row[1:3] = [spec["classes"][int(p.argmax())], f"{p.max():.6f}"]
        writer.writerows(rows)
    return failed


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, predict, return the exit code (1 if any file failed)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Output: CSV path,pred,confidence,error.")
    parser.add_argument("model", help="models/model.onnx")
    parser.add_argument("spec", help="models/model.json (classes and preprocessing)")
    parser.add_argument("inputs", nargs="+", help="image files or folders (recursive)")
    args = parser.parse_args(argv)
    files = expand(args.inputs)
    if not files:
        parser.error("no image files found in the given paths")
    spec = json.loads(Path(args.spec).read_text())
    if spec.get("modality") == "text":
        parser.error(f"{args.spec} is a text model's: this script classifies images (the "
                     f"model takes {' and '.join(spec.get('input_names', []))} from the "
                     f"tokenizer in its {spec.get('tokenizer')}/ folder; see its input)")
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["path", "pred", "confidence", "error"])
    failed = predict(session, spec, files, writer)
    if failed:
        print(f"{failed} of {len(files)} files could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
