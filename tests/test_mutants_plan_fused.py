"""Checks of tinycnn/plan/fused.py that its mutation run (tests/mutation/run.sh) showed
missing: which kernels Conv2DMaxPoolFn calls (the convolution's output z is kept only
where backward will need it), the input's gradient through frozen weights, the paddings
of a non-square input, and Conv2D(relu) -> BatchNormalization in training mode without
gradient recording. Each fused run is compared with the layers called one by one."""
from __future__ import annotations

import numpy as np
import pytest

import tinycnn as tc
from helpers import assert_close, random_weights
from tinycnn.layers import BatchNormalization, Conv2D, MaxPool2D
from tinycnn.plan import fold, fused

RTOL, ATOL = 1e-4, 1e-5


def run(model, x, fused_run, training, x_grad=True, seed=0):
    """(output, x's gradient, {weight: gradient}) of ``sum(out * g)`` for a random g: the
    fused run (``run_layers``) or the layers one by one."""
    for p in model.parameters():
        p.grad = None
    xt = tc.Tensor(x, requires_grad=x_grad)
    if fused_run:
        out = fold.run_layers(model.layers, xt, training)
    else:
        out = xt
        for layer in model.layers:
            out = layer(out, training=training)
    out.backward(np.random.default_rng(seed).standard_normal(out.shape).astype(np.float32))
    return out.numpy(), xt.grad, {k: w.grad for k, w in model.named_weights().items() if w.requires_grad}


def assert_same_run(label, got, expected):
    (out, dx, dw), (out_e, dx_e, dw_e) = got, expected
    assert_close(label, "output", out, out_e, RTOL, ATOL)
    if dx_e is None:
        assert dx is None, f"{label}: the input's gradient was not asked for, got one"
    else:
        assert_close(label, "gradient of the input", dx, dx_e, RTOL, ATOL)
    assert sorted(dw) == sorted(dw_e)
    for k in dw_e:
        assert_close(label, f"gradient of {k}", dw[k], dw_e[k], RTOL, ATOL)


def conv_pool(input_shape=(6, 7, 2), **conv):
    model = tc.Sequential([Conv2D(3, 3, **{"padding": "same", "activation": "relu", **conv}), MaxPool2D()],
                          input_shape=input_shape, seed=1)
    return random_weights(model, 2)


@pytest.mark.parametrize("algorithm, x_grad, pooled_while_convolving", [
    ("im2col", True, False),     # backward needs z's im2col columns for the input's gradient: keep z
    ("im2col", False, True),     # a first layer: the weights' gradient comes from the pooled gradient
    ("winograd", True, True),    # Winograd keeps nothing of its own for backward
    ("winograd", False, True)])
def test_conv_maxpool_keeps_the_convolutions_output_only_where_backward_needs_it(monkeypatch, algorithm, x_grad,
                                                                                 pooled_while_convolving):
    calls = {"conv2d_maxpool": 0, "conv2d": 0}
    chosen = []
    for name in calls:
        original = getattr(fused.K, name)
        monkeypatch.setattr(fused.K, name, lambda *a, _n=name, _f=original, **k: calls.__setitem__(_n, calls[_n] + 1)
                            or _f(*a, **k))
    original_choose = fused.K.choose_algorithm
    monkeypatch.setattr(fused.K, "choose_algorithm", lambda *a, **k: chosen.append((a, k)) or original_choose(*a, **k))
    model = conv_pool()
    conv = model.layers[0]
    x = np.random.default_rng(3).random((2, 6, 7, 2), dtype=np.float32)
    with tc.use_conv_algorithm(algorithm):
        expected = run(model, x, False, True, x_grad)
        for name in calls:
            calls[name] = 0
        chosen.clear()
        got = run(model, x, True, True, x_grad)
    label = f"Conv2D + MaxPool2D by {algorithm}, input gradient {x_grad}"
    assert calls["conv2d_maxpool"] == int(pooled_while_convolving), f"{label}: {calls}"
    assert calls["conv2d"] == int(not pooled_while_convolving), f"{label}: {calls}"
    assert chosen[0] == ((x.shape, conv.kernel.shape, (1, 1), conv._pads(6, 7)), {}), f"{label}: {chosen[0]}"
    assert_same_run(label, got, expected)


def test_conv_maxpool_gives_the_inputs_gradient_through_frozen_weights():
    """A saliency map through frozen layers: the input needs a gradient, the weights none."""
    model = conv_pool()
    for w in model.layers[0].weights.values():
        w.requires_grad = False
    x = np.random.default_rng(4).random((2, 6, 7, 2), dtype=np.float32)
    for algorithm in ("im2col", "winograd"):
        with tc.use_conv_algorithm(algorithm):
            got, expected = run(model, x, True, False), run(model, x, False, False)
        assert got[1] is not None, f"{algorithm}: no gradient for the input"
        assert_same_run(f"frozen Conv2D + MaxPool2D by {algorithm}", got, expected)
        assert all(w.grad is None for w in model.layers[0].weights.values())


def test_conv_maxpool_pads_a_non_square_input_along_each_axis():
    """'same' padding of a strided convolution differs along height and width here (7 -> (1, 1),
    10 -> (0, 1)), and the channels (5) are neither: each must come from its own axis."""
    model = conv_pool(input_shape=(7, 10, 5), strides=2)
    x = np.random.default_rng(5).random((2, 7, 10, 5), dtype=np.float32)
    for training in (True, False):
        got, expected = run(model, x, True, training), run(model, x, False, training)
        assert got[0].shape == (2, 2, 2, 3)
        assert_same_run(f"strided Conv2D + MaxPool2D on 7x10, training={training}", got, expected)


