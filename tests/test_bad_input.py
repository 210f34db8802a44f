"""Bad input is refused where it enters, with a message naming the layer and the shapes.

Each case asserts on the message's content and that the layer was left untouched
(still unbuilt, or built as before): the error came before any work was done.
"""
from __future__ import annotations

import numpy as np
import pytest

import tinycnn as tc
from tinycnn.layers import (BatchNormalization, Conv2D, Conv2DTranspose, Dense, Flatten,
                            GlobalAveragePooling2D, MaxPooling2D)


def _raises(call, *fragments):
    """Call; expect a ValueError whose message holds every fragment."""
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, f"message {message!r} lacks {fragment!r}"
    return message


def _images(*shape):
    return np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)


# -- wrong rank ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make, kind, name", [(lambda: Conv2D(4, 3), "Conv2D", "conv2d"),
                                              (lambda: Conv2DTranspose(4, 3), "Conv2DTranspose", "conv2d_transpose"),
                                              (lambda: MaxPooling2D(2), "MaxPooling2D", "max_pooling2d"),
                                              (lambda: GlobalAveragePooling2D(), "GlobalAveragePooling2D",
                                               "global_average_pooling2d")])
@pytest.mark.parametrize("shape", [(2, 8, 8), (2, 8, 8, 3, 1)])
def test_image_layers_reject_wrong_rank(backend, make, kind, name, shape):
    layer = make()
    _raises(lambda: layer(_images(*shape)), kind, name, str(shape[1:]), "(batch, height, width, channels)")
    assert not layer.built


def test_dense_rejects_images(backend):
    """The classic: Dense straight after a convolution, without Flatten."""
    layer = Dense(3, name="head")
    _raises(lambda: layer(_images(2, 4, 4, 3)), "Dense", "head", "(4, 4, 3)", "(batch, features)")
    assert not layer.built


def test_model_names_the_offending_layer(backend):
    model = tc.Sequential([Conv2D(4, 3), Dense(3)])  # Flatten forgotten
    _raises(lambda: model(_images(2, 6, 6, 1)), "Dense 'dense'", "(4, 4, 4)")


def test_input_without_batch_axis(backend):
    _raises(lambda: Dense(2)(np.ones(3, np.float32)), "Dense", "batch axis", "(3,)")
    _raises(lambda: Dense(2)(tc.Tensor(np.ones(3))), "Dense", "batch axis", "(3,)")


# -- wrong channel count after build ------------------------------------------------------------------
@pytest.mark.parametrize("make, kind, shape, bad_shape", [
    (lambda: Conv2D(4, 3, name="c1"), "Conv2D 'c1'", (2, 8, 8, 3), (2, 8, 8, 4)),
    (lambda: Conv2DTranspose(4, 3, name="up"), "Conv2DTranspose 'up'", (2, 4, 4, 3), (2, 4, 4, 1)),
    (lambda: Dense(3, name="fc"), "Dense 'fc'", (2, 6), (2, 5)),
    (lambda: BatchNormalization(name="bn"), "BatchNormalization 'bn'", (2, 4, 4, 3), (2, 4, 4, 2)),
])
def test_wrong_channel_count_after_build(backend, make, kind, shape, bad_shape):
    layer = make()
    layer(_images(*shape))
    weights = {k: w.data.copy() for k, w in layer.weights.items()}
    _raises(lambda: layer(_images(*bad_shape)), kind, str(shape[1:]), str(bad_shape[1:]),
            str(shape[-1]), str(bad_shape[-1]))
    assert layer.input_shape == shape[1:]
    for k, w in layer.weights.items():
        np.testing.assert_array_equal(w.data, weights[k], err_msg=f"{kind} {k} changed by a refused input")


def test_model_wrong_channel_count(backend):
    model = tc.Sequential([Conv2D(4, 3), Flatten()], input_shape=(8, 8, 3), name="net")
    _raises(lambda: model(_images(2, 8, 8, 1)), "'net'", "(8, 8, 3)", "(2, 8, 8, 1)")


def test_a_convolution_accepts_another_image_size_after_build(backend):
    """Only the channel count is fixed: a fully convolutional layer takes any size."""
    layer = Conv2D(2, 3, padding="same")
    layer(_images(1, 8, 8, 3))
    assert layer(_images(1, 5, 7, 3)).shape == (1, 5, 7, 2)


