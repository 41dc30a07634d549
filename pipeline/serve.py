"""A small prediction server (FastAPI): POST /predict with an image, GET /health.

Bad input never reaches the model: uploads above ``max_bytes`` get 413, files that are
not images or are corrupt get 415/422, decompression bombs 413; the model runs one
request at a time (a lock), since torch already uses every core for one image.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, UploadFile
from starlette.concurrency import run_in_threadpool  # decode and inference off the loop

from pipeline.images import UnreadableImage, decode_image
from pipeline.predict import Predictor, top_k

MAX_PIXELS = 40_000_000  # a 6,300 x 6,300 photo; larger is refused as a bomb


def create_app(model_path: Path, *, device: str = "auto", max_bytes: int = 10 * 2**20,
               k_default: int = 5) -> FastAPI:
    """The FastAPI app serving ``model_path``; answers hold the ``k`` best labels."""
    predictor = Predictor.load(model_path, device=device)
    lock = threading.Lock()
    app = FastAPI(title="image classifier", version="1")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "classes": len(predictor.classes),
                "arch": predictor.meta["arch"]}

    @app.post("/predict")
    async def predict(request: Request, file: UploadFile, k: int = k_default
                      ) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > max_bytes + 65536:
            raise HTTPException(413, f"upload larger than {max_bytes} bytes")
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(413, f"upload larger than {max_bytes} bytes")
        if not data:
            raise HTTPException(422, "empty upload")
        if not 1 <= k <= len(predictor.classes):
            raise HTTPException(422, f"k must be between 1 and {len(predictor.classes)}")
        return await run_in_threadpool(_classify, data, k)

    def _classify(data: bytes, k: int) -> dict[str, Any]:
        try:
            pixels = decode_image(io.BytesIO(data), max_pixels=MAX_PIXELS)
        except UnreadableImage as exc:
            reason = str(exc)
            code = 413 if ("bomb" in reason or "pixel limit" in reason) else (
                415 if "not an image" in reason else 422)
            raise HTTPException(code, f"unreadable image: {reason}") from None
        with lock:
            probs = predictor.probabilities(predictor.prepare(pixels)[None])
        best = top_k(probs, predictor.classes, k)[0]
        return {"label": best[0][0], "confidence": best[0][1],
                "top_k": [{"label": label, "probability": p} for label, p in best]}

    return app
