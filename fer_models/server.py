"""The browser app: a page that sends camera frames (or a photo) and draws the answer.

    python webcam.py --serve                    # http://127.0.0.1:8000

Routes:
    GET  /              the page (``static/index.html``, ``app.js``, ``style.css``)
    GET  /api/info      {"model", "classes", "max_upload_bytes"}
    POST /api/predict   an image, as the multipart field ``image`` or as the raw body
                        -> {"width", "height", "classes", "faces": [{"box", "label",
                        "confidence", "probabilities"}], "time_ms": {...}}

Every bad request is answered with a JSON ``{"error": message}`` and the server goes
on: not an image -> 400, larger than ``max_upload_bytes`` or with more than
``max_pixels`` pixels -> 413 (the size is read from the image's header, before any
decoding), too many requests already waiting for the model -> 503 (with Retry-After),
a ``Host`` header that is not one of ``allowed_hosts`` -> 421 (a DNS-rebinding page
cannot reach the server through its own domain name), a POST whose ``Origin`` is another
site -> 403 (any page you visit could otherwise post to 127.0.0.1). Errors inside the
server answer a generic 500; the details go to the server's log only.

``webcam.py --serve`` runs it under waitress (a production WSGI server) with a bounded
number of worker threads and connections and a timeout for idle connections.
"""
from __future__ import annotations

import io
import math
import threading
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
from flask import Flask, jsonify, request
from PIL import Image, UnidentifiedImageError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .classes import CLASSES

STATIC = Path(__file__).resolve().parent / "static"
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_PIXELS = 16_000_000      # a 4:3 photo of 4600x3450; any webcam frame is far below
MAX_WAITING = 8              # requests queued for the model before the server answers 503
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def image_size(data: bytes):
    """(width, height) read from the image's header only, or None if it is not an image
    format we accept. Pillow parses the header; nothing is decoded. A header so large that
    Pillow itself refuses it (an image bomb) gives ``(inf, inf)``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size if im.format in ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF") else None
    except Image.DecompressionBombError:
        return math.inf, math.inf
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _host_name(host: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1', 'Example.org' -> 'example.org'."""
    return (urlsplit(f"//{host}").hostname or "").lower()


def decode_image(data: bytes):
    """Bytes of a JPEG, PNG, ... -> BGR uint8 (H, W, 3), or None if OpenCV cannot decode them."""
    if not data:
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def create_app(pipeline, max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS,
               allowed_hosts=LOCAL_HOSTS, max_waiting: int = MAX_WAITING) -> Flask:
    """A Flask app answering with ``pipeline`` (an ``EmotionPipeline``; no smoothing:
    the server holds no state between requests). ``allowed_hosts``: the names the server
    may be reached by (the ``Host`` header, port aside)."""
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    app.json.sort_keys = False     # keep probabilities in CLASSES order
    # One model call at a time: Numba's kernels must not be entered from two request
    # threads at once; at most max_waiting requests queue for it, the rest get 503.
    lock = threading.Lock()
    waiting = threading.BoundedSemaphore(max_waiting + 1)
    limit_mb = max_upload_bytes / (1024 * 1024)
    allowed = {h.lower().strip("[]") for h in allowed_hosts}

    @app.before_request
    def same_site_only():
        if _host_name(request.host) not in allowed:
            return jsonify(error="this server is not reachable under that name (Host header refused); "
                                 "start it with --allow-host NAME to allow one"), 421
        origin = request.headers.get("Origin")
        if request.method == "POST" and origin is not None:
            parts = urlsplit(origin)
            if origin == "null" or parts.netloc.lower() != request.host.lower():
                return jsonify(error="cross-site request refused: post from the app's own page"), 403
        return None

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
        size = image_size(data)
        if size is None:
            return jsonify(error="not an image we accept (send a JPEG, PNG, BMP or WebP)"), 400
        if size[0] * size[1] > max_pixels:
            what = f"{size[0]}x{size[1]} pixels" if math.isfinite(size[0]) else "more pixels than an image may have"
            return jsonify(error=f"image too large: {what}, the limit is {max_pixels / 1e6:g} million pixels"), 413
        image = decode_image(data)
        if image is None:
            return jsonify(error="not an image OpenCV can decode (send a JPEG, PNG, BMP or WebP)"), 400
        if not waiting.acquire(blocking=False):
            return jsonify(error="busy: too many requests waiting; try again shortly"), 503, {"Retry-After": "1"}
        try:
            with lock:
                result = pipeline.analyse(image)
        finally:
            waiting.release()
        return jsonify(classes=list(CLASSES), **result.to_dict())

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(e):
        return jsonify(error=f"upload too large: the limit is {limit_mb:g} MB"), 413

    @app.errorhandler(HTTPException)
    def http_error(e):
        return jsonify(error=f"{e.code} {e.name}: {e.description}"), e.code

    @app.errorhandler(Exception)
    def internal_error(e):
        app.logger.exception("error while answering %s", request.path)   # the details stay here
        return jsonify(error="internal error while answering; the server's log has the details"), 500

    return app
