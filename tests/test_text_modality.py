"""Texts as a modality: decoding and exact-copy hashes, token ids, a BERT-family encoder
trained in phases by the train stage's own run, read back and used (a tiny encoder with
all-MiniLM-L6-v2's tokenizer, so the tests stay fast)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.contracts.cachefiles import CacheMeta, open_split, read_meta
from pipeline.contracts.modelfile import load_trained
from pipeline.core.config import parse_sections
from pipeline.core.errors import PipelineError
from pipeline.finetuning.engine import batch_indices, predict
from pipeline.finetuning.finetune import resolve_auto
from pipeline.finetuning.training import sample_weights
from pipeline.finetuning.trainrun import train_model
from pipeline.modality.models import model_input
from pipeline.modality.text.cache import write_text_cache
from pipeline.modality.text.decoding import UnreadableText, content_hash, decode_text, normalise
from pipeline.modality.text.model import (
    TokenInput,
    auto_max_length,
    create_text_model,
    encode,
    encoder_path,
    text_model_name,
)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- decoding


def test_utf8_with_and_without_bom_and_utf16_decode_with_a_note_only_when_needed():
    assert decode_text("café".encode()) == ("café", "")
    assert decode_text(b"\xef\xbb\xbfcaf\xc3\xa9") == ("café", "UTF-8 with byte-order mark")
    text, note = decode_text("naïve".encode("utf-16"))
    assert (text, note) == ("naïve", "UTF-16 with byte-order mark")


def test_latin1_text_is_decoded_and_the_note_names_the_encoding_and_the_byte():
    text, note = decode_text("£15m deal".encode("cp1252"))
    assert text == "£15m deal"
    assert note == "not UTF-8 (byte 0): decoded as cp1252"


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"  \n\t \r\n", "whitespace only"),
    (b"abc\x00def", "NUL byte at offset 3"),
    (bytes(range(1, 32)) * 4, "control characters"),
])
def test_unusable_files_are_unreadable_with_their_reason(data, reason):
    with pytest.raises(UnreadableText, match=reason):
        decode_text(data)


def test_exact_copy_hash_ignores_case_whitespace_and_unicode_form():
    a = "The  Café\tOpened\n"
    b = "the cafe\u0301 opened"  # decomposed é, other case and spacing
    assert normalise(a) == normalise(b) == "the café opened"
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash("the café closed")


# ----------------------------------------------------------------------------- tokens


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(encoder_path("minilm"))


def test_encode_pads_with_the_pad_id_and_keeps_head_or_head_and_tail(tokenizer):
    words = [f"w{i}" for i in range(40)]
    ids = encode(tokenizer, ["short text", " ".join(words)], 12)
    assert ids.shape == (2, 12) and ids.dtype == np.int32
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    assert ids[0, 0] == cls and list(ids[0, 3:]) == [sep] + [pad] * 8
    assert ids[1, 0] == cls and ids[1, -1] == sep and pad not in ids[1]
    body = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    assert list(ids[1, 1:-1]) == body[:10]
    tail = encode(tokenizer, [" ".join(words)], 12, truncation="head_tail")[0]
    assert list(tail[1:-1]) == body[:2] + body[-8:]  # a quarter from the start, then the end


def test_a_literal_pad_token_in_a_text_is_not_padding(tokenizer):
    ids = encode(tokenizer, ["[PAD] [CLS] words"], 16)[0]
    assert int((ids != tokenizer.pad_token_id).sum()) > 3
    text = ids[:int(np.flatnonzero(ids == tokenizer.sep_token_id)[0])]
    assert tokenizer.pad_token_id not in text  # "[PAD]" became word pieces, not the pad id


def test_auto_max_length_covers_most_texts_within_the_limit():
    lengths = np.array([10] * 96 + [300] * 4)
    assert auto_max_length(lengths, 512) == 16  # the 95th percentile, in steps of 16
    assert auto_max_length(np.array([700] * 10), 512) == 256  # LENGTH_CAP
    assert auto_max_length(np.array([700] * 10), 128) == 128  # the encoder's limit
    assert auto_max_length(np.array([], dtype=np.int64), 512) == 128


def test_token_input_cuts_a_batch_to_its_longest_row():
    batch = torch.tensor([[101, 5, 102, 0, 0, 0], [101, 5, 6, 7, 102, 0]], dtype=torch.int32)
    x = TokenInput(0).to_input(batch, torch.device("cpu"))
    assert x.dtype == torch.int64 and x.shape == (2, 5)


def test_an_image_backbone_name_gives_minilm_with_a_note_and_a_missing_folder_fails_clearly(
        tmp_path):
    name, note = text_model_name("tf_efficientnet_lite0")
    assert name == "minilm" and "image backbone" in note
    assert text_model_name(str(tmp_path)) == (str(tmp_path), "")
    with pytest.raises(PipelineError, match="no config.json"):
        encoder_path(str(tmp_path))
    with pytest.raises(PipelineError, match="not a folder of an encoder"):
        encoder_path(str(tmp_path / "nothing"))


def test_pixel_augmentation_settings_are_refused_for_texts():
    (cfg,) = parse_sections(_params(["train.hflip=true"]), "train")
    with pytest.raises(PipelineError, match="hflip"):
        resolve_auto(cfg, "text")
    (cfg,) = parse_sections(_params([]), "train")
    resolved, notes = resolve_auto(cfg, "text")
    assert resolved.flips is False and any("texts" in n for n in notes)


def test_sampler_auto_groups_texts_by_length_and_by_length_is_refused_for_images():
    (cfg,) = parse_sections(_params([]), "train")
    assert cfg.sampler == "auto"
    assert resolve_auto(cfg, "text")[0].sampler == "by_length"
    assert resolve_auto(cfg, "photo")[0].sampler == "shuffle"
    (cfg,) = parse_sections(_params(["train.sampler=by_length"]), "train")
    assert sample_weights(cfg, np.array([0, 0, 1])) is None  # a permutation, not a draw
    with pytest.raises(PipelineError, match="by_length"):
        resolve_auto(cfg, "small")


def test_the_auto_text_schedule_unfreezes_at_most_the_layers_an_encoder_has():
    from pipeline.finetuning.finetune import fit_auto_depth
    from pipeline.finetuning.models import LayerGroup

    def groups(layers: int) -> list[LayerGroup]:
        names = ["embeddings", *(f"layer.{i}" for i in range(layers)), "head"]
        return [LayerGroup(n, (n,), 1) for n in names]

    (auto,) = parse_sections(_params([]), "train")
    cfg, _ = resolve_auto(auto, "text", text_length=96)
    assert [p.unfreeze for p in cfg.phase_list] == ["head", 6]
    long, notes = resolve_auto(auto, "text", text_length=256)  # documents: the top 4
    assert [p.unfreeze for p in long.phase_list] == ["head", 4] and "256 tokens" in notes[0]
    assert fit_auto_depth(long, groups(2))[0].phase_list[1].unfreeze == 2

    assert fit_auto_depth(cfg, groups(12)) == (cfg, [])  # a 12-layer BERT: the top 6
    fitted, notes = fit_auto_depth(cfg, groups(2))
    assert [p.unfreeze for p in fitted.phase_list] == ["head", 2] and "2 layers" in notes[0]
    explicit = replace(cfg, phases=(replace(cfg.phase_list[1], lr_mult=0.1),))
    assert fit_auto_depth(explicit, groups(2)) == (explicit, [])  # a schedule of one's own


def test_length_grouped_batches_hold_similar_lengths_cover_every_row_and_repeat_by_seed():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 200, size=1000)

    def draw(seed: int) -> list[np.ndarray]:
        return list(batch_indices(1000, 10, generator=torch.Generator().manual_seed(seed),
                                  lengths=lengths))

    grouped, shuffled = draw(0), list(batch_indices(
        1000, 10, generator=torch.Generator().manual_seed(0)))
    assert sorted(np.concatenate(grouped).tolist()) == list(range(1000))
    assert max(lengths[b].max() for b in grouped) == lengths.max()  # the longest batch first
    assert lengths[grouped[0]].max() == lengths.max()

    def padding(batches: list[np.ndarray]) -> float:  # what cutting to the longest wastes
        return float(np.mean([(lengths[b].max() - lengths[b]).mean() for b in batches]))

    assert padding(grouped) < padding(shuffled) / 5
    assert all(np.array_equal(a, b) for a, b in zip(grouped, draw(0), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(grouped, draw(1), strict=True))


def test_prediction_in_length_order_comes_back_in_row_order(tmp_path, tiny_encoder):
    texts, labels = _corpus(5)
    ids = [f"t{i}" for i in range(len(texts))]
    splits = {s: (texts, labels, ids) for s in ("train", "val", "test")}
    cache = tmp_path / "cache"
    write_text_cache(cache, splits, list(TOPICS), model_name=str(tiny_encoder))
    (model_cfg,) = parse_sections(_params([f"model.name={tiny_encoder}"]), "model")
    model, _, _ = create_text_model(model_cfg, 3)
    model.eval()
    test = open_split(cache, read_meta(cache), "test")
    inputs = TokenInput(read_meta(cache).text["pad_id"])
    probs = predict(model, test, device=torch.device("cpu"), batch_size=4,
                    inputs=inputs)
    with torch.no_grad():  # one text at a time, in row order: nothing to reorder
        alone = np.concatenate([torch.softmax(model(inputs.to_input(
            torch.from_numpy(test.images[np.array([i])]), torch.device("cpu"))), 1).numpy()
            for i in range(len(texts))])
    np.testing.assert_allclose(probs, alone, atol=1e-5)


def test_an_image_cache_meta_has_no_modality_key_and_a_text_one_round_trips(tmp_path):
    image = CacheMeta(["a"], 32, "pad", 0, {"train": ["x"]})
    assert "modality" not in json.loads(image.to_json())
    text = CacheMeta(["a"], 0, "none", 0, {"train": ["x"]}, profile="text",
                     modality="text", text={"max_length": 16, "pad_id": 0})
    (tmp_path / "meta.json").write_text(text.to_json())
    assert read_meta(tmp_path) == text


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory, tokenizer):
    """A 2-layer, 32-wide BERT (random weights) with MiniLM's tokenizer and mean pooling."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    return folder


