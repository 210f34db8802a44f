"""Real faces for the webcam, server and browser tests: FER-2013 test faces scaled up
and pasted into larger frames, written as images, videos or a Y4M file (what
Chromium's fake camera plays), and a weights file with random weights.

The tests check the pipeline (faces found, seven probabilities, files written),
never the accuracy: the weights are random.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_models.classes import CLASSES
from fer_models.data import default_location

ROOT = Path(__file__).resolve().parents[1]
FER_ROOT = default_location()  # $FER2013_DIR, else ../shared/fer2013
WEBCAM = ROOT / "webcam.py"
FRAME_SIZE = (480, 640)   # (height, width)
FACE_PX = 200             # a 48x48 face is scaled to this, as a face seen by a webcam
BACKGROUND = 120


def fer_faces(n: int) -> list[np.ndarray]:
    """``n`` FER-2013 PublicTest faces, gray uint8 (48, 48), taken from the classes in
    turn (always the same ones); skips the test when the data set is absent.

    Only faces that OpenCV's Haar cascade finds when shown alone in a frame are used
    (about 3 in 4 of the original, un-equalised pixels): these tests check the
    pipeline, not the detector's recall."""
    folders = [FER_ROOT / "test" / c for c in CLASSES]
    if not all(f.is_dir() for f in folders):
        pytest.skip(f"FER-2013 not found at {FER_ROOT} (expected test/<class>/PublicTest_*.png)")
    per_class = [sorted(f.glob("PublicTest_*.png")) for f in folders]
    in_turn = [files[i] for i in range(max(map(len, per_class))) for files in per_class if i < len(files)]
    faces = []
    for path in in_turn:
        if len(faces) == n:
            return faces
        face = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if _detected(face):
            faces.append(face)
    raise RuntimeError(f"fewer than {n} faces in {FER_ROOT} that the detector finds")


def smooth_random_images(n: int, seed: int = 0) -> np.ndarray:
    """(n, 48, 48, 1) float32 in [0, 1]: blurred noise, each image stretched to the whole
    range. The stand-in for faces where FER-2013 is absent and any input will do: light
    and dark regions of a face's scale, which a network's features tell apart, unlike
    pixel noise, which every convolution averages to nearly the same grey."""
    noise = np.random.default_rng(seed).random((n, 48, 48), dtype=np.float32)
    smooth = np.stack([cv2.GaussianBlur(im, (0, 0), 4) for im in noise])
    low, high = smooth.min(axis=(1, 2), keepdims=True), smooth.max(axis=(1, 2), keepdims=True)
    return ((smooth - low) / (high - low))[..., None].astype(np.float32)


@functools.lru_cache(maxsize=None)
def _detector():
    """The first cascade upright only: a face it finds is found by the default detector
    (its turned retries and second cascade come after) alone and beside any other."""
    from fer_models.detect import FaceDetector
    return FaceDetector(tilts=(), cascade="haarcascade_frontalface_default.xml")


def _detected(face: np.ndarray) -> bool:
    """Whether the webcam's detector finds this face alone in a frame and twice side by side."""
    return all(len(_detector().detect(cv2.cvtColor(face_frame(shown), cv2.COLOR_BGR2GRAY))) == len(shown)
               for shown in ([face], [face, face]))


def blank_frame() -> np.ndarray:
    """A frame with no face: a smooth horizontal gradient, BGR (480, 640, 3)."""
    h, w = FRAME_SIZE
    row = np.linspace(BACKGROUND - 40, BACKGROUND + 40, w).astype(np.uint8)
    return np.repeat(np.tile(row, (h, 1))[:, :, None], 3, axis=2)


def face_frame(faces: list[np.ndarray], shift: int = 0) -> np.ndarray:
    """The faces scaled to FACE_PX and pasted side by side (moved right by ``shift``
    px) into a blank frame -> BGR (480, 640, 3)."""
    frame = blank_frame()
    h, w = FRAME_SIZE
    gap = (w - len(faces) * FACE_PX) // (len(faces) + 1)
    top = (h - FACE_PX) // 2
    for k, face in enumerate(faces):
        left = min(w - FACE_PX, gap + k * (FACE_PX + gap) + shift)
        big = cv2.resize(face, (FACE_PX, FACE_PX), interpolation=cv2.INTER_CUBIC)
        frame[top:top + FACE_PX, left:left + FACE_PX] = big[:, :, None]
    return frame


def face_video_frames(n_faces: int = 16):
    """A short clip: 3 frames with no face, ``n_faces`` frames with one face each
    (a different face each frame, drifting right), 2 frames with two faces, 3 with
    no face again. -> (frames, faces per frame)."""
    faces = fer_faces(n_faces + 2)
    frames = [blank_frame() for _ in range(3)]
    frames += [face_frame([f], shift=4 * k - 32) for k, f in enumerate(faces[:n_faces])]
    frames += [face_frame(faces[n_faces:]) for _ in range(2)]
    frames += [blank_frame() for _ in range(3)]
    expected = [0] * 3 + [1] * n_faces + [2] * 2 + [0] * 3
    return frames, expected


def write_video(path: Path, frames, fps: float = 10.0) -> Path:
    """Motion-JPEG in AVI: the codec opencv-python writes and reads back everywhere."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def count_video_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def write_y4m(path: Path, frames, fps: int = 10) -> Path:
    """YUV4MPEG2, 4:2:0: the uncompressed format Chromium's fake camera plays
    (``--use-file-for-fake-video-capture``), in a loop."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())   # Y, then U and V at half size
    return path


def random_weights(path: Path, model: str = "small3") -> Path:
    """A weights file as train.py writes it, with the untrained (seeded) weights."""
    import fer_models
    from fer_models.predict import save_model
    save_model(fer_models.build(model, seed=0), path)
    return path
