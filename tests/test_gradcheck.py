"""Numerical gradient checks: every layer, every input, every parameter, both backends.

Method (see ``helpers.numerical_gradients``): the layer's math is re-implemented in
float64 (``reference64.py``); its gradient of ``sum(y * g)`` for a *random* upstream
``g`` is taken by central differences (step 1e-6); tinycnn's float32 output and
backward gradients must match to RTOL = 1e-4. Inputs are drawn away from kinks:
ReLU inputs at least 1e-3 from zero, max-pool windows with no two values closer
than 1e-3 (``away_from_kinks``; max-pool inputs are permutations of spaced values).

Shapes come from hypothesis (derandomised: the same examples every run) on top of an
explicit grid of strides and paddings, so each stride/padding pair is always covered;
``@example`` pins batch size 1 with odd sizes.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import reference64 as R
import tinycnn as tc
from helpers import (away_from_kinks, check_against_reference, describe, distinct_values,
                     numerical_gradients, random_array, upstream_like)
from tinycnn import Tensor
from tinycnn.layers import (Activation, BatchNormalization, Conv2D, Conv2DTranspose, Dense, Dropout,
                            Flatten, GlobalAveragePooling2D, MaxPooling2D, ReLU, Residual)

FEW = settings(max_examples=6, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _named_weights(module):
    """{name: Tensor} of a built layer or model (``layer/weight`` inside a model)."""
    if isinstance(module, tc.Sequential):
        return module.named_weights()
    return dict(module.weights)


def gradcheck_layer(label, module, ref, draw, rng, training=False):
    """Numerically check ``module`` (a built layer or model) against ``ref``.

    Args:
        draw: ``draw(rng) -> {"input": x, weight_name: value, ...}``, float32; every
            trainable weight must be drawn (so every parameter is checked); a
            non-trainable one drawn is loaded and held constant.
        ref: ``ref(**arrays) -> y`` in float64, same keys as ``draw``.
    """
    arrays = away_from_kinks(draw, ref, rng)
    x = arrays["input"]
    weights = _named_weights(module)
    trainable = {k for k, w in weights.items() if w.requires_grad}
    missing = trainable - set(arrays)
    assert not missing, f"test bug: {label} has parameters {sorted(missing)} the test does not check"
    for name, value in arrays.items():
        if name != "input":
            assert weights[name].shape == value.shape, f"test bug: {label} {name} shape"
            weights[name].data = value.copy()

    constants = {k: np.float64(v) if np.ndim(v) == 0 else v.astype(np.float64)
                 for k, v in arrays.items() if k != "input" and k not in trainable}
    varying = {k: v for k, v in arrays.items() if k == "input" or k in trainable}

    def ref_varying(**a):
        return ref(**a, **constants)

    g = upstream_like(rng, np.shape(ref_varying(**{k: v.astype(np.float64) for k, v in varying.items()})))
    expected, grads = numerical_gradients(ref_varying, varying, g)

    xt = Tensor(x, requires_grad=True)
    tensors = {"input": xt, **{k: weights[k] for k in varying if k != "input"}}
    mode = "training" if training else "inference"
    check_against_reference(f"{label} on input {x.shape} ({mode})", lambda: module(xt, training=training),
                            tensors, expected, grads, g)


# -- convolution ------------------------------------------------------------------------------
def gradcheck_convolution(layer_type, reference, filters, input_shape, kernel_shape, seed, **settings):
    """``layer_type(filters, **settings)`` (Conv2D or Conv2DTranspose: a kernel and, with
    ``use_bias``, a bias) against ``reference(input, kernel, bias, strides, padding,
    activation)`` in float64. The two layers' kernels differ in layout: ``kernel_shape``
    is (kh, kw, in, out) for Conv2D, (kh, kw, out, in) for Conv2DTranspose."""
    layer = layer_type(filters, **settings)
    layer.ensure_built(input_shape[1:])

    def draw(rng):
        arrays = {"input": random_array(rng, input_shape), "kernel": random_array(rng, kernel_shape, 0.5)}
        if settings["use_bias"]:
            arrays["bias"] = random_array(rng, (filters,), 0.5)
        return arrays

    def ref(input, kernel, bias=None):
        return reference(input, kernel, bias, settings["strides"], settings["padding"], settings["activation"])

    gradcheck_layer(describe(layer_type.__name__, **settings), layer, ref, draw, np.random.default_rng(seed))


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("stride", [1, 2, 3])
@FEW
@given(n=st.sampled_from([1, 2]), h=st.integers(1, 6), w=st.integers(1, 6), c=st.integers(1, 3),
       filters=st.integers(1, 3), kh=st.integers(1, 4), kw=st.integers(1, 4), stride_w=st.integers(1, 3),
       activation=st.sampled_from([None, "relu"]), use_bias=st.booleans(), seed=st.integers(0, 2**16))
@example(n=1, h=5, w=3, c=2, filters=3, kh=3, kw=3, stride_w=1, activation="relu", use_bias=True, seed=1)
def test_conv2d(backend, stride, padding, n, h, w, c, filters, kh, kw, stride_w, activation, use_bias, seed):
    if padding == "valid":  # the kernel must fit
        h, w = h + kh - 1, w + kw - 1
    gradcheck_convolution(Conv2D, R.conv2d, filters, (n, h, w, c), (kh, kw, c, filters), seed,
                          kernel_size=(kh, kw), strides=(stride, stride_w), padding=padding,
                          activation=activation, use_bias=use_bias)


@pytest.mark.parametrize("padding", ["valid", "same"])
@FEW
@given(n=st.sampled_from([1, 2]), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 4),
       filters=st.integers(1, 3), activation=st.sampled_from([None, "relu"]), seed=st.integers(0, 2**16))
def test_conv2d_winograd(backend, padding, n, h, w, c, filters, activation, seed):
    """3x3 stride-1 convolutions by Winograd F(4x4, 3x3): partial tiles, odd sizes."""
    if padding == "valid":
        h, w = h + 2, w + 2
    layer = Conv2D(filters, 3, padding=padding, activation=activation)
    layer.ensure_built((h, w, c))

    def draw(rng):
        return {"input": random_array(rng, (n, h, w, c)), "kernel": random_array(rng, (3, 3, c, filters), 0.5),
                "bias": random_array(rng, (filters,), 0.5)}

    def ref(input, kernel, bias):
        return R.conv2d(input, kernel, bias, (1, 1), padding, activation)

    with tc.use_conv_algorithm("winograd"):
        gradcheck_layer(describe("Conv2D", kernel_size=(3, 3), padding=padding, activation=activation) + " winograd",
                        layer, ref, draw, np.random.default_rng(seed))


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("stride", [1, 2, 3])
@FEW
@given(n=st.sampled_from([1, 2]), h=st.integers(1, 4), w=st.integers(1, 4), c=st.integers(1, 3),
       filters=st.integers(1, 3), kh=st.integers(1, 4), kw=st.integers(1, 4), stride_w=st.integers(1, 3),
       activation=st.sampled_from([None, "relu"]), use_bias=st.booleans(), seed=st.integers(0, 2**16))
@example(n=1, h=3, w=2, c=2, filters=2, kh=3, kw=2, stride_w=2, activation="relu", use_bias=True, seed=2)
def test_conv2d_transpose(backend, stride, padding, n, h, w, c, filters, kh, kw, stride_w, activation,
                          use_bias, seed):
    gradcheck_convolution(Conv2DTranspose, R.conv2d_transpose, filters, (n, h, w, c), (kh, kw, filters, c), seed,
                          kernel_size=(kh, kw), strides=(stride, stride_w), padding=padding,
                          activation=activation, use_bias=use_bias)


# -- pooling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("stride", [None, 1, 2, 3])
@FEW
@given(n=st.sampled_from([1, 2]), h=st.integers(1, 6), w=st.integers(1, 6), c=st.integers(1, 3),
       ph=st.integers(1, 3), pw=st.integers(1, 3), seed=st.integers(0, 2**16))
@example(n=1, h=5, w=5, c=1, ph=2, pw=2, seed=3)
def test_maxpool2d(backend, stride, padding, n, h, w, c, ph, pw, seed):
    if padding == "valid":
        h, w = h + ph - 1, w + pw - 1
    layer = MaxPooling2D((ph, pw), strides=stride, padding=padding)
    layer.ensure_built((h, w, c))

    def draw(rng):  # distinct values 2/size apart: no ties
        return {"input": distinct_values(rng, (n, h, w, c), -1.0, 1.0 + 0.01 * n * h * w * c)}

    def ref(input):
        return R.maxpool2d(input, (ph, pw), (stride, stride) if stride else None, padding)

    label = describe("MaxPooling2D", pool_size=(ph, pw), strides=stride, padding=padding)
    gradcheck_layer(label, layer, ref, draw, np.random.default_rng(seed))


@pytest.mark.parametrize("shape", [(1, 3, 5, 2), (2, 4, 3, 3)])
def test_global_average_pooling2d(backend, shape):
    gradcheck_layer(describe("GlobalAveragePooling2D"), GlobalAveragePooling2D(),
                    lambda input: R.global_average_pool(input),
                    lambda rng: {"input": random_array(rng, shape)}, np.random.default_rng(0))


# -- normalisation ----------------------------------------------------------------------------
# (N, H, W, C) after a convolution, (N, C) after a Dense layer; batch size 1 included
# (for 4-D the statistics are still over H*W > 1 values).
BN_SHAPES = [(1, 3, 5, 2), (2, 4, 3, 3), (3, 1, 1, 2), (5, 4), (2, 3)]


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_training(backend, shape):
    c = shape[-1]
    layer = BatchNormalization()
    layer.ensure_built(shape[1:])

    def draw(rng):
        return {"input": random_array(rng, shape, 2.0) + 0.5, "gamma": random_array(rng, (c,)) + 1.0,
                "beta": random_array(rng, (c,))}

    def ref(input, gamma, beta):
        return R.batchnorm_train(input, gamma, beta, layer.epsilon)

    gradcheck_layer(describe("BatchNormalization", epsilon=layer.epsilon), layer, ref, draw,
                    np.random.default_rng(1), training=True)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_then_relu(backend, shape, training):
    """BatchNormalization followed by a ReLU, which a Sequential runs in training as one
    BatchNormReLUFn (the ReLU's mask inside BatchNorm's passes); beta is drawn around 0
    so that each channel has values on both sides of the kink."""
    c = shape[-1]
    model = tc.Sequential([BatchNormalization(), tc.layers.ReLU()])
    model.build(shape[1:])

    def draw(rng):
        return {"input": random_array(rng, shape, 2.0) + 0.5,
                "batch_normalization/gamma": random_array(rng, (c,)) + 1.0,
                "batch_normalization/beta": random_array(rng, (c,), 0.3),
                "batch_normalization/moving_mean": random_array(rng, (c,), 0.2),
                "batch_normalization/moving_variance": rng.uniform(0.5, 2, c).astype(np.float32)}

    def ref(**a):
        bn = "batch_normalization/"
        y = (R.batchnorm_train(a["input"], a[bn + "gamma"], a[bn + "beta"]) if training else
             R.batchnorm_infer(a["input"], a[bn + "gamma"], a[bn + "beta"], a[bn + "moving_mean"],
                               a[bn + "moving_variance"]))
        return R.relu(y)

    gradcheck_layer(describe("Sequential[BatchNormalization, ReLU]", training=training), model, ref, draw,
                    np.random.default_rng(12), training=training)


@pytest.mark.parametrize("shape", BN_SHAPES + [(1, 4)])
def test_batchnorm_inference(backend, shape):
    c = shape[-1]
    layer = BatchNormalization()
    layer.ensure_built(shape[1:])

    def draw(rng):
        return {"input": random_array(rng, shape), "gamma": random_array(rng, (c,)) + 1.0,
                "beta": random_array(rng, (c,)), "moving_mean": random_array(rng, (c,)),
                "moving_variance": rng.uniform(0.2, 2.0, c).astype(np.float32)}

    def ref(input, gamma, beta, moving_mean, moving_variance):
        return R.batchnorm_infer(input, gamma, beta, moving_mean, moving_variance, layer.epsilon)

    gradcheck_layer(describe("BatchNormalization", epsilon=layer.epsilon), layer, ref, draw,
                    np.random.default_rng(2), training=False)


# -- dense and the shape/activation layers ------------------------------------------------------
@pytest.mark.parametrize("activation", [None, "relu", "softmax"])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("n", [1, 3])
def test_dense(backend, activation, use_bias, n):
    features, units = 5, 4
    layer = Dense(units, activation=activation, use_bias=use_bias)
    layer.ensure_built((features,))

    def draw(rng):
        arrays = {"input": random_array(rng, (n, features)), "kernel": random_array(rng, (features, units), 0.5)}
        if use_bias:
            arrays["bias"] = random_array(rng, (units,), 0.5)
        return arrays

    def ref(input, kernel, bias=None):
        return R.dense(input, kernel, bias, activation)

    gradcheck_layer(describe("Dense", units=units, activation=activation, use_bias=use_bias), layer, ref,
                    draw, np.random.default_rng(n))


@pytest.mark.parametrize("shape", [(1, 3, 2, 2), (2, 5), (2, 2, 3)])
def test_flatten(backend, shape):
    gradcheck_layer("Flatten()", Flatten(), lambda input: R.flatten(input), lambda rng: {"input": random_array(rng, shape)},
                    np.random.default_rng(0))


@pytest.mark.parametrize("activation", ["relu", "softmax", "linear"])
def test_activation(backend, activation):
    refs = {"relu": R.relu, "softmax": R.softmax, "linear": lambda input: input}
    gradcheck_layer(describe("Activation", activation=activation), Activation(activation),
                    lambda input: refs[activation](input),
                    lambda rng: {"input": random_array(rng, (2, 3, 4))}, np.random.default_rng(0))


def test_relu_layer(backend):
    gradcheck_layer("ReLU()", ReLU(), lambda input: R.relu(input),
                    lambda rng: {"input": random_array(rng, (2, 3, 3, 2))}, np.random.default_rng(0))


@pytest.mark.parametrize("training", [False, True])
def test_dropout(backend, training):
    """Training: a fixed mask (the layer's generator is rewound before every call), so
    y = x * mask / (1 - rate) is differentiable and checked like any other layer."""
    rate, shape = 0.4, (3, 4, 5)
    layer = Dropout(rate, seed=7)
    layer.ensure_built(shape[1:])
    rewind = layer.rng.bit_generator.state
    mask = layer(np.ones(shape, np.float32), training=True).data != 0
    assert 0 < mask.mean() < 1

    class Rewound:  # calls the layer with its generator rewound: the same mask each time
        weights = {}

        def __call__(self, x, training):
            layer.rng.bit_generator.state = rewind
            return layer(x, training=training)

    def ref(input):  # inference: the identity
        return input * mask / (1 - rate) if training else input

    gradcheck_layer(describe("Dropout", rate=rate), Rewound(), ref,
                    lambda rng: {"input": random_array(rng, shape)}, np.random.default_rng(0), training)


# -- composites: residual blocks and a whole model -------------------------------------------------
def test_residual_identity_shortcut(backend):
    """y = relu(conv(relu(conv(x))) + x): gradients reach x along both paths."""
    model = tc.Sequential([Residual([Conv2D(3, 3, padding="same", activation="relu"),
                                     Conv2D(3, 3, padding="same")])])
    model.build((4, 5, 3))

    def draw(rng):
        return {"input": random_array(rng, (2, 4, 5, 3)),
                "conv2d/kernel": random_array(rng, (3, 3, 3, 3), 0.4), "conv2d/bias": random_array(rng, (3,), 0.3),
                "conv2d_1/kernel": random_array(rng, (3, 3, 3, 3), 0.4), "conv2d_1/bias": random_array(rng, (3,), 0.3)}

    def ref(**a):
        y = R.conv2d(a["input"], a["conv2d/kernel"], a["conv2d/bias"], padding="same", activation="relu")
        y = R.conv2d(y, a["conv2d_1/kernel"], a["conv2d_1/bias"], padding="same")
        return R.relu(y + a["input"])

    gradcheck_layer("Residual([Conv2D(relu), Conv2D]) identity shortcut", model, ref, draw,
                    np.random.default_rng(4))


@pytest.mark.parametrize("training", [True, False])
def test_residual_projection_shortcut(backend, training):
    """Strided block with BatchNorm, 1x1 strided projection on the shortcut."""
    model = tc.Sequential([Residual([Conv2D(4, 3, strides=2, padding="same", use_bias=False),
                                     BatchNormalization()],
                                    shortcut=[Conv2D(4, 1, strides=2)])])
    model.build((5, 5, 2))

    def draw(rng):
        return {"input": random_array(rng, (2, 5, 5, 2)),
                "conv2d/kernel": random_array(rng, (3, 3, 2, 4), 0.5),
                "batch_normalization/gamma": random_array(rng, (4,)) + 1.0,
                "batch_normalization/beta": random_array(rng, (4,)),
                "batch_normalization/moving_mean": random_array(rng, (4,), 0.2),
                "batch_normalization/moving_variance": rng.uniform(0.5, 2, 4).astype(np.float32),
                "conv2d_1/kernel": random_array(rng, (1, 1, 2, 4), 0.5), "conv2d_1/bias": random_array(rng, (4,))}

    def ref(**a):
        y = R.conv2d(a["input"], a["conv2d/kernel"], None, (2, 2), "same")
        bn = "batch_normalization/"
        y = (R.batchnorm_train(y, a[bn + "gamma"], a[bn + "beta"]) if training else
             R.batchnorm_infer(y, a[bn + "gamma"], a[bn + "beta"], a[bn + "moving_mean"], a[bn + "moving_variance"]))
        s = R.conv2d(a["input"], a["conv2d_1/kernel"], a["conv2d_1/bias"], (2, 2))
        return R.relu(y + s)

    gradcheck_layer("Residual([Conv2D(strides=2), BN], shortcut=[Conv2D(1, strides=2)])", model, ref, draw,
                    np.random.default_rng(5), training=training)


@pytest.mark.parametrize("training", [True, False])
def test_small_model(backend, training):
    """conv(relu) -> BN -> maxpool -> flatten -> dense: every parameter of a Sequential."""
    model = tc.Sequential([Conv2D(3, 3, padding="same", activation="relu"), BatchNormalization(),
                           MaxPooling2D(2), Flatten(), Dense(3)])
    model.build((5, 4, 2))

    def draw(rng):
        return {"input": random_array(rng, (2, 5, 4, 2)),
                "conv2d/kernel": random_array(rng, (3, 3, 2, 3), 0.5), "conv2d/bias": random_array(rng, (3,), 0.3),
                "batch_normalization/gamma": random_array(rng, (3,)) + 1.0,
                "batch_normalization/beta": random_array(rng, (3,)),
                "batch_normalization/moving_mean": random_array(rng, (3,), 0.2),
                "batch_normalization/moving_variance": rng.uniform(0.5, 2, 3).astype(np.float32),
                "dense/kernel": random_array(rng, (12, 3), 0.5), "dense/bias": random_array(rng, (3,))}

    def ref(**a):
        y = R.conv2d(a["input"], a["conv2d/kernel"], a["conv2d/bias"], padding="same", activation="relu")
        bn = "batch_normalization/"
        y = (R.batchnorm_train(y, a[bn + "gamma"], a[bn + "beta"]) if training else
             R.batchnorm_infer(y, a[bn + "gamma"], a[bn + "beta"], a[bn + "moving_mean"], a[bn + "moving_variance"]))
        y = R.flatten(R.maxpool2d(y, (2, 2)))
        return R.dense(y, a["dense/kernel"], a["dense/bias"])

    gradcheck_layer("Sequential[Conv2D(relu), BN, MaxPool2D, Flatten, Dense]", model, ref, draw,
                    np.random.default_rng(6), training=training)


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("pool, strides, padding", [(2, None, "valid"), (3, 2, "same"), ((2, 3), 1, "valid")])
def test_conv_then_maxpool(backend, activation, pool, strides, padding):
    """Conv2D followed by MaxPooling2D, which a Sequential runs as one Conv2DMaxPoolFn
    (pooling before the bias and ReLU): tiling, overlapping and padded windows."""
    model = tc.Sequential([Conv2D(3, 3, padding="same", activation=activation),
                           MaxPooling2D(pool, strides=strides, padding=padding)])
    model.build((6, 7, 2))

    def draw(rng):
        return {"input": random_array(rng, (2, 6, 7, 2)), "conv2d/kernel": random_array(rng, (3, 3, 2, 3), 0.5),
                "conv2d/bias": random_array(rng, (3,), 0.3) - 0.5}   # many windows below 0

    def ref(**a):
        # relu(maxpool(z)), the same function as maxpool(relu(z)), written so that a window
        # whose values are all negative is no tie at 0 to the kink check: draws keep them,
        # and the ReLU's mask after pooling is checked too
        z = R.conv2d(a["input"], a["conv2d/kernel"], a["conv2d/bias"], padding="same")
        ps = pool if isinstance(pool, tuple) else (pool, pool)
        y = R.maxpool2d(z, ps, (strides, strides) if strides else None, padding)
        return R.relu(y) if activation == "relu" else y

    label = describe("Sequential[Conv2D, MaxPooling2D]", activation=activation, pool=pool, strides=strides,
                     padding=padding)
    gradcheck_layer(label, model, ref, draw, np.random.default_rng(9), training=True)


@pytest.mark.parametrize("algorithm", ["im2col", "winograd"])
def test_conv_then_global_average_pooling(backend, algorithm):
    """conv(relu) straight into GAP (as updown ends): GAP's gradient is a broadcast view."""
    model = tc.Sequential([Conv2D(4, 3, padding="same", activation="relu"), GlobalAveragePooling2D(), Dense(3)])
    model.build((6, 5, 3))

    def draw(rng):
        return {"input": random_array(rng, (2, 6, 5, 3)), "conv2d/kernel": random_array(rng, (3, 3, 3, 4), 0.5),
                "conv2d/bias": random_array(rng, (4,), 0.3), "dense/kernel": random_array(rng, (4, 3), 0.5),
                "dense/bias": random_array(rng, (3,))}

    def ref(**a):
        y = R.conv2d(a["input"], a["conv2d/kernel"], a["conv2d/bias"], padding="same", activation="relu")
        return R.dense(R.global_average_pool(y), a["dense/kernel"], a["dense/bias"])

    with tc.use_conv_algorithm(algorithm):
        gradcheck_layer(f"Sequential[Conv2D(relu), GAP, Dense] ({algorithm})", model, ref, draw,
                        np.random.default_rng(8), training=True)


# -- the basic ops of tinycnn.tensor ---------------------------------------------------------------
def _positive(rng, shape):
    return rng.uniform(0.5, 2.0, shape).astype(np.float32)


def _away_from_zero(rng, shape):
    return (rng.choice([-1, 1], shape) * rng.uniform(0.5, 2.0, shape)).astype(np.float32)


C = np.array([[0.5, -1.5, 2.0, 3.0]], np.float32)  # a constant ndarray operand, (1, 4)

# name, tinycnn op, float64 reference, {argument: (shape, sampler)}
OPS = [
    ("a + b, (3, 4) + (4,)", lambda a, b: a + b, lambda a, b: a + b, {"a": (3, 4), "b": (4,)}),
    ("a + b, (2, 1, 4) + (3, 1)", lambda a, b: a + b, lambda a, b: a + b, {"a": (2, 1, 4), "b": (3, 1)}),
    ("a - b, (3, 1) - (1, 4)", lambda a, b: a - b, lambda a, b: a - b, {"a": (3, 1), "b": (1, 4)}),
    ("a * b, (2, 3, 4) * (3, 1)", lambda a, b: a * b, lambda a, b: a * b, {"a": (2, 3, 4), "b": (3, 1)}),
    ("a / b, (3, 4) / (1, 4)", lambda a, b: a / b, lambda a, b: a / b, {"a": (3, 4), "b": ((1, 4), _away_from_zero)}),
    ("a / b, (4,) / (2, 3, 1)", lambda a, b: a / b, lambda a, b: a / b, {"a": (4,), "b": ((2, 3, 1), _away_from_zero)}),
    ("ndarray + a", lambda a: C + a, lambda a: C + a, {"a": (3, 4)}),
    ("ndarray - a", lambda a: C - a, lambda a: C - a, {"a": (3, 4)}),
    ("ndarray * a", lambda a: C * a, lambda a: C * a, {"a": (2, 1)}),
    ("2 / a", lambda a: 2.0 / a, lambda a: 2.0 / a, {"a": ((3, 4), _away_from_zero)}),
    ("-a", lambda a: -a, lambda a: -a, {"a": (2, 3)}),
    ("a @ b, (3, 4) @ (4, 5)", lambda a, b: a @ b, lambda a, b: a @ b, {"a": (3, 4), "b": (4, 5)}),
    ("a @ b, (2, 3, 4) @ (4, 2)", lambda a, b: a @ b, lambda a, b: a @ b, {"a": (2, 3, 4), "b": (4, 2)}),
    ("a.sum()", lambda a: a.sum(), lambda a: a.sum(), {"a": (2, 3)}),
    ("a.sum(axis=0)", lambda a: a.sum(axis=0), lambda a: a.sum(axis=0), {"a": (2, 3, 4)}),
    ("a.sum(axis=(0, 2), keepdims=True)", lambda a: a.sum(axis=(0, 2), keepdims=True),
     lambda a: a.sum(axis=(0, 2), keepdims=True), {"a": (2, 3, 4)}),
    ("a.sum(axis=-1)", lambda a: a.sum(axis=-1), lambda a: a.sum(axis=-1), {"a": (2, 3, 4)}),
    ("a.sum(axis=(0, -1))", lambda a: a.sum(axis=(0, -1)), lambda a: a.sum(axis=(0, -1)), {"a": (2, 3, 4)}),
    ("a.mean()", lambda a: a.mean(), lambda a: a.mean(), {"a": (2, 3)}),
    ("a.mean(axis=1)", lambda a: a.mean(axis=1), lambda a: a.mean(axis=1), {"a": (2, 3, 4)}),
    ("a.mean(axis=(1, 2))", lambda a: a.mean(axis=(1, 2)), lambda a: a.mean(axis=(1, 2)), {"a": (2, 3, 4, 2)}),
    ("a.mean(axis=(-3, -1))", lambda a: a.mean(axis=(-3, -1)), lambda a: a.mean(axis=(-3, -1)), {"a": (2, 3, 4)}),
    ("a.mean(axis=-1, keepdims=True)", lambda a: a.mean(axis=-1, keepdims=True),
     lambda a: a.mean(axis=-1, keepdims=True), {"a": (2, 3, 4)}),
    ("a.reshape(4, 6)", lambda a: a.reshape(4, 6), lambda a: a.reshape(4, 6), {"a": (2, 3, 4)}),
    ("a.reshape((-1,))", lambda a: a.reshape((-1,)), lambda a: a.reshape(-1), {"a": (2, 3)}),
    ("a.flatten()", lambda a: a.flatten(), lambda a: a.reshape(2, -1), {"a": (2, 3, 2)}),
    ("relu(a)", lambda a: tc.relu(a), lambda a: R.relu(a), {"a": (3, 4)}),
    ("a.relu()", lambda a: a.relu(), lambda a: R.relu(a), {"a": (3, 4)}),
    ("softmax(a)", lambda a: tc.softmax(a), lambda a: R.softmax(a), {"a": (3, 4)}),
    ("softmax(a, axis=0)", lambda a: tc.softmax(a, axis=0), lambda a: R.softmax(a, 0), {"a": (3, 4)}),
    ("log_softmax(a)", lambda a: tc.log_softmax(a), lambda a: R.log_softmax(a), {"a": (3, 4)}),
    ("log_softmax(a, axis=1)", lambda a: tc.log_softmax(a, axis=1), lambda a: R.log_softmax(a, 1), {"a": (2, 3, 2)}),
    ("a.exp()", lambda a: a.exp(), lambda a: np.exp(a), {"a": (3, 4)}),
    ("a.log()", lambda a: a.log(), lambda a: np.log(a), {"a": ((3, 4), _positive)}),
    ("(a * a + b).log().sum(axis=1)", lambda a, b: (a * a + b).log().sum(axis=1),
     lambda a, b: np.log(a * a + b).sum(axis=1), {"a": (2, 3), "b": ((2, 3), _positive)}),
]


@pytest.mark.parametrize("name, op, ref, args", OPS, ids=[o[0] for o in OPS])
def test_op(backend, name, op, ref, args):
    rng = np.random.default_rng(len(name))

    def draw(rng):
        out = {}
        for arg, spec in args.items():
            shape, sampler = spec if isinstance(spec[0], tuple) else (spec, random_array)
            out[arg] = sampler(rng, shape)
        return out

    arrays = away_from_kinks(draw, ref, rng)
    g = upstream_like(rng, np.shape(ref(**{k: v.astype(np.float64) for k, v in arrays.items()})))
    expected, grads = numerical_gradients(ref, arrays, g)
    tensors = {k: Tensor(v, requires_grad=True) for k, v in arrays.items()}
    check_against_reference(name, lambda: op(**tensors), tensors, expected, grads, g)


# -- the loss --------------------------------------------------------------------------------------
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("class_weights", [None, [0.5, 2.0, 1.0, 3.0]])
@pytest.mark.parametrize("n", [1, 6])
def test_softmax_cross_entropy(backend, label_smoothing, class_weights, n):
    rng = np.random.default_rng(n)
    logits = random_array(rng, (n, 4), 2.0)
    labels = rng.integers(0, 4, n)
    g = upstream_like(rng, ())  # a random scalar, not 1

    def ref(logits):
        return R.softmax_cross_entropy(logits, labels, class_weights, label_smoothing)

    expected, grads = numerical_gradients(ref, {"logits": logits}, g)
    t = Tensor(logits, requires_grad=True)
    label = describe("softmax_cross_entropy", class_weights=class_weights, label_smoothing=label_smoothing)
    check_against_reference(label, lambda: tc.losses.softmax_cross_entropy(t, labels, class_weights, label_smoothing),
                            {"logits": t}, expected, grads, g)
