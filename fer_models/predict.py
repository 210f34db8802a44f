"""Inference: load a trained model and classify faces.

    >>> from fer_models import predict_emotion
    >>> label, probs = predict_emotion("face.jpg")      # probs: {class: probability}

Faces are prepared exactly as in training: ``prepare_face`` makes any crop grayscale,
48x48 (area interpolation), in [0, 1], shape (48, 48, 1); then ``predict_probabilities``
applies the contrast normalisation the model was trained with
(``fer_models.preprocess``), which the weights file records.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import tinycnn as tc

from .architectures import build, names
from .classes import CLASSES
from .preprocess import METHODS, preprocess

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "bundled.npz"
MODEL_KEY = "__model__"  # the architecture's name, stored beside the weights
PREPROCESSING_KEY = "__preprocessing__"  # the contrast normalisation it was trained with


def preprocessing_of(model) -> str:
    """The contrast normalisation a model expects (``fer_models.preprocess.METHODS``);
    ``"none"`` for a model that was never given one."""
    return getattr(model, "preprocessing", "none")


def save_model(model: tc.Sequential, path) -> None:
    """Weights plus the architecture's name and the model's preprocessing, so
    ``load_model(path)`` needs nothing else."""
    from tinycnn.model import save_npz_atomic
    save_npz_atomic(path, {MODEL_KEY: np.array(model.name),
                           PREPROCESSING_KEY: np.array(preprocessing_of(model)), **model.get_weights()})


def load_model(weights=None, model: str | None = None):
    """Build the architecture and load weights: a ``tinycnn.Sequential``, or a
    ``fer_models.ensemble.Ensemble`` when the file holds one (``save_ensemble``).

    Args:
        weights: an .npz written by ``save_model``/train.py, or a run directory holding
            ``best.npz``; default: the bundled model.
        model: architecture name; default: the one recorded in the file.
    """
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    if path.is_dir():
        path = path / "best.npz"
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist"
                                + ("" if weights else " (the bundled model is missing from the install)"))
    from tinycnn.model import read_npz

    from .ensemble import ENSEMBLE_KEY, ensemble_from_arrays
    arrays = read_npz(path)
    for key, value in arrays.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"{path}: weight '{key}' holds NaN or inf: the training that wrote it diverged")
    if ENSEMBLE_KEY in arrays:
        if model is not None:
            raise ValueError(f"{path} is an ensemble: each member records its architecture; do not pass model=")
        return ensemble_from_arrays(arrays, path)
    stored = str(arrays.pop(MODEL_KEY)) if MODEL_KEY in arrays else None
    preprocessing = str(arrays.pop(PREPROCESSING_KEY)) if PREPROCESSING_KEY in arrays else "none"
    if preprocessing not in METHODS:
        raise ValueError(f"{path}: unknown preprocessing {preprocessing!r} recorded; one of {', '.join(METHODS)}")
    name = model or stored
    if name is None:
        raise ValueError(f"{path} does not record its architecture; pass model= (one of {names()})")
    if name not in names():
        raise ValueError(f"{path}: unknown architecture {name!r}; one of {names()}")
    net = build(name)
    try:
        net.set_weights(arrays)
    except ValueError as e:
        raise ValueError(f"{path} does not fit model '{name}': {e}") from None
    net.preprocessing = preprocessing
    return net


def prepare_face(image) -> np.ndarray:
    """Any face crop (H, W), (H, W, 1), (H, W, 3) BGR, uint8 or float in [0, 1] ->
    float32 (48, 48, 1) in [0, 1], as the training data."""
    import cv2
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 3:
        a = cv2.cvtColor(a.astype(np.uint8) if a.dtype == np.uint8 else a.astype(np.float32),
                         cv2.COLOR_BGR2GRAY)
    elif a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    elif a.ndim != 2:
        raise ValueError(f"prepare_face: expected an image (H, W), (H, W, 1) or (H, W, 3), got {a.shape}")
    if a.size == 0:
        raise ValueError(f"prepare_face: empty image {a.shape}")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    else:
        a = a.astype(np.float32)
        if a.max(initial=0) > 1.0 + 1e-6:  # float pixels given in 0..255
            a = a / 255.0
    if a.shape != (48, 48):
        a = cv2.resize(a, (48, 48), interpolation=cv2.INTER_AREA)
    return np.clip(a, 0.0, 1.0)[:, :, None]


def predict_probabilities(model, batch, tta=False) -> np.ndarray:
    """Softmax probabilities (N, 7) of a model for faces (N, 48, 48, 1) in [0, 1], without
    a graph. The model's own preprocessing (``preprocessing_of(model)``) is applied here.

    ``tta``: also classify each face's mirror image and average the two: a face and
    its mirror show the same emotion, so the average removes some of the noise.
    ``model`` may be an ``Ensemble``: its members' average."""
    if hasattr(model, "members"):
        return model.predict_probabilities(batch, tta=tta)
    if preprocessing_of(model) != "none":
        batch = preprocess(batch, preprocessing_of(model))
    with tc.no_grad():
        probs = tc.softmax(model(batch, training=False)).numpy()
        if tta:
            mirrored = np.ascontiguousarray(batch[:, :, ::-1])
            probs = (probs + tc.softmax(model(mirrored, training=False)).numpy()) / 2
    return probs


class EmotionClassifier:
    """A loaded model that turns face crops into the seven class probabilities."""

    def __init__(self, weights=None, model: str | None = None, tta: bool = False):
        self.model = load_model(weights, model)
        self.classes = CLASSES
        self.tta = tta

    def predict_proba(self, faces) -> np.ndarray:
        """faces: a list of crops (any size, gray or BGR) or an array (N, 48, 48, 1) in
        [0, 1] -> probabilities (N, 7), all in one batch."""
        if isinstance(faces, np.ndarray) and faces.ndim == 4 and faces.shape[1:] == (48, 48, 1):
            batch = faces.astype(np.float32, copy=False)
        else:
            batch = np.stack([prepare_face(f) for f in faces]) if len(faces) else np.zeros((0, 48, 48, 1), np.float32)
        if len(batch) == 0:
            return np.zeros((0, len(CLASSES)), np.float32)
        return predict_probabilities(self.model, batch, tta=self.tta)


_default: dict[bool, EmotionClassifier] = {}


def predict_emotion(image, weights=None, model: str | None = None, tta: bool = True):
    """Classify one face: a path to an image file or an array (a face crop).

    ``tta`` (default on): average the face's probabilities with its mirror image's, the
    configuration chosen for the bundled model on PublicTest (see its model card).

    Returns ``(label, probabilities)`` where probabilities maps each of the seven
    class names to its probability.
    """
    if isinstance(image, (str, os.PathLike)):
        import cv2
        arr = cv2.imread(os.fspath(image), cv2.IMREAD_GRAYSCALE)
        if arr is None:
            raise ValueError(f"predict_emotion: cannot read an image from {image}")
        image = arr
    if weights is None and model is None:
        if tta not in _default:
            _default[tta] = EmotionClassifier(tta=tta)
        clf = _default[tta]
    else:
        clf = EmotionClassifier(weights, model, tta=tta)
    p = clf.predict_proba([image])[0]
    return CLASSES[int(p.argmax())], {c: float(v) for c, v in zip(CLASSES, p)}
