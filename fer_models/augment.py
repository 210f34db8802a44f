"""Random flips, rotations, shifts and zooms of face batches, as one affine warp per image.

    aug = Augmenter(flip=True, rotation=10.0, shift=0.1, zoom=0.1)
    rng = np.random.default_rng(0)
    x_batch = aug(x_batch, rng)            # (N, 48, 48, 1) float32 -> same shape and dtype

The four transforms are composed into one 2x3 matrix per image and applied by a
single ``cv2.warpAffine`` (bilinear), so each pixel is interpolated once, not once
per transform, and a batch of 128 faces takes about a millisecond. The border is
``BORDER_REFLECT_101`` (mirror without repeating the edge pixel): a face shifted or
shrunk away from an edge is continued by more face-like texture instead of black
bars that the network could learn to look for. Bilinear weights are convex, so
values stay inside the input's range ([0, 1] stays [0, 1]).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def augment_batch(x, rng, flip=True, rotation=10.0, shift=0.1, zoom=0.1) -> np.ndarray:
    """Randomly transform each image of a batch.

    Per image, independently: a horizontal flip with probability 0.5 (if ``flip``),
    a rotation by an angle uniform in [-rotation, rotation] degrees, a zoom by a
    factor uniform in [1 - zoom, 1 + zoom] (> 1 magnifies), both about the image
    centre, then a shift uniform in [-shift * W, shift * W] pixels horizontally and
    [-shift * H, shift * H] vertically.

    Args:
        x: float32 (N, H, W, C) with C in 1..4, e.g. (N, 48, 48, 1).
        rng: a ``numpy.random.Generator``; the same state gives the same output.
            Five draws of N numbers are taken whatever the settings, so switching
            one transform off does not change the random values of the others.
        flip, rotation, shift, zoom: as above; all off (False, 0, 0, 0) returns an
            unchanged copy of ``x``.
    Returns:
        float32 (N, H, W, C), a new array.
    """
    _check_settings("augment_batch", rotation, shift, zoom)
    x = _check_batch(x)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"augment_batch: rng must be a numpy.random.Generator "
                        f"(np.random.default_rng(seed)), got {type(rng).__name__}")
    n, h, w, c = x.shape
    flips = rng.random(n) < 0.5
    angles = rng.uniform(-rotation, rotation, n)
    scales = rng.uniform(1.0 - zoom, 1.0 + zoom, n)
    shifts = rng.uniform(-shift, shift, (n, 2)) * np.array([w, h])
    if not flip and rotation == 0 and shift == 0 and zoom == 0:
        return x.copy()
    matrices = _affine_matrices(flips & bool(flip), angles, scales, shifts, h, w)
    out = np.empty_like(x)
    for i in range(n):
        src = x[i, :, :, 0] if c == 1 else x[i]     # cv2 wants (H, W) or (H, W, C)
        dst = out[i, :, :, 0] if c == 1 else out[i]
        cv2.warpAffine(src, matrices[i], (w, h), dst=dst, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REFLECT_101)
    return out


def erase_batch(x, rng, probability=0.5, area=(0.02, 0.25), aspect=(0.3, 3.3)) -> np.ndarray:
    """Random erasing (Zhong et al., 2017): in each image, with ``probability``, one
    rectangle is filled with uniform noise in the image's own value range.

    A face seen with its mouth or one eye hidden must be told from what remains, so the
    network cannot lean on a single region; on FER-2013, where hands, hair and glasses
    cover parts of many faces, that is the situation at test time too.

    The rectangle covers a fraction of the image uniform in ``area``, with height/width
    log-uniform in ``aspect``, placed uniformly where it fits. x float32 (N, H, W, C) ->
    a new array; the random draws come from ``rng`` (six arrays of N numbers).
    """
    x = _check_batch(x)
    if not 0 <= probability <= 1:
        raise ValueError(f"erase_batch: probability must be in [0, 1], got {probability}")
    if not (0 < area[0] <= area[1] < 1 and 0 < aspect[0] <= aspect[1]):
        raise ValueError(f"erase_batch: area must satisfy 0 < low <= high < 1 and aspect 0 < low <= high, "
                         f"got area {area}, aspect {aspect}")
    n, h, w, c = x.shape
    out = x.copy()
    erase = rng.random(n) < probability
    areas = rng.uniform(area[0], area[1], n) * h * w
    ratios = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]), n))
    tops, lefts, seeds = rng.random(n), rng.random(n), rng.integers(2**31, size=n)
    for i in np.flatnonzero(erase):
        eh = int(np.clip(round(np.sqrt(areas[i] * ratios[i])), 1, h))
        ew = int(np.clip(round(np.sqrt(areas[i] / ratios[i])), 1, w))
        top, left = int(tops[i] * (h - eh + 1)), int(lefts[i] * (w - ew + 1))
        low, high = float(x[i].min()), float(x[i].max())
        noise = np.random.default_rng(seeds[i]).uniform(low, high, (eh, ew, c))
        out[i, top:top + eh, left:left + ew] = noise.astype(np.float32)
    return out


# The camera's changes, drawn uniformly: the ranges ``reframe.RANGES`` frames test faces
# with, the blur in the face's own pixels (2 frame pixels on a face of 100-260 px is
# about 0.4-1 px at 48).
CAMERA = {"brightness": (-40 / 255, 40 / 255), "contrast": (0.6, 1.4), "gamma": (0.6, 1.6), "blur": (0.0, 1.0),
          "jpeg": (30, 95)}


def camera_batch(x, rng, probability=0.5) -> np.ndarray:
    """What a camera does to a face, to each image with ``probability``: gamma, contrast
    about mid-grey, brightness, a Gaussian blur and JPEG compression, each drawn from
    ``CAMERA`` (the ranges of ``fer_models.reframe``'s test frames).

    FER-2013's faces come from the web, already compressed and lit in many ways, but a
    webcam's are darker or brighter, softer and compressed again; a network that has seen
    those changes in training loses less on them. x float32 (N, H, W, C) in [0, 1] -> a
    new array in [0, 1]; seven arrays of N numbers are drawn from ``rng``.
    """
    x = _check_batch(x)
    if not 0 <= probability <= 1:
        raise ValueError(f"camera_batch: probability must be in [0, 1], got {probability}")
    n = len(x)
    change = rng.random(n) < probability
    draws = {k: rng.uniform(low, high, n) for k, (low, high) in CAMERA.items()}
    out = x.copy()
    for i in np.flatnonzero(change):
        v = np.clip(x[i], 0, 1) ** draws["gamma"][i]
        v = (v - 0.5) * draws["contrast"][i] + 0.5 + draws["brightness"][i]
        img = (np.clip(v, 0, 1) * 255).round().astype(np.uint8)
        if draws["blur"][i] > 0.05:
            img = cv2.GaussianBlur(img, (0, 0), draws["blur"][i])
        ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(round(draws["jpeg"][i]))])
        img = cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)
        out[i] = img.reshape(x.shape[1:]).astype(np.float32) / 255
    return out


def _affine_matrices(flips, angles, scales, shifts, h, w) -> np.ndarray:
    """The (N, 2, 3) float64 matrices mapping input pixel (x, y, 1) to output pixel.

    Composed right to left: flip (x -> W-1-x), then rotate-and-zoom about the centre
    ((W-1)/2, (H-1)/2), then shift. Using the pixel-centre convention keeps a flip
    on the integer grid, so flip alone is an exact mirror.
    """
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    theta = np.deg2rad(angles)
    a, b = scales * np.cos(theta), scales * np.sin(theta)
    # Rotation about the centre, as cv2.getRotationMatrix2D (counter-clockwise on screen).
    m = np.zeros((len(angles), 2, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = a, b, (1 - a) * cx - b * cy + shifts[:, 0]
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = -b, a, b * cx + (1 - a) * cy + shifts[:, 1]
    # Flip first: M @ F with F: x -> (W-1) - x, i.e. negate column 0 and move it into the offset.
    m[flips, :, 2] += m[flips, :, 0] * (w - 1)
    m[flips, :, 0] *= -1
    return m


def _check_settings(where, rotation, shift, zoom):
    if not np.isfinite(rotation) or rotation < 0:
        raise ValueError(f"{where}: rotation must be a finite number of degrees >= 0, got {rotation}")
    if not 0 <= shift < 1:
        raise ValueError(f"{where}: shift must be a fraction of the image size in [0, 1), got {shift}")
    if not 0 <= zoom < 1:
        raise ValueError(f"{where}: zoom must be in [0, 1) (factor in [1 - zoom, 1 + zoom]), got {zoom}")


def _check_batch(x) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"augment_batch: x must be a numpy array (N, H, W, C), got {type(x).__name__}")
    if x.ndim != 4 or not 1 <= x.shape[3] <= 4:
        raise ValueError(f"augment_batch: x must be (N, H, W, C) with 1 to 4 channels, "
                         f"e.g. (N, 48, 48, 1), got shape {x.shape}")
    if x.dtype != np.float32:
        raise ValueError(f"augment_batch: x must be float32, got {x.dtype} (shape {x.shape}); "
                         f"scale images to [0, 1] with x.astype(np.float32) / 255 first")
    return np.ascontiguousarray(x)


@dataclass(frozen=True)
class Augmenter:
    """The settings of ``augment_batch``, kept together: ``Augmenter(...)(x, rng)``.

    ``Augmenter(False, 0, 0, 0)`` (or ``Augmenter.none()``) is the identity. ``erase``:
    the probability of random erasing (``erase_batch``) after the warp; ``camera``, of
    a camera's changes (``camera_batch``) after that; 0 (their default) draws nothing
    for them, so the other transforms' draws stay as they were.
    """

    flip: bool = True
    rotation: float = 10.0
    shift: float = 0.1
    zoom: float = 0.1
    erase: float = 0.0
    camera: float = 0.0

    def __post_init__(self):
        _check_settings("Augmenter", self.rotation, self.shift, self.zoom)
        for name in ("erase", "camera"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"Augmenter: {name} must be a probability in [0, 1], got {getattr(self, name)}")

    @classmethod
    def none(cls) -> "Augmenter":
        return cls(flip=False, rotation=0.0, shift=0.0, zoom=0.0)

    def __call__(self, x, rng) -> np.ndarray:
        """x float32 (N, H, W, C) -> augmented float32 (N, H, W, C); see ``augment_batch``."""
        out = augment_batch(x, rng, flip=self.flip, rotation=self.rotation, shift=self.shift,
                            zoom=self.zoom)
        out = erase_batch(out, rng, self.erase) if self.erase > 0 else out
        return camera_batch(out, rng, self.camera) if self.camera > 0 else out


def mix_batch(x, targets, rng, mixup=0.0, cutmix=0.0) -> tuple[np.ndarray, np.ndarray]:
    """MixUp (Zhang et al., 2018) or CutMix (Yun et al., 2019) of a batch with itself in a
    random order: each image i is combined with image ``perm[i]``, and its target with
    that image's target in the same proportion.

    - MixUp: ``x = lam * x + (1 - lam) * x[perm]``, ``t = lam * t + (1 - lam) * t[perm]``.
    - CutMix: a rectangle of ``x[perm]`` pasted into each image at the same place, of
      area about ``(1 - lam) * H * W`` at a uniform centre and cut at the borders; ``lam``
      becomes the fraction of each image left as it was, and the targets mix by it.

    ``lam ~ Beta(alpha, alpha)``, one per batch (as the papers), with alpha ``mixup`` or
    ``cutmix``; where both are > 0, each batch takes one of the two with probability 1/2.
    A network trained so cannot be sure of a face that is part another face: it learns
    smaller, better calibrated logits, and on FER-2013's noisy labels less of the noise.

    Args:
        x: float32 (N, H, W, C).
        targets: float32 (N, K) target probabilities (one-hot rows for hard labels).
        rng: a ``numpy.random.Generator``: two numbers and one permutation are drawn
            (a third for the rectangle's place with CutMix).
        mixup, cutmix: the Beta distributions' alpha (0: that one off; both 0 returns
            the inputs unchanged and draws nothing).
    Returns:
        (x, targets) mixed: new arrays of the same shapes, float32.
    """
    x = _check_batch(x)
    targets = np.asarray(targets, np.float32)
    if targets.ndim != 2 or len(targets) != len(x):
        raise ValueError(f"mix_batch: targets must be (N, K) probabilities for the {len(x)} images, "
                         f"got shape {targets.shape}")
    for name, alpha in (("mixup", mixup), ("cutmix", cutmix)):
        if not (np.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"mix_batch: {name} must be a Beta alpha >= 0 (0: off), got {alpha}")
    if mixup == 0 and cutmix == 0:
        return x, targets
    use_cutmix = cutmix > 0 and (mixup == 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    perm = rng.permutation(len(x))
    if use_cutmix:
        n, h, w, _ = x.shape
        cut = np.sqrt(1.0 - lam)        # the rectangle's sides, as fractions of the image's
        cy, cx = rng.integers(h), rng.integers(w)
        top, bottom = np.clip([cy - int(round(cut * h / 2)), cy + int(round(cut * h / 2))], 0, h)
        left, right = np.clip([cx - int(round(cut * w / 2)), cx + int(round(cut * w / 2))], 0, w)
        x = x.copy()
        x[:, top:bottom, left:right] = x[perm, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (h * w)
    else:
        x = (np.float32(lam) * x + np.float32(1.0 - lam) * x[perm]).astype(np.float32)
    targets = (np.float32(lam) * targets + np.float32(1.0 - lam) * targets[perm]).astype(np.float32)
    return x, targets


@dataclass(frozen=True)
class Mixer:
    """The settings of ``mix_batch``, kept together: ``Mixer(mixup=0.2)(x, targets, rng)``,
    as ``Sequential.fit``'s ``mix``."""

    mixup: float = 0.0
    cutmix: float = 0.0

    def __post_init__(self):
        for name in ("mixup", "cutmix"):
            alpha = getattr(self, name)
            if not (np.isfinite(alpha) and alpha >= 0):
                raise ValueError(f"Mixer: {name} must be a Beta alpha >= 0 (0: off), got {alpha}")

    def __call__(self, x, targets, rng) -> tuple[np.ndarray, np.ndarray]:
        return mix_batch(x, targets, rng, self.mixup, self.cutmix)


__all__ = ["augment_batch", "erase_batch", "camera_batch", "mix_batch", "Augmenter", "Mixer"]
