"""FER-2013 faces framed the way ``webcam.py`` sees them, and the accuracy that survives.

FER-2013's test faces are tight 48x48 crops, centred and upright: the accuracy measured on
them is not what a camera gives. Here each face is pasted into a camera-sized frame at a
random size, place and tilt, with the light, focus and compression of a real camera
changed, and then goes through what the live pipeline does: the Haar detector on the
whole frame, the crop around the box it finds (``detect.crop_face``), ``prepare_face``,
the classifier. A face the detector misses counts as wrong, as it shows nothing live.

    >>> from fer_models.reframe import evaluate_reframed
    >>> report = evaluate_reframed(classifier, faces, labels)     # faces: uint8 (N, 48, 48)
    >>> report["reframed"]["accuracy"], report["direct"]["accuracy"], report["detected"]

Each face's framing comes from a generator seeded with the face's index (and ``seed``),
so the set is the same on every run and every machine with the same OpenCV.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .classes import CLASSES
from .detect import DEFAULT_MARGIN, FaceDetector, box_iou, crop_face
from .predict import prepare_face

FRAME = (480, 640)   # (height, width): a webcam's frame

# The ranges each change is drawn from, uniformly.
RANGES = {
    "size": (100, 260),        # the face's side in frame pixels (48 scaled 2x to 5.4x)
    "angle": (-15.0, 15.0),    # tilt, degrees
    "brightness": (-40, 40),   # grey levels added
    "contrast": (0.6, 1.4),    # factor around mid-grey
    "gamma": (0.6, 1.6),       # exponent on [0, 1] intensities
    "blur": (0.0, 2.0),        # Gaussian sigma, frame pixels (0: in focus)
    "jpeg": (30, 95),          # JPEG quality
}

# A detected box counts as the pasted face when it overlaps the face's square this much.
MIN_IOU = 0.3


@dataclass(frozen=True)
class Framing:
    """How one face is framed: its size, centre and tilt in the frame, then the
    camera's changes to the whole frame, in this order: gamma, contrast, brightness, blur,
    JPEG."""
    size: int
    centre: tuple[int, int]
    angle: float
    brightness: float
    contrast: float
    gamma: float
    blur: float
    jpeg: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The face's upright square (x, y, w, h) in the frame."""
        x, y = self.centre
        return x - self.size // 2, y - self.size // 2, self.size, self.size


def random_framing(rng: np.random.Generator) -> Framing:
    """A framing drawn from ``RANGES``, the face wholly inside the frame."""
    def draw(name):
        low, high = RANGES[name]
        return rng.uniform(low, high)
    size = int(round(draw("size")))
    half = int(np.ceil(size * 0.71))   # half the diagonal: any tilt stays inside
    h, w = FRAME
    centre = (int(rng.integers(half, w - half)), int(rng.integers(half, h - half)))
    return Framing(size=size, centre=centre, angle=float(draw("angle")), brightness=float(draw("brightness")),
                   contrast=float(draw("contrast")), gamma=float(draw("gamma")), blur=float(draw("blur")),
                   jpeg=int(round(draw("jpeg"))))


def background(rng: np.random.Generator) -> np.ndarray:
    """A smooth random scene, uint8 (480, 640): coarse noise scaled up, grey levels 40-220."""
    coarse = rng.uniform(40, 220, (6, 8)).astype(np.float32)
    return cv2.resize(coarse, FRAME[::-1], interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def frame_face(face: np.ndarray, framing: Framing, scene: np.ndarray) -> np.ndarray:
    """The face (uint8 (48, 48)) scaled, tilted and pasted into ``scene`` (uint8 (480, 640),
    not changed), then the camera's changes -> uint8 (480, 640)."""
    if face.ndim != 2 or scene.shape != FRAME:
        raise ValueError(f"frame_face: a grey face (H, W) and a {FRAME} scene, got {face.shape} and {scene.shape}")
    s = framing.size / face.shape[1]
    cx, cy = framing.centre
    # face pixel (u, v) -> frame: scaled about the face's centre, tilted, moved to (cx, cy)
    m = cv2.getRotationMatrix2D(((face.shape[1] - 1) / 2, (face.shape[0] - 1) / 2), framing.angle, s)
    m[:, 2] += (cx - (face.shape[1] - 1) / 2, cy - (face.shape[0] - 1) / 2)
    frame = scene.copy()
    cv2.warpAffine(face, m, FRAME[::-1], dst=frame, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_TRANSPARENT)
    v = (frame.astype(np.float32) / 255) ** framing.gamma * 255
    v = (v - 128) * framing.contrast + 128 + framing.brightness
    frame = v.clip(0, 255).round().astype(np.uint8)
    if framing.blur > 0.05:
        frame = cv2.GaussianBlur(frame, (0, 0), framing.blur)
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, framing.jpeg])
    if not ok:
        raise RuntimeError("frame_face: OpenCV could not encode the frame as JPEG")
    return cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)


