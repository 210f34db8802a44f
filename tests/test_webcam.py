"""webcam.py and fer_models.detect: real FER-2013 faces in frames, through the command
line (as a user runs it: a subprocess) and through the pipeline's pieces.

The weights are random: these tests check the pipeline (faces found, seven
probabilities summing to one, files written, messages), not the accuracy.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from fer_models.classes import CLASSES, NUM_CLASSES
from fer_models.detect import EmotionPipeline, Face, FaceDetector, FaceTracker, crop_face, draw_faces
from fixtures_faces import (FRAME_SIZE, ROOT, WEBCAM, blank_frame, count_video_frames, face_frame,
                            face_video_frames, fer_faces, random_weights, write_video)


def run_webcam(*args, timeout=300, display=None):
    """webcam.py as a user runs it, headless -> CompletedProcess (text)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    if display:
        env["DISPLAY"] = display
    return subprocess.run([sys.executable, str(WEBCAM), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def json_lines(proc) -> list[dict]:
    assert proc.returncode == 0, f"webcam.py exited {proc.returncode}:\n{proc.stderr}"
    return [json.loads(line) for line in proc.stdout.splitlines()]


def check_face(face: dict, shape) -> None:
    x, y, w, h = face["box"]
    assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= shape[1] and y + h <= shape[0], face["box"]
    assert face["label"] in CLASSES
    probs = face["probabilities"]
    assert list(probs) == list(CLASSES), f"probabilities keyed {list(probs)}, expected CLASSES order"
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert probs[face["label"]] == max(probs.values())  # rounded to 4 places: a tie may name either


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_weights(tmp_path_factory.mktemp("weights") / "small3.npz")


# -- the command line ----------------------------------------------------------------

def test_help_explains_every_option():
    proc = run_webcam("--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for option in ("--source", "--output", "--json", "--no-window", "--min-face", "--margin", "--smooth",
                   "--weights", "--model", "--threads", "--serve", "--host", "--port", "--snapshot-dir",
                   "--detect-width", "--max-frames"):
        assert option in proc.stdout, f"--help does not mention {option}"
    text = " ".join(proc.stdout.split())   # argparse wraps lines
    assert "a camera index" in text and "q or Esc quits" in text


@pytest.fixture(scope="module")
def video_run(tmp_path_factory, weights):
    """The clip from fixtures_faces through ``webcam.py --source clip --output --json``."""
    folder = tmp_path_factory.mktemp("video")
    frames, expected = face_video_frames()
    clip = write_video(folder / "clip.avi", frames)
    out = folder / "annotated.avi"
    proc = run_webcam("--source", clip, "--output", out, "--json", "--weights", weights, "--smooth", 3)
    return json_lines(proc), expected, out


def test_video_gives_one_json_line_per_frame(video_run):
    records, expected, _ = video_run
    assert [r["frame"] for r in records] == list(range(len(expected)))
    for r in records:
        assert (r["width"], r["height"]) == (FRAME_SIZE[1], FRAME_SIZE[0])
        t = r["time_ms"]
        assert t["detect"] >= 0 and t["classify"] >= 0 and t["total"] >= t["detect"] + t["classify"] - 0.1
        for face in r["faces"]:
            check_face(face, FRAME_SIZE)


def test_video_faces_found_and_empty_frames_empty(video_run):
    records, expected, _ = video_run
    with_face = [r for r, n in zip(records, expected) if n > 0]
    found = sum(len(r["faces"]) > 0 for r in with_face)
    assert found >= 0.6 * len(with_face), f"faces found in only {found} of {len(with_face)} frames with faces"
    assert any(len(r["faces"]) == 2 for r, n in zip(records, expected) if n == 2), "two faces in one frame not found"
    for r, n in zip(records, expected):
        assert len(r["faces"]) <= n, f"frame {r['frame']}: {len(r['faces'])} faces found, {n} there"
        if n == 0:
            assert r["faces"] == [], f"frame {r['frame']} has no face, got {r['faces']}"


def test_video_annotated_output_has_every_frame(video_run):
    records, expected, out = video_run
    assert out.exists()
    assert count_video_frames(out) == len(expected)
    cap = cv2.VideoCapture(str(out))
    ok, first = cap.read()
    cap.release()
    assert ok and first.shape == (*FRAME_SIZE, 3)


def test_image_source(tmp_path, weights):
    image = tmp_path / "two faces.png"
    cv2.imwrite(str(image), face_frame(fer_faces(2)))
    out = tmp_path / "annotated.jpg"
    records = json_lines(run_webcam("--source", image, "--output", out, "--json", "--weights", weights))
    assert len(records) == 1 and records[0]["source"] == "two faces.png"
    assert 1 <= len(records[0]["faces"]) <= 2
    for face in records[0]["faces"]:
        check_face(face, FRAME_SIZE)
    annotated = cv2.imread(str(out))
    assert annotated is not None and annotated.shape == (*FRAME_SIZE, 3)


def test_tta_averages_the_views_it_names(tmp_path, weights):
    """--tta alone is the mirror, --tta zooms the six views: each face's probabilities are
    the pipeline's with those views (printed to 4 places)."""
    from fer_programs.webcam import parse_args
    assert parse_args([]).tta is False and parse_args(["--tta"]).tta == "mirror"
    assert parse_args(["--tta", "zooms"]).tta == "zooms"
    frame = face_frame(fer_faces(1))
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), frame)
    records = json_lines(run_webcam("--source", image, "--json", "--weights", weights, "--tta", "zooms"))
    printed = records[0]["faces"]
    expected = {tta: EmotionPipeline.from_weights(weights, tta=tta).analyse(frame).faces for tta in ("zooms", "mirror")}
    assert len(printed) == len(expected["zooms"]) >= 1
    for face, want, mirror in zip(printed, expected["zooms"], expected["mirror"]):
        got = np.array([face["probabilities"][c] for c in CLASSES])
        np.testing.assert_allclose(got, want.probabilities, atol=6e-5)
        assert np.abs(got - mirror.probabilities).max() > 2e-4   # not the mirror's (random weights: small changes)


