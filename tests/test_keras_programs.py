"""Keras files where weights are accepted: predict_emotion, EmotionClassifier, webcam.py,
train.py --evaluate and --init-from, with the input size, pixel scale and class order an
imported model expects (a mini-Xception on 64x64 faces in [-1, 1], outputting the CSV's
class order, as the face_classification project trains it)."""
import json
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
from helpers import assert_confusion_agrees, assert_decisions_agree, run_train

import fer_models
import keras_models as km
import train
from fer_models.classes import CLASSES, CSV_CODES
from fer_models.data import default_location
from fer_models.predict import (EmotionClassifier, keras_sidecar, load_model, predict_emotion,
                                predict_probabilities, save_keras_model, save_model)
from fixtures_faces import ROOT, WEBCAM, face_frame, fer_faces, smooth_random_images

DATA = default_location()
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"FER-2013 not found at {DATA}")
FER2013_ORDER = [CSV_CODES[i] for i in range(7)]


@pytest.fixture(scope="module")
def xception(tmp_path_factory):
    """A mini-Xception saved by Keras (random weights, BatchNorm statistics perturbed), .keras and .h5.
    Seeded: Keras' initialisers draw the kernels, a different model on every run otherwise."""
    folder = tmp_path_factory.mktemp("keras")
    keras.utils.set_random_seed(3)
    model = km.mini_xception(input_shape=(64, 64, 1), l2=None)
    km.randomise_weights(model, seed=3)
    model.save(folder / "xception.keras")
    model.save(folder / "xception.h5")
    return model, folder


def keras_probabilities(model, faces48):
    """What the Keras model itself gives for 48x48 [0, 1] faces, prepared by hand as its
    project does (resize to 64x64, scale to [-1, 1]), with columns put in CLASSES order."""
    big = np.stack([cv2.resize(f[..., 0], (64, 64), interpolation=cv2.INTER_LINEAR) for f in faces48])[..., None]
    probs = model.predict(big * 2 - 1, verbose=0)
    return probs[:, [FER2013_ORDER.index(c) for c in CLASSES]]


def some_faces(n=6):
    rng = np.random.default_rng(1)
    return rng.uniform(0, 1, (n, 48, 48, 1)).astype(np.float32)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_keras_model_gets_the_input_it_expects(xception, suffix):
    model, folder = xception
    net = load_model(folder / f"xception{suffix}", input_scale=(-1, 1), classes="fer2013")
    assert net.input_shape == (64, 64, 1) and net.classes == tuple(FER2013_ORDER)
    x = some_faces()
    np.testing.assert_allclose(predict_probabilities(net, x), keras_probabilities(model, x), atol=1e-5)
    # without the contract the same file gives other answers: the options matter
    plain = load_model(folder / f"xception{suffix}")
    assert not np.allclose(predict_probabilities(plain, x), keras_probabilities(model, x), atol=1e-3)


def test_the_sidecar_records_the_contract_and_options_override_it(xception, tmp_path):
    model, folder = xception
    net = load_model(folder / "xception.keras", input_scale=(-1, 1), classes="fer2013")
    save_keras_model(net, tmp_path / "copy.keras")
    spec = json.loads(keras_sidecar(tmp_path / "copy.keras").read_text())
    assert spec["input_scale"] == [-1.0, 1.0] and spec["classes"] == FER2013_ORDER
    again = load_model(tmp_path / "copy.keras")             # nothing to say: the sidecar says it
    x = some_faces()
    np.testing.assert_allclose(predict_probabilities(again, x), keras_probabilities(model, x), atol=1e-5)
    assert load_model(tmp_path / "copy.keras", input_scale=(0, 1)).input_scale == (0.0, 1.0)
    with pytest.raises(ValueError, match="input scale must be two finite numbers LOW < HIGH"):
        load_model(tmp_path / "copy.keras", input_scale=(1, -1))
    with pytest.raises(ValueError, match="classes must be one of alphabetical, fer2013"):
        load_model(tmp_path / "copy.keras", classes="random")
    with pytest.raises(ValueError, match="is a Keras file"):
        load_model(tmp_path / "copy.keras", model="resfer")
    keras_sidecar(tmp_path / "copy.keras").write_text("[1, 2")
    with pytest.raises(ValueError, match="not a JSON object"):
        load_model(tmp_path / "copy.keras")


