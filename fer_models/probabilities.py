"""A model's probabilities for faces, and the input contract they depend on: what a model
expects of its input (size, preprocessing, pixel scale) and what its outputs mean (the
class of each).

    >>> probs = predict_probabilities(model, faces)    # faces (N, 48, 48, 1) in [0, 1] -> (N, 7)

Below both ``fer_models.ensemble`` (an Ensemble averages its members' probabilities) and
``fer_models.predict`` (weights files, face crops), which re-exports these names.
"""
from __future__ import annotations

import numpy as np

import tinycnn as tc

from .classes import CLASSES, CSV_CODES
from .preprocess import METHODS, preprocess

# What a model expects of its input and what its outputs mean. A model trained here takes
# 48x48 grey faces in [0, 1] and outputs CLASSES in order; a model imported from Keras may
# take 64x64 faces in [-1, 1] and output the CSV's order (angry, disgust, fear, happy, sad,
# surprise, neutral). The attributes live on the model; the defaults are this project's.
#   model.preprocessing  one of fer_models.preprocess.METHODS
#   model.input_scale    (low, high): [0, 1] pixels are mapped linearly onto this range
#   model.classes        tuple of class names, one per output, in output order
DEFAULT_INPUT_SCALE = (0.0, 1.0)
NAMED_CLASS_ORDERS = {"alphabetical": CLASSES, "fer2013": tuple(CSV_CODES[i] for i in range(len(CSV_CODES)))}


def preprocessing_of(model) -> str:
    """The contrast normalisation a model expects (``fer_models.preprocess.METHODS``);
    ``"none"`` for a model that was never given one."""
    return getattr(model, "preprocessing", "none")


def input_scale_of(model) -> tuple[float, float]:
    return tuple(getattr(model, "input_scale", DEFAULT_INPUT_SCALE))


def classes_of(model) -> tuple[str, ...]:
    return tuple(getattr(model, "classes", CLASSES))


def set_input_contract(model, preprocessing=None, input_scale=None, classes=None, where="model"):
    """Check and set what ``model`` expects (see the comment above); ``None`` keeps the
    current value. ``classes`` may be a name in ``NAMED_CLASS_ORDERS`` or 7 class names."""
    if preprocessing is not None:
        if preprocessing not in METHODS:
            raise ValueError(f"{where}: unknown preprocessing {preprocessing!r}; one of {', '.join(METHODS)}")
        model.preprocessing = str(preprocessing)
    if input_scale is not None:
        lo, hi = (float(v) for v in input_scale)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"{where}: input scale must be two finite numbers LOW < HIGH, got {input_scale!r}")
        model.input_scale = (lo, hi)
    if classes is not None:
        order = NAMED_CLASS_ORDERS.get(classes) if isinstance(classes, str) else tuple(classes)
        if order is None or sorted(order) != sorted(CLASSES):
            raise ValueError(f"{where}: classes must be one of {', '.join(NAMED_CLASS_ORDERS)} or the 7 names "
                             f"{', '.join(CLASSES)} in the model's output order, got {classes!r}")
        model.classes = tuple(order)
    return model


TTA_VIEWS = {False: 1, True: 2, "mirror": 2, "shifts": 10, "zooms": 6}   # test-time augmentation: views per face
SHIFT_PX = 2   # the "shifts" views move the face this many pixels (of 48) up, down, left and right
ZOOMS = (0.92, 1.08)   # the "zooms" views scale the face about its centre by these factors


