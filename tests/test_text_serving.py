"""A trained text model used outside the pipeline: its ONNX and TorchScript exports (token
ids and attention mask in, the tokenizer beside them), ``predict`` on .txt folders, CSV
and JSONL files, and the server over real HTTP (a tiny encoder, as in
tests/test_text_modality.py)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch

from pipeline.contracts.cachefiles import open_split, read_meta
from pipeline.contracts.modelfile import load_trained
from pipeline.core.config import parse_sections
from pipeline.core.errors import PipelineError
from pipeline.finetuning.engine import predict
from pipeline.finetuning.trainrun import train_model
from pipeline.modality.models import model_input
from pipeline.modality.text.cache import write_text_cache
from pipeline.modality.text.model import encode
from pipeline.serving.exporting import export_model, quiet_jit
from pipeline.serving.predict import Predictor, list_inputs, predict_files, top_k
from pipeline.serving.serve import MAX_TEXTS

from . import test_text_modality as texts
from .conftest import serving

tokenizer = texts.tokenizer  # the module-scoped fixtures of the text tests, reused
tiny_encoder = texts.tiny_encoder
MAX_LENGTH = 12  # short, so that the long texts below are truncated
LONG = " ".join(["goal match team bank shares chip phone"] * 6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder):
    """(model.pt, text cache) of a model trained through the train stage's run."""
    tmp = tmp_path_factory.mktemp("text_model")
    splits = {}
    for split, n in (("train", 8), ("val", 3), ("test", 5)):
        corpus, labels = texts._corpus(n)
        splits[split] = (corpus + [LONG], np.append(labels, 0),
                         [f"{split}{i}" for i in range(len(corpus) + 1)])
    write_text_cache(tmp / "cache", splits, list(texts.TOPICS), model_name=str(tiny_encoder),
                     max_length=MAX_LENGTH, truncation="head_tail")
    base, model_cfg, cfg = parse_sections(texts._params([
        f"model.name={tiny_encoder}", "train.batch_size=8",
        "train.phases=[{epochs: 1, unfreeze: 1, lr_mult: 1.0}]"]), "base", "model", "train")
    train_model(base, model_cfg, cfg, tmp / "cache", tmp / "model.pt", tmp / "train.json",
                tmp / "curves", tmp / "checkpoints")
    return tmp / "model.pt", tmp / "cache"


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """(export folder, the check's report) of the trained text model."""
    out = tmp_path_factory.mktemp("exported")
    report = export_model(trained[0], trained[1], out, out / "export.json", run_record=None)
    return out, report


# ----------------------------------------------------------------------------- export


