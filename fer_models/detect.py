"""Faces in a frame -> boxes, emotions and an annotated frame: the pieces that
``webcam.py`` and the web server (``fer_models.server``) share.

    >>> from fer_models.detect import EmotionPipeline
    >>> pipeline = EmotionPipeline.from_weights("runs/resfer")     # or weights=None: the bundled model
    >>> annotated, result = pipeline.process_frame(frame)          # frame: BGR uint8 (H, W, 3)
    >>> [(face.box, face.label, face.confidence) for face in result.faces]

One frame goes through four small steps, each usable alone:

1. ``FaceDetector``: OpenCV's Haar cascade on the grayscale frame (scaled down first,
   which is most of the speed; the boxes are scaled back).
2. ``crop_face``: the box plus a margin, from the *grayscale* frame: the model was
   trained on gray faces, and ``prepare_face`` turns the crop into exactly the
   training input (48x48, [0, 1]). All faces of a frame go to the model in one batch.
3. ``FaceTracker`` (optional): follows each face from frame to frame by box overlap
   and averages its probabilities over the last few frames, so the label does not
   flicker.
4. ``draw_faces``: box, label and confidence, and a bar chart of the seven
   probabilities under each face; an FPS counter.

For live use, run the model on one thread (``webcam.py`` does: ``--threads``): a
frame's few faces are too small a batch to share out, and idle BLAS and Numba workers
left spinning cost far more CPU than the model itself (``docs/fer/webcam.md`` has the
measurement).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .classes import CLASSES, NUM_CLASSES
from .predict import EmotionClassifier, prepare_face

Box = tuple[int, int, int, int]  # (x, y, width, height) in frame pixels

# The Haar cascade's own window: it never finds a face smaller than this, so scaling
# the frame down further than min_face -> 24 px would lose faces the user asked for.
HAAR_WINDOW = 24

# Margin added on each side of the detected box, as a fraction of the box's size. On
# FER-2013 faces pasted into a frame the Haar box is about the size of the FER-2013 crop
# itself (``docs/fer/webcam.md``), and the box as it is classified best: on PublicTest's
# re-framed faces the bundle was right on 66.68% of those found with no margin, 65.89%
# with 0.05, 64.12% with 0.10 and 65.56% with the box shrunk by 0.05 a side.
DEFAULT_MARGIN = 0.0


@dataclass
class Face:
    """One face found in a frame and its emotion."""
    box: Box                      # (x, y, width, height), frame pixels
    probabilities: np.ndarray     # (NUM_CLASSES,) in CLASSES order, sums to 1

    @property
    def label(self) -> str:
        return CLASSES[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probabilities))

    def to_dict(self) -> dict:
        """JSON-ready: box, label, confidence, probabilities by class name."""
        return {"box": [int(v) for v in self.box], "label": self.label,
                "confidence": round(self.confidence, 4),
                "probabilities": {c: round(float(p), 4) for c, p in zip(CLASSES, self.probabilities)}}


@dataclass
class FrameResult:
    """The faces of one frame and what finding and classifying them cost."""
    faces: list[Face] = field(default_factory=list)
    detect_ms: float = 0.0        # grayscale conversion, downscaling, Haar cascade
    classify_ms: float = 0.0      # cropping, prepare_face, one model call, smoothing
    width: int = 0
    height: int = 0

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height,
                "faces": [f.to_dict() for f in self.faces],
                "time_ms": {"detect": round(self.detect_ms, 2), "classify": round(self.classify_ms, 2)}}


# -- 1. detection ----------------------------------------------------------------------

class FaceDetector:
    """OpenCV's Haar cascade, run on a grayscale copy of the frame scaled to
    ``detect_width`` pixels wide (never so small that a ``min_face`` face falls below
    the cascade's 24-pixel window).

    Args:
        min_face: smallest face to report, in frame pixels.
        detect_width: width the frame is scaled down to for detection; 0 = full size.
        scale_factor, min_neighbors: ``detectMultiScale``'s; larger = faster, fewer
            false detections, more missed faces.
        cascade: a file name in ``cv2.data.haarcascades`` or a path, or several: where
            the first finds no face (upright or turned), the next searches the frame
            again, and so on. OpenCV's ``alt2`` frontal cascade finds other faces than its
            default one: as a second, on 600 PublicTest faces framed as a webcam sees
            them (``fer_models.reframe``) it took the faces found from 81.7% to 87.2%,
            with no box more on 200 frames without a face (``docs/fer/webcam.md``). A
            frame where the first finds a face costs nothing more. OpenCV's profile cascade
            (``haarcascade_profileface.xml``) as a third finds faces turned too far for the
            frontal ones (found 87.2% -> 90.3% on the same 600 faces, searched both ways,
            below; 85.0% -> 88.0% on all of PublicTest, the bundle's re-framed accuracy
            55.98% -> 57.56%), still with no box on the 200 frames without a face, but it
            makes a frame without a face 3.6 times as slow (64 -> 235 ms on one core), so it
            is not in the default: ``webcam.py --cascade`` adds it (``docs/fer/webcam.md``).
        both_ways: the cascades (file names) that are also run on the mirrored frame, a
            face found there reported where it is in the frame: a profile cascade is
            trained on faces turned one way only.
        tilts: where no face is found upright, the frame is searched again turned by each
            of these angles (degrees) in turn, and a face found there is reported as the
            upright box around it. The frontal cascade misses heads tilted by more than
            about 10 degrees; on FER-2013 faces re-framed as a webcam sees them
            (``fer_models.reframe``) the retries took the faces found from 70.5% to 83.8%
            (400 PublicTest faces, ``docs/fer/webcam.md``). A frame with a face upright
            costs nothing more; one without any face, one search per tilt more.
    """

    def __init__(self, min_face: int = 60, detect_width: int = 320, scale_factor: float = 1.1,
                 min_neighbors: int = 5,
                 cascade: str | tuple[str, ...] = ("haarcascade_frontalface_default.xml",
                                                   "haarcascade_frontalface_alt2.xml"),
                 tilts: tuple[float, ...] = (15.0, -15.0),
                 both_ways: tuple[str, ...] = ("haarcascade_profileface.xml",)):
        if min_face < 1:
            raise ValueError(f"FaceDetector: min_face must be >= 1 pixel, got {min_face}")
        if scale_factor <= 1.0:
            raise ValueError(f"FaceDetector: scale_factor must be > 1, got {scale_factor}")
        names = (cascade,) if isinstance(cascade, (str, Path)) else tuple(cascade)
        if not names:
            raise ValueError("FaceDetector: give at least one cascade")
        self.cascades = []
        for name in names:
            path = Path(name) if Path(name).exists() else Path(cv2.data.haarcascades) / name
            loaded = cv2.CascadeClassifier(str(path))
            if loaded.empty():
                raise FileNotFoundError(f"FaceDetector: cannot load the Haar cascade {path}")
            self.cascades.append(loaded)
        self.cascade_names = tuple(Path(name).name for name in names)
        self.both_ways = tuple(Path(name).name for name in both_ways)
        self.min_face, self.detect_width = int(min_face), int(detect_width)
        self.scale_factor, self.min_neighbors = float(scale_factor), int(min_neighbors)
        self.tilts = tuple(float(t) for t in tilts)

    def detect(self, gray: np.ndarray) -> list[Box]:
        """gray: uint8 (H, W) -> boxes (x, y, w, h) in ``gray``'s pixels, left to right:
        those of the first cascade, upright or else turned (or else, for a cascade of
        ``both_ways``, in the mirrored frame), that finds any."""
        for cascade, name in zip(self.cascades, self.cascade_names):
            boxes = self._search(gray, cascade)
            if not boxes and name in self.both_ways:
                w = gray.shape[1]
                boxes = sorted((w - bx - bw, by, bw, bh)
                               for bx, by, bw, bh in self._search(np.ascontiguousarray(gray[:, ::-1]), cascade))
            if boxes:
                return boxes
        return []

    def _search(self, gray: np.ndarray, cascade) -> list[Box]:
        """The cascade's faces in ``gray`` upright, or else turned by each tilt in turn."""
        boxes = self._detect_upright(gray, cascade)
        for angle in self.tilts:
            if boxes:
                break
            boxes = self._detect_turned(gray, angle, cascade)
        return boxes

    def _detect_turned(self, gray: np.ndarray, angle: float, cascade) -> list[Box]:
        """The faces of ``gray`` turned by ``angle`` degrees about its centre, each as the
        upright box of the same size around its centre in ``gray``."""
        h, w = gray.shape
        turn = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
        back = cv2.invertAffineTransform(turn)
        boxes = []
        turned = cv2.warpAffine(gray, turn, (w, h), borderMode=cv2.BORDER_REPLICATE)
        for bx, by, bw, bh in self._detect_upright(turned, cascade):
            cx, cy = back @ (bx + bw / 2, by + bh / 2, 1.0)
            boxes.append((int(round(cx - bw / 2)), int(round(cy - bh / 2)), bw, bh))
        return sorted(boxes)

    def _detect_upright(self, gray: np.ndarray, cascade) -> list[Box]:
        h, w = gray.shape
        s = 1.0
        if self.detect_width > 0:
            s = min(1.0, max(self.detect_width / w, HAAR_WINDOW / self.min_face))
        small = gray if s == 1.0 else cv2.resize(gray, (max(1, round(w * s)), max(1, round(h * s))),
                                                 interpolation=cv2.INTER_AREA)
        m = max(1, round(self.min_face * s))
        found = cascade.detectMultiScale(small, scaleFactor=self.scale_factor,
                                         minNeighbors=self.min_neighbors, minSize=(m, m))
        return sorted(tuple(int(round(v / s)) for v in b) for b in found)


def crop_face(image: np.ndarray, box: Box, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The box grown by ``margin`` x its size on every side, clipped to the image.
    image: (H, W) or (H, W, C) -> a view (h', w'[, C])."""
    x, y, w, h = box
    dx, dy = round(w * margin), round(h * margin)
    H, W = image.shape[:2]
    x0, y0 = max(0, x - dx), max(0, y - dy)
    x1, y1 = min(W, x + w + dx), min(H, y + h + dy)
    return image[y0:y1, x0:x1]


# -- 3. smoothing ----------------------------------------------------------------------

def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes, in [0, 1]."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class FaceTracker:
    """Averages each face's probabilities over its last ``window`` frames.

    A face is the same face as in the previous frames if its box overlaps a track's
    last box by at least ``min_iou`` (greedy, best overlap first). A track not seen
    for ``patience`` frames is forgotten, so a detection missed for a frame or two
    does not restart the average.
    """

    def __init__(self, window: int = 5, min_iou: float = 0.3, patience: int = 5):
        if window < 1:
            raise ValueError(f"FaceTracker: window must be >= 1 frame, got {window}")
        self.window, self.min_iou, self.patience = window, min_iou, patience
        self.tracks: list[dict] = []   # each: {"box", "history": deque of (7,), "missed"}

    def reset(self) -> None:
        self.tracks = []

    def update(self, boxes: list[Box], probabilities: np.ndarray) -> np.ndarray:
        """boxes: N boxes of this frame, probabilities (N, 7) -> smoothed (N, 7)."""
        pairs = sorted(((box_iou(b, t["box"]), i, j) for i, b in enumerate(boxes)
                        for j, t in enumerate(self.tracks)), reverse=True)
        track_of: dict[int, dict] = {}
        used = set()
        for iou, i, j in pairs:
            if iou < self.min_iou:
                break
            if i not in track_of and j not in used:
                track_of[i] = self.tracks[j]
                used.add(j)
        for j, t in enumerate(self.tracks):
            if j not in used:
                t["missed"] += 1
        self.tracks = [t for t in self.tracks if t["missed"] <= self.patience]
        smoothed = np.empty((len(boxes), NUM_CLASSES), np.float32)
        for i, box in enumerate(boxes):
            t = track_of.get(i)
            if t is None:
                t = {"history": deque(maxlen=self.window)}
                self.tracks.append(t)
            t["box"], t["missed"] = box, 0
            t["history"].append(probabilities[i])
            smoothed[i] = np.mean(t["history"], axis=0)
        return smoothed


# -- 4. drawing ------------------------------------------------------------------------

FONT = cv2.FONT_HERSHEY_SIMPLEX
BOX_COLOUR = (80, 220, 80)        # BGR
BAR_COLOUR = (200, 200, 200)
ROW, NAME_W, BAR_W = 13, 60, 56   # bar chart: row height, name column, longest bar


def _text(img, text, org, scale=0.45, colour=(255, 255, 255), thickness=1):
    """Text with a black outline, readable on any background."""
    cv2.putText(img, text, org, FONT, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, FONT, scale, colour, thickness, cv2.LINE_AA)


def _bar_chart(img, face: Face) -> None:
    """The seven probabilities as horizontal bars under the face (where there is no
    room: right of it, else left), so that faces side by side keep their charts apart."""
    H, W = img.shape[:2]
    x, y, w, h = face.box
    cw, ch = NAME_W + BAR_W + 8, ROW * NUM_CLASSES + 6
    if y + h + 4 + ch <= H:
        x0, y0 = min(max(0, x), max(0, W - cw)), y + h + 4
    else:
        x0 = x + w + 4 if x + w + 4 + cw <= W else max(0, x - cw - 4)
        y0 = min(max(0, y), max(0, H - ch))
    roi = img[y0:y0 + ch, x0:x0 + cw]
    roi[:] = (roi * 0.4).astype(img.dtype)   # darken behind the chart
    top = int(np.argmax(face.probabilities))
    for k, (name, p) in enumerate(zip(CLASSES, face.probabilities)):
        ry = y0 + 3 + k * ROW
        colour = BOX_COLOUR if k == top else BAR_COLOUR
        _text(img, name, (x0 + 3, ry + ROW - 3), 0.38, colour)
        bx = x0 + NAME_W
        cv2.rectangle(img, (bx, ry + 2), (bx + max(1, round(float(p) * BAR_W)), ry + ROW - 2), colour, -1)


def draw_faces(frame: np.ndarray, faces: list[Face], fps: float | None = None,
               chart: bool = True) -> np.ndarray:
    """A copy of ``frame`` (BGR or gray uint8) with each face's box, label and
    confidence, its probability bar chart, and the FPS counter if given -> BGR uint8."""
    img = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame.copy()
    for face in faces:
        x, y, w, h = face.box
        cv2.rectangle(img, (x, y), (x + w, y + h), BOX_COLOUR, 2)
        _text(img, f"{face.label} {face.confidence:.0%}", (x, max(14, y - 6)), 0.6, BOX_COLOUR, 2)
        if chart:
            _bar_chart(img, face)
    if fps is not None:
        _text(img, f"{fps:.1f} FPS", (8, 22), 0.6)
    return img


# -- the whole frame -------------------------------------------------------------------

def as_bgr_uint8(frame) -> np.ndarray:
    """Check a frame where it enters: uint8 (H, W), (H, W, 1), (H, W, 3) BGR or
    (H, W, 4) BGRA -> (H, W, 3) BGR or (H, W) gray."""
    a = np.asarray(frame)
    if a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 frame, got dtype {a.dtype} shape {a.shape}")
    if a.ndim == 3 and a.shape[2] == 1:
        return a[:, :, 0]
    if a.ndim == 3 and a.shape[2] == 4:
        return cv2.cvtColor(a, cv2.COLOR_BGRA2BGR)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3):
        return a
    raise ValueError(f"expected a frame (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {a.shape}")


class EmotionPipeline:
    """Detector + classifier (+ tracker): ``analyse(frame)`` finds and classifies the
    faces, ``process_frame(frame)`` also draws them.

    Args:
        classifier: an ``EmotionClassifier`` (anything with ``predict_proba(crops)``).
        detector: a ``FaceDetector``; default ``FaceDetector()``.
        margin: added around each box before cropping, as a fraction of its size.
        smooth: average each face's probabilities over this many frames (0 or 1: off).
    """

    def __init__(self, classifier, detector: FaceDetector | None = None,
                 margin: float = DEFAULT_MARGIN, smooth: int = 0):
        self.classifier = classifier
        self.detector = detector or FaceDetector()
        self.margin = margin
        self.tracker = FaceTracker(smooth) if smooth > 1 else None

    @classmethod
    def from_weights(cls, weights=None, model: str | None = None, tta: bool | str = False, contract=None,
                     **kwargs) -> "EmotionPipeline":
        """Load ``weights`` (default: the bundled model; a Keras file too) and build the
        pipeline; ``tta``: the views of each face averaged (``True`` or ``"mirror"``: the face
        and its mirror image; ``"zooms"``: six, ``fer_models.probabilities.test_time_views``);
        ``contract``: ``{preprocessing, input_scale, classes}`` overrides (``load_model``)."""
        return cls(EmotionClassifier(weights, model, tta=tta, **(contract or {})), **kwargs)

    def warm_up(self) -> None:
        """One dummy batch, so that loading compiled kernels is not timed on frame 1."""
        self.classifier.predict_proba([np.zeros((48, 48), np.uint8)])

    def analyse(self, frame) -> FrameResult:
        """frame: uint8 BGR (H, W, 3) or gray (H, W) -> the faces, left to right."""
        frame = as_bgr_uint8(frame)
        t0 = time.perf_counter()
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        boxes = self.detector.detect(gray)
        t1 = time.perf_counter()
        size = getattr(self.classifier, "input_size", (48, 48))   # any object with predict_proba will do
        crops = [prepare_face(crop_face(gray, b, self.margin), size) for b in boxes]
        probs = self.classifier.predict_proba(np.stack(crops)) if crops else np.zeros((0, NUM_CLASSES), np.float32)
        if self.tracker is not None:
            probs = self.tracker.update(boxes, probs)
        t2 = time.perf_counter()
        return FrameResult([Face(b, p) for b, p in zip(boxes, probs)],
                           detect_ms=1000 * (t1 - t0), classify_ms=1000 * (t2 - t1),
                           width=frame.shape[1], height=frame.shape[0])

    def process_frame(self, frame, fps: float | None = None) -> tuple[np.ndarray, FrameResult]:
        """frame -> (annotated BGR copy, FrameResult with ``.faces``)."""
        result = self.analyse(frame)
        return draw_faces(as_bgr_uint8(frame), result.faces, fps), result
