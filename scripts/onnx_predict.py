"""Classify images with models/model.onnx and models/model.json, without PyTorch.

    pip install onnxruntime numpy pillow
    python scripts/onnx_predict.py models/model.onnx models/model.json IMAGE...

Decoding follows the pipeline's rules (EXIF orientation applied, transparency on white,
any mode to RGB; 16-bit images are not handled here), then the model's own resize
(model.json: size and fit) and normalisation (mean, std).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


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


def main() -> None:
    model, spec_path, *images = sys.argv[1:]
    spec = json.load(open(spec_path))
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": np.stack([prepare(p, spec) for p in images])})[0]
    z = np.exp(logits - logits.max(1, keepdims=True))
    probs = z / z.sum(1, keepdims=True)
    print("path,pred,confidence")
    for path, row in zip(images, probs):
        print(f"{path},{spec['classes'][int(row.argmax())]},{row.max():.6f}")


if __name__ == "__main__":
    main()
