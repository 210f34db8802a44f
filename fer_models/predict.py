"""Inference: load a trained model and classify faces.

    >>> from fer_models import predict_emotion
    >>> label, probs = predict_emotion("face.jpg")      # probs: {class: probability}

Faces are prepared exactly as in training: ``prepare_face`` makes any crop grayscale,
48x48 (area interpolation), in [0, 1], shape (48, 48, 1); then ``predict_probabilities``
applies the contrast normalisation the model was trained with
(``fer_models.preprocess``), which the weights file records. That function and the rest
of a model's input contract live in ``fer_models.probabilities`` (below this module and
``fer_models.ensemble``, which both use them) and are importable from here too.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import tinycnn as tc

from .architectures import build, names
from .classes import CLASSES
from .ensemble import ENSEMBLE_KEY, ensemble_from_arrays
from .preprocess import METHODS
from .probabilities import (  # noqa: F401  (a model's input contract and probabilities: public here too)
    DEFAULT_INPUT_SCALE, NAMED_CLASS_ORDERS, SHIFT_PX, TTA_VIEWS, ZOOMS, classes_of, in_class_order, input_scale_of,
    model_input, predict_probabilities, preprocessing_of, set_input_contract, test_time_views)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "bundled.npz"   # the default predictor (an ensemble; see its MODEL_CARD.md)
SINGLE_WEIGHTS = WEIGHTS_DIR / "single.npz"     # the best single network: one forward pass per face
MODEL_KEY = "__model__"  # the architecture's name, stored beside the weights
PREPROCESSING_KEY = "__preprocessing__"  # the contrast normalisation it was trained with
INPUT_SCALE_KEY = "__input_scale__"      # pixel range the model takes, (low, high)
CLASSES_KEY = "__classes__"              # the class of each output, in output order
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")

def save_model(model: tc.Sequential, path) -> None:
    """Weights plus the architecture's name and the model's input contract, so
    ``load_model(path)`` needs nothing else."""
    from tinycnn.model import save_npz_atomic
    save_npz_atomic(path, {MODEL_KEY: np.array(model.name),
                           PREPROCESSING_KEY: np.array(preprocessing_of(model)),
                           INPUT_SCALE_KEY: np.array(input_scale_of(model), np.float64),
                           CLASSES_KEY: np.array(classes_of(model)), **model.get_weights()})


def keras_sidecar(path) -> Path:
    """``model.keras`` -> ``model.keras.json``: the input contract of a Keras file, which
    Keras' own format has no place for (written by ``save_keras_model``)."""
    return Path(str(path) + ".json")


def save_keras_model(model, path) -> None:
    """A tinycnn model as a Keras file (``tinycnn.io.save_keras``: ``.keras`` or ``.h5``,
    ending in softmax) plus its input contract in ``keras_sidecar(path)``."""
    import json

    from tinycnn.io import save_keras
    from tinycnn.model import write_atomic
    save_keras(model, path)
    contract = json.dumps({"model": model.name, "preprocessing": preprocessing_of(model),
                           "input_scale": list(input_scale_of(model)), "classes": list(classes_of(model))}, indent=2)
    write_atomic(keras_sidecar(path), lambda tmp: Path(tmp).write_text(contract), suffix=".json.tmp")


def _load_keras_model(path: Path):
    import json

    from tinycnn.io import load_keras
    net = load_keras(path)
    sidecar = keras_sidecar(path)
    if sidecar.exists():
        try:
            spec = json.loads(sidecar.read_text())
            assert isinstance(spec, dict)
        except (ValueError, AssertionError):
            raise ValueError(f"{sidecar}: not a JSON object describing {path.name}'s input") from None
        set_input_contract(net, spec.get("preprocessing"), spec.get("input_scale"), spec.get("classes"),
                           where=str(sidecar))
    return net


def load_model(weights=None, model: str | None = None, preprocessing=None, input_scale=None, classes=None):
    """Build the architecture and load weights: a ``tinycnn.Sequential``, or a
    ``fer_models.ensemble.Ensemble`` when the file holds one (``save_ensemble``).

    Args:
        weights: an .npz written by ``save_model``/train.py, a run directory holding
            ``best.npz`` (or ``best.keras``), or a Keras model file (``.keras``, ``.h5``,
            ``.hdf5``, read by ``tinycnn.io.load_keras`` without TensorFlow); default:
            the bundled model.
        model: architecture name; default: the one recorded in the file.
        preprocessing, input_scale, classes: what the model expects and outputs, where
            the file does not say (see ``set_input_contract``); given, they override
            the file. A Keras file's input size is read from the file.
    """
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    if path.is_dir():
        path = path / "best.npz" if (path / "best.npz").exists() or not (path / "best.keras").exists() \
            else path / "best.keras"
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist"
                                + ("" if weights else " (the bundled model is missing from the install)"))
    if path.suffix.lower() in KERAS_SUFFIXES:
        if model is not None:
            raise ValueError(f"{path} is a Keras file: it holds its own architecture; do not pass model=")
        net = _load_keras_model(path)
    else:
        net = _load_npz_model(path, model)
    if hasattr(net, "members"):
        if (preprocessing, input_scale, classes) != (None, None, None):
            raise ValueError(f"{path} is an ensemble: each member records its own input; nothing to override")
        return net
    return set_input_contract(net, preprocessing, input_scale, classes, where=str(path))