def test_conv_relu_batchnorm_in_training_mode_without_gradients():
    """Training mode under no_grad (statistics gathered without a graph) runs the fused
    Conv2DBatchNormFn too: the batch's normalisation and the moving averages of the layers
    one by one."""
    x = np.random.default_rng(6).random((3, 6, 6, 2), dtype=np.float32)
    results = []
    for fused_run in (True, False):
        model = random_weights(tc.Sequential([Conv2D(4, 3, activation="relu"), BatchNormalization(epsilon=0.1)],
                                             input_shape=(6, 6, 2), seed=1), 7)
        with tc.no_grad():
            if fused_run:
                out = fold.run_layers(model.layers, tc.Tensor(x), True)
            else:
                out = model.layers[1](model.layers[0](tc.Tensor(x), training=True), training=True)
        results.append((out.numpy(), model.get_weights()))
    (out, weights), (out_e, weights_e) = results
    assert_close("Conv2D(relu) + BN, training under no_grad", "output", out, out_e, RTOL, ATOL)
    for k in weights_e:
        assert_close("Conv2D(relu) + BN, training under no_grad", k, weights[k], weights_e[k], RTOL, ATOL)


def conv_batchnorm(input_shape=(6, 6, 2), **conv):
    model = tc.Sequential([Conv2D(4, 3, **{"padding": "same", "activation": "relu", **conv}),
                           BatchNormalization(epsilon=0.1)], input_shape=input_shape, seed=1)
    return random_weights(model, 8)


def test_conv_relu_batchnorm_gives_the_inputs_gradient_through_a_frozen_convolution():
    """Training a BatchNormalization after a frozen Conv2D(relu), with the input's gradient
    asked for too: the convolution's backward must still give it."""
    model = conv_batchnorm()
    for w in model.layers[0].weights.values():
        w.requires_grad = False
    x = np.random.default_rng(9).random((3, 6, 6, 2), dtype=np.float32)
    got, expected = run(model, x, True, True), run(model, x, False, True)
    assert got[1] is not None, "no gradient for the input"
    assert sorted(got[2]) == ["batch_normalization/beta", "batch_normalization/gamma"], sorted(got[2])
    assert_same_run("frozen Conv2D(relu) + BN in training", got, expected)


def test_conv_relu_batchnorm_pads_a_non_square_input_along_each_axis():
    model = conv_batchnorm(input_shape=(7, 10, 5), strides=2)
    x = np.random.default_rng(10).random((3, 7, 10, 5), dtype=np.float32)
    got, expected = run(model, x, True, True), run(model, x, False, True)
    assert got[0].shape == (3, 4, 5, 4)
    assert_same_run("strided Conv2D(relu) + BN on 7x10 in training", got, expected)


def test_conv_then_batchnorm_refuses_a_convolution_without_relu():
    conv, bn = Conv2D(4, 3, name="plain"), BatchNormalization()
    tc.Sequential([conv, bn], input_shape=(5, 5, 1))
    with pytest.raises(ValueError, match=r"^Conv2D 'plain': conv_then_batchnorm fuses a ReLU convolution's "
                                         r"epilogue, this layer's activation is 'linear'$"):
        fused.conv_then_batchnorm(conv, bn, tc.Tensor(np.ones((2, 5, 5, 1), np.float32)))


@pytest.mark.parametrize("pair", ["Conv2D + MaxPool2D", "Conv2D(relu) + BatchNormalization"])
def test_the_fused_convolutions_hand_their_kept_columns_to_backward(monkeypatch, pair):
    """A narrow im2col convolution (K = 3 x 3 x 2 = 18) keeps its column matrix in the fused
    forward, and the fused backward hands it to ``conv2d_grads``, which then multiplies it
    rather than gather x again. Kills ``Conv2DMaxPoolFn.forward__mutmut_43`` and
    ``backward__mutmut_30``, ``_38``, and ``Conv2DBatchNormFn.forward__mutmut_50`` and
    ``backward__mutmut_36``, ``_44`` (the columns dropped on the way: the same numbers,
    gathered twice)."""
    handed = []
    original = fused.K.conv2d_grads
    monkeypatch.setattr(fused.K, "conv2d_grads", lambda *a, **k: handed.append(k.get("cols")) or original(*a, **k))
    model = conv_pool() if pair.endswith("MaxPool2D") else conv_batchnorm((6, 7, 2))
    x = np.random.default_rng(4).random((2, 6, 7, 2), dtype=np.float32)
    with tc.use_backend("numba"), tc.use_conv_algorithm("im2col"):
        expected = run(model, x, False, True)          # Conv2DFn hands its columns on too
        assert len(handed) == 1 and handed[0] is not None, f"{pair}, layer by layer: {handed}"
        handed.clear()
        got = run(model, x, True, True)
    assert len(handed) == 1 and handed[0] is not None, f"{pair}: columns handed to backward: {handed}"
    assert handed[0].shape == (x.shape[0] * 6 * x.shape[2], 18), handed[0].shape
    assert_same_run(pair, got, expected)
