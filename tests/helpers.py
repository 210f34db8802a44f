"""The one comparison the whole suite is built on, and what feeds it.

``check_against_reference`` runs a tinycnn call (a Function, a layer or a model),
compares its output with a reference output, back-propagates a given upstream
gradient and compares the gradient of every input and parameter with the
reference's. The reference comes from one of two places:

* ``numerical_gradients``: float64 central differences of a float64 NumPy
  re-implementation (``reference64.py``), contracted with the same random upstream
  gradient (never ``sum(output)``: for BatchNorm in training mode that gradient is
  exactly zero whatever backward returns);
* TensorFlow/Keras, ``tape.gradient(y, [x] + weights, output_gradients=g)``.

A failure names the call, the argument, the index, what came and what was expected,
and the backend, e.g.::

    Conv2D(kernel_size=(3, 3), strides=(2, 2), padding='same') kernel grad at index
    (1, 0, 2, 3): got 0.1234, expected 0.125 (numba backend); 1 of 108 values ...
"""
from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import strategies as st

import tinycnn

BACKENDS = ("numpy", "numba")

# float32 library against a float64 (or float32 TensorFlow) reference. A value passes
# if |got - expected| <= RTOL * |expected| + ATOL * max(1, max|expected|): the absolute
# part scales with the array so that a gradient that is large everywhere is not held
# to an absolute 1e-5 where its entries happen to cross zero.
RTOL = 1e-4
ATOL = 1e-5


def assert_close(label, what, got, expected, rtol=RTOL, atol=ATOL):
    """Fail with the worst offending index if ``got`` and ``expected`` differ.

    Args:
        label: the call under test, e.g. ``"Conv2D(strides=2, padding='same')"``.
        what: which value, e.g. ``"output"`` or ``"kernel grad"``.
    """
    backend = tinycnn.get_backend()
    if got is None:
        raise AssertionError(f"{label} {what}: got None, expected an array of shape "
                             f"{np.shape(expected)} ({backend} backend)")
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        raise AssertionError(f"{label} {what}: got shape {got.shape}, expected shape "
                             f"{expected.shape} ({backend} backend)")
    if got.size == 0:
        return
    scale = max(1.0, float(np.abs(expected).max()))
    tol = rtol * np.abs(expected) + atol * scale
    err = np.abs(got - expected)
    bad = ~(err <= tol)  # NaN in got counts as bad
    if bad.any():
        ratio = np.where(np.isnan(err), np.inf, err / tol)
        idx = np.unravel_index(int(np.argmax(ratio)), got.shape)
        raise AssertionError(
            f"{label} {what} at index {tuple(int(i) for i in idx)}: got {got[idx]:.6g}, "
            f"expected {expected[idx]:.6g} ({backend} backend); {int(bad.sum())} of {got.size} "
            f"values outside rtol={rtol:g}, atol={atol * scale:.3g}; "
            f"max abs error {np.nanmax(err) if not np.isnan(err).all() else np.nan:.3g}")


def assert_close_to_magnitude(label, what, got, expected, magnitude, rtol=RTOL, atol=ATOL):
    """``assert_close`` with ``atol`` relative to ``magnitude``, the largest sum of
    absolute products behind any value (e.g. the convolution of |x| with |w|), not to
    the largest value: the bound on the rounding of any order of summation. Winograd's
    transforms add and subtract terms much larger than their result, so an output near
    zero carries the rounding of those terms (a 3x3x5 window of N(0, 1) values: 3.6e-5 on
    an output of 0.044 by F(6x6, 3x3), within the bound and 3.6 times the usual atol)."""
    largest = max(1.0, float(np.abs(np.asarray(expected)).max()) if np.size(expected) else 1.0)
    assert_close(label, what, got, expected, rtol, atol * max(1.0, float(np.max(magnitude))) / largest)


