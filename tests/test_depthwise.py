"""DepthwiseConv2D and SeparableConv2D, on both backends.

1. The three depthwise kernels (forward, input gradient, kernel gradient) against the
   definition written as a float64 loop, one output value at a time, on random shapes,
   strides and asymmetric paddings (hypothesis, derandomised).
2. Numerical gradient checks of both layers: float64 central differences of a float64
   re-implementation, contracted with a *random* upstream gradient (``helpers``), for
   the input and every weight; RTOL = 1e-4.
3. Both layers against their Keras 3 twins with the same weights: output, input
   gradient and every weight gradient (``tf.GradientTape``, random upstream), float32
   on both sides, so RTOL = 2e-4, ATOL = 2e-5 (scaled) as in ``test_vs_tensorflow``.
   Deliberately wrong kernels (Keras' padding split mirrored, the output channels in
   the other order, a kernel gradient 0.1% off) must fail that comparison.
4. Parameter counts, summary and output shapes equal Keras'; initialisers draw from
   Keras' glorot_uniform range.
5. Bad input raises a ValueError that names the layer (or kernel) and the shapes.
6. A small Sequential with SeparableConv2D, BatchNormalization and a Residual block
   trains: its loss falls under Adam.

TensorFlow is imported inside the tests that need it, so the rest runs without it.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

import reference64 as R
import tinycnn as tc
from helpers import (assert_close, away_from_kinks, check_against_reference, describe, numerical_gradients,
                     random_array, upstream_away_from_relu_kinks, upstream_like, window_problems)
from tinycnn import Tensor
from tinycnn import backend as B
from tinycnn.kernels import depthwise as D
from tinycnn.layers import (BatchNormalization, Conv2D, DepthwiseConv2D, GlobalAveragePooling2D, Residual,
                            SeparableConv2D)

SOME = settings(max_examples=12, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FEW = settings(SOME, max_examples=4)


# -- the specification, in float64 -------------------------------------------------------------
def depthwise_loop(x, w, strides, pads, dy=None):
    """The definition, one term at a time: y[n, i, j, c*M + m] = sum_{a, b}
    xp[n, i*SH + a, j*SW + b, c] * w[a, b, c, m]. With ``dy`` also the two gradients
    of sum(y * dy), each term handing its share to the x and the w it read.
    Returns y, or (y, dx, dw); float64, the batch axis vectorised."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    (pt, pb), (pl, pr) = pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    n, h, wd, c = x.shape
    kh, kw, _, mult = w.shape
    ho, wo = (h + pt + pb - kh) // strides[0] + 1, (wd + pl + pr - kw) // strides[1] + 1
    y = np.zeros((n, ho, wo, c * mult))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i, j, ch, m, a, b in np.ndindex(ho, wo, c, mult, kh, kw):
        iy, ix, out = i * strides[0] + a, j * strides[1] + b, ch * mult + m
        y[:, i, j, out] += xp[:, iy, ix, ch] * w[a, b, ch, m]
        if dy is not None:
            dxp[:, iy, ix, ch] += dy[:, i, j, out] * w[a, b, ch, m]
            dw[a, b, ch, m] += np.dot(xp[:, iy, ix, ch], dy[:, i, j, out])
    if dy is None:
        return y
    return y, dxp[:, pt:pt + h, pl:pl + wd], dw


def _pads(h, w, kernel, strides, padding):
    if padding == "valid":
        return (0, 0), (0, 0)
    return R.same_pads(h, kernel[0], strides[0]), R.same_pads(w, kernel[1], strides[1])


def depthwise64(x, kernel, bias=None, strides=(1, 1), padding="valid", activation=None):
    """relu?(depthwise_conv(x, kernel) + bias) in float64, vectorised (the gradient
    checks call it thousands of times); checked against ``depthwise_loop`` below."""
    n, h, w, c = x.shape
    kh, kw, _, mult = kernel.shape
    pads = _pads(h, w, (kh, kw), strides, padding)
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    windows = sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::strides[0], ::strides[1]]
    y = np.einsum("nijcab,abcm->nijcm", windows, kernel)
    y = y.reshape(y.shape[:3] + (c * mult,))
    if bias is not None:
        y = y + bias
    return R.relu(y) if activation == "relu" else y


