"""Issue 26's fold-bias bug through the file formats: a model whose every Conv2D and
Dense before a BatchNormalization has a random non-zero bias, and every
BatchNormalization its own non-default epsilon (``test_mutants_fold.chain``), saved for
Keras and exported to ONNX. Keras and onnxruntime, which fold nothing of tinycnn's,
must compute what tinycnn's folded paths (``predict``, the inference copy) compute, and
the model read back must carry the epsilons and predict the same."""
from __future__ import annotations

import numpy as np
import pytest

import tinycnn as tc
from test_mutants_fold import chain
from tinycnn.layers import BatchNormalization
from tinycnn.plan import fold

ATOL = 1e-4      # float32 on both sides, outputs of order 10


def inputs():
    return np.random.default_rng(5).random((fold.FOLD_MIN_BATCH + 1, 8, 8, 2), dtype=np.float32)


def epsilons(model):
    return [layer.epsilon for layer in model.all_layers() if isinstance(layer, BatchNormalization)]


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_keras_round_trip_of_a_folded_model(tmp_path, ext):
    keras = pytest.importorskip("keras")
    from tinycnn.io import load_keras, save_keras
    model, x = chain(), inputs()
    expected = model.predict(x)                     # folded (and the copy, for one image)
    with tc.no_grad():
        np.testing.assert_allclose(model.inference_copy()(x[:1]).numpy(), expected[:1], rtol=0, atol=ATOL)
    path = tmp_path / f"chain{ext}"
    save_keras(model, path, softmax=False)
    theirs = np.asarray(keras.models.load_model(path)(x, training=False))
    np.testing.assert_allclose(theirs, expected, rtol=0, atol=ATOL, err_msg=f"Keras on {path.name}")
    back = load_keras(path)
    assert epsilons(back) == pytest.approx(epsilons(model), rel=1e-6)
    np.testing.assert_allclose(back.predict(x), expected, rtol=0, atol=ATOL, err_msg=f"{path.name} read back")


def test_onnx_export_of_a_folded_model(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from tinycnn.io.onnx import export_onnx
    model, x = chain(), inputs()
    expected = model.predict(x)
    path = tmp_path / "chain.onnx"
    export_onnx(model, path, softmax=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    run = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for n in (1, len(x)):
        got = run.run(None, {"input": x[:n]})[0]
        np.testing.assert_allclose(got, expected[:n], rtol=0, atol=ATOL, err_msg=f"onnxruntime, {n} images")
