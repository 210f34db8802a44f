"""Checks of fer_models/ensemble.py that its mutation run (tests/mutation/run.sh) showed
missing: the default name and the summary figures, the inference copy, float16's exact
limit, every kind of damaged ensemble file, and soft labels' defaults, batching, renormalised
rows and progress bar."""
import json
import re

import numpy as np
import pytest

import fer_models
from fer_models.ensemble import ENSEMBLE_KEY, Ensemble, ensemble_from_arrays, save_ensemble, soft_labels
from fer_models.predict import load_model, predict_probabilities, preprocessing_of


def faces(n=5, seed=0):
    return np.random.default_rng(seed).random((n, 48, 48, 1)).astype(np.float32)


def members():
    a, b = fer_models.build("mini", seed=1), fer_models.build("small3", seed=2)
    b.preprocessing = "clahe"
    return [a, b]


def test_name_figures_and_refusals():
    a, b = members()
    ens = Ensemble([a, b])
    assert ens.name == "ensemble(mini+small3)" and repr(ens) == "Ensemble('ensemble(mini+small3)', 2 members)"
    assert Ensemble([a], name="solo").name == "solo" and len(ens) == 2
    assert ens.multiply_adds() == a.multiply_adds() + b.multiply_adds()
    assert ens.count_params() == a.count_params() + b.count_params()
    with pytest.raises(ValueError, match=r"^Ensemble: members must be single models \(pass an ensemble's \.members\)$"):
        Ensemble([a, ens])
    with pytest.raises(ValueError, match=r"^Ensemble: needs at least one member$"):
        Ensemble(iter([]))


def test_inference_copy_predicts_as_the_ensemble():
    ens = Ensemble(members(), name="pair")
    copy = ens.inference_copy()
    assert copy.name == "pair" and len(copy) == 2
    assert all(getattr(m, "is_inference_copy", False) for m in copy.members)
    assert [preprocessing_of(m) for m in copy.members] == ["none", "clahe"]
    x = faces()
    np.testing.assert_allclose(predict_probabilities(copy, x), predict_probabilities(ens, x), rtol=0, atol=1e-5)


def test_float16_holds_its_largest_value_and_refuses_beyond(tmp_path):
    a, _ = members()
    w = next(iter(a.parameters()))
    w.data[...] = 0
    w.data.flat[0] = np.finfo(np.float16).max            # 65504: stored exactly
    save_ensemble(Ensemble([a]), tmp_path / "max.npz", half=True)
    back = load_model(tmp_path / "max.npz").members[0]
    assert next(iter(back.parameters())).data.flat[0] == 65504.0
    w.data.flat[0] = 65520.0                              # would round to inf
    with pytest.raises(ValueError, match=r"^save_ensemble: member 0 \(mini\) weight '.*' exceeds float16's "
                                         r"range \(largest 6\.552e\+04\); save it with half=False$"):
        save_ensemble(Ensemble([a]), tmp_path / "inf.npz", half=True)


def stored(tmp_path):
    save_ensemble(Ensemble(members()), tmp_path / "ens.npz")
    return dict(np.load(tmp_path / "ens.npz"))


@pytest.mark.parametrize("description", ["not json", json.dumps({"model": "mini"}), "[]", json.dumps(["mini"])])
def test_a_damaged_description_is_named(tmp_path, description):
    arrays = stored(tmp_path)
    arrays[ENSEMBLE_KEY] = np.array(description)
    with pytest.raises(ValueError, match=r"^where\.npz: its ensemble description is damaged$"):
        ensemble_from_arrays(arrays, "where.npz")


def test_unknown_members_and_misfits_are_named(tmp_path):
    arrays = stored(tmp_path)
    specs = json.loads(str(arrays[ENSEMBLE_KEY]))
    for bad in ({"model": "nonet", "preprocessing": "none"}, {"model": "mini", "preprocessing": "sharpen"}):
        arrays[ENSEMBLE_KEY] = np.array(json.dumps([specs[0], bad]))
        with pytest.raises(ValueError, match=rf"^f\.npz: member 1 has unknown architecture '{bad['model']}' or "
                                             rf"preprocessing '{bad['preprocessing']}'$"):
            ensemble_from_arrays(arrays, "f.npz")
    arrays[ENSEMBLE_KEY] = np.array(json.dumps([specs[1], specs[0]]))      # weights of mini for small3
    with pytest.raises(ValueError, match=r"^f\.npz: member 0 does not fit model 'small3': "):
        ensemble_from_arrays(arrays, "f.npz")
    # a member described without preprocessing means "none"
    arrays[ENSEMBLE_KEY] = np.array(json.dumps([{"model": "mini"}, specs[1]]))
    ens = ensemble_from_arrays(arrays, "f.npz")
    assert [m.preprocessing for m in ens.members] == ["none", "clahe"]


def test_soft_labels_default_to_the_mirror_and_batch_any_length(capsys):
    a, _ = members()
    x = faces(7, seed=4)
    t = soft_labels(a, x, batch_size=3)                 # 3 + 3 + 1, with the mirror (tta=True)
    np.testing.assert_allclose(t, predict_probabilities(a, x, tta=True), rtol=0, atol=1e-6)
    assert not np.allclose(t, predict_probabilities(a, x, tta=False), rtol=0, atol=1e-6)
    assert t.dtype == np.float32 and np.abs(t.sum(axis=1) - 1).max() < 1e-6
    np.testing.assert_allclose(soft_labels(a, x), t, rtol=0, atol=1e-6)     # one batch of 256
    assert capsys.readouterr().err == ""                # no progress bar unless asked
    soft_labels(a, x[:2], progress=True)
    err = capsys.readouterr().err
    assert re.search(r"(?:^|\r)teacher's soft labels: ", err) and "batch/s" in err     # the bar's own name


def test_soft_labels_run_the_teacher_once_per_batch(monkeypatch):
    import fer_models.ensemble
    a, _ = members()
    seen = []
    original = fer_models.ensemble.predict_probabilities
    monkeypatch.setattr(fer_models.ensemble, "predict_probabilities", lambda m, b, tta: seen.append(len(b)) or
                        original(m, b, tta=tta))
    soft_labels(a, faces(7), batch_size=3)
    assert seen == [3, 3, 1]


def test_soft_labels_renormalise_each_row(monkeypatch):
    import fer_models.ensemble
    a, _ = members()
    rows = np.random.default_rng(5).uniform(0.1, 1.0, (4, 7))       # a teacher whose rows sum to 1.9 to 6.5
    monkeypatch.setattr(fer_models.ensemble, "predict_probabilities", lambda m, b, tta: rows[:len(b)])
    t = soft_labels(a, faces(4))
    np.testing.assert_allclose(t, rows / rows.sum(axis=1, keepdims=True), rtol=1e-6, atol=0)


def test_an_ensemble_predicts_without_the_mirror_by_default():
    ens, x = Ensemble(members()), faces()
    expected = np.mean([predict_probabilities(m, x, tta=False) for m in ens.members], axis=0)
    np.testing.assert_allclose(ens.predict_probabilities(x), expected, rtol=0, atol=1e-6)
    assert not np.allclose(ens.predict_probabilities(x, tta=True), expected, rtol=0, atol=1e-6)
