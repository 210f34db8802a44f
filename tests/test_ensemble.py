"""Preprocessing recorded with the weights, ensembles, soft labels (distillation), and
train.py's --preprocessing, --ensemble and --distill-from."""
import json

import cv2
import numpy as np
import pytest
from helpers import run_train

import fer_models
import tinycnn as tc
import train
from fer_programs.train import choose_members
from fer_models.data import default_location, load_fer2013
from fer_models.ensemble import Ensemble, save_ensemble, soft_labels
from fer_models.predict import EmotionClassifier, load_model, predict_probabilities, save_model
from fer_models.preprocess import METHODS, preprocess

DATA = default_location()
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"FER-2013 not found at {DATA}")


def faces(n=6, seed=0):
    """Low-contrast random faces in [0.3, 0.6]: equalisation visibly changes them."""
    rng = np.random.default_rng(seed)
    return (0.3 + 0.3 * rng.random((n, 48, 48, 1))).astype(np.float32)


# -- preprocessing ------------------------------------------------------------------------
def test_each_method_is_what_its_docstring_says():
    x = faces()
    levels = np.rint(x[..., 0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(preprocess(x, "none"), x)
    eq = preprocess(x, "equalize")
    np.testing.assert_array_equal(eq[..., 0], np.stack([cv2.equalizeHist(f) for f in levels]) / np.float32(255))
    assert eq.min() == 0.0 and eq.max() == 1.0           # equalised faces span the full range
    clahe = preprocess(x, "clahe")
    assert clahe.shape == x.shape and 0 <= clahe.min() and clahe.max() <= 1
    assert not np.allclose(clahe, x) and not np.allclose(clahe, eq)
    st = preprocess(x, "standardize")
    np.testing.assert_allclose(st.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(st.std(axis=(1, 2, 3)), 1, atol=1e-4)
    flat = np.full((1, 48, 48, 1), 0.5, np.float32)       # no contrast: no division by zero
    assert np.isfinite(preprocess(flat, "standardize")).all()
    for method in METHODS:
        assert preprocess(x[:0], method).shape == (0, 48, 48, 1)
        assert preprocess(x, method) is not x              # never the caller's array


def test_bad_method_and_shape_are_refused():
    with pytest.raises(ValueError, match="unknown method 'hist'.*equalize"):
        preprocess(faces(), "hist")
    with pytest.raises(ValueError, match=r"\(N, H, W, 1\).*\(48, 48\)"):
        preprocess(np.zeros((48, 48), np.float32), "equalize")


def test_the_weights_file_records_preprocessing_and_prediction_applies_it(tmp_path):
    model = fer_models.build("mini", seed=0)
    model.preprocessing = "equalize"
    save_model(model, tmp_path / "eq.npz")
    loaded = load_model(tmp_path / "eq.npz")
    assert loaded.preprocessing == "equalize"
    x = faces()
    with tc.no_grad():
        by_hand = tc.softmax(loaded(preprocess(x, "equalize"), training=False)).numpy()
        raw = tc.softmax(loaded(x, training=False)).numpy()
    np.testing.assert_allclose(predict_probabilities(loaded, x), by_hand, atol=1e-6)
    assert not np.allclose(by_hand, raw, atol=1e-4)        # so the check above can fail
    # the classifier behind predict_emotion and webcam.py goes through the same call
    crops = [np.rint(f[..., 0] * 255).astype(np.uint8) for f in x]   # equalisation rounds to these levels
    np.testing.assert_allclose(EmotionClassifier(tmp_path / "eq.npz").predict_proba(crops), by_hand, atol=1e-5)
    # a file written before preprocessing was recorded means "none"
    arrays = dict(np.load(tmp_path / "eq.npz"))
    del arrays["__preprocessing__"]
    np.savez(tmp_path / "old.npz", **arrays)
    assert load_model(tmp_path / "old.npz").preprocessing == "none"
    arrays["__preprocessing__"] = np.array("sharpen")
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="unknown preprocessing 'sharpen'"):
        load_model(tmp_path / "bad.npz")


def test_the_bundled_models_record_what_they_were_trained_on():
    from fer_models.predict import SINGLE_WEIGHTS
    default = load_model()                 # predict_emotion's: an ensemble (MODEL_CARD.md)
    assert isinstance(default, Ensemble)   # members chosen on PublicTest by train.py --choose
    assert [(m.name, m.preprocessing) for m in default.members] == [("reswide", "none"), ("resdeep", "none"),
                                                                     ("resdeep", "clahe")]
    single = load_model(SINGLE_WEIGHTS)
    assert single.name == "resdeep" and single.preprocessing == "none"   # chosen on PublicTest


# -- ensembles ------------------------------------------------------------------------------
def members():
    a, b = fer_models.build("mini", seed=1), fer_models.build("small3", seed=2)
    b.preprocessing = "clahe"
    return [a, b]


def test_an_ensemble_averages_its_members_each_with_its_preprocessing(tmp_path):
    a, b = members()
    ens = Ensemble([a, b])
    x = faces()
    for tta in (False, True):
        expected = (predict_probabilities(a, x, tta=tta) + predict_probabilities(b, x, tta=tta)) / 2
        np.testing.assert_allclose(predict_probabilities(ens, x, tta=tta), expected, atol=1e-6)
    save_ensemble(ens, tmp_path / "ens.npz")
    back = load_model(tmp_path / "ens.npz")
    assert isinstance(back, Ensemble) and [m.name for m in back.members] == ["mini", "small3"]
    assert [m.preprocessing for m in back.members] == ["none", "clahe"]
    np.testing.assert_allclose(predict_probabilities(back, x), predict_probabilities(ens, x), atol=1e-6)
    assert ens.count_params() == a.count_params() + b.count_params()
    with pytest.raises(ValueError, match="is an ensemble"):
        load_model(tmp_path / "ens.npz", model="mini")
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])