def assert_close_in_norm(label, what, got, expected, rtol):
    """Fail unless ``||got - expected|| <= rtol * ||expected||`` (Frobenius norms), naming
    the worst index: for gradients of a whole network, see ``check_against_reference``."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if got.shape != expected.shape:
        raise AssertionError(f"{label} {what}: got shape {got.shape}, expected shape {expected.shape}")
    error = np.linalg.norm(got - expected) / max(np.linalg.norm(expected), np.finfo(np.float32).tiny)
    if not error <= rtol:
        idx = np.unravel_index(int(np.argmax(np.abs(got - expected))), got.shape)
        raise AssertionError(f"{label} {what}: relative error {error:.3g} in norm > {rtol:g}; worst at index "
                             f"{tuple(int(i) for i in idx)}: got {got[idx]:.6g}, expected {expected[idx]:.6g} "
                             f"({tinycnn.get_backend()} backend)")


def check_against_reference(label, run, tensors, expected_output, expected_grads, upstream,
                            rtol=RTOL, atol=ATOL, grad_norm_rtol=None):
    """Run a tinycnn call; compare its output and every gradient with a reference.

    Args:
        label: names the call in failure messages (layer and its settings).
        run: no-argument callable that performs the call and returns the output Tensor.
        tensors: ``{name: Tensor}``, every input and parameter whose gradient is
            checked (``"input"``, ``"kernel"``, ``"bias"``, ...). Their ``grad`` is
            cleared first, so the gradients compared are those of this one call.
        expected_output: the reference output.
        expected_grads: ``{name: array}``, one per entry of ``tensors``.
        upstream: dL/d(output), a random array of the output's shape.
        grad_norm_rtol: if given, each gradient is compared by its relative error in
            norm (``assert_close_in_norm``) instead of value by value. For a whole network
            of ReLUs and max-pools: among its million units, on any machine, a few sit
            within float32 rounding of a kink (a pre-activation at 1e-7 of its layer's
            largest, a pooling window's top two as close), and another implementation may
            put such a unit on the other side; the gradient through it then goes to
            another pixel or nowhere, moving a few gradient values by their whole size.
            That is a coin toss, not a bug; a wrong formula, weight or connection moves
            the whole tensor. The output, continuous at a kink, is still compared value
            by value.
    Returns:
        The output Tensor (after backward), for further checks by the caller.
    """
    assert set(expected_grads) == set(tensors), (
        f"{label}: test bug, gradients expected for {sorted(expected_grads)}, "
        f"tensors given for {sorted(tensors)}")
    for t in tensors.values():
        t.grad = None
    out = run()
    assert_close(label, "output", out.data, expected_output, rtol, atol)
    out.backward(np.asarray(upstream, np.float32))
    for name, t in tensors.items():
        if not t.requires_grad:
            raise AssertionError(f"{label} {name}: does not require a gradient "
                                 f"({tinycnn.get_backend()} backend)")
        if grad_norm_rtol is None:
            assert_close(label, f"{name} grad", t.grad, expected_grads[name], rtol, atol)
        else:
            assert_close_in_norm(label, f"{name} grad", t.grad, expected_grads[name], grad_norm_rtol)
    return out


# -- decisions (argmax, labels, confusion matrices) of two implementations -----------------------
# Two implementations that agree on probabilities within PROBABILITY_ATOL (what the suite
# asserts for tinycnn against Keras, ONNX Runtime, its own two backends) are bound to agree
# on a face's class only where the reference's largest probability exceeds every other by
# more than 2 * PROBABILITY_ATOL: each may move by PROBABILITY_ATOL, towards the other. Below
# that margin another CPU's rounding (another BLAS kernel, another thread count) may pick
# either class, so a test accepts any class within the margin of the top one.
PROBABILITY_ATOL = 1e-5


def decision_candidates(probabilities, atol=PROBABILITY_ATOL):
    """Boolean (N, C): the classes each row may be decided as, by an implementation whose
    probabilities are within ``atol`` of ``probabilities`` (N, C): those within ``2 * atol``
    of the row's largest. A row with one candidate is decided."""
    p = np.asarray(probabilities, np.float64)
    return p >= p.max(axis=1, keepdims=True) - 2 * atol


def assert_decisions_agree(labels, probabilities, atol=PROBABILITY_ATOL, what="labels"):
    """Each of ``labels`` (N,) is one of its row's ``decision_candidates``: equal to the
    reference's argmax where it is decided, either of the near-tied classes where not."""
    labels = np.asarray(labels)
    ok = decision_candidates(probabilities, atol)[np.arange(len(labels)), labels]
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        p = np.asarray(probabilities)[i]
        raise AssertionError(f"{what}: row {i} decided as class {int(labels[i])} (probability {p[labels[i]]:.6g}), "
                             f"the reference decides class {int(p.argmax())} ({p.max():.6g}) by more than "
                             f"2 * {atol:g}; {int((~ok).sum())} of {len(labels)} rows differ")


def assert_confusion_agrees(confusion, y_true, probabilities, atol=PROBABILITY_ATOL, max_undecided=0.01):
    """``confusion`` (C, C; rows true class, columns predicted) is a matrix the reference's
    ``probabilities`` (N, C) could give on another machine: the decided faces exactly where
    the reference puts them, every near-tie face in one of its candidate columns.

    Exact test of the second part (Hall's condition): ``confusion`` minus the decided faces'
    matrix is non-negative, each row holds as many faces as that row has near-ties, and for
    every set S of columns, the faces the row puts in S are at most its near-ties having a
    candidate in S. At most ``max_undecided`` of the faces may be near-ties (else the model
    is too undecided for its matrix to test anything)."""
    confusion = np.asarray(confusion)
    y_true = np.asarray(y_true)
    candidates = decision_candidates(probabilities, atol)
    c = candidates.shape[1]
    decided = candidates.sum(axis=1) == 1
    assert (~decided).mean() <= max_undecided, (
        f"test bug: {int((~decided).sum())} of {len(y_true)} faces are within 2 * {atol:g} of a tie")
    expected = np.zeros((c, c), np.int64)
    np.add.at(expected, (y_true[decided], np.argmax(probabilities, axis=1)[decided]), 1)
    rest = confusion - expected
    assert rest.shape == (c, c) and (rest >= 0).all(), (
        f"confusion matrix differs from the reference's on decided faces:\ngot\n{confusion}\nexpected at least\n{expected}")
    for row in range(c):
        ties = candidates[~decided & (y_true == row)]
        assert rest[row].sum() == len(ties), (
            f"confusion matrix row {row}: {confusion[row].tolist()}, the reference decides {expected[row].tolist()} "
            f"and leaves {len(ties)} near-tie faces")
        for s in range(1, 1 << c):
            columns = [(s >> k) & 1 == 1 for k in range(c)]
            assert rest[row, columns].sum() <= ties[:, columns].any(axis=1).sum(), (
                f"confusion matrix row {row}: {confusion[row].tolist()}; beyond the decided faces "
                f"{expected[row].tolist()} it puts {rest[row, columns].sum()} faces in columns "
                f"{np.flatnonzero(columns).tolist()}, where only {ties[:, columns].any(axis=1).sum()} of its near-tie "
                f"faces could go")



def upstream_away_from_relu_kinks(g, pre_activation, atol):
    """The upstream gradient ``g`` with zeros where the reference's pre-activation (the
    output before its ReLU) is nonzero but within ``atol`` of the largest |value| of 0:
    there another implementation's rounding may put the value on the other side of the
    kink, and the gradient through it would then be g on one side and 0 on the other,
    a coin toss rather than a bug. Exact zeros (no term reached the output) are exact on
    any machine and keep their gradient. A handful of outputs in a large layer."""
    z = np.asarray(pre_activation, np.float64)
    near = (z != 0) & (np.abs(z) <= atol * np.abs(z).max(initial=0))
    return np.where(near, np.float32(0), g).astype(np.float32)

# -- numerical gradients of a float64 reference --------------------------------------------
EPS = 1e-6            # central-difference step, on float64 data
KINK_MARGIN = 1e-3    # inputs must be this far from any ReLU zero or max-pool tie

_kink_margins: list | None = None


def record_kink_margin(margin):
    """Reference functions report how far they are from a kink (a ReLU's zero, the gap
    between the two largest values of a max-pool window). Checked by ``away_from_kinks``."""
    margin = np.asarray(margin)
    if _kink_margins is not None and margin.size:
        _kink_margins.append(float(margin.min()))


@contextlib.contextmanager
def _recording_kinks():
    global _kink_margins
    previous, _kink_margins = _kink_margins, []
    try:
        yield _kink_margins
    finally:
        _kink_margins = previous


def _as64(arrays):
    return {k: np.array(v, dtype=np.float64) for k, v in arrays.items()}


def kink_distance(ref, arrays):
    """The smallest margin to a kink that ``ref`` meets at ``arrays`` (inf if none)."""
    with _recording_kinks() as margins:
        ref(**_as64(arrays))
    return min(margins, default=np.inf)


def away_from_kinks(draw, ref, rng, tries=200):
    """``draw(rng)`` until ``ref`` evaluated there is at least KINK_MARGIN from every kink.

    Near a kink a finite difference straddles it and the float32 library may also
    round to the other side; far from it both are exact. Seeded, so deterministic.
    """
    for _ in range(tries):
        arrays = draw(rng)
        if kink_distance(ref, arrays) >= KINK_MARGIN:
            return arrays
    raise AssertionError(f"test bug: no draw in {tries} tries was {KINK_MARGIN} away from kinks")


def numerical_gradients(ref, arrays, upstream, eps=EPS):
    """Output and gradients of ``L = sum(ref(**arrays) * upstream)``, in float64.

    Why this method: the library stores float32, so finite differences of the library
    itself would need a large step (rounding error ~ 1e-7 / eps) and loose tolerances.
    Instead ``ref`` re-implements the layer's math in float64 NumPy: a step of 1e-6
    then gives derivatives to ~1e-9, so the only error left in the comparison is the
    library's own float32 rounding (~1e-6 relative) and the tolerance can be tight
    (RTOL = 1e-4). The library's forward is compared with ``ref`` too, so together
    the two checks say that the library's backward is the derivative of its forward.

    Args:
        ref: ``ref(**arrays) -> output`` on float64 arrays.
        arrays: ``{name: array}``, every argument to differentiate (float32 values,
            computed on in float64).
        upstream: the random upstream gradient, shape of the output.
    Returns:
        (output, {name: gradient}), float64.
    """
    args = _as64(arrays)
    g = np.asarray(upstream, np.float64)
    with _recording_kinks() as margins:
        out = np.asarray(ref(**args), np.float64)
    if margins and min(margins) < 100 * eps:
        raise AssertionError(f"test bug: input within {min(margins):.2g} of a kink; use away_from_kinks")
    if out.shape != g.shape:
        raise AssertionError(f"test bug: upstream shape {g.shape}, reference output {out.shape}")
    grads = {}
    for name, a in args.items():
        grad = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            keep = a[idx]
            a[idx] = keep + eps
            plus = np.sum(np.asarray(ref(**args)) * g)
            a[idx] = keep - eps
            minus = np.sum(np.asarray(ref(**args)) * g)
            a[idx] = keep
            grad[idx] = (plus - minus) / (2 * eps)
        grads[name] = grad
    return out, grads


# -- test data ---------------------------------------------------------------------------------
def random_array(rng, shape, scale=1.0):
    """Normal(0, scale) float32."""
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def distinct_values(rng, shape, low=-1.0, high=1.0):
    """A random permutation of evenly spaced values: no two equal (no max-pool ties)."""
    n = int(np.prod(shape))
    values = np.linspace(low, high, n) if n > 1 else np.array([low])
    return rng.permutation(values).reshape(shape).astype(np.float32)


@st.composite
def window_problems(draw, max_channels, max_m, max_kernel, max_size):
    """(x, w, strides, pads) for a sliding-window kernel (a convolution, a depthwise
    convolution): x (n, h, w, c) and w (kh, kw, c, m) random float32, 1 to 3 images,
    strides 1 to 3, any padding below the kernel size on each side, and an input side of
    at most ``max_size`` that the padded kernel fits."""
    n, c, m = draw(st.integers(1, 3)), draw(st.integers(1, max_channels)), draw(st.integers(1, max_m))
    kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = ((draw(st.integers(0, kh - 1)), draw(st.integers(0, kh - 1))),
            (draw(st.integers(0, kw - 1)), draw(st.integers(0, kw - 1))))
    h = draw(st.integers(max(1, kh - sum(pads[0])), max_size))
    w = draw(st.integers(max(1, kw - sum(pads[1])), max_size))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return random_array(rng, (n, h, w, c)), random_array(rng, (kh, kw, c, m)), strides, pads


def upstream_like(rng, shape):
    """A random upstream gradient dL/dy: never all ones (sum(y) hides BatchNorm bugs)."""
    return random_array(rng, shape)


def random_weights(model, seed, low=-1.0, high=1.0, variance=(0.05, 1.0)):
    """Every weight of ``model`` drawn uniform in [low, high), biases and BatchNorm's
    statistics included (gamma of both signs), the moving variance in ``variance``
    (positive). Returns the model."""
    rng = np.random.default_rng(seed)
    for layer in model.all_layers():
        for name, w in layer.weights.items():
            lo, hi = variance if name == "moving_variance" else (low, high)
            w.data = rng.uniform(lo, hi, w.shape).astype(np.float32)
    return model


def one_by_one(model, x):
    """The model's own layers called one at a time in inference: nothing folded or fused."""
    t = tinycnn.Tensor(x)
    for layer in model.layers:
        t = layer(t, training=False)
    return t.numpy()


def describe(layer_type, **settings):
    """``"Conv2D(kernel_size=(3, 3), strides=2)"``: a label for failure messages."""
    return f"{layer_type}(" + ", ".join(f"{k}={v!r}" for k, v in settings.items()) + ")"


# -- a headless browser ----------------------------------------------------------------------------
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--no-first-run",
                  "--disable-sync", "--disable-quic"]


@contextlib.contextmanager
def chromium_page(executable, profile, viewport, flags=(), timeout_ms=None):
    """Headless Chromium (the system's ``executable``, driven by playwright: no ``playwright
    install``) on a fresh ``profile`` folder, with ``flags`` added to CHROMIUM_FLAGS ->
    SimpleNamespace(page, errors): the page and the JavaScript errors it met (a test
    expects none). Skips the test when the playwright package is not installed."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(executable), headless=True, args=[*CHROMIUM_FLAGS, *flags],
            ignore_default_args=["--headless"], viewport=viewport)
        if timeout_ms is not None:
            context.set_default_timeout(timeout_ms)
        page = context.pages[0] if context.pages else context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            yield SimpleNamespace(page=page, errors=errors)
        finally:
            context.close()


def run_train(argv, cache):
    """``python train.py ARGV --data <FER-2013> --cache-dir CACHE``, in this process."""
    import train
    from fer_models.data import default_location
    return train.main([*map(str, argv), "--data", str(default_location()), "--cache-dir", str(cache)])