def _ids_and_mask(tok, batch: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids at the full max length (padded) and their attention mask."""
    ids = encode(tok, batch, MAX_LENGTH, truncation="head_tail").astype(np.int64)
    return ids, (ids != tok.pad_token_id).astype(np.int64)


def test_a_text_export_takes_ids_and_mask_and_agrees_with_pytorch(exported, trained):
    out, report = exported
    assert report["onnx_within_tolerance"] and report["test_texts"] == 16
    assert report["onnx_argmax_disagreements"] == report["torchscript_argmax_disagreements"] == 0
    assert "test_images" not in report
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    assert [i.name for i in inputs] == ["input_ids", "attention_mask"]
    assert {i.type for i in inputs} == {"tensor(int64)"}
    assert all(isinstance(d, str) for i in inputs for d in i.shape)  # dynamic batch, length
    spec = json.loads((out / "model.json").read_text())
    assert spec["input_names"] == ["input_ids", "attention_mask"]
    assert (spec["max_length"], spec["truncation"], spec["tokenizer"]) == (
        MAX_LENGTH, "head_tail", "tokenizer")
    assert spec["classes"] == list(texts.TOPICS) and spec["modality"] == "text"
    model = load_trained(trained[0])[0].eval()
    with quiet_jit():
        scripted = torch.jit.load(str(out / "model.ts"))
    batch = ["goal cup", "bank price trade profit shares", LONG, "chip"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    ids, mask = _ids_and_mask(tok, batch)
    with torch.inference_mode():
        reference = torch.softmax(model(torch.from_numpy(ids)), 1).numpy()
        ts = torch.softmax(scripted(torch.from_numpy(ids), torch.from_numpy(mask)), 1).numpy()
    onnx = torch.softmax(torch.from_numpy(session.run(
        None, {"input_ids": ids, "attention_mask": mask})[0]), 1).numpy()
    assert np.abs(onnx - reference).max() < 1e-4 and np.abs(ts - reference).max() < 1e-4
    short = session.run(None, {"input_ids": ids[:1, :6], "attention_mask": mask[:1, :6]})[0]
    assert np.abs(short - session.run(None, {"input_ids": ids[:1], "attention_mask": mask[:1]}
                                      )[0]).max() < 1e-5  # padding changes nothing


def test_the_exports_follow_the_attention_mask_not_the_pad_id(exported, trained):
    """An ONNX user's tokenizer may pad with any id: positions the mask zeroes are left
    out whatever ids they hold (PyTorch's model, which reads padding off the pad id,
    shows that these ids would change the answer)."""
    out, _ = exported
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    ids, mask = _ids_and_mask(tok, ["goal cup", "bank price", "chip"])
    other = np.where(mask == 1, ids, 1037)  # "a" where the padding was
    model = load_trained(trained[0])[0].eval()
    with torch.inference_mode():
        moved = (model(torch.from_numpy(other)) - model(torch.from_numpy(ids))).abs().max()
    assert moved > 1e-3
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    with quiet_jit():
        scripted = torch.jit.load(str(out / "model.ts"))
    for run in (lambda i: session.run(None, {"input_ids": i, "attention_mask": mask})[0],
                lambda i: scripted(torch.from_numpy(i), torch.from_numpy(mask)).detach().numpy()):
        assert np.abs(run(other) - run(ids)).max() < 1e-5


def test_the_exported_tokenizer_gives_the_ids_the_model_was_trained_on(exported, tokenizer):
    from transformers import AutoTokenizer

    out, _ = exported
    saved = AutoTokenizer.from_pretrained(out / "tokenizer")
    batch = ["The Café opened", "[PAD] [CLS] words", LONG, "£15m deal, naïve résumé"]
    for truncation in ("head", "head_tail"):
        assert np.array_equal(encode(saved, batch, MAX_LENGTH, truncation=truncation),
                              encode(tokenizer, batch, MAX_LENGTH, truncation=truncation))
    assert saved(batch)["input_ids"] == tokenizer(batch)["input_ids"]


# ----------------------------------------------------------------------------- predict


def test_predict_tokenizes_as_the_cache_did(trained):
    model_path, cache = trained
    predictor = Predictor.load(model_path, device="cpu")
    assert predictor.modality == "text"
    corpus, _ = texts._corpus(5)
    probs = predictor.text_probabilities(corpus + [LONG])
    model, prep, _ = load_trained(model_path)
    test = open_split(cache, read_meta(cache), "test")
    cached = predict(model.eval(), test, device=torch.device("cpu"),
                     batch_size=8, inputs=model_input(model, prep, "text"))
    assert np.abs(probs - cached).max() < 1e-5


def _predicted(predictor, inputs):
    """{name: (probabilities or None, error)} and the skipped files, as ``predict`` does."""
    items, skipped = list_inputs(inputs, modality=predictor.modality)
    rows = predict_files(predictor, items, batch_size=2, max_pixels=10**6)
    return [(str(item), probs, error) for item, probs, error in rows], skipped


def test_predict_a_folder_of_txt_files_with_an_unreadable_one(trained, tmp_path):
    predictor = Predictor.load(trained[0], device="cpu")
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("bank shares market profit")
    (folder / "sub" / "a.txt").write_text("goal match team", encoding="utf-16")
    (folder / "c.txt").write_bytes(b"")
    (folder / "notes.md").write_text("not a text input")
    (folder / "d.txt").write_text(LONG)
    rows, skipped = _predicted(predictor, [folder])
    assert [r[0] for r in rows] == [str(folder / n) for n in ("b.txt", "c.txt", "d.txt",
                                                              "sub/a.txt")]
    assert skipped == [folder / "notes.md"]
    assert rows[1][1] is None and rows[1][2] == "empty file"
    want = predictor.text_probabilities(["bank shares market profit", LONG, "goal match team"])
    for (_, probs, error), expected in zip([rows[0], rows[2], rows[3]], want):
        assert error == "" and np.abs(probs - expected).max() < 1e-6


def test_predict_a_csv_with_ids_and_a_jsonl_with_bad_lines(trained, tmp_path):
    predictor = Predictor.load(trained[0], device="cpu")
    table = tmp_path / "news.csv"
    table.write_text('id,text\nn1,"goal match, team"\nn2,"  "\n,chip phone code\n')
    lines = tmp_path / "news.jsonl"
    lines.write_text('{"text": "bank price"}\n\n{"text": 5}\nnot json\n{"id": "k7", "text": "cup"}'
                     '\n{"body": "no text field"}\n')
    rows, skipped = _predicted(predictor, [table, lines])
    assert not skipped
    assert [(name, error) for name, _, error in rows] == [
        (f"{table}#n1", ""), (f"{table}#n2", "whitespace only"), (f"{table}#3", ""),
        (f"{lines}#1", ""), (f"{lines}#3", "text is not a string"),
        (f"{lines}#4", rows[5][2]), (f"{lines}#k7", ""), (f"{lines}#6", "no text")]
    assert rows[5][2].startswith("not JSON")
    assert [r[1] is None for r in rows] == [False, True, False, False, True, True, False, True]
    want = predictor.text_probabilities(["goal match, team", "chip phone code", "bank price",
                                         "cup"])
    got = np.stack([r[1] for r in rows if r[1] is not None])
    assert np.abs(got - want).max() < 1e-6
    label = top_k(got[:1], predictor.classes, 1)[0][0][0]
    assert label in texts.TOPICS


def test_inputs_of_the_other_modality_and_bad_tables_fail_in_one_line(trained, tmp_path):
    predictor = Predictor.load(trained[0], device="cpu")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    (tmp_path / "rows.csv").write_text("body\nhello\n")
    (tmp_path / "a.txt").write_text("goal")
    with pytest.raises(PipelineError, match="is an image and the model classifies texts"):
        list_inputs([tmp_path / "photo.png"], modality="text")
    with pytest.raises(PipelineError, match="no text column"):
        list_inputs([tmp_path / "rows.csv"], modality="text")
    for name in ("a.txt", "rows.csv"):
        with pytest.raises(PipelineError, match="text input and the model classifies images"):
            list_inputs([tmp_path / name], modality="image")
    with pytest.raises(PipelineError, match="for images"):
        list(predict_files(predictor, [tmp_path / "a.txt"], batch_size=1, max_pixels=1,
                           tta="flip"))


# ----------------------------------------------------------------------------- serve


MAX_BYTES = 20_000


@pytest.fixture(scope="module")
def server(trained):
    """The text model served by ``python -m pipeline serve`` on a free port."""
    with serving(trained[0], "--max-bytes", str(MAX_BYTES), "--top-k", "2") as url:
        yield url


def test_served_texts_get_the_image_answer_each_in_order(server, trained):
    batch = ["goal match team", "bank shares profit", LONG]
    reply = httpx.post(f"{server}/predict", json={"texts": batch}, timeout=60)
    assert reply.status_code == 200
    answers = reply.json()["predictions"]
    want = Predictor.load(trained[0], device="cpu").text_probabilities(batch)
    classes = list(texts.TOPICS)
    for answer, probs in zip(answers, want, strict=True):
        assert set(answer) == {"label", "confidence", "top_k"} and len(answer["top_k"]) == 2
        assert answer["label"] == classes[int(probs.argmax())]
        assert answer["confidence"] == pytest.approx(probs.max(), abs=1e-6)
        assert answer["top_k"][0] == {"label": answer["label"],
                                      "probability": answer["confidence"]}
    three = httpx.post(f"{server}/predict", params={"k": 3}, json={"texts": ["chip"]},
                       timeout=60).json()["predictions"]
    assert len(three) == 1 and len(three[0]["top_k"]) == 3
    assert httpx.get(f"{server}/health", timeout=10).json()["status"] == "ok"


@pytest.mark.parametrize("body,code,message", [
    (b'{"texts": ["goal"', 400, "malformed JSON"),
    (b"\xff\xfe not utf", 400, "malformed JSON"),
    (b'{"text": ["goal"]}', 422, "non-empty list of strings"),
    (b'{"texts": "goal"}', 422, "non-empty list of strings"),
    (b'{"texts": []}', 422, "non-empty list of strings"),
    (b'["goal"]', 422, "non-empty list of strings"),
    (b'{"texts": ["goal", 5]}', 422, "texts[1]: not a string"),
    (b'{"texts": ["goal", ""]}', 422, "texts[1]: empty text"),
    (b'{"texts": [" \\n\\t "]}', 422, "texts[0]: whitespace only"),
    (b'{"texts": ["a\\u0000b"]}', 422, "texts[0]: NUL byte"),
    (b'{"texts": ["\\ud800"]}', 422, "texts[0]: not valid Unicode"),
    (json.dumps({"texts": ["x"] * (MAX_TEXTS + 1)}).encode(), 413, f"at most {MAX_TEXTS}"),
    (json.dumps({"texts": ["goal " * 5000]}).encode(), 413, "larger than"),
])
def test_bad_text_requests_get_4xx_with_a_reason(server, body, code, message):
    reply = httpx.post(f"{server}/predict", content=body, timeout=60,
                       headers={"content-type": "application/json"})
    assert reply.status_code == code, reply.text
    assert message in reply.json()["detail"]


def test_deep_json_a_chunked_flood_and_bad_k_and_tta_are_client_errors(server):
    deep = b"[" * 5000 + b"]" * 5000  # under the byte limit, past the JSON parser's depth
    assert httpx.post(f"{server}/predict", content=deep, timeout=60).status_code == 400
    chunks = (b'{"texts": ["' if i == 0 else b"goal " * 2000 for i in range(100))
    flood = httpx.post(f"{server}/predict", content=chunks, timeout=60)  # no Content-Length
    assert flood.status_code == 413 and "larger than" in flood.json()["detail"]
    good = {"texts": ["goal"]}
    for params in ({"k": 9}, {"k": 0}, {"tta": "flip"}, {"k": "x"}):
        reply = httpx.post(f"{server}/predict", params=params, json=good, timeout=60)
        assert reply.status_code == 422, params


def test_evaluate_refuses_test_time_augmentation_for_texts(trained, tmp_path):
    from pipeline.scoring.evaluation import evaluate_model

    model, cache = trained
    base, cfg = parse_sections(texts._params(["evaluate.tta=flip"]), "base", "evaluate")
    with pytest.raises(PipelineError, match="evaluate.tta = flip flips and crops images; this "
                                            "project classifies texts: set evaluate.tta: none"):
        evaluate_model(base, cfg, model, cache, tmp_path / "split.csv", tmp_path / "out")