def test_an_ensemble_stored_in_half_precision_is_half_the_file_and_predicts_the_same(tmp_path):
    a, b = members()
    ens, x = Ensemble([a, b]), faces()
    save_ensemble(ens, tmp_path / "full.npz")
    save_ensemble(ens, tmp_path / "half.npz", half=True)
    with np.load(tmp_path / "half.npz") as f:
        assert all(f[k].dtype == np.float16 for k in f.files if k.startswith("member"))
    assert (tmp_path / "half.npz").stat().st_size < 0.6 * (tmp_path / "full.npz").stat().st_size
    import zipfile   # the half file deflated too (the bundled three fit in 8 MiB so), the full one not
    with zipfile.ZipFile(tmp_path / "half.npz") as z, zipfile.ZipFile(tmp_path / "full.npz") as full:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
        assert {i.compress_type for i in full.infolist()} == {zipfile.ZIP_STORED}
    back = load_model(tmp_path / "half.npz")
    for m, orig in zip(back.members, ens.members):   # float32 again, each weight rounded to float16
        for k, v in m.get_weights().items():
            assert v.dtype == np.float32
            np.testing.assert_array_equal(v, orig.get_weights()[k].astype(np.float16).astype(np.float32))
    p_half, p_full = predict_probabilities(back, x), predict_probabilities(ens, x)
    assert 0 < np.abs(p_half - p_full).max() < 1e-2
    big = next(t for t in b.parameters())   # a weight past float16's range is refused, not stored as inf
    big.data[...] = 1e6
    with pytest.raises(ValueError, match="member 1 .*exceeds float16's range"):
        save_ensemble(ens, tmp_path / "bad.npz", half=True)


