"""A small prediction server (FastAPI): POST /predict with an image (``?k=`` labels,
``?tta=`` none | flip | crops), GET /health.

Bad input never reaches the model: uploads above ``max_bytes`` get 413 (by their declared
Content-Length before the body is read, or as soon as a chunked body passes the limit),
files that are not images or are corrupt get 415/422, decompression bombs 413. Memory
stays flat under a burst of large images: ``decoders`` threads (always the same ones, so
the allocator reuses what they freed instead of growing an arena per thread) decode,
resize and classify, and each image first waits for its share of a pixel budget
(``pixels_in_flight``, read from the file's header; a decoded pixel costs about 13 bytes
until the image is resized). The model runs one request at a time (a lock), since torch
already uses every core for one image.

A text model's server takes ``POST /predict`` with a JSON body ``{"texts": ["...", ...]}``
(at most ``max_texts`` texts, the same ``max_bytes`` body limit, ``?k=``) and answers
``{"predictions": [...]}``, one image-shaped answer per text, in order. A body that is not
JSON gets 400; one without a list of texts, or with a text that is no string, empty,
whitespace only or binary (named by its index), 422; too many texts 413.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.core.errors import PipelineError
from pipeline.modality import UnreadableItem
from pipeline.modality.image.decoding import IMAGES, header_pixels
from pipeline.serving.predict import TTA, Predictor, text_problem, top_k

MAX_PIXELS = 40_000_000  # a 6,300 x 6,300 photo; larger is refused as a bomb
ENVELOPE = 65536  # bytes of multipart framing allowed on top of max_bytes
MAX_TEXTS = 256  # texts per request to a text model


class PixelBudget:
    """At most ``limit`` decoded pixels in flight; one image above it runs alone."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self.free = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Wait until ``pixels`` fit in the budget, hold them for the block."""
        with self.free:
            self.free.wait_for(lambda: self.used == 0 or self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            with self.free:
                self.used -= pixels
                self.free.notify_all()


class BodyLimit:
    """ASGI middleware: 413 for a body above ``limit`` bytes, by its declared
    Content-Length before reading it, or once a chunked body has passed the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            detail = (f"upload larger than {self.limit - ENVELOPE} bytes"
                      if declared.isdigit() else "bad Content-Length header")
            return await _reply(send, 413 if declared.isdigit() else 400, detail)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"upload larger than {self.limit - ENVELOPE} bytes")
            return message

        await self.app(scope, counted, send)


async def _reply(send: Send, status: int, detail: str) -> None:
    """A JSON error response, as FastAPI's HTTPException gives."""
    body = ('{"detail":"' + detail + '"}').encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(model_path: Path, *, device: str = "auto", max_bytes: int = 10 * 2**20,
               k_default: int = 5, decoders: int = 2, pixels_in_flight: int = 2 * MAX_PIXELS,
               tta: str = "none", max_texts: int = MAX_TEXTS) -> FastAPI:
    """The FastAPI app serving ``model_path``; answers hold the ``k`` best labels
    (``k_default``, at most the class count, when the request names none), averaged over
    the test-time views of ``tta`` (none | flip | crops, as evaluate.tta; a request's
    ``?tta=`` overrides it). A text model's app is :func:`text_app`'s."""
    if tta not in TTA:
        raise PipelineError(f"tta = {tta!r}: choose one of {', '.join(TTA)}")
    predictor = Predictor.load(model_path, device=device)
    if predictor.modality == "text":
        return text_app(predictor, max_bytes=max_bytes, k_default=k_default,
                        max_texts=max_texts, tta=tta)
    lock = threading.Lock()
    budget = PixelBudget(pixels_in_flight)
    pool = ThreadPoolExecutor(decoders, thread_name_prefix="decode")  # off the event loop
    app = FastAPI(title="image classifier", version="1")
    app.add_middleware(BodyLimit, limit=max_bytes + ENVELOPE)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "classes": len(predictor.classes),
                "arch": predictor.meta["arch"], "tta": tta}

    @app.post("/predict")
    async def predict(file: UploadFile, k: int | None = None, tta: str = tta
                      ) -> dict[str, Any]:
        k = min(k_default, len(predictor.classes)) if k is None else k
        if tta not in TTA:
            raise HTTPException(422, f"tta must be one of {', '.join(TTA)}")
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(413, f"upload larger than {max_bytes} bytes")
        if not data:
            raise HTTPException(422, "empty upload")
        if not 1 <= k <= len(predictor.classes):
            raise HTTPException(422, f"k must be between 1 and {len(predictor.classes)}")
        return await asyncio.get_running_loop().run_in_executor(pool, _classify, data, k,
                                                                tta)

    def _classify(data: bytes, k: int, tta: str) -> dict[str, Any]:
        # the full-size pixels live in this block
        with budget.hold(header_pixels(data, cap=MAX_PIXELS)):
            try:
                pixels = IMAGES.decode(io.BytesIO(data), max_pixels=MAX_PIXELS)
            except UnreadableItem as exc:
                reason = str(exc)
                code = 413 if ("bomb" in reason or "pixel limit" in reason) else (
                    415 if "not an image" in reason else 422)
                raise HTTPException(code, f"unreadable image: {reason}") from None
            prepared = predictor.prepare(pixels)
            del pixels
        with lock:
            probs = predictor.probabilities(prepared[None], tta=tta)
        return answer(top_k(probs, predictor.classes, k)[0])

    return app


