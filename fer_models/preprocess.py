"""Contrast normalisation: the one step between a 48x48 face and the model's input.

    x = preprocess(faces, "equalize")      # (N, 48, 48, 1) float32 in [0, 1] -> same shape

Every path into a model goes through this one function with the method the model was
trained with: the data loader's arrays in ``train.py``, ``EmotionClassifier`` (so
``predict_emotion``, ``webcam.py`` and the web app) and evaluation. The method is
stored in the weights file beside the architecture's name (``save_model``), so a model
always gets what it was trained on; files written before this existed hold none and
mean ``"none"``.

Methods:

* ``"none"``: the pixels as they are, scaled to [0, 1].
* ``"equalize"``: global histogram equalisation per face (``cv2.equalizeHist``): the
  grey levels are remapped through the face's own cumulative histogram, so every face
  spans the full range with a roughly flat histogram, whatever the lighting.
* ``"clahe"``: contrast-limited adaptive equalisation (``cv2.createCLAHE``, clip 2.0,
  6x6 tiles of 8x8 pixels): the same idea per tile, with the histogram clipped so
  flat regions' noise is not amplified.
* ``"standardize"``: per-face zero mean and unit standard deviation (as
  ``tf.image.per_image_standardization``: the deviation is at least 1/sqrt(pixels)).

Equalisation works on 8-bit grey levels: float input in [0, 1] is rounded to the
nearest of 256 levels first (exact for pixels decoded from 8-bit images, as FER-2013's).
"""
from __future__ import annotations

import cv2
import numpy as np

METHODS = ("none", "equalize", "clahe", "standardize")


def preprocess(x, method: str = "none") -> np.ndarray:
    """Apply a contrast normalisation to each face of a batch.

    Args:
        x: float32 (N, H, W, 1) in [0, 1], e.g. faces from ``prepare_face`` or
            ``load_fer2013``.
        method: one of ``METHODS``.
    Returns:
        float32 (N, H, W, 1), a new array; in [0, 1] except for ``"standardize"``.
    """
    if method not in METHODS:
        raise ValueError(f"preprocess: unknown method {method!r}; one of {', '.join(METHODS)}")
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[3] != 1:
        raise ValueError(f"preprocess: expected grey faces (N, H, W, 1), got shape {x.shape}")
    x = x.astype(np.float32)        # a copy: the caller's array is never changed
    if method == "none" or len(x) == 0:
        return x
    if method == "standardize":
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        std = x.std(axis=(1, 2, 3), keepdims=True)
        return (x - mean) / np.maximum(std, np.float32(1.0 / np.sqrt(x[0].size)))
    levels = np.clip(np.rint(x[..., 0] * 255.0), 0, 255).astype(np.uint8)
    if method == "equalize":
        out = np.stack([cv2.equalizeHist(face) for face in levels])
    else:
        h, w = levels.shape[1:]
        clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(max(1, w // 8), max(1, h // 8)))
        out = np.stack([clahe.apply(face) for face in levels])
    return (out.astype(np.float32) / np.float32(255.0))[..., None]


__all__ = ["METHODS", "preprocess"]
