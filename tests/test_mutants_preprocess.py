"""Checks of fer_models/preprocess.py that its mutation run (tests/mutation/run.sh) showed
missing: CLAHE's settings as the docstring gives them (clip 2.0, tiles of 8x8 pixels,
columns and rows not swapped), the rounding to 256 levels with out-of-range pixels
clipped, and standardisation's floor on the deviation."""
import cv2
import numpy as np
import pytest

from fer_models.preprocess import METHODS, preprocess


def levels_of(x):
    return np.clip(np.rint(x[..., 0] * 255.0), 0, 255).astype(np.uint8)


# OpenCV clips a tile's histogram at int(clipLimit * pixels / 256), at least 1: on tiles of
# 8x8 pixels any clipLimit below 4 gives 1, so only a larger tile (15x15: 225 pixels,
# clipped at 1 for 2.0, at 2 for 3.0) shows the clip limit.
@pytest.mark.parametrize("h, w, tiles", [(48, 48, (6, 6)), (32, 64, (8, 4)), (24, 40, (5, 3)), (6, 5, (1, 1)),
                                         (15, 15, (1, 1))])
def test_clahe_is_clip_2_on_tiles_of_8_pixels(h, w, tiles):
    rng = np.random.default_rng(h * w)
    x = (0.2 + 0.4 * rng.random((2, h, w, 1)) ** 3).astype(np.float32)     # low contrast, skewed
    expected = np.stack([cv2.createCLAHE(clipLimit=2.0, tileGridSize=tiles).apply(f) for f in levels_of(x)])
    got = preprocess(x, "clahe")
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got[..., 0], expected.astype(np.float32) / np.float32(255.0))


def test_out_of_range_pixels_are_clipped_to_the_256_levels():
    x = np.random.default_rng(1).random((2, 16, 16, 1)).astype(np.float32)
    x[0, 0, 0, 0], x[0, 1, 1, 0], x[1, 2, 2, 0] = 1.3, -0.2, 1.0 + 1e-3
    levels = levels_of(x)
    assert levels[0, 0, 0] == 255 and levels[0, 1, 1] == 0
    for method in ("equalize", "clahe"):
        np.testing.assert_array_equal(preprocess(x, method), preprocess(np.clip(x, 0, 1), method))
    np.testing.assert_array_equal(preprocess(x, "equalize")[..., 0],
                                  np.stack([cv2.equalizeHist(f) for f in levels]) / np.float32(255))


def test_standardize_floors_the_deviation_at_one_over_sqrt_pixels():
    x = np.full((2, 8, 8, 1), 0.5, np.float32)
    x[0, 0, 0, 0] = 0.5 + 1 / 64        # std about 0.002, far below the floor 1/8
    x[1] = np.random.default_rng(2).random((8, 8, 1))   # std about 0.29, above it
    got = preprocess(x, "standardize")
    np.testing.assert_allclose(got[0], (x[0] - x[0].mean()) * 8, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], (x[1] - x[1].mean()) / x[1].std(), rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32


def test_float64_input_gives_float32_and_the_messages():
    x = np.random.default_rng(3).random((1, 8, 8, 1))
    for method in METHODS:
        assert preprocess(x, method).dtype == np.float32
    with pytest.raises(ValueError, match=r"^preprocess: unknown method 'hist'; one of none, equalize, clahe, standardize$"):
        preprocess(x, "hist")
    with pytest.raises(ValueError, match=r"^preprocess: expected grey faces \(N, H, W, 1\), got shape \(1, 8, 8, 3\)$"):
        preprocess(np.zeros((1, 8, 8, 3)), "none")


def test_the_default_method_is_none():
    x = np.random.default_rng(4).random((2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(preprocess(x), x)
