"""Export a trained model: TorchScript and ONNX copies of a model.pt, checked against
PyTorch on a cache's test split (the export stage and ``python -m pipeline export``).

Writes ``model.ts`` (TorchScript), ``model.onnx`` (dynamic batch size) and ``model.json``
(what a caller must do to an image first: classes, size, fit, mean, std). Both exports
take (B, 3, S, S) float32 normalised images and return logits; they must agree with
PyTorch on every test image (same argmax, probability difference under 1e-4), or
:func:`export_model` fails.

A text model's exports take two int64 (B, L) inputs instead, ``input_ids`` (the
tokenizer's ids with its special tokens, padded) and ``attention_mask`` (1 for a token, 0
for padding; the mask, not the pad id, says which positions are padding, so ids from a
caller's own tokenizer work), both with dynamic batch and length; the tokenizer's files
go into ``tokenizer/`` beside them, and model.json names the inputs, the max length, the
truncation and that folder. The check feeds them the test split's token ids.

Both files are byte-reproducible: TorchScript's debug records (absolute paths of this
machine's source files) and random serialization id, and ONNX's per-node stack traces,
are left out. ONNX Runtime picks its kernels by CPU (AVX-512 or AVX2) and cannot be
pinned, so its exact probability difference goes to the run record, and the check's
file keeps only whether it is within the tolerance.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from tqdm import tqdm

from pipeline.contracts.cachefiles import ArraySplit, open_split, read_meta
from pipeline.contracts.modelfile import is_text, load_trained, text_tokenizer
from pipeline.core import paths
from pipeline.core.errors import PipelineError
from pipeline.core.files import atomic_path, write_text
from pipeline.core.provenance import record_run
from pipeline.finetuning.engine import batches
from pipeline.modality.models import meta_modality, model_input
from pipeline.modality.text.model import TextClassifier

TOLERANCE = 1e-4  # largest allowed probability difference to PyTorch
TEXT_INPUTS = ["input_ids", "attention_mask"]  # a text model's export inputs
TOKENIZER = "tokenizer"  # the folder of a text model's tokenizer files, beside model.json
# a cached batch -> (PyTorch's input, the exports' inputs)
ToInputs = Callable[[torch.Tensor], tuple[torch.Tensor, tuple[torch.Tensor, ...]]]


class TokensAndMask(nn.Module):
    """A text model that takes (input_ids, attention_mask), as the export's callers give
    them: the mask, not the pad id, says which positions are padding (the encoder's
    attention and the mean pooling both follow it)."""

    def __init__(self, model: TextClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.features(input_ids, attention_mask))


def export_inputs(model: nn.Module, prep: Any, modality: str) -> tuple[nn.Module, ToInputs]:
    """The module to export and how a cached batch becomes its inputs: normalised pixels
    for an image model; token ids and their attention mask for a text model."""
    adapter = model_input(model, prep, modality)
    if isinstance(model, TextClassifier):
        pad_id = model.pad_id

        def tokens(batch: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
            ids = adapter.to_input(batch, torch.device("cpu"))
            return ids, (ids, (ids != pad_id).long())

        return TokensAndMask(model).eval(), tokens

    def pixels(batch: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        x = adapter.to_input(batch, torch.device("cpu")).contiguous()
        return x, (x,)

    return model, pixels


def write_exports(model: torch.nn.Module, example: tuple[torch.Tensor, ...],
                  meta: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """model.ts, model.onnx (dynamic batch; a text model's dynamic length too) and
    model.json into ``out_dir`` (a text model's tokenizer files into its ``tokenizer/``),
    each whole or not at all; returns the two models' paths by format."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"torchscript": out_dir / "model.ts", "onnx": out_dir / "model.onnx"}
    text = is_text(meta)
    tokenizer = text_tokenizer(meta) if text else None  # a missing encoder fails first
    with torch.inference_mode(), quiet_jit(), quiet_encoder(text):
        traced = torch.jit.trace(model, example)
    with atomic_path(files["torchscript"]) as partial, quiet_jit():  # never half a file
        traced.save(str(partial))
        reproducible_torchscript(partial)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    names, shapes = ((TEXT_INPUTS, ({0: batch, 1: length},) * 2) if text
                     else (["images" if meta_modality(meta) == "image" else "inputs"],
                           ({0: batch},)))
    with atomic_path(files["onnx"]) as partial, quiet_encoder(text):
        torch.onnx.export(model, example, str(partial), input_names=names,
                          output_names=["logits"], dynamo=True, verbose=False,
                          external_data=False, dynamic_shapes=shapes)
        reproducible_onnx(partial)
    if tokenizer is not None:
        write_tokenizer(tokenizer, out_dir / TOKENIZER)
    with atomic_path(out_dir / "model.json") as partial:
        partial.write_text(json.dumps(export_spec(meta), indent=2) + "\n")
    return files


def export_spec(meta: dict[str, Any]) -> dict[str, Any]:
    """model.json: the classes and what a caller must do to an item first."""
    if meta_modality(meta) not in ("image", "text"):  # another modality's own batches
        return {"classes": meta["classes"], **meta["preprocessing"],
                "input": "float32 (batch, ...): the cached rows as the modality module's "
                         "MODEL adapter makes them", "output": "logits (batch, classes)"}
    if not is_text(meta):
        return {"classes": meta["classes"], **meta["preprocessing"],
                "input": "float32 (batch, 3, size, size), RGB scaled to 0..1, then "
                         "(x - mean) / std", "output": "logits (batch, classes)"}
    return {"classes": meta["classes"], **meta["preprocessing"], "input_names": TEXT_INPUTS,
            "tokenizer": TOKENIZER,
            "input": "int64 input_ids (batch, length): each text's ids from the tokenizer in "
                     "the tokenizer folder, with its special tokens, at most max_length "
                     "(a longer text keeps its start; with truncation head_tail its first "
                     "quarter and its end), padded with pad_id; int64 attention_mask "
                     "(batch, length): 1 for a token, 0 for padding",
            "output": "logits (batch, classes)"}


def write_tokenizer(tokenizer: Any, folder: Path) -> None:
    """Every file ``save_pretrained`` writes into ``folder``, replacing the folder whole."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer.save_pretrained(str(partial))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def compare(model: torch.nn.Module, files: dict[str, Path], test: ArraySplit,
            to_inputs: ToInputs) -> tuple[dict[str, float], dict[str, int], set[int]]:
    """Reload both exports and run them beside PyTorch on ``test``: the largest
    probability difference and the argmax disagreements of each, and the batch sizes."""
    with quiet_jit():
        loaded = torch.jit.load(str(files["torchscript"]))
    session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    diffs = {"torchscript": 0.0, "onnx": 0.0}
    disagree = {"torchscript": 0, "onnx": 0}
    sizes = set()
    steps = -(-len(test.labels) // 64)  # the last batch is smaller: dynamic batch size
    for items, _ in tqdm(batches(test, 64), total=steps, desc="export check",
                         mininterval=1.0, leave=False):
        x, args = to_inputs(items)
        sizes.add(len(x))
        feed = {name: arg.numpy() for name, arg in zip(names, args)}
        with torch.inference_mode():
            reference = torch.softmax(model(x), 1).numpy()
            outputs = {"torchscript": torch.softmax(loaded(*args), 1).numpy(),
                       "onnx": torch.softmax(torch.from_numpy(
                           session.run(None, feed)[0]), 1).numpy()}
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
    exported, to_inputs = export_inputs(model, prep, meta_modality(meta))  # the modality's
    files = write_exports(exported, to_inputs(first)[1], meta, out_dir)
    diffs, disagree, sizes = compare(model, files, test, to_inputs)
    report: dict = {"torchscript_max_prob_diff": float(f"{diffs['torchscript']:.3g}"),
                    "onnx_within_tolerance": diffs["onnx"] < TOLERANCE, "tolerance": TOLERANCE}
    report |= {f"{n}_argmax_disagreements": v for n, v in disagree.items()}
    report["test_texts" if is_text(meta) else "test_images"] = len(test.labels)
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


@contextmanager
def quiet_encoder(on: bool) -> Iterator[None]:
    """When ``on`` (a text model), silence what a transformers encoder's code says while
    traced or exported: tracer warnings on shape checks, its deprecation notices, and
    the ONNX exporter's note that input_ids and attention_mask share their axes. The
    check against PyTorch tests what the trace kept."""
    with warnings.catch_warnings():
        if on:
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
            warnings.filterwarnings("ignore", message=r"# The axis name")
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