def _load_npz_model(path: Path, model):
    from tinycnn.model import read_npz
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
    input_scale = arrays.pop(INPUT_SCALE_KEY, None)
    classes = arrays.pop(CLASSES_KEY, None)
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
    return set_input_contract(net, preprocessing, None if input_scale is None else input_scale.tolist(),
                              None if classes is None else [str(c) for c in classes], where=str(path))


def prepare_face(image, size=(48, 48)) -> np.ndarray:
    """Any face crop (H, W), (H, W, 1), (H, W, 3) BGR, uint8 or float in [0, 1] ->
    float32 (48, 48, 1) in [0, 1], as the training data (``size``: (height, width) for a
    model that takes another size, so the crop is resampled once)."""
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
    size = (int(size[0]), int(size[1]))
    if a.shape != size:
        shrink = size[0] * size[1] < a.shape[0] * a.shape[1]
        a = cv2.resize(a, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.clip(a, 0.0, 1.0)[:, :, None]


class EmotionClassifier:
    """A loaded model that turns face crops into the seven class probabilities."""

    def __init__(self, weights=None, model: str | None = None, tta: bool | str = False, **contract):
        """``contract``: ``preprocessing``, ``input_scale``, ``classes`` for ``load_model``.
        The model is kept as its ``inference_copy()``: BatchNorm folded into the layers
        before it once, here, rather than at every call (a seventh off a ``resfer`` face)."""
        self.model = load_model(weights, model, **contract).inference_copy()
        self.classes = CLASSES
        self.tta = tta

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model takes (48x48 for this project's models and ensembles)."""
        shape = getattr(self.model, "input_shape", None)
        return (48, 48) if shape is None else (int(shape[0]), int(shape[1]))

    def predict_proba(self, faces) -> np.ndarray:
        """faces: a list of crops (any size, gray or BGR) or an array (N, H, W, 1) in
        [0, 1] (from ``prepare_face``) -> probabilities (N, 7) in ``CLASSES`` order, all
        in one batch."""
        if isinstance(faces, np.ndarray) and faces.ndim == 4 and faces.shape[3] == 1:
            batch = faces.astype(np.float32, copy=False)
        else:
            batch = (np.stack([prepare_face(f, self.input_size) for f in faces]) if len(faces)
                     else np.zeros((0,) + self.input_size + (1,), np.float32))
        if len(batch) == 0:
            return np.zeros((0, len(CLASSES)), np.float32)
        return predict_probabilities(self.model, batch, tta=self.tta)


_default: dict[bool | str, EmotionClassifier] = {}   # predict_emotion's default model, by its views


def predict_emotion(image, weights=None, model: str | None = None, tta: bool | str = "zooms", **contract):
    """Classify one face: a path to an image file or an array (a face crop).

    ``tta`` (default ``"zooms"``): average the probabilities of six views, the face and
    its mirror image each also zoomed out and in by 8% (``test_time_views``), the
    configuration chosen for the bundled model on PublicTest (see its model card);
    ``True``: the face and its mirror only (a third of the time); ``"shifts"``: ten
    views; ``False``: the face alone.
    ``weights``: any file ``load_model`` reads (a Keras file too); ``contract``:
    ``preprocessing``, ``input_scale``, ``classes`` where that file does not record them
    (e.g. ``input_scale=(-1, 1), classes="fer2013"``).

    Returns ``(label, probabilities)`` where probabilities maps each of the seven
    class names to its probability.
    """
    if isinstance(image, (str, os.PathLike)):
        import cv2
        arr = cv2.imread(os.fspath(image), cv2.IMREAD_GRAYSCALE)
        if arr is None:
            raise ValueError(f"predict_emotion: cannot read an image from {image}")
        image = arr
    if weights is None and model is None and not any(v is not None for v in contract.values()):
        if tta not in _default:
            _default[tta] = EmotionClassifier(tta=tta)
        clf = _default[tta]
    else:
        clf = EmotionClassifier(weights, model, tta=tta, **contract)
    p = clf.predict_proba([image])[0]
    return CLASSES[int(p.argmax())], {c: float(v) for c, v in zip(CLASSES, p)}
