"""The browser app end to end: Debian's Chromium, headless, with its fake camera
playing a video of real FER-2013 faces, against the real server on a free port.
The test waits until the page shows a face box and an emotion label; then uploads a
photo, and a file that is not an image.

Needs the ``chromium`` package (/usr/bin/chromium; ``.ci/run`` installs it) and the
``playwright`` Python package, driving that Chromium (no ``playwright install``).
"""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import cv2
import pytest

from fer_models.classes import CLASSES
from fer_models.detect import EmotionPipeline
from fer_models.server import create_app
from fixtures_faces import face_frame, fer_faces, random_weights, write_y4m
from helpers import chromium_page

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    found = shutil.which("chromium")
    CHROMIUM = Path(found) if found else CHROMIUM
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Chromium not installed (apt-get install chromium; .ci/run does)")
WAIT_MS = 90_000   # a busy CI machine: Chromium's start, the first frames, the first answers


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    from werkzeug.serving import make_server
    weights = random_weights(tmp_path_factory.mktemp("weights") / "small3.npz")
    app = create_app(EmotionPipeline.from_weights(weights))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium whose camera plays FER-2013 faces -> (page, JavaScript errors)."""
    folder = tmp_path_factory.mktemp("chromium")
    faces = fer_faces(4)
    camera = write_y4m(folder / "faces.y4m", [face_frame([f]) for f in faces for _ in range(5)])
    flags = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             f"--use-file-for-fake-video-capture={camera}", "--autoplay-policy=no-user-gesture-required"]
    with chromium_page(CHROMIUM, folder / "profile", {"width": 1200, "height": 800}, flags) as browser:
        yield browser


def first_face(page) -> dict:
    """The first listed face, read in one step (waiting for one): with the camera on, the
    page replaces the list with every answer (four a second, a different face each time),
    so reading its parts one call at a time can mix two answers."""
    face = page.wait_for_function("""() => {
        const li = document.querySelector('#results li.face');
        return li && {label: li.dataset.label, box: li.dataset.box,
                      text: li.querySelector('.label').innerText,
                      bars: li.querySelectorAll('.bar').length};
    }""", timeout=WAIT_MS).json_value()
    face["box"] = [int(v) for v in face["box"].split(",")]
    return face


def test_camera_frames_get_boxes_and_labels(browser, server_url):
    page = browser.page
    page.goto(server_url)
    page.click("#start")
    face = first_face(page)
    assert face["label"] in CLASSES
    x, y, w, h = face["box"]
    assert w > 50 and h > 50 and 0 <= x < 640 and 0 <= y < 480, face
    assert face["bars"] == len(CLASSES), face
    assert face["label"] in face["text"], face
    # the boxes are drawn too: the overlay canvas, sized as the video, is no longer blank
    # (polled, as it is redrawn with every answer, and an answer may find no face)
    drawn = page.wait_for_function("""() => {
        const c = document.getElementById('overlay');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < px.length; i += 4) n += px[i] > 0;
        return c.width === 640 && c.height === 480 && n > 1000 && [c.width, c.height, n];
    }""", timeout=WAIT_MS).json_value()
    assert drawn[:2] == [640, 480] and drawn[2] > 1000, drawn
    assert browser.errors == [], browser.errors


def test_uploaded_photo(browser, server_url, tmp_path):
    page = browser.page
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), face_frame(fer_faces(2)))
    page.goto(server_url)
    page.set_input_files("#photo-input", str(photo))
    page.wait_for_function("document.getElementById('status').textContent.includes('face(s)')", timeout=WAIT_MS)
    assert page.locator("#results li.face").count() >= 1
    assert first_face(page)["label"] in CLASSES
    assert page.is_visible("#photo") and not page.is_visible("#video")

    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    page.set_input_files("#photo-input", str(text))
    page.wait_for_selector("#status.error", timeout=WAIT_MS)
    assert "not an image" in page.inner_text("#status")
    assert browser.errors == [], browser.errors
