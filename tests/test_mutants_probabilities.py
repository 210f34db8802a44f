"""Checks of fer_models/probabilities.py that its mutation run (tests/mutation/run.sh)
showed missing: a model's input contract (checked where it is set, with messages that
say what is allowed), what ``model_input`` makes of faces for each contract, and the
columns put back in ``CLASSES`` order."""
from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

import fer_models
import tinycnn as tc
from fer_models.classes import CLASSES, CSV_CODES
from fer_models.preprocess import preprocess
from fer_models.probabilities import (DEFAULT_INPUT_SCALE, NAMED_CLASS_ORDERS, classes_of, in_class_order,
                                      input_scale_of, model_input, predict_probabilities, preprocessing_of,
                                      set_input_contract)
from fer_models.probabilities import test_time_views as views_of   # imported as test_*, pytest would collect it
from tinycnn.layers import Conv2D, Dense, Flatten, GlobalAveragePooling2D

FER2013 = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


class Bare:
    """A model with no contract of its own: the project's defaults hold."""


def faces(n=2, size=48, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 1), dtype=np.float32)


# -- the contract ------------------------------------------------------------------------------
def test_the_defaults_and_the_named_orders():
    bare = Bare()
    assert preprocessing_of(bare) == "none"
    assert input_scale_of(bare) == DEFAULT_INPUT_SCALE == (0.0, 1.0)
    assert classes_of(bare) == CLASSES
    assert NAMED_CLASS_ORDERS == {"alphabetical": CLASSES, "fer2013": FER2013}
    assert FER2013 == tuple(CSV_CODES[i] for i in range(7))


def test_set_input_contract_sets_each_part_and_none_keeps_it():
    model = set_input_contract(Bare(), preprocessing="clahe", input_scale=(-1, 1), classes="fer2013")
    assert (model.preprocessing, model.input_scale, model.classes) == ("clahe", (-1.0, 1.0), FER2013)
    assert all(type(v) is float for v in model.input_scale)
    assert set_input_contract(model) is model
    assert (preprocessing_of(model), input_scale_of(model), classes_of(model)) == ("clahe", (-1.0, 1.0), FER2013)
    reordered = tuple(reversed(CLASSES))
    set_input_contract(model, classes=list(reordered))
    assert model.classes == reordered
    set_input_contract(model, classes="alphabetical", input_scale=np.array([0.25, 0.5]))
    assert model.classes == CLASSES and model.input_scale == (0.25, 0.5)


def test_a_bad_preprocessing_is_refused_with_the_methods():
    with pytest.raises(ValueError, match=re.escape("model: unknown preprocessing 'sharpen'; "
                                                   "one of none, equalize, clahe, standardize")):
        set_input_contract(Bare(), preprocessing="sharpen")
    with pytest.raises(ValueError, match=r"^weights\.npz: unknown preprocessing"):
        set_input_contract(Bare(), preprocessing="sharpen", where="weights.npz")


@pytest.mark.parametrize("scale", [(1, -1), (0.5, 0.5), (np.nan, 1), (0, np.inf), (-np.inf, 0), (np.nan, np.nan)])
def test_a_bad_input_scale_is_refused(scale):
    model = Bare()
    with pytest.raises(ValueError, match=re.escape(f"model: input scale must be two finite numbers LOW < HIGH, "
                                                   f"got {scale!r}")):
        set_input_contract(model, input_scale=scale)
    assert not hasattr(model, "input_scale")


@pytest.mark.parametrize("classes", ["keras", "angry", CLASSES[:6], CLASSES[:6] + ("angry",),
                                     CLASSES[:6] + ("calm",)])
def test_bad_classes_are_refused_with_what_is_allowed(classes):
    model = Bare()
    expected = (f"model: classes must be one of alphabetical, fer2013 or the 7 names "
                f"angry, disgust, fear, happy, neutral, sad, surprise in the model's output order, got {classes!r}")
    with pytest.raises(ValueError, match=re.escape(expected)):
        set_input_contract(model, classes=classes)
    assert not hasattr(model, "classes")


# -- the columns -------------------------------------------------------------------------------
def test_in_class_order_moves_each_column_under_its_name():
    probs = np.arange(14, dtype=np.float32).reshape(2, 7)
    assert in_class_order(Bare(), probs) is probs
    model = set_input_contract(Bare(), classes="fer2013")
    got = in_class_order(model, probs)
    for j, name in enumerate(CLASSES):
        np.testing.assert_array_equal(got[:, j], probs[:, FER2013.index(name)], err_msg=name)


