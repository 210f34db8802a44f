"""The browser app: a page that sends camera frames (or a photo) and draws the answer.

    python webcam.py --serve                    # http://127.0.0.1:8000

Routes:
    GET  /              the page (``static/index.html``, ``app.js``, ``style.css``)
    GET  /api/info      {"model", "classes", "max_upload_bytes"}
    POST /api/predict   an image, as the multipart field ``image`` or as the raw body
                        -> {"width", "height", "classes", "faces": [{"box", "label",
                        "confidence", "probabilities"}], "time_ms": {...}}

Every bad request is answered with a JSON ``{"error": message}`` and the server goes
on: not an image -> 400, larger than ``max_upload_bytes`` -> 413.
"""
from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .classes import CLASSES

STATIC = Path(__file__).resolve().parent / "static"
MAX_UPLOAD_BYTES = 5 * 1024 * 1024


def decode_image(data: bytes):
    """Bytes of a JPEG, PNG, ... -> BGR uint8 (H, W, 3), or None if OpenCV cannot decode them."""
    if not data:
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def create_app(pipeline, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> Flask:
    """A Flask app answering with ``pipeline`` (an ``EmotionPipeline``; no smoothing:
    the server holds no state between requests)."""
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    app.json.sort_keys = False     # keep probabilities in CLASSES order
    # One model call at a time: Numba's parallel kernels must not be entered from two
    # request threads at once.
    lock = threading.Lock()
    limit_mb = max_upload_bytes / (1024 * 1024)

    @app.get("/")
    def index():
        return app.send_static_file("index.html")

    @app.get("/api/info")
    def info():
        return jsonify(model=getattr(pipeline.classifier.model, "name", None), classes=list(CLASSES),
                       max_upload_bytes=max_upload_bytes)

    @app.post("/api/predict")
    def predict():
        upload = request.files.get("image")
        data = upload.read() if upload is not None else request.get_data()
        if not data:
            return jsonify(error="no image: send it as the multipart field 'image' or as the request body"), 400
        image = decode_image(data)
        if image is None:
            return jsonify(error="not an image OpenCV can decode (send a JPEG, PNG, BMP or WebP)"), 400
        with lock:
            result = pipeline.analyse(image)
        return jsonify(classes=list(CLASSES), **result.to_dict())

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(e):
        return jsonify(error=f"upload too large: the limit is {limit_mb:g} MB"), 413

    @app.errorhandler(HTTPException)
    def http_error(e):
        return jsonify(error=f"{e.code} {e.name}: {e.description}"), e.code

    @app.errorhandler(Exception)
    def internal_error(e):
        app.logger.exception("error while answering %s", request.path)
        return jsonify(error=f"internal error: {type(e).__name__}: {e}"), 500

    return app