def reframed_crop(face, framing, scene, detector, margin=DEFAULT_MARGIN):
    """(crop uint8 (h, w) or None, the detected box or None): the frame of ``face``
    through the detector, the box that overlaps the face's square best (at least
    ``MIN_IOU``), cropped as the live pipeline crops it."""
    frame = frame_face(face, framing, scene)
    boxes = detector.detect(frame)
    overlaps = [box_iou(b, framing.box) for b in boxes]
    if not overlaps or max(overlaps) < MIN_IOU:
        return None, None
    box = boxes[int(np.argmax(overlaps))]
    return crop_face(frame, box, margin), box


def recall(y, pred, num_classes=len(CLASSES)) -> list[float | None]:
    """Per class: the fraction of its faces predicted as it (None for a class with none);
    a prediction of -1 (no face found) is never right."""
    y, pred = np.asarray(y), np.asarray(pred)
    return [float((pred[y == k] == k).mean()) if (y == k).any() else None for k in range(num_classes)]


def evaluate_reframed(classifier, faces, labels, seed=0, detector=None, progress=True, batch=256) -> dict:
    """Accuracy on ``faces`` (uint8 (N, 48, 48)) as given ("direct") and re-framed.

    ``classifier``: anything with ``predict_proba(crops)`` (an ``EmotionClassifier``).
    Returns {"direct": {...}, "reframed": {...}, "detected": fraction, "seed", "ranges",
    "predictions"}; each of the first two holds the accuracy and the recall per class,
    and the accuracy on the faces the detector found (the same faces both ways: what the
    framing costs the classifier, apart from the faces the detector misses)."""
    from tqdm.auto import tqdm
    faces, labels = np.asarray(faces), np.asarray(labels)
    if faces.ndim != 3 or len(faces) != len(labels):
        raise ValueError(f"evaluate_reframed: faces (N, H, W) and N labels, got {faces.shape} and {labels.shape}")
    detector = detector or FaceDetector()
    direct = np.concatenate([classifier.predict_proba(faces[i:i + batch]).argmax(axis=1)
                             for i in range(0, len(faces), batch)]) if len(faces) else np.zeros(0, int)
    reframed = np.full(len(faces), -1)
    crops, where = [], []
    size = getattr(classifier, "input_size", (48, 48))
    for i in tqdm(range(len(faces)), desc="re-framed faces", unit="face", disable=not progress):
        rng = np.random.default_rng([seed, i])
        framing = random_framing(rng)
        crop, _ = reframed_crop(faces[i], framing, background(rng), detector)
        if crop is not None:
            crops.append(prepare_face(crop, size))
            where.append(i)
    for j in range(0, len(crops), batch):
        reframed[where[j:j + batch]] = classifier.predict_proba(np.stack(crops[j:j + batch])).argmax(axis=1)
    found = reframed >= 0
    return {
        "faces": int(len(faces)), "seed": seed, "ranges": {k: list(v) for k, v in RANGES.items()},
        "detector": {"min_face": detector.min_face, "detect_width": detector.detect_width,
                     "min_neighbors": detector.min_neighbors, "tilts": list(getattr(detector, "tilts", ())),
                     "cascades": list(getattr(detector, "cascade_names", ()))},
        "detected": float(found.mean()) if len(faces) else 0.0,
        "direct": {"accuracy": float((direct == labels).mean()) if len(faces) else 0.0,
                   "accuracy_detected": float((direct[found] == labels[found]).mean()) if found.any() else 0.0,
                   "recall": recall(labels, direct)},
        "reframed": {"accuracy": float((reframed == labels).mean()) if len(faces) else 0.0,
                     "accuracy_detected": float((reframed[found] == labels[found]).mean()) if found.any() else 0.0,
                     "recall": recall(labels, reframed)},
        "predictions": {"direct": direct.tolist(), "reframed": reframed.tolist()},
    }


def format_reframed(report: dict) -> str:
    """The report as a few lines: accuracy both ways, detection, recall per class."""
    d, r = report["direct"], report["reframed"]
    lines = [f"{report['faces']:,} faces; detector found {report['detected']:.1%} of them in their frames",
             f"accuracy: direct {d['accuracy']:.4f}, re-framed {r['accuracy']:.4f} (a missed face counts as wrong)",
             f"on the faces found: direct {d['accuracy_detected']:.4f}, re-framed {r['accuracy_detected']:.4f}",
             "recall per class   direct  re-framed"]
    for name, a, b in zip(CLASSES, d["recall"], r["recall"]):
        lines.append(f"  {name:<14} " + "  ".join("   -   " if v is None else f"{v:7.4f}" for v in (a, b)))
    return "\n".join(lines)