def test_predict_probabilities_is_the_softmax_in_class_order():
    model = fer_models.build("mini", seed=3)
    x = faces(3, seed=1)
    with tc.no_grad():
        own = tc.softmax(model(x, training=False)).numpy()
    np.testing.assert_allclose(predict_probabilities(model, x), own, rtol=0, atol=1e-6)
    set_input_contract(model, classes="fer2013")
    np.testing.assert_allclose(predict_probabilities(model, x), own[:, [FER2013.index(c) for c in CLASSES]],
                               rtol=0, atol=1e-6)


# -- the views ---------------------------------------------------------------------------------
def test_the_views_of_each_setting():
    x = faces(2, 8, seed=2)
    assert len(views_of(x, False)) == 1 and views_of(x, False)[0] is x
    for tta in (True, "mirror"):
        views = views_of(x, tta)
        assert len(views) == 2
        np.testing.assert_array_equal(views[1], x[:, :, ::-1])
        assert views[1].flags.c_contiguous


def test_the_shifted_views_move_each_way_with_mirrored_borders():
    """Ten views: the face, its mirror, then each of them moved by 2 pixels right, left,
    down and up, the border reflected without repeating its edge (cv2's REFLECT_101)."""
    x = faces(2, 9, seed=3)
    views = views_of(x, "shifts")
    assert len(views) == 10
    pad = 2

    def shifted(face, dx, dy):
        padded = np.pad(face, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")   # numpy's reflect = REFLECT_101
        h, w = face.shape[:2]
        return padded[pad - dy:pad - dy + h, pad - dx:pad - dx + w]

    for b, base in enumerate((x, x[:, :, ::-1])):
        for k, (dx, dy) in enumerate(((2, 0), (-2, 0), (0, 2), (0, -2))):
            got = views[2 + 4 * b + k]
            assert got.shape == x.shape and got.dtype == np.float32
            for i in range(len(x)):
                np.testing.assert_array_equal(got[i], shifted(base[i], dx, dy), err_msg=f"view {2 + 4 * b + k}")


def test_the_zoomed_views_scale_each_face_about_its_centre():
    """Six views: the face, its mirror, then each of them zoomed out (0.92) and in (1.08)
    about the image's centre. On a plane of grey levels bilinear interpolation is exact, so
    a zoomed view holds, wherever its source lies inside the face, the plane at the source
    point: centre + (pixel - centre) / factor (to OpenCV's 1/32 pixel: 3e-4 of grey on
    these slopes; a centre half a pixel off is 4-5e-4 off)."""
    from fer_models.probabilities import ZOOMS
    assert ZOOMS == (0.92, 1.08)
    size = 48
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    plane = lambda r, c: 0.2 + 0.011 * c + 0.004 * r     # noqa: E731  (grey levels in [0.2, 0.9])
    x = np.stack([plane(rows, cols), plane(rows, cols)[:, ::-1] * 0.5])[..., None].astype(np.float32)
    views = views_of(x, "zooms")
    assert len(views) == 6 and all(v.shape == x.shape and v.dtype == np.float32 for v in views)
    np.testing.assert_array_equal(views[0], x)
    np.testing.assert_array_equal(views[1], x[:, :, ::-1])
    centre = (size - 1) / 2
    for b, base in enumerate((x, x[:, :, ::-1])):
        for k, factor in enumerate(ZOOMS):
            got = views[2 + 2 * b + k]
            src_r, src_c = centre + (rows - centre) / factor, centre + (cols - centre) / factor
            inside = (src_r >= 0) & (src_r <= size - 1) & (src_c >= 0) & (src_c <= size - 1)
            assert inside.sum() > size * size * 0.8
            for i in range(len(x)):
                # the source point's grey level on this face's plane (the mirror's plane mirrored)
                flat = base[i, :, :, 0].astype(np.float64)
                slope_c = (flat[0, -1] - flat[0, 0]) / (size - 1)
                slope_r = (flat[-1, 0] - flat[0, 0]) / (size - 1)
                expected = flat[0, 0] + slope_c * src_c + slope_r * src_r
                np.testing.assert_allclose(got[i, :, :, 0][inside], expected[inside], atol=3e-4,
                                           err_msg=f"view {2 + 2 * b + k}, face {i}")
    # outside, the border is mirrored: a zoom out of a constant face is the same face
    flat = np.full((1, size, size, 1), 0.25, np.float32)
    for v in views_of(flat, "zooms"):
        np.testing.assert_allclose(v, flat, atol=1e-6)


def test_an_unknown_tta_is_refused():
    with pytest.raises(ValueError, match=re.escape("test-time augmentation must be one of "
                                                   "[False, True, 'mirror', 'shifts', 'zooms'], got 'crops'")):
        views_of(faces(1, 4), "crops")


# -- the input ---------------------------------------------------------------------------------
def test_model_input_without_a_contract_is_the_faces_in_float32():
    x = np.random.default_rng(4).random((2, 48, 48, 1))        # float64
    got = model_input(Bare(), x)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, x.astype(np.float32))