def test_folder_source_skips_unreadable_files(tmp_path, weights):
    folder = tmp_path / "photos"
    folder.mkdir()
    faces = fer_faces(2)
    cv2.imwrite(str(folder / "a.jpg"), face_frame(faces[:1]))
    cv2.imwrite(str(folder / "c.png"), blank_frame())
    (folder / "b.jpg").write_bytes(b"\xff\xd8 this is not really a JPEG")
    out = tmp_path / "annotated"
    proc = run_webcam("--source", folder, "--output", out, "--json", "--weights", weights)
    records = json_lines(proc)
    assert [r["source"] for r in records] == ["a.jpg", "c.png"]
    assert len(records[0]["faces"]) == 1 and records[1]["faces"] == []
    assert "b.jpg" in proc.stderr and "skipping" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "c.png"]


def test_no_display_falls_back_to_json(tmp_path, weights):
    """$DISPLAY naming no X server would make Qt abort the process: webcam.py must not
    try to open a window then, and print JSON lines instead."""
    image = tmp_path / "face.jpg"
    cv2.imwrite(str(image), face_frame(fer_faces(1)))
    proc = run_webcam("--source", image, "--weights", weights, display=":97")
    records = json_lines(proc)
    assert len(records) == 1 and len(records[0]["faces"]) == 1
    assert "no window" in proc.stderr


def test_camera_that_cannot_open(weights):
    proc = run_webcam("--source", 9, "--no-window", "--weights", weights, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "cannot open camera 9" in proc.stderr
    assert "--source" in proc.stderr and "permission" in proc.stderr and "video" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("case", ["unreadable image", "unreadable video", "no such file", "no such weights",
                                  "no such cascade"])
def test_bad_input_is_a_message_not_a_traceback(tmp_path, weights, case):
    args = {"unreadable image": ("--source", tmp_path / "x.jpg"),
            "unreadable video": ("--source", tmp_path / "x.mp4"),
            "no such file": ("--source", tmp_path / "missing.mp4"),
            "no such weights": ("--source", tmp_path / "x.jpg", "--weights", tmp_path / "none.npz"),
            "no such cascade": ("--source", tmp_path / "x.jpg", "--cascade", "no_such_cascade.xml")}[case]
    (tmp_path / "x.jpg").write_text("not an image")
    (tmp_path / "x.mp4").write_text("not a video")
    if case in ("no such weights", "no such cascade"):
        cv2.imwrite(str(tmp_path / "x.jpg"), blank_frame())
    if case != "no such weights":
        args = args + ("--weights", weights)
    proc = run_webcam(*args, "--json", timeout=120)
    assert proc.returncode == 2, f"{case}: exit {proc.returncode}\n{proc.stderr}"
    assert proc.stderr.strip().splitlines()[-1].startswith("webcam.py: ")
    assert "Traceback" not in proc.stderr
    if case == "no such cascade":
        assert "cannot load the Haar cascade" in proc.stderr and "no_such_cascade.xml" in proc.stderr


# -- the pieces -----------------------------------------------------------------------

class CountingClassifier:
    """Stands in for EmotionClassifier: records each batch, answers a fixed distribution."""

    def __init__(self):
        self.batches = []

    def predict_proba(self, faces):
        faces = np.asarray(faces)
        self.batches.append(faces.shape)
        p = np.linspace(1, 2, NUM_CLASSES, dtype=np.float32)
        return np.tile(p / p.sum(), (len(faces), 1))


def test_pipeline_classifies_all_faces_of_a_frame_in_one_batch():
    clf = CountingClassifier()
    pipeline = EmotionPipeline(clf)
    annotated, result = pipeline.process_frame(face_frame(fer_faces(2)))
    assert len(result.faces) == 2
    assert clf.batches == [(2, 48, 48, 1)], "faces must reach the model as one (N, 48, 48, 1) batch"
    assert annotated.shape == (*FRAME_SIZE, 3)
    assert [f.box[0] for f in result.faces] == sorted(f.box[0] for f in result.faces)


def test_pipeline_frame_without_face():
    clf = CountingClassifier()
    annotated, result = EmotionPipeline(clf).process_frame(blank_frame())
    assert result.faces == [] and clf.batches == []
    assert np.array_equal(annotated, blank_frame())


def test_pipeline_crops_are_the_training_input(tmp_path):
    """What reaches the model: gray, (48, 48, 1), float32 in [0, 1]."""
    seen = []

    class Spy(CountingClassifier):
        def predict_proba(self, faces):
            seen.append(np.asarray(faces))
            return super().predict_proba(faces)

    EmotionPipeline(Spy()).analyse(face_frame(fer_faces(1)))
    (batch,) = seen
    assert batch.dtype == np.float32 and batch.shape == (1, 48, 48, 1)
    assert 0.0 <= batch.min() and batch.max() <= 1.0 and batch.std() > 0.05


@pytest.mark.parametrize("shape", [(480, 640, 3), (480, 640), (480, 640, 4), (480, 640, 1)])
def test_pipeline_accepts_bgr_gray_and_bgra(shape, weights):
    frame = face_frame(fer_faces(1))
    if len(shape) == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    elif shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA)
    elif shape[2] == 1:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[:, :, None]
    annotated, result = EmotionPipeline.from_weights(weights).process_frame(frame)
    assert annotated.shape == (480, 640, 3) and len(result.faces) == 1
    assert result.faces[0].probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_pipeline_rejects_a_float_frame():
    with pytest.raises(ValueError, match="uint8"):
        EmotionPipeline(CountingClassifier()).analyse(np.zeros((48, 48, 3), np.float32))


