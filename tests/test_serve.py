"""The prediction server over real HTTP on 127.0.0.1: good and bad requests, concurrency."""

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from pipeline.contracts.modelfile import save_model
from pipeline.finetuning.backbones import create_model
from pipeline.params.model import ModelConfig

from .conftest import class_image, serving

MAX_BYTES = 200_000


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    cfg = ModelConfig(name="test_efficientnet", weights="none", drop_rate=0.0)
    model, prep, info = create_model(cfg, num_classes=3)
    meta = {"classes": ["a", "b", "c"], "arch": info["arch"],
            "model": {"name": cfg.name, "weights": cfg.weights, "drop_rate": 0.0},
            "preprocessing": {"image_size": 32, "fit": "crop", "mean": list(prep.mean),
                              "std": list(prep.std)}}
    save_model(tmp / "model.pt", model.state_dict(), meta)
    with serving(tmp / "model.pt", "--max-bytes", str(MAX_BYTES), "--top-k", "2") as url:
        yield url


def _post(url, data: bytes, name="x.png", **params):
    return httpx.post(f"{url}/predict", files={"file": (name, data)}, params=params, timeout=60)


def test_valid_images_get_top_k_labels(server):
    reply = _post(server, _png(class_image(0, 1)))
    assert reply.status_code == 200
    body = reply.json()
    assert body["label"] in {"a", "b", "c"} and len(body["top_k"]) == 2
    assert body["top_k"][0]["probability"] == pytest.approx(body["confidence"])
    jpeg = io.BytesIO()
    Image.fromarray(class_image(1, 2, size=50)).save(jpeg, format="JPEG")
    assert _post(server, jpeg.getvalue(), "y.jpg", k=3).json()["top_k"][2]["label"]


@pytest.mark.parametrize("make,code,message", [
    (lambda: b"hello, not an image", 415, "not an image"),
    (lambda: _png(class_image(0, 0, size=64))[:300], 422, "truncated"),
    (lambda: b"", 422, "empty"),
    (lambda: np.random.default_rng(0).bytes(MAX_BYTES + 10), 413, "larger than"),
    (lambda: _bomb(), 413, "pixel limit"),
])
def test_bad_uploads_get_4xx_with_a_reason(server, make, code, message):
    reply = _post(server, make())
    assert reply.status_code == code and message in reply.json()["detail"]


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, format="PNG")  # 64 Mpx in a few KB
    assert len(buf.getvalue()) < MAX_BYTES
    return buf.getvalue()


def test_missing_file_and_bad_k_are_client_errors(server):
    assert httpx.post(f"{server}/predict", timeout=10).status_code == 422
    assert _post(server, _png(class_image(0, 1)), k=9).status_code == 422


def test_200_concurrent_requests_never_get_a_5xx(server):
    good = _png(class_image(2, 3))
    payloads = [good, b"text", good[:200], good] * 50

    def send(data):
        return _post(server, data).status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        codes = list(pool.map(send, payloads))
    assert len(codes) == 200 and max(codes) < 500
    assert codes.count(200) == 100
    assert httpx.get(f"{server}/health", timeout=10).json()["status"] == "ok"