@pytest.mark.parametrize("face, size, interpolation", [
    ((48, 48), (32, 32), cv2.INTER_AREA), ((48, 48), (64, 64), cv2.INTER_LINEAR),
    ((48, 48), (40, 56), cv2.INTER_AREA),     # narrower, wider: the area shrinks
    ((48, 48), (36, 64), cv2.INTER_LINEAR),   # the same area (2304 pixels), another shape: not a shrink
    ((40, 60), (48, 48), cv2.INTER_AREA),     # a face wider than high, made square: 2400 -> 2304 pixels
    ((40, 60), (40, 64), cv2.INTER_LINEAR)])  # the height kept, the width grown
def test_model_input_resizes_to_the_models_size(face, size, interpolation):
    """Shrinking averages pixels (INTER_AREA); otherwise interpolate (INTER_LINEAR)."""
    (fh, fw), (h, w) = face, size
    model = Bare()
    model.input_shape = (h, w, 1)
    x = np.random.default_rng(5).random((2, fh, fw, 1), dtype=np.float32)
    got = model_input(model, x)
    assert got.shape == (2, h, w, 1) and got.dtype == np.float32
    for i in range(2):
        np.testing.assert_allclose(got[i, ..., 0], cv2.resize(x[i, ..., 0], (w, h), interpolation=interpolation),
                                   rtol=0, atol=1e-6)
    other = cv2.INTER_LINEAR if interpolation == cv2.INTER_AREA else cv2.INTER_AREA
    assert not np.allclose(got[0, ..., 0], cv2.resize(x[0, ..., 0], (w, h), interpolation=other), rtol=0, atol=1e-4)


def test_integer_faces_are_made_float32_before_they_are_resized():
    """Faces of 0s and 1s given as integers: the shrunk face averages them (0.25, 0.5, ...),
    it does not round the averages to integers."""
    model = Bare()
    model.input_shape = (24, 24, 1)
    x = (np.random.default_rng(9).random((2, 48, 48, 1)) < 0.5)
    got = model_input(model, x.astype(np.uint8))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, model_input(model, x.astype(np.float32)), rtol=0, atol=1e-6)
    assert np.any((got > 0) & (got < 1))


def test_model_input_of_no_faces_and_of_the_models_own_size():
    model = Bare()
    model.input_shape = (32, 32, 1)
    empty = model_input(model, np.zeros((0, 48, 48, 1), np.float32))
    assert empty.shape == (0, 48, 48, 1)
    x = faces(2, 32, seed=6)
    np.testing.assert_array_equal(model_input(model, x), x)


def test_model_input_applies_the_preprocessing_then_the_scale_then_the_channels():
    model = set_input_contract(Bare(), preprocessing="standardize", input_scale=(-1, 3))
    model.input_shape = (24, 24, 3)
    x = faces(2, 48, seed=7)
    small = np.stack([cv2.resize(f[..., 0], (24, 24), interpolation=cv2.INTER_AREA) for f in x])[..., None]
    expected = preprocess(small, "standardize") * np.float32(4) + np.float32(-1)
    got = model_input(model, x)
    assert got.shape == (2, 24, 24, 3) and got.dtype == np.float32
    for c in range(3):
        np.testing.assert_allclose(got[..., c:c + 1], expected, rtol=1e-6, atol=1e-6)
    three = np.random.default_rng(8).random((2, 48, 48, 3), dtype=np.float32)   # three channels of the model's size
    model.input_shape = (48, 48, 3)
    model.preprocessing, model.input_scale = "none", (0.0, 1.0)
    np.testing.assert_array_equal(model_input(model, three), three)   # left as they are


def test_a_scaled_model_predicts_from_the_scaled_faces():
    """predict_probabilities passes the model its own input: a model whose scale is
    [-1, 1] sees 2x - 1 (a model with global pooling, so any size goes through)."""
    model = tc.Sequential([Conv2D(4, 3, activation="relu"), GlobalAveragePooling2D(), Flatten(), Dense(7)],
                          input_shape=(16, 16, 1), seed=2)
    x = faces(2, 16, seed=8)
    with tc.no_grad():
        expected = tc.softmax(model(2 * x - 1, training=False)).numpy()
    set_input_contract(model, input_scale=(-1, 1))
    np.testing.assert_allclose(predict_probabilities(model, x), expected, rtol=0, atol=1e-6)