def test_detector_min_face():
    frame = cv2.cvtColor(face_frame(fer_faces(1)), cv2.COLOR_BGR2GRAY)
    assert len(FaceDetector(min_face=60).detect(frame)) == 1
    assert FaceDetector(min_face=300).detect(frame) == []


def test_crop_face_margin_is_clipped_at_the_border():
    image = np.arange(100 * 80).reshape(100, 80)
    assert crop_face(image, (10, 20, 40, 40), margin=0.25).shape == (60, 60)
    assert crop_face(image, (0, 0, 40, 40), margin=0.25).shape == (50, 50)
    assert crop_face(image, (60, 80, 20, 20), margin=0.5).shape == (30, 30)   # 10 px on the inner sides only


def test_tracker_averages_one_face_over_frames_and_starts_new_faces_fresh():
    tracker = FaceTracker(window=2)
    a, b = np.eye(NUM_CLASSES, dtype=np.float32)[:2]
    out = tracker.update([(100, 100, 50, 50)], a[None])
    assert np.allclose(out[0], a)
    # the same face moved a little, and a new face far away
    out = tracker.update([(105, 100, 50, 50), (400, 100, 50, 50)], np.stack([b, b]))
    assert np.allclose(out[0], (a + b) / 2) and np.allclose(out[1], b)
    out = tracker.update([(108, 100, 50, 50)], a[None])   # window 2: the first frame is gone
    assert np.allclose(out[0], (b + a) / 2)


def test_tracker_keeps_a_face_missed_for_a_frame():
    tracker = FaceTracker(window=3, patience=1)
    a, b = np.eye(NUM_CLASSES, dtype=np.float32)[:2]
    tracker.update([(0, 0, 50, 50)], a[None])
    tracker.update([], np.zeros((0, NUM_CLASSES), np.float32))
    assert np.allclose(tracker.update([(2, 0, 50, 50)], b[None])[0], (a + b) / 2)
    tracker.update([], np.zeros((0, NUM_CLASSES), np.float32))
    tracker.update([], np.zeros((0, NUM_CLASSES), np.float32))
    assert np.allclose(tracker.update([(2, 0, 50, 50)], b[None])[0], b), "a face gone too long starts afresh"


@pytest.mark.parametrize("box", [(0, 0, 60, 60), (580, 420, 60, 60), (300, 200, 100, 100), (0, 0, 640, 480)])
def test_draw_faces_anywhere_in_the_frame(box):
    p = np.full(NUM_CLASSES, 1 / NUM_CLASSES, np.float32)
    frame = blank_frame()
    out = draw_faces(frame, [Face(box, p)], fps=29.9)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert not np.array_equal(out, frame)
    assert np.array_equal(frame, blank_frame()), "draw_faces must draw on a copy"
    small = draw_faces(np.zeros((40, 30), np.uint8), [Face((5, 5, 20, 20), p)])
    assert small.shape == (40, 30, 3)
