"""Export a trained model: TorchScript and ONNX copies of a model.pt, checked against
PyTorch on a cache's test split (the export stage and ``python -m pipeline export``).

Writes ``model.ts`` (TorchScript), ``model.onnx`` (dynamic batch size) and ``model.json``
(what a caller must do to an image first: classes, size, fit, mean, std). Both exports
take (B, 3, S, S) float32 normalised images and return logits; they must agree with
PyTorch on every test image (same argmax, probability difference under 1e-4), or
:func:`export_model` fails.

Both files are byte-reproducible: TorchScript's debug records (absolute paths of this
machine's source files) and random serialization id, and ONNX's per-node stack traces,
are left out. ONNX Runtime picks its kernels by CPU (AVX-512 or AVX2) and cannot be
pinned, so its exact probability difference goes to the run record, and the check's
file keeps only whether it is within the tolerance.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm import tqdm

from pipeline import paths
from pipeline.cachefiles import ArraySplit, open_split, read_meta
from pipeline.engine import batches
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, write_text
from pipeline.inputs import ImageInput
from pipeline.modelfile import load_trained
from pipeline.provenance import record_run

TOLERANCE = 1e-4  # largest allowed probability difference to PyTorch


def write_exports(model: torch.nn.Module, example: torch.Tensor, meta: dict[str, Any],
                  out_dir: Path) -> dict[str, Path]:
    """model.ts, model.onnx (dynamic batch) and model.json into ``out_dir``, each whole or
    not at all; returns the two models' paths by format."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"torchscript": out_dir / "model.ts", "onnx": out_dir / "model.onnx"}
    with torch.inference_mode(), quiet_jit():
        traced = torch.jit.trace(model, example)
    with atomic_path(files["torchscript"]) as partial, quiet_jit():  # never half a file
        traced.save(str(partial))
        reproducible_torchscript(partial)
    with atomic_path(files["onnx"]) as partial:
        torch.onnx.export(model, (example,), str(partial), input_names=["images"],
                          output_names=["logits"], dynamo=True, verbose=False,
                          external_data=False, dynamic_shapes=({0: torch.export.Dim("batch")},))
        reproducible_onnx(partial)
    preprocessing = {"classes": meta["classes"], **meta["preprocessing"],
                     "input": "float32 (batch, 3, size, size), RGB scaled to 0..1, then "
                              "(x - mean) / std", "output": "logits (batch, classes)"}
    with atomic_path(out_dir / "model.json") as partial:
        partial.write_text(json.dumps(preprocessing, indent=2) + "\n")
    return files


def compare(model: torch.nn.Module, files: dict[str, Path], test: ArraySplit,
            inputs: ImageInput) -> tuple[dict[str, float], dict[str, int], set[int]]:
    """Reload both exports and run them beside PyTorch on ``test``: the largest
    probability difference and the argmax disagreements of each, and the batch sizes."""
    with quiet_jit():
        loaded = torch.jit.load(str(files["torchscript"]))
    session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    diffs = {"torchscript": 0.0, "onnx": 0.0}
    disagree = {"torchscript": 0, "onnx": 0}
    sizes = set()
    steps = -(-len(test.labels) // 64)  # the last batch is smaller: dynamic batch size
    for images, _ in tqdm(batches(test, 64), total=steps, desc="export check",
                          mininterval=1.0, leave=False):
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
    return diffs, disagree, sizes


def export_model(model_path: Path, cache_dir: Path, out_dir: Path, metrics_out: Path, *,
        run_record: Path | None = paths.RUN_RECORD) -> dict:
    """Export, reload both exports, compare them with PyTorch on the test split; the
    check's numbers to ``metrics_out``, the ONNX difference to ``run_record`` (if any)."""
    model, prep, meta = load_trained(model_path)
    model.eval()
    test = open_split(cache_dir, read_meta(cache_dir), "test")
    first = next(batches(test, 8))[0]
    inputs = ImageInput(prep)  # the modality seam (pipeline.modality)
    example = inputs.to_input(first, torch.device("cpu")).contiguous()
    files = write_exports(model, example, meta, out_dir)
    diffs, disagree, sizes = compare(model, files, test, inputs)
    report: dict = {"torchscript_max_prob_diff": float(f"{diffs['torchscript']:.3g}"),
                    "onnx_within_tolerance": diffs["onnx"] < TOLERANCE, "tolerance": TOLERANCE}
    report |= {f"{n}_argmax_disagreements": v for n, v in disagree.items()}
    report["test_images"] = len(test.labels)
    metrics_out.parent.mkdir(parents=True, exist_ok=True)
    write_text(metrics_out, json.dumps(report, indent=2) + "\n")
    if run_record is not None:
        record_run("export", {"onnx_max_prob_diff": diffs["onnx"]}, path=run_record)
    print(f"export: {', '.join(f'{k} {v}' for k, v in report.items())}, onnx max prob diff "
          f"{diffs['onnx']:.3g} (batch sizes {sorted(sizes)})")
    bad = [n for n in diffs if diffs[n] >= TOLERANCE or disagree[n]]
    if bad:
        raise PipelineError(f"exported {' and '.join(bad)} disagree with PyTorch: {report}")
    return report


@contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch.jit's FutureWarnings (trace, save and load are deprecated in favour
    of torch.export): three lines a user cannot act on at every export. Other warnings,
    and torch.jit's of other categories, still show."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit\.")
        yield


def reproducible_torchscript(path: Path) -> None:
    """Rewrite a saved TorchScript archive without its ``.debug_pkl`` records (source
    ranges naming this machine's absolute paths; loading does not need them) and with a
    serialization id derived from the content instead of a random one."""
    with zipfile.ZipFile(path) as src:
        records = [(info.filename, src.read(info)) for info in src.infolist()
                   if not info.filename.endswith(".debug_pkl")]
    digest = hashlib.sha256()
    for name, data in records:
        if not name.endswith("serialization_id"):
            digest.update(name.encode() + data)
    partial = path.with_suffix(".tmp")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as dst:
        for name, data in records:
            if name.endswith("serialization_id"):
                data = str(int(digest.hexdigest()[:30], 16)).encode()
            dst.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    partial.replace(path)


def reproducible_onnx(path: Path) -> None:
    """Drop the per-node stack traces (absolute source paths) the exporter records."""
    model = onnx.load(str(path))
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    for node in nodes:
        keep = [p for p in node.metadata_props if "stack_trace" not in p.key]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.save(model, str(path))