def test_time_views(batch, tta) -> list[np.ndarray]:
    """The views of each face a prediction averages: ``False``: the face; ``True`` or
    ``"mirror"``: the face and its mirror image; ``"shifts"``: those two, each also
    moved by ``SHIFT_PX`` pixels in the four directions (borders mirrored, as the
    training shifts), ten views in all: the "ten-crop" averaging of the FER literature,
    done with shifts so every view keeps the model's input size; ``"zooms"``: the face
    and its mirror, each also scaled about its centre by each factor of ``ZOOMS`` (zoomed
    out and in, within the training zooms of +-10%; borders mirrored), six views."""
    import cv2
    if tta not in TTA_VIEWS:
        raise ValueError(f"test-time augmentation must be one of {list(TTA_VIEWS)}, got {tta!r}")
    views = [batch]
    if tta:
        views.append(np.ascontiguousarray(batch[:, :, ::-1]))
    if tta == "shifts":
        h, w = batch.shape[1:3]
        for base in list(views):
            for dx, dy in ((SHIFT_PX, 0), (-SHIFT_PX, 0), (0, SHIFT_PX), (0, -SHIFT_PX)):
                m = np.float32([[1, 0, dx], [0, 1, dy]])
                moved = np.stack([cv2.warpAffine(np.ascontiguousarray(f), m, (w, h), flags=cv2.INTER_NEAREST,
                                                 borderMode=cv2.BORDER_REFLECT_101).reshape(f.shape)
                                  for f in base])
                views.append(moved)
    if tta == "zooms":
        h, w = batch.shape[1:3]
        for base in list(views):
            for factor in ZOOMS:
                m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 0.0, factor)
                views.append(np.stack([cv2.warpAffine(np.ascontiguousarray(f), m, (w, h), flags=cv2.INTER_LINEAR,
                                                      borderMode=cv2.BORDER_REFLECT_101).reshape(f.shape)
                                       for f in base]))
    return views


def predict_probabilities(model, batch, tta=False) -> np.ndarray:
    """Softmax probabilities (N, 7) of a model for faces (N, 48, 48, 1) in [0, 1], without
    a graph. The model's own preprocessing (``preprocessing_of(model)``) is applied here.

    ``tta``: average over several views of each face (``test_time_views``): ``True``
    (or ``"mirror"``) adds its mirror image: a face and its mirror show the same
    emotion, so the average removes some of the noise; ``"shifts"`` ten views,
    ``"zooms"`` six.
    ``model`` may be an ``Ensemble``: its members' average. Columns follow ``CLASSES``
    whatever the model's own output order."""
    if hasattr(model, "members"):
        return model.predict_probabilities(batch, tta=tta)
    views = test_time_views(model_input(model, batch), tta)
    with tc.no_grad():
        probs = np.mean([tc.softmax(model(v, training=False)).numpy() for v in views], axis=0)
    return in_class_order(model, probs)


def model_input(model, batch) -> np.ndarray:
    """Faces (N, h, w, 1) in [0, 1], as ``prepare_face`` and ``load_fer2013`` give them ->
    what ``model`` was trained on: resized to its input size (H, W) and channels (grey
    repeated for a 3-channel model), its preprocessing, its input scale."""
    import cv2
    batch = np.asarray(batch, np.float32)
    shape = getattr(model, "input_shape", None)
    if shape is not None and tuple(shape[:2]) != batch.shape[1:3] and len(batch):
        h, w = int(shape[0]), int(shape[1])
        shrink = h * w < batch.shape[1] * batch.shape[2]
        batch = np.stack([cv2.resize(f[..., 0], (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
                          for f in batch])[..., None]
    if preprocessing_of(model) != "none":
        batch = preprocess(batch, preprocessing_of(model))
    lo, hi = input_scale_of(model)
    if (lo, hi) != DEFAULT_INPUT_SCALE:
        batch = batch * np.float32(hi - lo) + np.float32(lo)
    if shape is not None and shape[-1] == 3 and batch.shape[-1] == 1:
        batch = np.repeat(batch, 3, axis=-1)
    return np.ascontiguousarray(batch, np.float32)


def in_class_order(model, probs) -> np.ndarray:
    """A model's outputs (N, 7), in its own class order -> columns in ``CLASSES`` order."""
    order = classes_of(model)
    return probs if order == CLASSES else probs[:, [order.index(c) for c in CLASSES]]
