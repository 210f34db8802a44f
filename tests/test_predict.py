"""fer_models.predict: faces prepared as in training, the bundled model, clear errors."""

import cv2
import numpy as np
import pytest

import fer_models
from fer_models.classes import CLASSES
from fer_models.data import default_location
from fer_models.predict import DEFAULT_WEIGHTS, EmotionClassifier, load_model, predict_emotion, prepare_face, save_model
from helpers import decision_candidates

DATA = default_location()  # $FER2013_DIR, else ../shared/fer2013
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"FER-2013 not found at {DATA}")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "small3.npz"
    save_model(fer_models.build("small3", seed=0), path)
    return path


def a_face(split="PublicTest", emotion="happy"):
    return sorted((DATA / "test" / emotion).glob(f"{split}_*.png"))[0]


def test_prepare_face_matches_the_training_conversion():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (96, 80), dtype=np.uint8)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    a, b = prepare_face(gray), prepare_face(bgr)
    assert a.shape == (48, 48, 1) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1 / 255)
    expected = cv2.resize(gray, (48, 48), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    np.testing.assert_allclose(a[:, :, 0], expected, atol=1 / 255)
    assert 0.0 <= a.min() and a.max() <= 1.0
    with pytest.raises(ValueError, match="prepare_face"):
        prepare_face(np.zeros((4, 4, 2)))


@needs_data
def test_predict_emotion_on_a_path_and_an_array(weights):
    path = a_face()
    label, probs = predict_emotion(path, weights=weights)
    assert label in CLASSES and list(probs) == list(CLASSES)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert label == max(probs, key=probs.get)
    label2, probs2 = predict_emotion(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), weights=weights)
    assert label2 == label and probs2 == pytest.approx(probs, abs=1e-6)


def test_unreadable_image_and_missing_weights_fail_clearly(tmp_path, weights):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="cannot read an image"):
        predict_emotion(bad, weights=weights)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="does not fit model 'vggbn'"):
        load_model(weights, model="vggbn")


def test_classifier_batches_faces_of_any_size(weights):
    clf = EmotionClassifier(weights)
    faces = [np.full((60, 50), 128, np.uint8), np.zeros((48, 48, 3), np.uint8)]
    p = clf.predict_proba(faces)
    assert p.shape == (2, 7)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert clf.predict_proba([]).shape == (0, 7)


@needs_data
@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="the bundled model is not in this checkout")
def test_bundled_models_recognise_publictest_faces():
    """A sanity check of the bundled weights on PublicTest (never PrivateTest: that split
    is reported once, in the model card, and used for nothing else). Measured when they
    were chosen (MODEL_CARD.md): the default predictor 0.7186 with mirror averaging, its
    members 0.6985, 0.7063 and 0.6982 (the last on CLAHE faces), the single model 0.7008
    without. Each member is held to its own bound: the ensemble hides one member's wrong
    preprocessing (0.7164 with the CLAHE member fed plain faces, which alone then gives
    0.6815; 0.6868 with equalised ones)."""
    from fer_models.data import load_fer2013
    from fer_models.predict import SINGLE_WEIGHTS, predict_probabilities
    x, y = load_fer2013(DATA, progress=False)["PublicTest"]
    default = load_model()
    members = [predict_probabilities(m, x, tta=True) for m in default.members]
    ensemble = np.mean(members, axis=0)   # the ensemble's probabilities, as its own call gives them:
    np.testing.assert_allclose(ensemble[:64], predict_probabilities(default, x[:64], tta=True), atol=1e-5)
    checks = [*((f"bundled member {i} ({m.name}, {m.preprocessing})", p, 0.69)
                for i, (m, p) in enumerate(zip(default.members, members))),
              ("bundled predictor", ensemble, 0.70),
              ("bundled single model", predict_probabilities(load_model(SINGLE_WEIGHTS), x), 0.68)]
    for what, p, least in checks:
        accuracy = (p.argmax(1) == y).mean()
        # a face whose top two are within float32 rounding may go either way on another CPU:
        # counted wrong here, so that the bound holds on every machine
        surely_right = ((p.argmax(1) == y) & (decision_candidates(p).sum(1) == 1)).mean()
        assert surely_right > least, (f"{what}: {accuracy:.4f} on PublicTest ({len(y)} faces), "
                                      f"{surely_right:.4f} without its near-ties")
    label, _ = predict_emotion(a_face(emotion="happy"))
    assert label in CLASSES


def test_test_time_augmentation_averages_a_face_and_its_mirror():
    from fer_models.predict import predict_probabilities
    model = fer_models.build("mini", seed=2)
    x = np.random.default_rng(0).random((3, 48, 48, 1), dtype=np.float32)
    plain, mirrored = predict_probabilities(model, x), predict_probabilities(model, x[:, :, ::-1])
    np.testing.assert_allclose(predict_probabilities(model, x, tta=True), (plain + mirrored) / 2, atol=1e-6)
    symmetric = (x + x[:, :, ::-1]) / 2  # a face equal to its mirror: TTA changes nothing
    np.testing.assert_allclose(predict_probabilities(model, symmetric, tta=True),
                               predict_probabilities(model, symmetric), atol=1e-6)


@needs_data
def test_predict_emotion_averages_six_views_by_default(weights):
    """The bundled model's configuration, chosen on PublicTest: a face and its mirror, each
    also zoomed out and in; ``tta=True`` the face and its mirror alone."""
    from fer_models.predict import predict_probabilities
    face = cv2.imread(str(a_face(emotion="surprise")), cv2.IMREAD_GRAYSCALE)
    _, by_default = predict_emotion(face, weights=weights)
    model = load_model(weights)
    six = predict_probabilities(model, prepare_face(face)[None], tta="zooms")[0]
    for c, p in zip(CLASSES, six):
        assert by_default[c] == pytest.approx(p, abs=1e-6)
    _, with_mirror = predict_emotion(face, weights=weights, tta=True)
    _, plain = predict_emotion(face, weights=weights, tta=False)
    _, mirror = predict_emotion(face[:, ::-1], weights=weights, tta=False)
    for c in CLASSES:
        assert with_mirror[c] == pytest.approx((plain[c] + mirror[c]) / 2, abs=1e-6)
    assert max(abs(by_default[c] - with_mirror[c]) for c in CLASSES) > 1e-4   # the zooms do change it


def test_ten_view_tta_averages_shifted_faces_and_mirrors():
    from fer_models.predict import SHIFT_PX, test_time_views
    model = fer_models.build("mini", seed=0)
    x = np.random.default_rng(4).uniform(0, 1, (3, 48, 48, 1)).astype(np.float32)
    views = test_time_views(x, "shifts")
    assert len(views) == 10 and all(v.shape == x.shape for v in views)
    np.testing.assert_array_equal(views[1], x[:, :, ::-1])
    # a shift right by SHIFT_PX: the interior moves, the border is mirrored in
    np.testing.assert_array_equal(views[2][:, :, SHIFT_PX:], x[:, :, :-SHIFT_PX])
    import tinycnn as tc
    from fer_models.predict import predict_probabilities
    with tc.no_grad():
        by_hand = np.mean([tc.softmax(model(v, training=False)).numpy() for v in views], axis=0)
    np.testing.assert_allclose(predict_probabilities(model, x, tta="shifts"), by_hand, atol=1e-6)
    with pytest.raises(ValueError, match="test-time augmentation must be one of"):
        predict_probabilities(model, x, tta="crops")
