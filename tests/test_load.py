"""Load test of the browser app as users run it (``webcam.py --serve``, waitress), on
loopback: several clients at once, for a bounded time, sending a mix of real faces,
frames without faces, bytes that are no image, uploads over the byte limit and image
bombs (a tiny file claiming 16000x16000 pixels).

Holds: no 5xx, every valid request answered 200 (none dropped), server memory bounded,
server alive at the end. Prints requests/s, p50/p99 latency and peak memory.
``TINYCNN_LOAD_SECONDS`` sets the duration (default 45).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import conftest
import cv2
import numpy as np
import pytest

from fixtures_faces import blank_frame, face_frame, fer_faces, random_weights
from test_server import png_header_only

ROOT = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("TINYCNN_LOAD_SECONDS", "45"))
CLIENTS = 4
MEMORY_LIMIT_MB = 1500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("load")
    weights = random_weights(folder / "small3.npz")
    port = free_port()
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "webcam.py"), "--serve", "--port", str(port),
                             "--weights", str(weights)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/api/info", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {(folder / 'server.log').read_text()}")
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("the server did not answer within 120 s")
    yield proc, url
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def post(url, data: bytes, content_type="image/jpeg"):
    req = urllib.request.Request(url + "/api/predict", data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None


def test_many_clients_for_a_while(server):
    proc, url = server
    ok, face_jpeg = cv2.imencode(".jpg", face_frame(fer_faces(1)))
    ok2, blank_jpeg = cv2.imencode(".jpg", blank_frame())
    assert ok and ok2
    requests = [("face", face_jpeg.tobytes(), {200}), ("blank", blank_jpeg.tobytes(), {200}),
                ("not an image", b"no image here " * 50, {400}),
                ("over the byte limit", b"\xff\xd8" + os.urandom(6 * 1024 * 1024), {413}),
                # far over it: the server cuts the connection instead of reading 20 MB
                ("far over the byte limit", b"\xff\xd8" + os.urandom(20 * 1024 * 1024),
                 {413, "ConnectionResetError", "BrokenPipeError", "URLError"}),
                ("image bomb", png_header_only(16000, 16000), {413})]
    weights = np.array([6, 2, 1, 1, 0.5, 1], float)
    results, lock = [], threading.Lock()
    stop = time.time() + SECONDS

    def client(seed):
        rng = np.random.default_rng(seed)
        while time.time() < stop:
            kind, data, expected = requests[rng.choice(len(requests), p=weights / weights.sum())]
            t = time.perf_counter()
            try:
                status, answer = post(url, data)
            except OSError as e:        # a connection the server cut: counted, never expected
                status, answer = f"{type(e).__name__}", None
            with lock:
                results.append((kind, status, expected, time.perf_counter() - t, answer))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(SECONDS + 300)
    wall = time.perf_counter() - started
    peak = peak_rss_mb(proc.pid)

    valid = [r for r in results if r[0] in ("face", "blank")]
    latency = np.array([r[3] for r in valid]) * 1e3
    by_kind = {k: sum(1 for r in results if r[0] == k) for k, _, _ in requests}
    figures = (f"load test: {len(results)} requests from {CLIENTS} clients in {wall:.0f} s = "
               f"{len(results) / wall:.1f} requests/s ({by_kind}); valid requests p50 "
               f"{np.percentile(latency, 50):.0f} ms, p99 {np.percentile(latency, 99):.0f} ms; "
               f"server peak memory {peak:.0f} MB")
    print(figures)
    conftest.FIGURES.append(figures)

    wrong = [(k, s) for k, s, expected, _, _ in results if s not in expected]
    assert not wrong, f"{len(wrong)} answers not as expected, e.g. {wrong[:5]}"
    assert all(len(a["faces"]) == 1 for k, s, _, _, a in results if k == "face"), "a face went unseen"
    assert len(valid) >= CLIENTS, "too few requests to say anything"
    assert peak < MEMORY_LIMIT_MB, f"server peak memory {peak:.0f} MB"
    assert proc.poll() is None, "the server died"
    with urllib.request.urlopen(url + "/api/info", timeout=10) as r:
        assert r.status == 200