def test_predict_emotion_and_the_classifier_take_keras_files(xception):
    model, folder = xception
    crop = (np.random.default_rng(2).uniform(0, 255, (130, 110))).astype(np.uint8)
    clf = EmotionClassifier(folder / "xception.keras", input_scale=(-1, 1), classes="fer2013")
    assert clf.input_size == (64, 64)
    # the crop resized to the model's 64x64 (once, in float, as prepare_face does), then scaled to [-1, 1]
    face64 = cv2.resize(crop.astype(np.float32) / 255, (64, 64), interpolation=cv2.INTER_AREA)
    by_keras = model.predict(face64[None, ..., None] * 2 - 1, verbose=0)[0]
    expected = by_keras[[FER2013_ORDER.index(c) for c in CLASSES]]
    np.testing.assert_allclose(clf.predict_proba([crop])[0], expected, atol=1e-5)
    label, probs = predict_emotion(crop, weights=folder / "xception.h5", tta=False, input_scale=(-1, 1),
                                   classes="fer2013")
    assert list(probs.values()) == pytest.approx(list(expected), abs=1e-5)
    assert_decisions_agree([CLASSES.index(label)], expected[None], what="predict_emotion's label")


@needs_data
def test_webcam_runs_a_keras_model(xception, tmp_path):
    _, folder = xception
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), face_frame(fer_faces(1)))
    proc = subprocess.run([sys.executable, str(WEBCAM), "--source", str(image), "--json", "--weights",
                           str(folder / "xception.h5"), "--input-scale", "-1", "1", "--classes", "fer2013"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout.splitlines()[0])
    assert len(line["faces"]) == 1 and line["faces"][0]["label"] in CLASSES
    bad = subprocess.run([sys.executable, str(WEBCAM), "--source", str(image), "--json", "--weights",
                          str(folder / "xception.h5"), "--classes", "shuffled"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 2 and "classes must be one of" in bad.stderr and "Traceback" not in bad.stderr


@pytest.fixture
def cache(fer_cache):
    return fer_cache


run = run_train


def spread_classes(model, faces48, folder):
    """A copy of ``model`` whose last convolution is shifted and scaled so that on faces
    like ``faces48`` every class wins somewhere and most faces are decided (the untrained
    model's biases name one class for every face, which would leave a confusion matrix
    with one column to compare), saved as ``folder/spread.keras``."""
    spread = keras.models.clone_model(model)
    spread.set_weights(model.get_weights())
    last = [layer for layer in spread.layers if layer.weights][-1]
    kernel, bias = last.get_weights()
    big = np.stack([cv2.resize(f[..., 0], (64, 64), interpolation=cv2.INTER_LINEAR) for f in faces48])[..., None]
    log_p = np.log(spread.predict(big * 2 - 1, verbose=0))           # the logits, up to a constant per face
    last.set_weights([30 * kernel, 30 * (bias - log_p.mean(axis=0))])
    spread.save(folder / "spread.keras")
    return spread


@needs_data
def test_train_evaluates_and_fine_tunes_a_keras_model(xception, tmp_path, cache):
    model, folder = xception
    from fer_models.data import load_fer2013
    data = load_fer2013(DATA, cache_dir=cache, progress=False)
    x, y = data["PrivateTest"]
    spread = spread_classes(model, data["PublicTest"][0][:300], tmp_path)
    contract = ["--input-scale", "-1", "1", "--classes", "fer2013"]
    run(["--evaluate", tmp_path / "spread.keras", "--out", tmp_path / "eval", *contract], cache)
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["model"] == model.name
    # the report's predictions are Keras' own, in CLASSES order, wherever Keras' top two
    # probabilities are further apart than the two frameworks' float32 disagreement
    # (near-ties may go either way on another CPU: a handful of the 3,589 faces here)
    expected = keras_probabilities(spread, x)
    assert np.bincount(expected.argmax(1), minlength=7).min() > 0, "test bug: a class no face is decided as"
    assert_confusion_agrees(report["PrivateTest"]["confusion_matrix"], y, expected)

    out = tmp_path / "tuned"
    run(["--init-from", folder / "xception.h5", "--limit", "300", "--epochs", "1", "--batch-size", "32",
         "--out", out, *contract], cache)
    assert (out / "best.keras").exists() and not (out / "best.npz").exists()
    tuned = load_model(out)                                   # best.keras with its sidecar
    assert tuned.input_shape == (64, 64, 1) and tuned.input_scale == (-1.0, 1.0)
    assert tuned.classes == tuple(FER2013_ORDER)
    reloaded = keras.models.load_model(out / "best.keras")    # and Keras opens what was trained here
    x8 = x[:8]
    np.testing.assert_allclose(predict_probabilities(tuned, x8), keras_probabilities(reloaded, x8), atol=1e-5)
    # a resumed run rebuilds the imported model from --init-from, then its checkpoint
    run(["--resume", out, "--epochs", "2"], cache)
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]


def test_export_writes_onnx_and_keras_with_the_input_contract(tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    from fer_models.ensemble import Ensemble, save_ensemble
    from fer_models.predict import model_input
    source = tmp_path / "eq.npz"                               # a model with a preprocessing to carry
    model = fer_models.build("mini", seed=0)
    model.preprocessing = "equalize"
    save_model(model, source)
    net = load_model(source)
    train.main(["--export", str(source), str(tmp_path / "fer.onnx")])
    assert "preprocessing equalize" in capsys.readouterr().out
    proto = onnx.load(tmp_path / "fer.onnx")
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["preprocessing"] == "equalize" and json.loads(meta["classes"]) == list(CLASSES)
    x = some_faces(4)
    session = ort.InferenceSession(str(tmp_path / "fer.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": model_input(net, x)})[0],
                               predict_probabilities(net, x), atol=1e-5)
    train.main(["--export", str(source), str(tmp_path / "fer.keras")])
    keras_model = keras.models.load_model(tmp_path / "fer.keras")
    np.testing.assert_allclose(keras_model.predict(model_input(net, x), verbose=0), predict_probabilities(net, x),
                               atol=1e-5)
    assert load_model(tmp_path / "fer.keras").preprocessing == "equalize"   # from the sidecar
    save_ensemble(Ensemble([net, net]), tmp_path / "ens.npz")
    with pytest.raises(SystemExit, match="is an ensemble of 2"):
        train.main(["--export", str(tmp_path / "ens.npz"), str(tmp_path / "ens.onnx")])
    with pytest.raises(SystemExit, match="must end in .onnx, .keras or .h5"):
        train.main(["--export", str(source), str(tmp_path / "fer.pt")])


def test_a_keras_mini_xception_goes_on_to_onnx(xception, tmp_path):
    """Keras -> tinycnn -> ONNX: onnxruntime gives what Keras gives, on real faces when present."""
    import onnxruntime as ort

    from tinycnn.io import export_onnx, load_keras
    model, folder = xception
    net = load_keras(folder / "xception.keras")
    export_onnx(net, tmp_path / "xception.onnx")
    files = sorted((DATA / "test" / "happy").glob("PublicTest_*.png"))[:4] if DATA.exists() else []
    faces48 = (np.stack([cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]).astype(np.float32) / 255 if files
               else smooth_random_images(4)[..., 0])
    x = np.stack([cv2.resize(f, (64, 64)) for f in faces48])[..., None] * 2 - 1
    session = ort.InferenceSession(str(tmp_path / "xception.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x})[0], model.predict(x, verbose=0), atol=1e-5)
