"""Batch augmentation: identity when off, exact flips, reproducible, shape/dtype/range kept."""
import time

import cv2
import numpy as np
import pytest

from fer_models.augment import Augmenter, Mixer, augment_batch, mix_batch


def faces(n=16, seed=0):
    """Smooth random images in [0, 1], float32 (n, 48, 48, 1), asymmetric so a flip shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48] / 47.0
    freq = rng.uniform(1, 4, (n, 2))
    img = 0.5 + 0.25 * np.sin(freq[:, :1, None] * 6 * xx + 1.0) * np.cos(freq[:, 1:, None] * 5 * yy) + 0.2 * xx
    return np.clip(img, 0, 1).astype(np.float32)[..., None]


def test_all_off_is_identity():
    x = faces()
    out = augment_batch(x, np.random.default_rng(0), flip=False, rotation=0, shift=0, zoom=0)
    np.testing.assert_array_equal(out, x)
    assert out is not x
    np.testing.assert_array_equal(Augmenter.none()(x, np.random.default_rng(0)), x)


@pytest.mark.parametrize("settings", [{}, {"rotation": 30.0, "shift": 0.2, "zoom": 0.3},
                                      {"flip": False, "rotation": 5.0, "shift": 0.0, "zoom": 0.0}])
def test_shape_dtype_and_range_kept(settings):
    x = faces()
    out = augment_batch(x, np.random.default_rng(1), **settings)
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= x.min() - 1e-6 and out.max() <= x.max() + 1e-6
    assert not np.array_equal(out, x)


def test_constant_image_stays_constant():
    # reflected borders: no black bars appear whatever the transform
    x = np.full((8, 48, 48, 1), 0.7, np.float32)
    out = augment_batch(x, np.random.default_rng(2), rotation=30, shift=0.2, zoom=0.3)
    np.testing.assert_allclose(out, 0.7, atol=1e-6)


def test_flip_only_gives_exact_mirror_or_original():
    x = faces(64)
    out = augment_batch(x, np.random.default_rng(3), flip=True, rotation=0, shift=0, zoom=0)
    mirrored = [np.array_equal(out[i], x[i, :, ::-1]) for i in range(len(x))]
    kept = [np.array_equal(out[i], x[i]) for i in range(len(x))]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 10 < sum(mirrored) < 54   # p = 0.5 of 64; both outcomes occur


def test_same_seed_same_output_different_seed_different():
    x = faces()
    aug = Augmenter(flip=True, rotation=10.0, shift=0.1, zoom=0.1)
    a = aug(x, np.random.default_rng(7))
    b = aug(x, np.random.default_rng(7))
    c = aug(x, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(augment_batch(x, np.random.default_rng(7)), a)   # same defaults


def test_input_is_not_modified_and_channels_work():
    x = np.random.default_rng(0).random((4, 32, 40, 3), dtype=np.float32)
    before = x.copy()
    out = augment_batch(x, np.random.default_rng(0))
    np.testing.assert_array_equal(x, before)
    assert out.shape == (4, 32, 40, 3)


@pytest.mark.parametrize("x, error, match", [
    (np.zeros((4, 48, 48), np.float32), ValueError, r"\(N, H, W, C\).*got shape \(4, 48, 48\)"),
    (np.zeros((4, 48, 48, 1), np.float64), ValueError, "float32, got float64"),
    (np.zeros((4, 48, 48, 1), np.uint8), ValueError, "float32, got uint8"),
    ([[0.0]], TypeError, "numpy array"),
])
def test_bad_input_raises_clear_errors(x, error, match):
    with pytest.raises(error, match=match):
        augment_batch(x, np.random.default_rng(0))


def test_bad_settings_and_rng_raise():
    x = faces(2)
    with pytest.raises(TypeError, match=r"Generator \(np.random.default_rng\(seed\)\), got int$"):
        augment_batch(x, 0)
    with pytest.raises(ValueError, match="rotation"):
        Augmenter(rotation=-5)
    with pytest.raises(ValueError, match="shift"):
        augment_batch(x, np.random.default_rng(0), shift=1.5)
    with pytest.raises(ValueError, match="zoom"):
        Augmenter(zoom=1.0)


def test_speed_is_printed():
    """Prints the time per batch of 128 (run with -s to see it); nothing is asserted on it."""
    x = faces(128)
    rng = np.random.default_rng(0)
    augment_batch(x, rng)
    repeats = 50
    start = time.perf_counter()
    for _ in range(repeats):
        augment_batch(x, rng)
    print(f"\naugment_batch: {(time.perf_counter() - start) / repeats * 1e3:.2f} ms per batch of 128")


def test_random_erasing_covers_one_rectangle_with_noise_in_range():
    from fer_models.augment import erase_batch
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.7, (200, 48, 48, 1)).astype(np.float32)
    out = erase_batch(x, np.random.default_rng(5), probability=0.5)
    assert out.shape == x.shape and out.dtype == np.float32 and out is not x
    changed = (out != x).any(axis=(1, 2, 3))
    assert 0.35 < changed.mean() < 0.65                            # about half the faces
    for i in np.flatnonzero(changed)[:40]:
        ys, xs = np.nonzero((out[i] != x[i])[..., 0])
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert len(ys) > 0.9 * box                                 # one rectangle, filled
        assert 0.01 * 48 * 48 <= box <= 0.3 * 48 * 48              # of 2-25% of the face (rounding)
        assert x[i].min() <= out[i].min() and out[i].max() <= x[i].max()   # values in the face's range
    np.testing.assert_array_equal(erase_batch(x, np.random.default_rng(5), probability=0.5), out)  # seeded
    np.testing.assert_array_equal(erase_batch(x, np.random.default_rng(5), probability=0.0), x)
    with pytest.raises(ValueError, match="probability must be in"):
        erase_batch(x, rng, probability=1.5)


def test_augmenter_without_erasing_draws_as_before():
    x = np.random.default_rng(1).uniform(0, 1, (16, 48, 48, 1)).astype(np.float32)
    np.testing.assert_array_equal(Augmenter()(x, np.random.default_rng(3)), augment_batch(x, np.random.default_rng(3)))
    erased = Augmenter(erase=1.0)(x, np.random.default_rng(3))
    plain = augment_batch(x, np.random.default_rng(3))
    assert (erased != plain).any(axis=(1, 2, 3)).all()             # every face erased after the same warp
    with pytest.raises(ValueError, match="erase must be a probability"):
        Augmenter(erase=-0.1)


def test_camera_changes_are_the_formula_and_drawn_per_face(monkeypatch):
    from fer_models import augment
    x = faces(8)
    fixed = {"brightness": (0.1, 0.1), "contrast": (1.0, 1.0), "gamma": (2.0, 2.0), "blur": (0.0, 0.0),
             "jpeg": (100, 100)}
    monkeypatch.setattr(augment, "CAMERA", fixed)
    out = augment.camera_batch(x, np.random.default_rng(0), probability=1.0)
    expected = np.clip(x ** 2 + 0.1, 0, 1)
    assert np.abs(out - expected).max() < 3 / 255                 # 8-bit rounding and JPEG at 100
    monkeypatch.setattr(augment, "CAMERA", {**fixed, "gamma": (1.0, 1.0), "brightness": (0.0, 0.0),
                                            "contrast": (0.5, 0.5)})
    halfway = augment.camera_batch(x, np.random.default_rng(0), probability=1.0)
    assert np.abs(halfway - ((x - 0.5) * 0.5 + 0.5)).max() < 3 / 255   # halfway to mid-grey


def test_camera_changes_half_the_faces_within_range_and_seeded():
    from fer_models.augment import CAMERA, camera_batch
    x = faces(200, seed=2)
    out = camera_batch(x, np.random.default_rng(5), probability=0.5)
    assert out.shape == x.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    changed = (np.abs(out - x) > 1e-6).any(axis=(1, 2, 3))
    assert 0.35 < changed.mean() < 0.65
    np.testing.assert_array_equal(camera_batch(x, np.random.default_rng(5), probability=0.5), out)
    np.testing.assert_array_equal(camera_batch(x, np.random.default_rng(5), probability=0.0), x)
    assert set(CAMERA) == {"brightness", "contrast", "gamma", "blur", "jpeg"}
    with pytest.raises(ValueError, match="probability must be in"):
        camera_batch(x, np.random.default_rng(0), probability=-1)
    with pytest.raises(ValueError, match="camera must be a probability"):
        Augmenter(camera=1.5)
    plain = Augmenter(erase=0.5)(x, np.random.default_rng(3))
    both = Augmenter(erase=0.5, camera=1.0)(x, np.random.default_rng(3))
    assert (both != plain).any(axis=(1, 2, 3)).all()   # every face changed after the same warp and erasing


def one_hot(labels, k=7):
    return np.eye(k, dtype=np.float32)[labels]


def test_mixup_blends_images_and_targets_in_one_proportion():
    x, t = faces(12), one_hot(np.arange(12) % 7)
    mixed, targets = mix_batch(x, t, np.random.default_rng(5), mixup=0.4)
    # the draws, in mix_batch's order: the proportion, then the partner of each image
    rng = np.random.default_rng(5)
    lam = rng.beta(0.4, 0.4)
    perm = rng.permutation(12)
    np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[perm], atol=1e-6)
    np.testing.assert_allclose(targets, lam * t + (1 - lam) * t[perm], atol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1, atol=1e-6)
    assert mixed.dtype == targets.dtype == np.float32
    assert 0 < lam < 1 and not np.array_equal(perm, np.arange(12))


def test_cutmix_pastes_one_rectangle_and_mixes_targets_by_its_area():
    x = np.random.default_rng(0).random((10, 48, 48, 1), dtype=np.float32)   # no two pixels alike
    t = one_hot(np.arange(10) % 7)
    seen = set()
    for seed in range(20):
        mixed, targets = mix_batch(x, t, np.random.default_rng(seed), cutmix=1.0)
        pasted = (mixed != x).any(axis=(0, 3))      # where some image took another's pixels
        rows, cols = np.flatnonzero(pasted.any(axis=1)), np.flatnonzero(pasted.any(axis=0))
        if len(rows) == 0:                          # an empty rectangle (lam near 1, or cut at a border)
            np.testing.assert_array_equal(targets, t)
            continue
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        assert pasted[box].all() and pasted.sum() == pasted[box].size   # one rectangle, the same in every image
        kept = 1 - pasted.sum() / pasted.size
        # each image is, outside the box, itself, and inside it one other image of the batch
        inside = mixed[:, box[0], box[1]]
        partner = [next(j for j in range(10) if np.array_equal(inside[i], x[j, box[0], box[1]]))
                   for i in range(10)]
        np.testing.assert_allclose(targets, kept * t + (1 - kept) * t[partner], atol=1e-6)
        seen.add(round(kept, 2))
    assert len(seen) > 5    # the rectangle's size varies with the draw


def test_mixing_is_seeded_and_off_by_default():
    x, t = np.random.default_rng(0).random((8, 48, 48, 1), dtype=np.float32), one_hot(np.arange(8) % 7)
    a = mix_batch(x, t, np.random.default_rng(1), mixup=0.2, cutmix=1.0)
    b = mix_batch(x, t, np.random.default_rng(1), mixup=0.2, cutmix=1.0)
    c = mix_batch(x, t, np.random.default_rng(2), mixup=0.2, cutmix=1.0)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    rng = np.random.default_rng(3)
    same = Mixer()(x, t, rng)
    assert same[0] is x and same[1] is t and rng.random() == np.random.default_rng(3).random()  # nothing drawn
    # with both, each batch takes one: some batches are blends, some rectangles
    kinds = set()
    for seed in range(30):
        mixed, _ = mix_batch(x, t, np.random.default_rng(seed), mixup=0.2, cutmix=1.0)
        changed = (mixed != x).any(axis=(0, 3))
        kinds.add("rectangle" if changed.any() and not changed.all() else "blend" if changed.all() else "none")
    assert {"rectangle", "blend"} <= kinds


@pytest.mark.parametrize("kwargs, match", [
    ({"mixup": -0.1}, "mixup must be a Beta alpha"),
    ({"cutmix": float("nan")}, "cutmix must be a Beta alpha"),
])
def test_mixing_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mixer(**kwargs)
    with pytest.raises(ValueError, match=match):
        mix_batch(faces(2), one_hot(np.arange(2)), np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError, match=r"targets must be \(N, K\) probabilities for the 2 images"):
        mix_batch(faces(2), np.arange(2), np.random.default_rng(0), mixup=0.2)


def test_cutmix_rectangle_is_centred_where_drawn_with_sides_of_the_root_of_one_minus_lam():
    """The rectangle replayed from the draws (Yun et al.'s box): centre (cy, cx) uniform
    over the image, sides sqrt(1 - lam) of the image's, cut at the borders; the same
    through ``Mixer``."""
    x = np.random.default_rng(0).random((6, 48, 40, 1), dtype=np.float32)
    t = one_hot(np.arange(6) % 7)
    at_border = 0
    for seed in range(60):
        mixed, targets = mix_batch(x, t, np.random.default_rng(seed), cutmix=1.0)
        rng = np.random.default_rng(seed)          # cutmix alone: no draw for the choice
        lam = rng.beta(1.0, 1.0)
        perm = rng.permutation(6)
        cy, cx = rng.integers(48), rng.integers(40)
        cut = np.sqrt(1 - lam)
        top, bottom = max(cy - round(cut * 48 / 2), 0), min(cy + round(cut * 48 / 2), 48)
        left, right = max(cx - round(cut * 40 / 2), 0), min(cx + round(cut * 40 / 2), 40)
        expected = x.copy()
        expected[:, top:bottom, left:right] = x[perm, top:bottom, left:right]
        np.testing.assert_array_equal(mixed, expected, err_msg=f"seed {seed}")
        kept = 1 - (bottom - top) * (right - left) / (48 * 40)
        np.testing.assert_allclose(targets, kept * t + (1 - kept) * t[perm], atol=1e-6)
        at_border += top == 0 or left == 0
        via = Mixer(cutmix=1.0)(x, t, np.random.default_rng(seed))
        np.testing.assert_array_equal(via[0], mixed)
    assert at_border >= 5    # the cut at the top or left border is checked too


def test_the_warp_is_opencvs_rotation_about_the_centre_after_the_flip_then_the_shift():
    """``_affine_matrices`` against its definition: the mirror x -> (W-1) - x, then
    ``cv2.getRotationMatrix2D`` about the pixel centre ((W-1)/2, (H-1)/2) with the zoom,
    then the shift added; on a map that is not square, so that H and W cannot swap."""
    from fer_models.augment import _affine_matrices
    rng = np.random.default_rng(3)
    n, h, w = 12, 48, 40
    flips = np.arange(n) % 2 == 0
    angles, scales = rng.uniform(-30, 30, n), rng.uniform(0.8, 1.2, n)
    shifts = rng.uniform(-5, 5, (n, 2))
    got = _affine_matrices(flips, angles, scales, shifts, h, w)
    mirror = np.array([[-1.0, 0.0, w - 1], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    for i in range(n):
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angles[i], scales[i])
        m[:, 2] += shifts[i]
        if flips[i]:
            m = m @ mirror
        np.testing.assert_allclose(got[i], m, atol=1e-9, err_msg=f"image {i}")


def test_the_batch_is_warped_by_the_replayed_draws():
    """``augment_batch``: five draws of N numbers in the documented order (flip, angle,
    zoom, shift x and y together), each image warped by its matrix."""
    from fer_models.augment import _affine_matrices
    x = faces(6)
    out = augment_batch(x, np.random.default_rng(8), rotation=12.0, shift=0.1, zoom=0.15)
    rng = np.random.default_rng(8)
    flips = rng.random(6) < 0.5
    angles = rng.uniform(-12.0, 12.0, 6)
    scales = rng.uniform(0.85, 1.15, 6)
    shifts = rng.uniform(-0.1, 0.1, (6, 2)) * np.array([48, 48])
    matrices = _affine_matrices(flips, angles, scales, shifts, 48, 48)
    for i in range(6):
        expected = cv2.warpAffine(x[i, :, :, 0], matrices[i], (48, 48), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT_101)
        np.testing.assert_array_equal(out[i, :, :, 0], expected, err_msg=f"image {i}")


def test_random_erasing_replays_its_draws():
    """``erase_batch``: which faces, each rectangle's area, aspect and place, and its
    noise, from the documented draws, on a map that is not square."""
    from fer_models.augment import erase_batch
    x = np.random.default_rng(0).random((40, 30, 20, 1), dtype=np.float32)
    area, aspect = (0.05, 0.4), (0.5, 2.0)
    out = erase_batch(x, np.random.default_rng(4), probability=0.6, area=area, aspect=aspect)
    rng = np.random.default_rng(4)
    erase = rng.random(40) < 0.6
    areas = rng.uniform(*area, 40) * 30 * 20
    ratios = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]), 40))
    tops, lefts, seeds = rng.random(40), rng.random(40), rng.integers(2**31, size=40)
    expected = x.copy()
    for i in np.flatnonzero(erase):
        eh = int(np.clip(round(np.sqrt(areas[i] * ratios[i])), 1, 30))
        ew = int(np.clip(round(np.sqrt(areas[i] / ratios[i])), 1, 20))
        top, left = int(tops[i] * (30 - eh + 1)), int(lefts[i] * (20 - ew + 1))
        noise = np.random.default_rng(seeds[i]).uniform(x[i].min(), x[i].max(), (eh, ew, 1))
        expected[i, top:top + eh, left:left + ew] = noise.astype(np.float32)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32 and 10 < erase.sum() < 40
    # a rectangle may not be empty, nor larger than the image: the clip to [1, side]
    tiny = erase_batch(x[:8], np.random.default_rng(1), probability=1.0, area=(1e-4, 1e-4), aspect=(1.0, 1.0))
    assert ((tiny != x[:8]).sum(axis=(1, 2, 3)) == 1).all()
    whole = erase_batch(x[:8], np.random.default_rng(1), probability=1.0, area=(0.99, 0.99), aspect=(3.0, 3.0))
    assert ((whole != x[:8]).reshape(8, 30, 20).any(axis=2).sum(axis=1) == 30).all()   # every row, h clipped to 30
    wide = erase_batch(x[:8], np.random.default_rng(1), probability=1.0, area=(0.99, 0.99), aspect=(0.3, 0.3))
    assert ((wide != x[:8]).reshape(8, 30, 20).any(axis=1).sum(axis=1) == 20).all()    # every column, w clipped to 20


@pytest.mark.parametrize("kwargs", [
    {"area": (0.0, 0.2)}, {"area": (0.3, 0.2)}, {"area": (0.1, 1.0)}, {"aspect": (0.0, 2.0)},
    {"aspect": (2.0, 1.0)}, {"probability": 1.5}])
def test_random_erasing_refuses_settings_out_of_range(kwargs):
    from fer_models.augment import erase_batch
    with pytest.raises(ValueError, match=r"^erase_batch: (area must satisfy 0 < low <= high < 1 and aspect "
                                         r"0 < low <= high|probability must be in \[0, 1\])"):
        erase_batch(faces(2), np.random.default_rng(0), **kwargs)
    if "probability" not in kwargs:   # the edges themselves are allowed
        erase_batch(faces(2), np.random.default_rng(0), area=(0.2, 0.2), aspect=(1.0, 1.0))



def test_each_transform_alone_warps_and_every_channel_alike():
    """Shift alone, zoom alone, rotation alone: each changes the faces (none is taken for
    "all off"); a 3-channel batch is warped channel by channel as a 1-channel one is."""
    x = faces(4)
    for kwargs in ({"shift": 0.1}, {"zoom": 0.2}, {"rotation": 10.0}):
        settings = {"flip": False, "rotation": 0.0, "shift": 0.0, "zoom": 0.0, **kwargs}
        assert not np.array_equal(augment_batch(x, np.random.default_rng(0), **settings), x), kwargs
    colour = np.concatenate([x, 1 - x, x ** 2], axis=3)
    out = augment_batch(colour, np.random.default_rng(2))
    for k in range(3):
        one = augment_batch(colour[..., k:k + 1], np.random.default_rng(2))
        np.testing.assert_allclose(out[..., k:k + 1], one, atol=1e-6, err_msg=f"channel {k}")


def test_the_augmenter_chains_its_transforms_and_draws_nothing_for_those_off():
    x = faces(6)
    for erase, camera in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.5, 0.5)):
        rng, replay = np.random.default_rng(5), np.random.default_rng(5)
        got = Augmenter(erase=erase, camera=camera)(x, rng)
        expected = augment_batch(x, replay)
        if erase:
            from fer_models.augment import erase_batch
            expected = erase_batch(expected, replay, erase)
        if camera:
            from fer_models.augment import camera_batch
            expected = camera_batch(expected, replay, camera)
        np.testing.assert_array_equal(got, expected, err_msg=f"erase {erase}, camera {camera}")
        assert rng.random() == replay.random()     # the same draws taken, no more


@pytest.mark.parametrize("where, call", [
    ("augment_batch", lambda: augment_batch(faces(2), np.random.default_rng(0), rotation=-1.0)),
    ("Augmenter", lambda: Augmenter(shift=1.5)),
])
def test_a_bad_setting_names_who_refused_it(where, call):
    with pytest.raises(ValueError, match=f"^{where}: (rotation|shift) must be"):
        call()


def test_camera_changes_replay_their_draws_on_faces_out_of_range_too():
    """``camera_batch`` from its documented draws (which faces, then each change's
    values in ``CAMERA``'s order), on faces with values below 0 and above 1 (the gamma
    clips them first, the 8-bit image again), and half the faces by default."""
    from fer_models.augment import CAMERA, camera_batch
    x = faces(24)
    low, high = x.min(axis=(1, 2, 3), keepdims=True), x.max(axis=(1, 2, 3), keepdims=True)
    x = ((x - low) / (high - low) * 1.4 - 0.2).astype(np.float32)     # each face over [-0.2, 1.2]
    out = camera_batch(x, np.random.default_rng(6), probability=0.7)
    rng = np.random.default_rng(6)
    change = rng.random(24) < 0.7
    draws = {k: rng.uniform(low, high, 24) for k, (low, high) in CAMERA.items()}
    expected = x.copy()
    blurred = 0
    for i in np.flatnonzero(change):
        v = np.clip(x[i], 0, 1) ** draws["gamma"][i]
        v = (v - 0.5) * draws["contrast"][i] + 0.5 + draws["brightness"][i]
        img = (np.clip(v, 0, 1) * 255).round().astype(np.uint8)[:, :, 0]
        if draws["blur"][i] > 0.05:
            img = cv2.GaussianBlur(img, (0, 0), draws["blur"][i])
            blurred += 1
        _, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(round(draws["jpeg"][i]))])
        expected[i, :, :, 0] = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    np.testing.assert_array_equal(out, expected)
    assert blurred >= 5 and 0 <= out[change].min() and out[change].max() <= 1 and out.dtype == np.float32
    assert x[change].min() < 0 and x[change].max() > 1     # the faces changed were out of range
    default = camera_batch(x, np.random.default_rng(6))
    changed = (default != x).any(axis=(1, 2, 3))
    np.testing.assert_array_equal(changed, np.random.default_rng(6).random(24) < 0.5)
    with pytest.raises(ValueError, match=r"^camera_batch: probability must be in \[0, 1\], got 1.5$"):
        camera_batch(x, np.random.default_rng(0), probability=1.5)


def test_the_input_checks_edges():
    """A shift of a whole image is refused and one just under it allowed; 1 to 4 channels
    are taken, 5 refused; a list is named as such."""
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"^augment_batch: shift must be a fraction .* got 1.0$"):
        augment_batch(faces(1), rng, shift=1.0)
    augment_batch(faces(1), rng, shift=0.99)
    assert augment_batch(np.repeat(faces(1), 4, axis=3), rng).shape == (1, 48, 48, 4)
    with pytest.raises(ValueError, match=r"with 1 to 4 channels"):
        augment_batch(np.repeat(faces(1), 5, axis=3), rng)
    with pytest.raises(TypeError, match=r"^augment_batch: x must be a numpy array \(N, H, W, C\), got list$"):
        augment_batch([[0.0]], rng)