def answer(best: list[tuple[str, float]]) -> dict[str, Any]:
    """One item's answer: the best label, its probability, the k best."""
    return {"label": best[0][0], "confidence": best[0][1],
            "top_k": [{"label": label, "probability": p} for label, p in best]}


def text_app(predictor: Predictor, *, max_bytes: int, k_default: int, max_texts: int,
             tta: str = "none") -> FastAPI:
    """The app serving a text model: POST /predict with ``{"texts": [...]}`` answers
    ``{"predictions": [...]}`` (:func:`answer` per text, in order), GET /health; a
    ``tta`` other than none is refused (it is for images)."""
    if tta != "none":
        raise PipelineError(f"tta = {tta!r}: test-time augmentation is for images; a text "
                            f"model takes none")
    pool = ThreadPoolExecutor(1, thread_name_prefix="texts")  # one batch at a time
    app = FastAPI(title="text classifier", version="1")
    app.add_middleware(BodyLimit, limit=max_bytes + ENVELOPE)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "classes": len(predictor.classes),
                "arch": predictor.meta["arch"], "tta": "none"}

    @app.post("/predict")
    async def predict(request: Request, k: int | None = None, tta: str = "none"
                      ) -> dict[str, Any]:
        k = min(k_default, len(predictor.classes)) if k is None else k
        if tta != "none":
            raise HTTPException(422, "tta is for images: a text model takes none")
        if not 1 <= k <= len(predictor.classes):
            raise HTTPException(422, f"k must be between 1 and {len(predictor.classes)}")
        body = await request.body()
        if len(body) > max_bytes:
            raise HTTPException(413, f"upload larger than {max_bytes} bytes")
        texts = parse_texts(body, max_texts)
        return await asyncio.get_running_loop().run_in_executor(pool, _classify, texts, k)

    def _classify(texts: list[str], k: int) -> dict[str, Any]:
        probs = predictor.text_probabilities(texts)
        return {"predictions": [answer(best) for best in top_k(probs, predictor.classes, k)]}

    return app


def parse_texts(body: bytes, max_texts: int) -> list[str]:
    """The texts of a JSON body ``{"texts": [...]}``; an HTTPException that says what is
    wrong with it otherwise (400 not JSON, 413 too many texts, 422 anything else)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise HTTPException(400, f"malformed JSON: {exc}") from None
    texts = data.get("texts") if isinstance(data, dict) else None
    if not isinstance(texts, list) or not texts:
        raise HTTPException(422, 'the body must be a JSON object {"texts": [...]} with a '
                                 'non-empty list of strings')
    if len(texts) > max_texts:
        raise HTTPException(413, f"{len(texts)} texts: at most {max_texts} per request")
    for i, text in enumerate(texts):
        problem = text_problem(text) if isinstance(text, str) else "not a string"
        if problem:
            raise HTTPException(422, f"texts[{i}]: {problem}")
    return texts
