"""The browser app's server (fer_models.server): real faces in, JSON out, and bad
requests answered without taking the server down.

Flask's test client for the routes; one real threaded server on a free port for what
only a socket shows (a refused oversize upload, then the next request answered).
"""
from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request

import cv2
import pytest
from werkzeug.serving import make_server

from fer_models.classes import CLASSES
from fer_models.detect import EmotionPipeline
from fer_models.server import create_app
from fixtures_faces import blank_frame, face_frame, fer_faces, random_weights

LIMIT = 1024 * 1024   # a small upload limit keeps the oversize request cheap


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    weights = random_weights(tmp_path_factory.mktemp("weights") / "small3.npz")
    return create_app(EmotionPipeline.from_weights(weights), max_upload_bytes=LIMIT)


@pytest.fixture
def client(app):
    return app.test_client()


def jpeg(frame) -> bytes:
    ok, data = cv2.imencode(".jpg", frame)
    assert ok
    return data.tobytes()


def post_image(client, data: bytes, name="frame.jpg"):
    return client.post("/api/predict", data={"image": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def test_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and b"<video" in page.data and b"app.js" in page.data
    for path in ("/static/app.js", "/static/style.css"):
        assert client.get(path).status_code == 200, path


def test_info(client):
    info = client.get("/api/info").get_json()
    assert info["classes"] == list(CLASSES) and info["model"] == "small3" and info["max_upload_bytes"] == LIMIT


def test_face_jpeg_gives_faces_and_labels(client):
    r = post_image(client, jpeg(face_frame(fer_faces(2))))
    assert r.status_code == 200, r.get_data(as_text=True)
    answer = r.get_json()
    assert answer["classes"] == list(CLASSES)
    assert (answer["width"], answer["height"]) == (640, 480)
    assert 1 <= len(answer["faces"]) <= 2
    for face in answer["faces"]:
        assert face["label"] in CLASSES and len(face["box"]) == 4
        assert list(face["probabilities"]) == list(CLASSES)
        assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert set(answer["time_ms"]) == {"detect", "classify"}


def test_raw_body_and_png_work_too(client):
    ok, png = cv2.imencode(".png", face_frame(fer_faces(1)))
    r = client.post("/api/predict", data=png.tobytes(), content_type="image/png")
    assert r.status_code == 200 and len(r.get_json()["faces"]) == 1


def test_image_without_face_is_not_an_error(client):
    r = post_image(client, jpeg(blank_frame()))
    assert r.status_code == 200 and r.get_json()["faces"] == []


@pytest.mark.parametrize("body", [b"just some text, not an image", b"\xff\xd8\xff\xe0 truncated jpeg", b""])
def test_not_an_image_is_400_with_a_message(client, body):
    r = post_image(client, body, name="notes.txt")
    assert r.status_code == 400
    assert "image" in r.get_json()["error"]
    assert post_image(client, jpeg(blank_frame())).status_code == 200, "server must keep answering"


def test_no_image_at_all_is_400(client):
    r = client.post("/api/predict")
    assert r.status_code == 400 and "error" in r.get_json()


def test_oversize_upload_is_413(client):
    r = post_image(client, b"\xff" * (LIMIT + 1))
    assert r.status_code == 413
    assert "too large" in r.get_json()["error"]
    assert post_image(client, jpeg(blank_frame())).status_code == 200, "server must keep answering"


def test_wrong_method_and_path_answer_json(client):
    assert client.get("/api/predict").status_code == 405
    r = client.get("/no/such/page")
    assert r.status_code == 404 and "error" in r.get_json()


def test_real_server_survives_bad_requests(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/api/predict"

    def post(data: bytes, content_type="image/jpeg"):
        req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    try:
        assert post(b"hello", "text/plain")[0] == 400
        assert post(b"\0" * (LIMIT * 2))[0] == 413
        status, answer = post(jpeg(face_frame(fer_faces(1))))
        assert status == 200 and len(answer["faces"]) == 1
    finally:
        server.shutdown()
        thread.join(timeout=10)
