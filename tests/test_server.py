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


# -- a real service: sizes from the header, same-site only, generic errors, bounded queue ------------
def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG claiming width x height pixels: what an image bomb looks like from outside."""
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_too_many_pixels_refused_from_the_header_before_decoding(client, monkeypatch):
    import fer_models.server as server
    decoded = []
    monkeypatch.setattr(server, "decode_image", lambda data: decoded.append(1))
    for width, height, says in ((5000, 4000, "5000x4000 pixels"), (16000, 16000, "more pixels than")):
        data = png_header_only(width, height)
        assert len(data) < 200
        r = post_image(client, data, name="bomb.png")
        assert r.status_code == 413 and says in r.get_json()["error"], r.get_json()
    assert decoded == [], "the image was decoded before its size was checked"


def test_other_host_names_are_refused(client):
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1."""
    r = client.get("/api/info", headers={"Host": "evil.example:8000"})
    assert r.status_code == 421 and "Host header refused" in r.get_json()["error"]
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
        assert client.get("/api/info", headers={"Host": host}).status_code == 200, host


@pytest.mark.parametrize("origin, status", [("http://evil.example", 403), ("null", 403),
                                            ("http://localhost", 200), (None, 200)])
def test_cross_site_posts_are_refused(client, origin, status):
    headers = {"Host": "localhost"} | ({"Origin": origin} if origin else {})
    r = client.post("/api/predict", data={"image": (io.BytesIO(jpeg(blank_frame())), "f.jpg")},
                    content_type="multipart/form-data", headers=headers)
    assert r.status_code == status, r.get_json()
    if status == 403:
        assert "cross-site" in r.get_json()["error"]


def test_internal_errors_say_nothing_of_the_inside(tmp_path):
    class Broken:
        classifier = type("C", (), {"model": None})()

        def analyse(self, image):
            raise RuntimeError("secret path /home/someone/model.npz")
    r = post_image(create_app(Broken()).test_client(), jpeg(blank_frame()))
    assert r.status_code == 500 and "secret" not in r.get_data(as_text=True)
    assert r.get_json()["error"].startswith("internal error")


def test_requests_beyond_the_queue_get_503():
    entered, release = threading.Event(), threading.Event()

    class Slow:
        classifier = type("C", (), {"model": None})()

        def analyse(self, image):
            entered.set()
            release.wait(30)
            from fer_models.detect import FrameResult
            return FrameResult(width=image.shape[1], height=image.shape[0], faces=[])
    app = create_app(Slow(), max_waiting=0)
    first = threading.Thread(target=lambda: post_image(app.test_client(), jpeg(blank_frame())))
    first.start()
    try:
        assert entered.wait(30)
        r = post_image(app.test_client(), jpeg(blank_frame()))
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    finally:
        release.set()
        first.join(30)