def separable64(x, depthwise_kernel, pointwise_kernel, bias=None, strides=(1, 1), padding="valid",
                activation=None):
    z = depthwise64(x, depthwise_kernel, None, strides, padding)
    return R.conv2d(z, pointwise_kernel, bias, activation=activation)


# -- 1. the kernels against the definition -----------------------------------------------------------
@st.composite
def depthwise_problems(draw):
    """(x, w, strides, pads, label): w (kh, kw, c, multiplier), any padding below the kernel
    size, on each side."""
    x, k, strides, pads = draw(window_problems(max_channels=3, max_m=3, max_kernel=3, max_size=7))
    return x, k, strides, pads, f"depthwise x {x.shape} w {k.shape} strides {strides} pads {pads}"


@SOME
@given(depthwise_problems(), st.integers(0, 2**16))
def test_kernels_equal_the_definition(backend, problem, seed):
    """float32 kernels (the backend's) against float64 loops: RTOL = ATOL = 1e-5."""
    x, w, strides, pads, label = problem
    y64 = depthwise_loop(x, w, strides, pads)
    dy = random_array(np.random.default_rng(seed), y64.shape)
    _, dx64, dw64 = depthwise_loop(x, w, strides, pads, dy)
    assert_close(label, "depthwise_conv2d", D.depthwise_conv2d(x, w, strides, pads), y64, 1e-5, 1e-5)
    assert_close(label, "depthwise_conv2d_grad_input", D.depthwise_conv2d_grad_input(dy, w, x.shape, strides, pads),
                 dx64, 1e-5, 1e-5)
    assert_close(label, "depthwise_conv2d_grad_weight", D.depthwise_conv2d_grad_weight(x, dy, w.shape, strides, pads),
                 dw64, 1e-5, 1e-5)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (2, 3)])
def test_vectorised_specification_equals_the_loop(padding, strides):
    """The float64 reference the gradient checks differentiate is the definition."""
    rng = np.random.default_rng(3)
    x, w = random_array(rng, (2, 7, 6, 3)).astype(np.float64), random_array(rng, (3, 2, 3, 2)).astype(np.float64)
    pads = _pads(7, 6, (3, 2), strides, padding)
    assert_close(f"depthwise64 {padding} {strides}", "output", depthwise64(x, w, strides=strides, padding=padding),
                 depthwise_loop(x, w, strides, pads), 1e-12, 1e-12)


def test_kernels_accept_non_contiguous_arrays(backend):
    rng = np.random.default_rng(1)
    x = random_array(rng, (2, 9, 8, 6))[:, ::2, 1:, ::2]  # a strided view
    w = random_array(rng, (3, 2, 4, 2))[:, :, 1:, :]
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    pads = ((1, 1), (0, 1))
    y64 = depthwise_loop(x, w, (1, 1), pads)
    dy = random_array(rng, y64.shape)[:, :, :, ::-1]
    _, dx64, dw64 = depthwise_loop(x, w, (1, 1), pads, dy)
    label = "non-contiguous x, w, dy"
    assert_close(label, "depthwise_conv2d", D.depthwise_conv2d(x, w, (1, 1), pads), y64, 1e-5, 1e-5)
    assert_close(label, "grad_input", D.depthwise_conv2d_grad_input(dy, w, x.shape, (1, 1), pads), dx64, 1e-5, 1e-5)
    assert_close(label, "grad_weight", D.depthwise_conv2d_grad_weight(x, dy, w.shape, (1, 1), pads), dw64, 1e-5, 1e-5)


def test_each_kernel_dispatches_between_its_two_implementations():
    for name in ("depthwise_conv2d", "depthwise_conv2d_grad_input", "depthwise_conv2d_grad_weight"):
        kernel = getattr(D, name)
        assert kernel.reference is getattr(D, f"{name}_reference"), f"{name}.reference"
        assert kernel.fast is getattr(D, f"{name}_fast"), f"{name}.fast"