def test_soft_labels_are_the_teachers_probabilities():
    a, _ = members()
    x = faces(10)
    t = soft_labels(a, x, tta=False, batch_size=4)
    assert t.shape == (10, 7) and t.dtype == np.float32
    np.testing.assert_allclose(t.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(t, predict_probabilities(a, x), atol=1e-6)


def test_fit_on_soft_targets_moves_the_student_towards_them():
    teacher, _ = members()
    x = faces(64, seed=3)
    targets = soft_labels(teacher, x, tta=False)
    targets = (0.5 * targets + 0.5 * np.eye(7, dtype=np.float32)[np.arange(64) % 7])  # sharper, still rows of 1
    student = fer_models.build("mini", seed=5)
    history = student.fit(x, targets, epochs=8, batch_size=16, verbose=0,
                          optimizer=tc.optim.Adam(student.parameters(), lr=3e-3))
    # the training loss is the cross-entropy against the soft targets (BatchNorm's moving
    # averages have not settled after 32 steps, so inference is not the measure here)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] - 0.05, losses
    assert 0 <= history.history["accuracy"][-1] <= 1
    with pytest.raises(ValueError, match="probabilities"):
        student.fit(x, targets * 2, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"soft targets must have shape \(64, 7\)"):
        tc.losses.softmax_cross_entropy(tc.Tensor(np.zeros((64, 7), np.float32)), targets[:, :5])


def test_soft_one_hot_targets_give_the_integer_label_loss():
    rng = np.random.default_rng(0)
    logits = tc.Tensor(rng.normal(size=(5, 7)).astype(np.float32))
    labels = np.array([0, 3, 6, 2, 2])
    for smoothing in (0.0, 0.1):
        a = tc.losses.softmax_cross_entropy(logits, labels, label_smoothing=smoothing).item()
        b = tc.losses.softmax_cross_entropy(logits, np.eye(7, dtype=np.float32)[labels],
                                            label_smoothing=smoothing).item()
        assert a == pytest.approx(b, rel=1e-6)


def test_choose_members_compares_subsets_with_the_views_it_is_given(capsys):
    """Three members on four faces: with the mirror's probabilities member 0 alone is best,
    with the zooms' members 1 and 2 together; the default is the mirror."""
    y = np.array([0, 1, 2, 3])
    right, wrong = np.eye(7)[y], np.eye(7)[(y + 1) % 7]
    sure, unsure = right, 0.4 * right + 0.6 * wrong     # right; wrong but close
    m1 = np.stack([sure[0], sure[1], unsure[2], unsure[3]])
    m2 = np.stack([unsure[0], unsure[1], sure[2], sure[3]])
    probs = [{"mirror": right, "zooms": wrong}, {"mirror": wrong, "zooms": m1}, {"mirror": wrong, "zooms": m2}]
    costs, labels = [3, 1, 1], ["m0", "m1", "m2"]
    assert choose_members(probs, y, costs, labels, 3) == [0]
    assert "(mirror TTA, PublicTest)" in capsys.readouterr().out
    # zooms: m1 and m2 alone 2 of 4 right each, together all 4 (0.7 right against 0.3 wrong)
    assert choose_members(probs, y, costs, labels, 3, tta="zooms") == [1, 2]
    assert "(zooms TTA, PublicTest)" in capsys.readouterr().out


# -- the command line -----------------------------------------------------------------------
@pytest.fixture
def cache(fer_cache):
    return fer_cache


run = run_train


@needs_data
def test_preprocessing_ensemble_and_distillation_from_the_command_line(tmp_path, cache, capsys):
    common = ["--model", "mini", "--limit", "600", "--epochs", "1", "--batch-size", "32"]
    run(common + ["--preprocessing", "equalize", "--out", tmp_path / "a"], cache)
    assert json.loads((tmp_path / "a" / "args.json").read_text())["preprocessing"] == "equalize"
    assert load_model(tmp_path / "a").preprocessing == "equalize"
    run(common + ["--seed", "1", "--out", tmp_path / "b"], cache)
    capsys.readouterr()
    run(["--ensemble", tmp_path / "a", tmp_path / "b" / "best.npz", "--out", tmp_path / "ens.npz", "--half"], cache)
    printed = capsys.readouterr().out
    assert "PublicTest accuracy (3,589 images)" in printed and "ensemble(mini+mini)" in printed
    assert "as stored (float16 weights)" in printed
    ens = load_model(tmp_path / "ens.npz")
    assert [m.preprocessing for m in ens.members] == ["equalize", "none"]
    # --choose 1 --tta zooms: the better of the two on PublicTest with the six views, as the test computes it
    run(["--ensemble", tmp_path / "a", tmp_path / "b", "--choose", "1", "--tta", "zooms", "--out",
         tmp_path / "ens1.npz"], cache)
    printed = capsys.readouterr().out
    assert "best of 2 subsets of at most 1 members (zooms TTA, PublicTest)" in printed, printed
    x, y = load_fer2013(DATA, cache_dir=cache)["PublicTest"]
    zooms = {r: (train.member_probabilities(load_model(tmp_path / r), x, "zooms").argmax(1) == y).mean() for r in "ab"}
    chosen = load_model(tmp_path / "ens1.npz")
    assert len(chosen) == 1
    assert chosen.members[0].preprocessing == ("equalize" if zooms["a"] >= zooms["b"] else "none"), (zooms, printed)
    with pytest.raises(SystemExit, match="--choose picks members for --ensemble"):
        run(["--choose", "2", "--evaluate", tmp_path / "ens.npz"], cache)
    with pytest.raises(SystemExit, match="--choose must be a positive number"):
        run(["--ensemble", tmp_path / "a", "--choose", "-1"], cache)
    run(["--evaluate", tmp_path / "ens.npz", "--out", tmp_path / "ens-eval"], cache)
    report = json.loads((tmp_path / "ens-eval" / "report.json").read_text())
    assert report["model"] == "ensemble(mini+mini)" and report["PrivateTest"]["report"]["accuracy"] > 0
    run(common + ["--distill-from", tmp_path / "ens.npz", "--out", tmp_path / "student"], cache)
    assert "distilling from ensemble(mini+mini)" in capsys.readouterr().out
    assert load_model(tmp_path / "student").name == "mini"
    with pytest.raises(SystemExit, match="--distill-from .*does not exist"):
        run(common + ["--distill-from", tmp_path / "nothing.npz", "--out", tmp_path / "c"], cache)
