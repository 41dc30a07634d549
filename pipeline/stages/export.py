"""export stage: TorchScript and ONNX copies of models/model.pt, checked on the test split.

Writes ``models/model.ts`` (TorchScript), ``models/model.onnx`` (dynamic batch size)
and ``models/model.json`` (what a caller must do to an image first: classes, size, fit,
mean, std). Both exports take (B, 3, S, S) float32 normalised images and return logits;
at export time they must agree with PyTorch on every test image (same argmax,
probability difference under 1e-4), or the stage fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pipeline import paths
from pipeline.backbones import load_trained
from pipeline.cachefiles import open_split, read_meta
from pipeline.engine import batches
from pipeline.errors import PipelineError, run_stage
from pipeline.inputs import ImageInput

TOLERANCE = 1e-4  # largest allowed probability difference to PyTorch


def run(model_path: Path, cache_dir: Path, out_dir: Path, metrics_out: Path) -> dict:
    """Export, reload both exports, compare them with PyTorch on the test split."""
    model, prep, meta = load_trained(model_path)
    model.eval()
    test = open_split(cache_dir, read_meta(cache_dir), "test")
    first = next(batches(test, 8))[0]
    inputs = ImageInput(prep)  # the modality seam (pipeline.modality)
    example = inputs.to_input(first, torch.device("cpu")).contiguous()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"torchscript": out_dir / "model.ts", "onnx": out_dir / "model.onnx"}
    with torch.inference_mode():
        traced = torch.jit.trace(model, example)
    traced.save(str(files["torchscript"]))
    torch.onnx.export(model, (example,), str(files["onnx"]), input_names=["images"],
                      output_names=["logits"], dynamo=True, verbose=False, external_data=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    preprocessing = {"classes": meta["classes"], **meta["preprocessing"],
                     "input": "float32 (batch, 3, size, size), RGB scaled to 0..1, then "
                              "(x - mean) / std", "output": "logits (batch, classes)"}
    (out_dir / "model.json").write_text(json.dumps(preprocessing, indent=2) + "\n")

    loaded = torch.jit.load(str(files["torchscript"]))
    session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    diffs = {"torchscript": 0.0, "onnx": 0.0}
    disagree = {"torchscript": 0, "onnx": 0}
    sizes = set()
    for images, _ in batches(test, 64):  # the last batch is smaller: dynamic batch size
        x = inputs.to_input(images, torch.device("cpu")).contiguous()
        sizes.add(len(x))
        with torch.inference_mode():
            reference = torch.softmax(model(x), 1).numpy()
            outputs = {"torchscript": torch.softmax(loaded(x), 1).numpy(),
                       "onnx": torch.softmax(torch.from_numpy(
                           session.run(None, {"images": x.numpy()})[0]), 1).numpy()}
        for name, probs in outputs.items():
            diffs[name] = max(diffs[name], float(np.abs(probs - reference).max()))
            disagree[name] += int((probs.argmax(1) != reference.argmax(1)).sum())
    report = {f"{n}_max_prob_diff": float(f"{d:.3g}") for n, d in diffs.items()}
    report |= {f"{n}_argmax_disagreements": v for n, v in disagree.items()}
    report["test_images"] = len(test.labels)
    metrics_out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"export: {', '.join(f'{k} {v}' for k, v in report.items())} "
          f"(batch sizes {sorted(sizes)})")
    bad = [n for n in diffs if diffs[n] >= TOLERANCE or disagree[n]]
    if bad:
        raise PipelineError(f"exported {' and '.join(bad)} disagree with PyTorch: {report}")
    return report


def main() -> None:
    """Entry point of the DVC stage."""
    run(paths.MODEL, paths.CACHE_DIR, paths.MODEL.parent, paths.METRICS_DIR / "export.json")


if __name__ == "__main__":
    run_stage("export", main)