@pytest.mark.parametrize("kind", ["DepthwiseConv2D", "SeparableConv2D"])
def test_layers_call_the_selected_kernel(backend, monkeypatch, kind):
    """Forward and backward go through the depthwise kernels, and only through the
    implementation the backend selects."""
    calls = []

    def recording(name, impl, fn):
        def wrapper(*args, **kwargs):
            calls.append((name, impl))
            return fn(*args, **kwargs)
        return wrapper

    for name in ("depthwise_conv2d", "depthwise_conv2d_grad_input", "depthwise_conv2d_grad_weight"):
        kernel = getattr(D, name)
        monkeypatch.setattr(D, name, B.dispatch(recording(name, "reference", kernel.reference),
                                                recording(name, "fast", kernel.fast)))
    layer = DepthwiseConv2D(3, strides=2, depth_multiplier=2) if kind == "DepthwiseConv2D" else SeparableConv2D(4, 3)
    x = Tensor(random_array(np.random.default_rng(0), (2, 5, 5, 3)), requires_grad=True)
    y = layer(x, training=True)
    y.backward(random_array(np.random.default_rng(1), y.shape))
    assert {k for k, _ in calls} == {"depthwise_conv2d", "depthwise_conv2d_grad_input",
                                     "depthwise_conv2d_grad_weight"}, f"{kind} called {calls}"
    assert {i for _, i in calls} == {"fast" if backend == "numba" else "reference"}, f"{kind}: {calls}"


# -- 2. numerical gradient checks ---------------------------------------------------------------------
def gradcheck(label, layer, ref, draw, rng):
    """``layer`` (built) against ``ref`` (float64) by central differences with a random
    upstream gradient: the output, the input's gradient and every weight's."""
    arrays = away_from_kinks(draw, ref, rng)
    missing = set(layer.weights) - set(arrays)
    assert not missing, f"test bug: {label} has weights {sorted(missing)} the test does not check"
    for name, value in arrays.items():
        if name != "input":
            layer.weights[name].data = value.copy()
    g = upstream_like(rng, np.shape(ref(**{k: v.astype(np.float64) for k, v in arrays.items()})))
    expected, grads = numerical_gradients(ref, arrays, g)
    x = Tensor(arrays["input"], requires_grad=True)
    check_against_reference(f"{label} on input {x.shape}", lambda: layer(x, training=True),
                            {"input": x, **layer.weights}, expected, grads, g)


