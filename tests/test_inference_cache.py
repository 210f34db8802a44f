"""``Sequential.predict`` runs the model's inference copy (BatchNorm folded, Dropout left
out, Winograd transforms kept), made at the first call and made again after any change
of a weight: an optimiser step, ``set_weights``, ``load_weights``, a new array assigned,
or an edit in place. Each change below, undetected, would leave predict answering with
the old weights, which every assertion here would see.
"""
from __future__ import annotations

import numpy as np
import pytest

import tinycnn as tc
from tinycnn.layers import (Activation, BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPool2D,
                            Residual)


def model_with_everything(seed=0):
    """Conv2D with a bias -> BatchNorm -> ReLU (folded), Conv2D(relu) -> BatchNorm (in the
    epilogue), a residual block, Dropout, Dense -> BatchNorm: every path the copy changes."""
    model = tc.Sequential([
        Conv2D(8, 3, padding="same"), BatchNormalization(), Activation("relu"),
        Conv2D(8, 3, padding="same", activation="relu"), BatchNormalization(), MaxPool2D(),
        Residual([Conv2D(8, 3, padding="same"), BatchNormalization(), Activation("relu")]),
        Dropout(0.3), Flatten(), Dense(16), BatchNormalization(), Activation("relu"), Dense(5),
    ], input_shape=(12, 12, 2), seed=seed, name="everything")
    rng = np.random.default_rng(seed)
    for layer in model.all_layers():          # nothing trivial: biases, statistics, gamma and beta
        for name, w in layer.weights.items():
            w.data = (rng.uniform(0.5, 1.5, w.shape) if name in ("gamma", "moving_variance")
                      else rng.normal(0, 0.3, w.shape)).astype(np.float32)
    return model


def direct(model, x):
    """The model's own layers one by one, nothing folded or fused: with gradients recorded,
    inference mode runs each layer as it is (``run_layers`` folds only under no_grad)."""
    return model(x, training=False).data


@pytest.fixture
def setting():
    rng = np.random.default_rng(1)
    model = model_with_everything()
    x = rng.random((10, 12, 12, 2), dtype=np.float32)
    return model, x


def assert_follows(model, x, before):
    got = model.predict(x)
    np.testing.assert_allclose(got, direct(model, x), rtol=1e-4, atol=1e-5)
    assert np.abs(got - before).max() > 1e-3, "the change should have changed the outputs"
    return got


def test_predict_is_the_model_and_keeps_its_copy(setting, backend):
    model, x = setting
    first = model.predict(x)
    copy = model._inference[1]
    one = model.predict(x[:1])
    assert model._inference[1] is copy               # nothing changed: the same copy
    assert copy.is_inference_copy and not any(isinstance(l, Dropout) for l in copy.layers)
    expected = direct(model, x)                      # (reads the weights: the next predict makes a new copy)
    np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one, expected[:1], rtol=1e-4, atol=1e-5)


def test_predict_follows_an_optimiser_step(setting):
    model, x = setting
    before = model.predict(x)
    opt = tc.optim.SGD(model.parameters(), lr=0.5)
    y = np.arange(len(x)) % 5
    loss = tc.losses.softmax_cross_entropy(model(x, training=True), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert_follows(model, x, before)


def test_predict_follows_training_statistics(setting):
    """A training-mode forward moves BatchNorm's moving mean and variance, no optimiser involved."""
    model, x = setting
    before = model.predict(x)
    for _ in range(20):
        model(x * 3 + 1, training=True)
    assert_follows(model, x, before)


def test_predict_follows_set_weights_and_load_weights(setting, tmp_path):
    model, x = setting
    other = model_with_everything(seed=5)
    other.predict(x)
    before = model.predict(x)
    model.set_weights(other.get_weights())
    after = assert_follows(model, x, before)
    np.testing.assert_allclose(after, other.predict(x), rtol=1e-5, atol=1e-6)
    model_with_everything(seed=9).save_weights(tmp_path / "w.npz")
    model.load_weights(tmp_path / "w.npz")
    assert_follows(model, x, after)


@pytest.mark.parametrize("where", ["conv bias", "batchnorm epsilon-side variance", "dense kernel", "residual"])
def test_predict_follows_edits_in_place_and_new_arrays(setting, where):
    model, x = setting
    layers = model.all_layers()
    target = {"conv bias": (layers[0], "bias"),
              "batchnorm epsilon-side variance": (layers[4], "moving_variance"),
              "dense kernel": (next(l for l in layers if isinstance(l, Dense)), "kernel"),
              "residual": (next(l for l in layers if isinstance(l, Residual)).block[0], "kernel")}[where]
    layer, name = target
    before = model.predict(x)
    layer.weights[name].data[...] *= 3.0                   # in place
    edited = assert_follows(model, x, before)
    layer.weights[name].data = layer.weights[name].data * 0.1   # a new array
    assert_follows(model, x, edited)


def test_model_call_under_no_grad_is_the_copy_too(setting):
    model, x = setting
    with tc.no_grad():
        got = model(x, training=False).data
        copy = model._inference[1]
        model(x[:2], training=False)
    assert model._inference[1] is copy
    np.testing.assert_allclose(got, direct(model, x), rtol=1e-4, atol=1e-5)
    with tc.no_grad():                     # training mode is never the copy: Dropout and batch statistics
        a, b = model(x, training=True).data, model(x, training=True).data
    assert not np.allclose(a, b)           # two Dropout masks


def test_an_inference_copy_predicts_with_itself(setting):
    model, x = setting
    model.predict(x)
    copy = model.inference_copy()
    np.testing.assert_allclose(copy.predict(x), model.predict(x), rtol=1e-5, atol=1e-6)
    assert getattr(copy, "_inference", None) is None      # no copy of the copy