def _params(overrides):
    from benchmarks.common import load_params

    return load_params(overrides, path=REPO / "params.yaml")


TOPICS = {"sport": "goal match team league cup striker", "money": "bank shares market profit"
          " price trade", "tech": "chip phone software data server code"}


def _corpus(per_class: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for k, words in enumerate(TOPICS.values()):
        vocab = words.split()
        for _ in range(per_class):
            texts.append(" ".join(rng.choice(vocab, size=int(rng.integers(3, 9)))))
            labels.append(k)
    return texts, np.array(labels)


def test_an_encoder_trains_in_phases_through_the_train_stage_and_reads_back(
        tmp_path, tiny_encoder, capsys):
    splits = {}
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        texts, labels = _corpus(n)
        splits[split] = (texts, labels, [f"{split}{i}" for i in range(len(texts))])
    cache = tmp_path / "cache"
    meta = write_text_cache(cache, splits, list(TOPICS), model_name=str(tiny_encoder))
    assert meta.text is not None and meta.text["max_length"] == 16  # 3-8 words + 2 specials
    base, model_cfg, cfg = parse_sections(_params([
        f"model.name={tiny_encoder}", "train.batch_size=8",
        "train.phases=[{epochs: 2, unfreeze: 1, lr_mult: 1.0}]"]), "base", "model", "train")
    from transformers import AutoModel

    start = AutoModel.from_pretrained(tiny_encoder).state_dict()
    train_model(base, model_cfg, cfg, cache, tmp_path / "model.pt", tmp_path / "train.json",
                tmp_path / "curves", tmp_path / "checkpoints")
    log = capsys.readouterr().out
    assert "4 layer groups" in log and "2 of 4 layer groups trainable" in log
    model, prep, saved = load_trained(tmp_path / "model.pt")
    assert saved["preprocessing"]["modality"] == "text"
    assert saved["layer_groups"][-1][0] == "head" and len(saved["layer_groups"]) == 4
    trained = model.encoder.state_dict()
    # the phase trained the top layer and the head only: the rest kept its weights
    assert not torch.equal(trained["encoder.layer.1.output.dense.weight"],
                           start["encoder.layer.1.output.dense.weight"])
    assert torch.equal(trained["encoder.layer.0.output.dense.weight"],
                       start["encoder.layer.0.output.dense.weight"])
    assert torch.equal(trained["embeddings.word_embeddings.weight"],
                       start["embeddings.word_embeddings.weight"])
    test = open_split(cache, read_meta(cache), "test")
    probs = predict(model, test, device=torch.device("cpu"), batch_size=8,
                    inputs=model_input(model, prep, "text"))
    assert probs.shape == (12, 3) and np.allclose(probs.sum(1), 1.0)


def test_a_head_only_phase_on_texts_trains_on_stored_encoder_features(tmp_path, tiny_encoder,
                                                                       capsys):
    texts, labels = _corpus(4)
    ids = [f"t{i}" for i in range(len(texts))]
    splits = {s: (texts, labels, ids) for s in ("train", "val", "test")}
    write_text_cache(tmp_path / "cache", splits, list(TOPICS), model_name=str(tiny_encoder),
                     max_length=8, truncation="head_tail")
    base, model_cfg, cfg = parse_sections(_params([
        f"model.name={tiny_encoder}", "train.batch_size=4",
        "train.phases=[{epochs: 1, unfreeze: head, lr_mult: 5.0}]"]), "base", "model", "train")
    train_model(base, model_cfg, cfg, tmp_path / "cache", tmp_path / "model.pt",
                tmp_path / "train.json", tmp_path / "curves", tmp_path / "checkpoints")
    log = capsys.readouterr().out
    assert "max length 8 tokens (set); truncation head_tail" in log
    assert "on stored backbone features" in log


def test_stored_hidden_states_train_the_top_layer_as_the_full_forward_does(tmp_path,
                                                                           tiny_encoder, capsys):
    """Frozen layers run in eval mode either way, so storing their output once changes
    what is computed, not what is learnt: the two runs end with the same weights."""
    texts, labels = _corpus(6)
    ids = [f"t{i}" for i in range(len(texts))]
    splits = {s: (texts, labels, ids) for s in ("train", "val", "test")}
    write_text_cache(tmp_path / "cache", splits, list(TOPICS), model_name=str(tiny_encoder))
    weights = {}
    for stored in (True, False):
        base, model_cfg, cfg = parse_sections(_params([
            f"model.name={tiny_encoder}", "train.batch_size=4", "model.drop_rate=0.0",
            f"train.feature_cache={str(stored).lower()}",
            "train.phases=[{epochs: 2, unfreeze: 1, lr_mult: 1.0}]"]), "base", "model", "train")
        out = tmp_path / str(stored)
        train_model(base, model_cfg, cfg, tmp_path / "cache", out / "model.pt",
                    out / "train.json", out / "curves", out / "checkpoints")
        log = capsys.readouterr().out
        assert ("on stored hidden states" in log) is stored
        weights[stored] = load_trained(out / "model.pt")[0].state_dict()
    for name, value in weights[True].items():
        torch.testing.assert_close(value, weights[False][name], rtol=1e-4, atol=1e-5,
                                   msg=name)