STRIDES = [(1, 1), (2, 2), (3, 1)]


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides", STRIDES)
@FEW
@given(n=st.sampled_from([1, 2]), h=st.integers(1, 6), w=st.integers(1, 6), c=st.integers(1, 3),
       mult=st.integers(1, 3), kh=st.integers(1, 3), kw=st.integers(1, 3),
       activation=st.sampled_from([None, "relu"]), use_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_depthwise_gradients(backend, strides, padding, n, h, w, c, mult, kh, kw, activation, use_bias, seed):
    if padding == "valid":  # the kernel must fit
        h, w = h + kh - 1, w + kw - 1
    layer = DepthwiseConv2D((kh, kw), strides=strides, padding=padding, depth_multiplier=mult,
                            activation=activation, use_bias=use_bias)
    layer.ensure_built((h, w, c))

    def draw(rng):
        arrays = {"input": random_array(rng, (n, h, w, c)), "depthwise_kernel": random_array(rng, (kh, kw, c, mult))}
        if use_bias:
            arrays["bias"] = random_array(rng, (c * mult,), 0.5)
        return arrays

    def ref(input, depthwise_kernel, bias=None):
        return depthwise64(input, depthwise_kernel, bias, strides, padding, activation)

    label = describe("DepthwiseConv2D", kernel_size=(kh, kw), strides=strides, padding=padding,
                     depth_multiplier=mult, activation=activation, use_bias=use_bias)
    gradcheck(label, layer, ref, draw, np.random.default_rng(seed))


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides", STRIDES)
@FEW
@given(n=st.sampled_from([1, 2]), h=st.integers(1, 5), w=st.integers(1, 5), c=st.integers(1, 3),
       mult=st.integers(1, 2), filters=st.integers(1, 3), k=st.integers(1, 3),
       activation=st.sampled_from([None, "relu"]), use_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_separable_gradients(backend, strides, padding, n, h, w, c, mult, filters, k, activation, use_bias, seed):
    if padding == "valid":
        h, w = h + k - 1, w + k - 1
    layer = SeparableConv2D(filters, k, strides=strides, padding=padding, depth_multiplier=mult,
                            activation=activation, use_bias=use_bias)
    layer.ensure_built((h, w, c))

    def draw(rng):
        arrays = {"input": random_array(rng, (n, h, w, c)), "depthwise_kernel": random_array(rng, (k, k, c, mult)),
                  "pointwise_kernel": random_array(rng, (1, 1, c * mult, filters), 0.5)}
        if use_bias:
            arrays["bias"] = random_array(rng, (filters,), 0.5)
        return arrays

    def ref(input, depthwise_kernel, pointwise_kernel, bias=None):
        return separable64(input, depthwise_kernel, pointwise_kernel, bias, strides, padding, activation)

    label = describe("SeparableConv2D", filters=filters, kernel_size=k, strides=strides, padding=padding,
                     depth_multiplier=mult, activation=activation, use_bias=use_bias)
    gradcheck(label, layer, ref, draw, np.random.default_rng(seed))


# -- 3. against Keras ----------------------------------------------------------------------------------
KERAS_RTOL, KERAS_ATOL = 2e-4, 2e-5


def _keras_call(layer, x):
    """``layer(x)``, or where TensorFlow's depthwise kernel refuses the layer's unequal
    strides, the same sum by TensorFlow's Conv2D, which takes any strides.

    TensorFlow runs either its own kernels or oneDNN's, choosing by the CPU: on one of
    this project's machines (AVX2, no AVX-512) it took its own, whose DepthwiseConv2D
    "only supports equal length strides". Then each input channel c goes through
    ``tf.nn.conv2d`` with its own (KH, KW, 1, M) slice of the kernel, with the layer's
    strides and padding (TensorFlow's 'same' split, as Keras'), and the outputs are laid
    side by side as Keras lays a depthwise output: channel c * M + m (the cases with equal
    strides check that order against Keras' own layer). A SeparableConv2D then applies its
    pointwise kernel, bias and activation. The layer's own variables are used, so the
    gradient tape sees them."""
    import tensorflow as tf
    try:
        return layer(x)
    except tf.errors.InvalidArgumentError as e:
        if "equal length strides" not in str(e):
            raise
    separable = hasattr(layer, "pointwise_kernel")
    depthwise = layer.depthwise_kernel if separable else layer.kernel
    strides, padding = (1,) + tuple(layer.strides) + (1,), layer.padding.upper()
    y = tf.concat([tf.nn.conv2d(x[..., c:c + 1], depthwise[:, :, c:c + 1, :], strides, padding)
                   for c in range(x.shape[-1])], axis=-1)
    if separable:
        y = tf.nn.conv2d(y, layer.pointwise_kernel, 1, "VALID")
    if layer.use_bias:
        y = y + layer.bias
    return layer.activation(y)


@pytest.mark.parametrize("kind, settings", [
    ("DepthwiseConv2D", dict(kernel_size=(2, 3), depth_multiplier=3)),
    ("SeparableConv2D", dict(filters=4, kernel_size=3, depth_multiplier=2, activation="relu")),
])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_the_unequal_strides_fallback_is_keras_own_layer(kind, settings, padding, monkeypatch):
    """``_keras_call``'s per-channel Conv2D, forced where Keras' own layer runs everywhere
    (equal strides), gives the layer's output: the fallback that computes the references
    for unequal strides on a machine whose TensorFlow refuses them is the same sum."""
    import keras
    import tensorflow as tf
    rng = np.random.default_rng(5)
    layer = getattr(keras.layers, kind)(strides=(2, 2), padding=padding, **settings)
    x = tf.constant(random_array(rng, (2, 9, 8, 3)))
    layer.build(tuple(x.shape))
    layer.set_weights([random_array(rng, tuple(w.shape), 0.5) for w in layer.weights])
    own = layer(x).numpy()

    def refuse(*args, **kwargs):
        raise tf.errors.InvalidArgumentError(None, None, "Current implementation only supports equal length strides")
    monkeypatch.setattr(layer, "call", refuse)
    np.testing.assert_allclose(_keras_call(layer, x).numpy(), own, rtol=KERAS_RTOL, atol=KERAS_ATOL)


@functools.lru_cache(maxsize=None)
def keras_reference(kind, settings, input_shape, seed=0):
    """Run ``keras.layers.<kind>(**settings)`` with random weights and input, once per
    configuration. Returns x, weights (in Keras' order), g, output, grads (input first,
    then one per weight, in order) and Keras' output shape (no batch axis)."""
    import keras
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    layer = getattr(keras.layers, kind)(**dict(settings))
    layer.build(input_shape)
    weights = [random_array(rng, tuple(w.shape), 0.5) for w in layer.weights]
    layer.set_weights(weights)
    x = random_array(rng, input_shape)
    x_tf = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_tf)
        y = _keras_call(layer, x_tf)
    g = random_array(rng, tuple(y.shape))
    if dict(settings).get("activation") == "relu":   # no gradient through outputs at a kink
        twin = getattr(keras.layers, kind)(**{**dict(settings), "activation": None})
        twin.build(input_shape)
        twin.set_weights(layer.get_weights())
        g = upstream_away_from_relu_kinks(g, _keras_call(twin, x_tf).numpy(), KERAS_ATOL)
    grads = tape.gradient(y, [x_tf] + list(layer.trainable_weights), output_gradients=tf.constant(g))
    return dict(x=x, weights=weights, g=g, output=y.numpy(), grads=[gr.numpy() for gr in grads],
                output_shape=tuple(layer.compute_output_shape(input_shape))[1:])


def compare_with_keras(kind, settings, input_shape):
    """Build tinycnn's ``kind``, load Keras' weights (by position: Keras 3 names the
    depthwise kernel of DepthwiseConv2D ``kernel``), compare output and every gradient."""
    ref = keras_reference(kind, tuple(sorted(settings.items())), input_shape)
    label = describe(kind, **settings) + f" on input {input_shape} (vs Keras)"
    layer = getattr(tc.layers, kind)(**settings)
    out_shape = layer.ensure_built(input_shape[1:])
    assert out_shape == ref["output_shape"], f"{label}: output shape {out_shape}, Keras gives {ref['output_shape']}"
    mine = list(layer.weights.values())
    assert [w.shape for w in mine] == [w.shape for w in ref["weights"]], (
        f"{label}: weight shapes {[w.shape for w in mine]}, Keras has {[w.shape for w in ref['weights']]}")
    for t, value in zip(mine, ref["weights"]):
        t.data = value.copy()
    x = Tensor(ref["x"], requires_grad=True)
    tensors = {"input": x, **layer.weights}
    check_against_reference(label, lambda: layer(x, training=True), tensors, ref["output"],
                            dict(zip(tensors, ref["grads"])), ref["g"], KERAS_RTOL, KERAS_ATOL)


# kernel 1/3/(2,3), strides 1/2/(2,1), valid/same on odd and even sizes (Keras' 'same' is
# asymmetric there), depth multiplier 1/2, with and without ReLU and bias
DEPTHWISE_CASES = [(dict(kernel_size=k, strides=s, padding=p, depth_multiplier=m, activation=a, use_bias=b), shape)
                   for k, s in ((1, 1), (3, 1), (3, 2), ((2, 3), (2, 1)))
                   for p in ("valid", "same")
                   for (m, a, b), shape in (((1, None, True), (2, 7, 7, 3)), ((2, "relu", False), (1, 8, 6, 2)),
                                            ((3, "relu", True), (2, 6, 5, 2)))]
SEPARABLE_CASES = [(dict(filters=4, kernel_size=k, strides=s, padding=p, depth_multiplier=m, activation=a, use_bias=b),
                    shape)
                   for k, s in ((3, 1), (3, 2), ((2, 3), (2, 1)))
                   for p in ("valid", "same")
                   for (m, a, b), shape in (((1, "relu", True), (2, 7, 7, 3)), ((2, None, False), (1, 8, 6, 2)))]


def _ids(cases):
    return ["-".join(f"{v}" for v in settings.values()) + f"-{'x'.join(map(str, shape))}" for settings, shape in cases]


@pytest.mark.parametrize("settings, shape", DEPTHWISE_CASES, ids=_ids(DEPTHWISE_CASES))
def test_depthwise_matches_keras(backend, settings, shape):
    compare_with_keras("DepthwiseConv2D", settings, shape)


@pytest.mark.parametrize("settings, shape", SEPARABLE_CASES, ids=_ids(SEPARABLE_CASES))
def test_separable_matches_keras(backend, settings, shape):
    compare_with_keras("SeparableConv2D", settings, shape)


def _mirrored_padding(kernel):
    """Keras' 'same' split turned around: the odd row and column of padding at the top/left."""
    def wrong(x, w, strides, pads):
        (pt, pb), (pl, pr) = pads
        return kernel(x, w, strides, ((pb, pt), (pr, pl)))
    return wrong


def _channels_m_major(kernel):
    """Output channels in the order m*C + c instead of Keras' c*M + m."""
    def wrong(x, w, strides, pads):
        y = kernel(x, w, strides, pads)
        c, m = w.shape[2:]
        return np.ascontiguousarray(y.reshape(y.shape[:3] + (c, m)).swapaxes(3, 4).reshape(y.shape))
    return wrong


def _slightly_off(kernel):
    """A kernel gradient 0.1% too large: within float32 rounding it is not."""
    def wrong(*args):
        return kernel(*args) * np.float32(1.001)
    return wrong


MUTANTS = [("mirrored same padding", "depthwise_conv2d", _mirrored_padding,
            dict(kernel_size=3, strides=2, padding="same", depth_multiplier=1), (2, 8, 8, 3)),
           ("channels m-major", "depthwise_conv2d", _channels_m_major,
            dict(kernel_size=3, padding="same", depth_multiplier=2), (2, 6, 6, 3)),
           ("kernel gradient 0.1% off", "depthwise_conv2d_grad_weight", _slightly_off,
            dict(kernel_size=3, padding="same", depth_multiplier=2), (2, 6, 6, 3))]


@pytest.mark.parametrize("mutant, name, mutate, settings, shape", MUTANTS, ids=[m[0] for m in MUTANTS])
def test_a_wrong_kernel_fails_against_keras(backend, monkeypatch, mutant, name, mutate, settings, shape):
    """The comparison with Keras is tight enough to catch each of these."""
    compare_with_keras("DepthwiseConv2D", settings, shape)  # the real kernels pass
    monkeypatch.setattr(D, name, mutate(getattr(D, name)))
    with pytest.raises(AssertionError):
        compare_with_keras("DepthwiseConv2D", settings, shape)


# -- 4. parameters, summary, initialisers ------------------------------------------------------------
def _stack(lib):
    L = lib.layers
    return [L.SeparableConv2D(8, 3, padding="same", activation="relu"), L.DepthwiseConv2D(3, strides=2),
            L.DepthwiseConv2D((2, 3), depth_multiplier=3, use_bias=False, padding="same"),
            L.SeparableConv2D(5, 3, strides=2, depth_multiplier=2, use_bias=False), L.BatchNormalization(),
            L.SeparableConv2D(6, 1)]


def test_count_params_and_summary_match_keras(backend):
    import keras
    keras.backend.clear_session()  # Keras numbers layer names per session
    theirs = keras.Sequential([keras.Input((13, 11, 3))] + _stack(keras))
    ours = tc.Sequential(_stack(tc), input_shape=(13, 11, 3))
    assert ours.count_params() == theirs.count_params()
    for mine, klayer in zip(ours.layers, theirs.layers):
        assert mine.name == klayer.name, f"layer {mine.name!r}, Keras names it {klayer.name!r}"
        assert mine.count_params() == klayer.count_params(), (
            f"{mine.name}: {mine.count_params()} parameters, Keras {klayer.count_params()}")
        assert (None,) + mine.compute_output_shape(mine.input_shape) == tuple(klayer.output.shape), mine.name
    lines = []
    ours.summary(print_fn=lines.append)
    assert f"Total params: {theirs.count_params():,}" in lines[0], lines[0]


def test_multiply_adds():
    depthwise, separable = DepthwiseConv2D(3, depth_multiplier=2), SeparableConv2D(5, 3, depth_multiplier=2)
    for layer in (depthwise, separable):
        layer.ensure_built((8, 7, 3))
    assert depthwise.multiply_adds((8, 7, 3)) == 6 * 5 * (3 * 2) * 9
    assert separable.multiply_adds((8, 7, 3)) == 6 * 5 * (3 * 2) * 9 + 6 * 5 * (3 * 2) * 5


def test_initialisers_use_keras_fans():
    """glorot_uniform's limit from a conv kernel's fans, as Keras computes them: the
    depthwise kernel (KH, KW, C, M) counts KH*KW*C inputs and KH*KW*M outputs."""
    layer = SeparableConv2D(16, 3, depth_multiplier=2)
    layer.ensure_built((8, 8, 64), np.random.default_rng(0))
    for name, limit in (("depthwise_kernel", np.sqrt(6 / (9 * 64 + 9 * 2))),
                        ("pointwise_kernel", np.sqrt(6 / (128 + 16)))):
        top = np.abs(layer.weights[name].data).max()
        assert 0.97 * limit < top <= limit, f"{name}: largest |w| {top}, glorot limit {limit}"
    assert not layer.bias.data.any()


# -- 5. bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: DepthwiseConv2D(3), lambda: SeparableConv2D(2, 3)],
                         ids=["DepthwiseConv2D", "SeparableConv2D"])