# -- non-float, NaN and inf ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.int32, bool])
def test_non_float_input(backend, dtype):
    x = np.zeros((2, 6, 6, 1), dtype)
    layer = Conv2D(2, 3)
    _raises(lambda: layer(x), "Conv2D", "float", np.dtype(dtype).name, "(2, 6, 6, 1)")
    assert not layer.built
    model = tc.Sequential([Conv2D(2, 3)])
    _raises(lambda: model(x), "Sequential", "float", np.dtype(dtype).name, "(2, 6, 6, 1)")
    _raises(lambda: model.predict(x), "float", np.dtype(dtype).name)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_input(backend, bad):
    x = _images(2, 5, 5, 3)
    x[1, 2, 3, 0] = bad
    layer = Conv2D(2, 3, name="first")
    _raises(lambda: layer(x), "Conv2D 'first'", "NaN or inf", "(2, 5, 5, 3)", "(1, 2, 3, 0)")
    assert not layer.built
    model = tc.Sequential([Conv2D(2, 3), Flatten(), Dense(2)])
    _raises(lambda: model(x), "Sequential", "NaN or inf", "(1, 2, 3, 0)")
    _raises(lambda: model.predict(x), "NaN or inf")


# -- a kernel or pool larger than the input --------------------------------------------------------------
def test_kernel_larger_than_input(backend):
    layer = Conv2D(2, 5, name="big")
    _raises(lambda: layer(_images(1, 3, 4, 2)), "Conv2D 'big'", "(5, 5)", "(3, 4)", "(3, 4, 2)")
    assert not layer.built


def test_kernel_larger_than_a_later_input(backend):
    layer = Conv2D(2, 3)
    layer(_images(1, 8, 8, 2))
    _raises(lambda: layer(_images(1, 2, 8, 2)), "Conv2D", "(3, 3)", "(2, 8)")


def test_pool_larger_than_input(backend):
    layer = MaxPooling2D(3, name="pool")
    _raises(lambda: layer(_images(1, 2, 5, 1)), "MaxPooling2D 'pool'", "(3, 3)", "(2, 5)")
    assert not layer.built


def test_same_padding_fits_any_kernel(backend):
    assert Conv2D(1, 5, padding="same")(_images(1, 2, 3, 1)).shape == (1, 2, 3, 1)
    assert MaxPooling2D(3, padding="same")(_images(1, 2, 1, 1)).shape == (1, 1, 1, 1)


def test_model_reports_the_layer_whose_kernel_does_not_fit(backend):
    model = tc.Sequential([MaxPooling2D(2), MaxPooling2D(2), Conv2D(2, 3)])
    _raises(lambda: model(_images(1, 8, 8, 1)), "Conv2D 'conv2d'", "(2, 2)")


# -- bad settings and bad labels --------------------------------------------------------------------------
def test_bad_layer_settings():
    _raises(lambda: Conv2D(4, 3, padding="full"), "Conv2D", "'full'")
    _raises(lambda: Conv2D(4, 0), "Conv2D", "kernel_size", "0")
    _raises(lambda: Conv2D(4, 3, strides=(1, 2, 3)), "Conv2D", "strides")
    _raises(lambda: Conv2D(4, 3, activation="tanh"), "Conv2D", "'tanh'")
    _raises(lambda: Conv2D(0, 3), "Conv2D", "filters")
    _raises(lambda: Dense(0), "Dense", "units")
    _raises(lambda: tc.layers.Dropout(1.0), "Dropout", "rate")
    _raises(lambda: BatchNormalization(momentum=1.5), "BatchNormalization", "momentum")


def test_bad_labels_for_the_loss(backend):
    logits = tc.Tensor(np.zeros((3, 4)), requires_grad=True)
    loss = tc.losses.softmax_cross_entropy
    _raises(lambda: loss(logits, np.array([0, 1, 4])), "labels", "[0, 4)", "4")
    _raises(lambda: loss(logits, np.array([0.0, 1.0, 2.0])), "labels", "float64")
    _raises(lambda: loss(logits, np.array([0, 1])), "labels", "(2,)", "(3, 4)")
    _raises(lambda: loss(tc.Tensor(np.zeros((3, 4, 1))), np.array([0, 1, 2])), "logits", "(3, 4, 1)")
    _raises(lambda: loss(logits, np.array([0, 1, 2]), class_weights=[1.0, 2.0]), "class_weights", "(4,)", "(2,)")
    _raises(lambda: loss(logits, np.array([0, 1, 2]), label_smoothing=1.0), "label_smoothing")