def test_bad_input_is_named(backend, make):
    layer = make()
    kind = type(layer).__name__
    with pytest.raises(ValueError, match=rf"{kind} .*expected input of shape \(batch, height, width, channels\)"):
        layer(np.zeros((2, 5, 5), np.float32))
    with pytest.raises(ValueError, match=rf"{kind} .*kernel \(3, 3\) .*larger than the input \(2, 5\)"):
        layer(np.zeros((1, 2, 5, 3), np.float32))
    layer(np.zeros((1, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match=rf"{kind} .*built for 3 input channels .*got 4"):
        layer(np.zeros((1, 5, 5, 4), np.float32))
    with pytest.raises(ValueError, match="larger than the input"):  # built, then handed a smaller image
        layer(np.zeros((1, 5, 2, 3), np.float32))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_bad_depth_multiplier(bad):
    for make in (lambda: DepthwiseConv2D(3, depth_multiplier=bad),
                 lambda: SeparableConv2D(4, 3, depth_multiplier=bad)):
        with pytest.raises(ValueError, match=rf"depth_multiplier must be a positive int, got {bad!r}"):
            make()


def test_bad_settings():
    with pytest.raises(ValueError, match="SeparableConv2D: filters must be a positive int, got 0"):
        SeparableConv2D(0, 3)
    with pytest.raises(ValueError, match="DepthwiseConv2D: padding must be 'valid' or 'same'"):
        DepthwiseConv2D(3, padding="full")
    with pytest.raises(ValueError, match="DepthwiseConv2D: activation must be one of"):
        DepthwiseConv2D(3, activation="tanh")
    with pytest.raises(ValueError, match="DepthwiseConv2D: kernel_size must be a positive int or a pair"):
        DepthwiseConv2D((3, 0))


def _zeros(*shape):
    return np.zeros(shape, np.float32)


GATE = [
    ("channels", lambda: D.depthwise_conv2d.fast(_zeros(2, 5, 5, 64), _zeros(3, 3, 8, 1), (1, 1), ((1, 1), (1, 1))),
     "input has 64 channels, the depthwise kernel expects 8"),
    ("kernel too big", lambda: D.depthwise_conv2d.fast(_zeros(1, 2, 2, 1), _zeros(3, 3, 1, 1), (1, 1),
                                                       ((0, 0), (0, 0))),
     "larger than the padded input"),
    ("rank", lambda: D.depthwise_conv2d.fast(_zeros(5, 5, 1), _zeros(3, 3, 1, 1), (1, 1), ((0, 0), (0, 0))),
     "must be 4-D"),
    ("negative padding", lambda: D.depthwise_conv2d.fast(_zeros(1, 5, 5, 1), _zeros(3, 3, 1, 1), (1, 1),
                                                         ((-1, 0), (0, 0))), "paddings >= 0"),
    ("float64", lambda: D.depthwise_conv2d.fast(np.zeros((1, 5, 5, 1)), _zeros(3, 3, 1, 1), (1, 1), ((0, 0), (0, 0))),
     "takes float32 arrays, got x float64"),
    ("dy shape", lambda: D.depthwise_conv2d_grad_input.fast(_zeros(1, 3, 3, 4), _zeros(3, 3, 2, 1), (1, 5, 5, 2),
                                                            (1, 1), ((0, 0), (0, 0))),
     r"output gradient has shape \(1, 3, 3, 4\), the depthwise convolution gives \(1, 3, 3, 2\)"),
    ("dy shape (weight)", lambda: D.depthwise_conv2d_grad_weight.fast(_zeros(1, 5, 5, 2), _zeros(1, 9, 9, 2),
                                                                      (3, 3, 2, 1), (1, 1), ((0, 0), (0, 0))),
     "output gradient has shape"),
    ("empty kernel axis", lambda: D.depthwise_conv2d.fast(_zeros(1, 5, 5, 2), _zeros(3, 3, 2, 0), (1, 1),
                                                          ((0, 0), (0, 0))), "empty axis"),
]


@pytest.mark.parametrize("case, call, message", GATE, ids=[g[0] for g in GATE])
def test_compiled_kernels_refuse_arrays_that_disagree(case, call, message):
    """A ValueError naming the kernel and the shapes, never a read or write past a buffer."""
    with pytest.raises(ValueError, match=message) as caught:
        call()
    assert "depthwise_conv2d" in str(caught.value) and "input (" in str(caught.value)


# -- 6. training ---------------------------------------------------------------------------------------
def _small_model():
    return tc.Sequential([
        Conv2D(6, 3, padding="same", activation="relu"),
        SeparableConv2D(8, 3, strides=2, padding="same", use_bias=False), BatchNormalization(),
        Residual([SeparableConv2D(8, 3, padding="same", activation="relu", depth_multiplier=2),
                  SeparableConv2D(8, 3, padding="same", use_bias=False), BatchNormalization()]),
        DepthwiseConv2D(3, padding="same", activation="relu"),
        GlobalAveragePooling2D(), tc.layers.Dense(2)], input_shape=(8, 8, 1), seed=1)


def test_small_model_trains(backend):
    """Tell a bright top half from a bright bottom half; the loss must fall."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 32)
    x = rng.uniform(0, 0.3, (32, 8, 8, 1)).astype(np.float32)
    for i, label in enumerate(labels):
        x[i, :4] += 0.7 * (label == 0)
        x[i, 4:] += 0.7 * (label == 1)
    model = _small_model()
    opt = tc.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss = tc.losses.softmax_cross_entropy(model(x, training=True), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], f"loss did not fall: {np.round(losses, 3)}"
    with tc.no_grad():  # inference without gradients (run_layers may fold): the same numbers
        quick = model(x, training=False).data
    assert_close("small separable model", "no_grad inference", quick, model(x, training=False).data)
