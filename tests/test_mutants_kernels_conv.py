"""Checks of tinycnn/kernels/conv.py that its mutation run (tests/mutation/run.sh) showed
missing: the reference kernels compute in their inputs' common precision; the batch chunk
of the im2col kernels (one chunk's column matrix about 16 MiB); ``choose_algorithm`` at
each edge of the rule its docstring gives; which forward keeps im2col's columns for the
weight gradient; the direct convolution on each backend; Conv2DTranspose's dispatch
(``conv2d_transpose``, ``conv2d_transpose_grads``) passing everything to the kernel chosen;
the pooled fast paths (``_conv2d_chosen``, ``_conv2d_grad_weight_chosen``) running the
convolution ``choose_algorithm`` picks, with a frozen kernel, the paddings and im2col's kept columns;
the one-channel kernels' padded plane in the input's dtype."""
import numpy as np
import pytest

import tinycnn as tc
from helpers import assert_close_to_magnitude
from tinycnn.kernels import conv, conv_fast, winograd_fast

F32, F64 = np.float32, np.float64


@pytest.mark.parametrize("first, second", [(F32, F32), (F64, F32), (F32, F64), (F64, F64)])
def test_reference_kernels_compute_in_their_inputs_precision(first, second):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 5, 6, 3)), rng.standard_normal((3, 2, 3, 4))
    strides, pads = (1, 2), ((1, 1), (0, 1))
    dy = rng.standard_normal(conv.conv2d_output_shape(x.shape, w.shape, strides, pads))
    calls = {"conv2d": (lambda a, b: conv.conv2d_reference(a, b, strides, pads), x, w),
             "conv2d_grad_input": (lambda a, b: conv.conv2d_grad_input_reference(a, b, x.shape, strides, pads), dy, w),
             "conv2d_grad_weight": (lambda a, b: conv.conv2d_grad_weight_reference(a, b, w.shape, strides, pads),
                                    x, dy)}
    for name, (call, a, b) in calls.items():
        got = call(a.astype(first), b.astype(second))
        assert got.dtype == np.result_type(first, second), f"{name}({first.__name__}, {second.__name__}): {got.dtype}"
        np.testing.assert_allclose(got, call(a, b), rtol=1e-4, atol=1e-5, err_msg=name)


def test_one_chunk_of_columns_is_about_16_mib():
    per_image = 46 * 46 * 288 * 4                     # vggbn's 46x46 output, K = 288: 2.4 MB of columns
    assert conv_fast._CHUNK_BYTES == 16 << 20
    assert conv_fast._chunk_size(256, 46, 46, 288) == (16 << 20) // per_image == 6
    assert conv_fast._chunk_size(3, 46, 46, 288) == 3      # never more than the batch
    assert conv_fast._chunk_size(256, 32, 32, 1024) == 4   # 4 MiB an image: exactly four
    assert conv_fast._chunk_size(256, 100, 100, 1000) == 1  # 40 MB an image: still one at a time
    assert conv_fast._chunk_size(1, 100, 100, 1000) == 1
    assert conv_fast._chunk_size(5, 0, 7, 9) == 5          # an empty output: the whole batch


def choose(x_shape, w_shape, pads=((0, 0), (0, 0)), frozen=False):
    with tc.use_conv_algorithm("auto"):
        return conv.choose_algorithm(x_shape, w_shape, (1, 1), pads, frozen)


def test_choose_algorithm_at_the_edges_of_its_rule():
    """Winograd with at least 64 channels on at least 9x9, or 32 on at least 20x20, and
    at least 2048 input pixels in the batch; or 64+ channels on whole F(6x6) tiles."""
    k = lambda c, o=64: (3, 3, c, o)  # noqa: E731
    assert choose((1, 32, 64, 64), k(64)) == "winograd"          # 2048 pixels
    assert choose((1, 23, 89, 64), k(64)) == "im2col"            # 2047
    assert choose((64, 9, 9, 64), k(64)) == "winograd"
    assert choose((64, 9, 9, 63), k(63)) == "im2col"
    assert choose((64, 8, 9, 64), k(64)) == "im2col"             # 6x7 out: no whole F(6x6) tiles
    assert choose((64, 9, 8, 64), k(64)) == "im2col"
    assert choose((8, 20, 20, 32), k(32)) == "winograd"
    assert choose((8, 20, 20, 31), k(31)) == "im2col"
    assert choose((8, 19, 20, 32), k(32)) == "im2col"
    assert choose((8, 20, 19, 32), k(32)) == "im2col"
    # small maps of 64+ channels: only on whole F(6x6) tiles
    assert choose((128, 8, 14, 64), k(64)) == "winograd"         # 6x12 out
    assert choose((128, 8, 14, 63), k(63)) == "im2col"
    assert choose((128, 8, 13, 64), k(64)) == "im2col"           # 6x11
    assert choose((128, 7, 14, 64), k(64)) == "im2col"           # 5x12
    assert choose((128, 7, 8, 64), k(64)) == "winograd"          # 5x6: one F(6x6) tile, 30 of its 36 outputs used
    assert choose((128, 8, 7, 64), k(64)) == "winograd"          # 6x5
    assert choose((128, 2, 14, 64), k(64)) == "im2col"           # no output rows at all
    assert choose((128, 14, 2, 64), k(64)) == "im2col"
    assert choose((128, 6, 6, 64), k(64), ((1, 1), (1, 1))) == "winograd"   # 'same': 6x6 out
    assert choose((128, 6, 6, 64), k(64), ((1, 1), (0, 0))) == "im2col"     # 6x4 out
    assert choose((128, 6, 6, 64), k(64), ((0, 0), (1, 1))) == "im2col"     # 4x6 out


def test_a_frozen_kernel_chooses_winograd_at_the_edges_of_its_rule():
    """At any batch: 32+ input channels, an output of at least 8x8, C x O up to 128 x 256."""
    assert choose((1, 10, 10, 32), (3, 3, 32, 64), frozen=True) == "winograd"
    assert choose((1, 10, 10, 32), (3, 3, 32, 64)) == "im2col"                # not frozen: one image is too few
    assert choose((1, 10, 10, 31), (3, 3, 31, 64), frozen=True) == "im2col"
    assert choose((1, 9, 10, 32), (3, 3, 32, 64), frozen=True) == "im2col"     # 7x8 out
    assert choose((1, 10, 9, 32), (3, 3, 32, 64), frozen=True) == "im2col"
    assert choose((1, 8, 10, 32), (3, 3, 32, 64), ((1, 1), (0, 0)), frozen=True) == "winograd"  # padded to 8x8 out
    assert choose((1, 10, 8, 32), (3, 3, 32, 64), ((0, 0), (1, 1)), frozen=True) == "winograd"
    assert choose((1, 8, 10, 32), (3, 3, 32, 64), ((0, 0), (1, 1)), frozen=True) == "im2col"    # 6x10 out
    assert choose((1, 10, 10, 128), (3, 3, 128, 256), frozen=True) == "winograd"
    assert choose((1, 10, 10, 128), (3, 3, 128, 257), frozen=True) == "im2col"


@pytest.mark.parametrize("c, kernel, strides, kept", [(16, (3, 3), (1, 1), True), (17, (3, 3), (1, 1), False),
                                                      (1, (3, 3), (1, 1), False), (1, (3, 3), (2, 2), True),
                                                      (48, (1, 3), (1, 1), True), (48, (3, 1), (1, 1), True)])
def test_the_forward_keeps_the_columns_while_they_are_narrow(c, kernel, strides, kept):
    """im2col's columns (K = KH x KW x C wide) are kept up to K = 144, except for a one-channel
    3x3 stride-1 layer, which has kernels of its own both ways."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 7, 7, c)).astype(F32), rng.standard_normal(kernel + (c, 4)).astype(F32)
    pads = ((0, 0), (0, 0))
    with tc.use_backend("numba"), tc.use_conv_algorithm("im2col"):
        y, cols = conv.conv2d(x, w, strides, pads, keep_cols=True)
        assert (conv_fast.conv2d_keeping_fast(x, w, strides, pads)[1] is not None) == kept
    assert (cols is not None) == kept
    if kept:
        assert cols.shape == (y.size // 4, kernel[0] * kernel[1] * c)
    np.testing.assert_allclose(y, conv.conv2d_reference(x, w, strides, pads), rtol=1e-4, atol=1e-5)
    if kernel == (3, 3):
        with tc.use_backend("numba"), tc.use_conv_algorithm("winograd"):
            _, cols = conv.conv2d(x, w, (1, 1), pads, keep_cols=True)
        assert cols is None                                    # Winograd keeps nothing


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_the_direct_convolution_hands_back_columns_only_from_the_fast_kernel(name):
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((2, 6, 6, 2)).astype(F32), rng.standard_normal((2, 2, 2, 3)).astype(F32)
    pads = ((0, 1), (1, 0))
    expected = conv.conv2d_reference(x, w, (1, 1), pads)
    with tc.use_backend(name):
        y, cols = conv._direct(x, w, (1, 1), pads, keep_cols=True)
        np.testing.assert_allclose(conv._direct(x, w, (1, 1), pads), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert (cols is None) == (name == "numpy")
    if cols is not None:
        assert cols.shape == (2 * 6 * 6, 2 * 2 * 2)


def refusal(*args):
    with pytest.raises(ValueError) as e:
        conv_fast.check_shapes("conv2d_grad_input", *args)
    return str(e.value)


def test_the_gate_names_each_problem_in_full():
    none, one = ((0, 0), (0, 0)), ((1, 1), (1, 1))
    tail = " (input {}, kernel {})"
    assert refusal((1, 5, 5), (3, 3, 1, 1), (1, 1), none) == "conv2d_grad_input: input and kernel must be 4-D " \
        "(N, H, W, C) and (KH, KW, C, O)" + tail.format((1, 5, 5), (3, 3, 1, 1))
    assert refusal((1, 5, 5, 1), (3, 3, 1), (1, 1), none).startswith("conv2d_grad_input: input and kernel must be 4-D")
    assert refusal((2, 5, 5, 64), (3, 3, 8, 5), (1, 1), one) == "conv2d_grad_input: input has 64 channels, the " \
        "kernel expects 8" + tail.format((2, 5, 5, 64), (3, 3, 8, 5))
    for strides, pads in [((0, 1), none), ((1, 0), none), ((1, 1), ((0, 0), (0, -1))), ((1, 1), ((-1, 0), (0, 0)))]:
        assert refusal((1, 5, 5, 1), (3, 3, 1, 1), strides, pads) == "conv2d_grad_input: strides must be >= 1 and " \
            f"paddings >= 0, got strides {strides} pads {pads}" + tail.format((1, 5, 5, 1), (3, 3, 1, 1))
    assert refusal((1, 2, 3, 1), (3, 3, 1, 1), (1, 1), none) == "conv2d_grad_input: the kernel is larger than the " \
        "padded input" + tail.format((1, 2, 3, 1), (3, 3, 1, 1))
    assert refusal((1, 3, 2, 1), (3, 3, 1, 1), (1, 1), none).startswith("conv2d_grad_input: the kernel is larger")
    assert refusal((1, 9, 9, 1), (3, 3, 1, 2), (1, 1), none, (1, 5, 5, 1)) == "conv2d_grad_input: output gradient " \
        "has shape (1, 5, 5, 1), the convolution gives (1, 7, 7, 2)" + tail.format((1, 9, 9, 1), (3, 3, 1, 2))
    # at the edges, accepted: a kernel the size of the padded input, stride 1, no padding, a matching gradient
    conv_fast.check_shapes("conv2d", (1, 3, 3, 1), (3, 3, 1, 2), (1, 1), none, (1, 1, 1, 2))
    conv_fast.check_shapes("conv2d", (1, 1, 1, 1), (3, 3, 1, 2), (1, 1), one)


def problem(c=2, o=3, seed=3):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((2, 7, 6, c)).astype(F32), rng.standard_normal((3, 3, c, o)).astype(F32)
    dy = rng.standard_normal((2, 7, 6, o)).astype(F32)
    return x, w, dy, (1, 1), ((1, 1), (1, 1))


def test_the_weight_gradient_reads_the_columns_it_is_handed():
    """The columns kept by the forward are what the weight gradient multiplies (it does not
    gather x again): handed another input's columns, it gives that input's gradient."""
    x, w, dy, strides, pads = problem()
    other = np.random.default_rng(9).standard_normal(x.shape).astype(F32)
    with tc.use_backend("numba"), tc.use_conv_algorithm("im2col"):
        _, cols = conv.conv2d(other, w, strides, pads, keep_cols=True)
        expected = conv.conv2d_grad_weight_reference(other, dy, w.shape, strides, pads)
        for dw in (conv._direct_grad_weight(x, dy, w.shape, strides, pads, cols=cols),
                   conv.conv2d_grad_weight(x, dy, w.shape, strides, pads, cols=cols),
                   conv.conv2d_grads(x, dy, w, strides, pads, need_input=False, cols=cols)[1]):
            np.testing.assert_allclose(dw, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_the_direct_weight_gradient_runs_the_selected_kernel(monkeypatch, name):
    x, w, dy, strides, pads = problem()
    called = []
    for kernel in ("conv2d_grad_weight_reference", "conv2d_grad_weight_fast"):
        original = getattr(conv, kernel)
        monkeypatch.setattr(conv, kernel, lambda *a, _o=original, _k=kernel, **k: called.append(_k) or _o(*a, **k))
    with tc.use_backend(name):
        dw = conv._direct_grad_weight(x, dy, w.shape, strides, pads)
    assert called == ["conv2d_grad_weight_" + ("reference" if name == "numpy" else "fast")]
    np.testing.assert_allclose(dw, conv.conv2d_grad_weight_reference(x, dy, w.shape, strides, pads), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("algorithm", ["im2col", "winograd"])
def test_the_gradients_run_the_chosen_algorithm_and_only_those_asked_for(monkeypatch, algorithm):
    x, w, dy, strides, pads = problem()
    called = []
    for kernel in ("winograd_conv2d_grad_input", "winograd_conv2d_grad_weight", "winograd_conv2d_grads"):
        original = getattr(conv, kernel)
        monkeypatch.setattr(conv, kernel, lambda *a, _o=original, _k=kernel: called.append(_k) or _o(*a))
    dx_ref = conv.conv2d_grad_input_reference(dy, w, x.shape, strides, pads)
    dw_ref = conv.conv2d_grad_weight_reference(x, dy, w.shape, strides, pads)
    with tc.use_conv_algorithm(algorithm):
        np.testing.assert_allclose(conv.conv2d_grad_input(dy, w, x.shape, strides, pads), dx_ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(conv.conv2d_grad_weight(x, dy, w.shape, strides, pads), dw_ref, rtol=1e-4, atol=1e-4)
        dx, dw = conv.conv2d_grads(x, dy, w, strides, pads)                     # both, unless told
        assert dx is not None and dw is not None
        dx, dw = conv.conv2d_grads(x, dy, w, strides, pads, cols=conv.conv2d(x, w, strides, pads, keep_cols=True)[1])
        assert dx is not None and dw is not None
        for need_input, need_weight in [(True, True), (True, False), (False, True)]:
            dx, dw = conv.conv2d_grads(x, dy, w, strides, pads, need_input, need_weight)
            cols = conv.conv2d(x, w, strides, pads, keep_cols=True)[1]
            for got_dx, got_dw in [(dx, dw), conv.conv2d_grads(x, dy, w, strides, pads, need_input, need_weight,
                                                                cols=cols)]:
                assert (got_dx is None) == (not need_input) and (got_dw is None) == (not need_weight)
                if need_input:
                    np.testing.assert_allclose(got_dx, dx_ref, rtol=1e-4, atol=1e-4)
                if need_weight:
                    np.testing.assert_allclose(got_dw, dw_ref, rtol=1e-4, atol=1e-4)
    winograd_calls = {"winograd_conv2d_grad_input", "winograd_conv2d_grad_weight", "winograd_conv2d_grads"}
    assert set(called) == (winograd_calls if algorithm == "winograd" else set()), called


def test_the_gradients_choose_as_the_forward_does_with_the_paddings(monkeypatch):
    """resfer's 6x6x64 'same' layer: one whole F(6x6) tile per image, so Winograd, both ways;
    the same map without padding (a 4x4 output) is not."""
    called = []
    for kernel in ("winograd_conv2d", "winograd_conv2d_grad_input", "winograd_conv2d_grad_weight",
                   "winograd_conv2d_grads"):
        monkeypatch.setattr(conv, kernel, lambda *a, _k=kernel: called.append(_k) or "winograd's")
    x, w, dy = np.zeros((128, 6, 6, 64), F32), np.zeros((3, 3, 64, 64), F32), np.zeros((128, 6, 6, 64), F32)
    same = ((1, 1), (1, 1))
    with tc.use_conv_algorithm("auto"):
        assert conv.conv2d(x, w, (1, 1), same) == "winograd's"
        assert conv.conv2d_grad_input(dy, w, x.shape, (1, 1), same) == "winograd's"
        assert conv.conv2d_grad_weight(x, dy, w.shape, (1, 1), same) == "winograd's"
        assert conv.conv2d_grads(x, dy, w, (1, 1), same) == "winograd's"
        assert conv.choose_algorithm(x.shape, w.shape, (1, 1)) == "im2col"
    assert called == ["winograd_conv2d", "winograd_conv2d_grad_input", "winograd_conv2d_grad_weight",
                      "winograd_conv2d_grads"]


def test_a_frozen_kernel_takes_winograd_from_one_image(monkeypatch):
    called = []
    monkeypatch.setattr(conv, "winograd_conv2d", lambda *a: called.append(a[1]) or "winograd's")
    x = np.zeros((1, 10, 10, 32), F32)
    frozen, loose = np.zeros((3, 3, 32, 64), F32), np.zeros((3, 3, 32, 64), F32)
    winograd_fast.freeze_kernel(frozen)
    with tc.use_conv_algorithm("auto"):
        assert conv.conv2d(x, frozen, (1, 1), ((0, 0), (0, 0))) == "winograd's"
        assert conv.conv2d(x, loose, (1, 1), ((0, 0), (0, 0))).shape == (1, 8, 8, 64)     # im2col
    assert len(called) == 1 and called[0] is frozen


def test_winograd_hands_back_no_columns():
    x, w, _, strides, pads = problem()
    with tc.use_conv_algorithm("winograd"):
        y, cols = conv.conv2d(x, w, strides, pads, keep_cols=True)
        assert conv.conv2d(x, w, strides, pads).shape == y.shape == (2, 7, 6, 3)
    assert cols is None
    np.testing.assert_allclose(y, conv.conv2d_reference(x, w, strides, pads), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [9, 63, 64, 100])
@pytest.mark.parametrize("m", [0, 1, 10, 11, 40])
def test_the_sum_of_products_over_a_long_axis(monkeypatch, k, m):
    """cols.T @ dy2 (float32): from 64 columns by ``backend.matmul``; with fewer, as sums of
    products of ``rows``-row blocks shared between threads: one a block, up to
    ``core_count()``, and one for an empty batch."""
    rng = np.random.default_rng(k + m)
    cols, dy2 = rng.standard_normal((m, k)).astype(F32), rng.standard_normal((m, 5)).astype(F32)
    jobs, products = [], []
    on_cores, matmul = conv_fast.backend.on_cores, conv_fast.backend.matmul
    monkeypatch.setattr(conv_fast.backend, "core_count", lambda: 8)
    monkeypatch.setattr(conv_fast.backend, "on_cores", lambda js: jobs.append(len(js)) or on_cores(js))
    monkeypatch.setattr(conv_fast.backend, "matmul", lambda a, b: products.append(a.shape) or matmul(a, b))
    got = conv_fast._sum_of_products(cols, dy2, rows=3)
    assert got.dtype == F32 and got.shape == (k, 5)
    np.testing.assert_allclose(got, cols.astype(F64).T @ dy2, rtol=1e-5, atol=1e-5)
    if k >= 64:
        assert products == [(k, m)] and jobs == []
    else:
        assert products == [] and jobs == [max(1, min(8, -(-m // 3)))]      # 0, 1, 4, 4 and 14 blocks of 3 rows
    np.testing.assert_allclose(conv_fast._sum_of_products(cols, dy2), cols.astype(F64).T @ dy2, rtol=1e-5, atol=1e-5)


def test_a_kernel_with_no_filters_gives_an_empty_output_on_both_paths():
    """The gate judges the kernel's size by the output's height and width only: zero output
    channels are no reason to refuse (the reference gives an empty array, and so does the fast path)."""
    x, w, pads = np.ones((1, 5, 5, 2), F32), np.zeros((3, 3, 2, 0), F32), ((0, 0), (0, 0))
    conv_fast.check_shapes("conv2d", x.shape, w.shape, (1, 1), pads, (1, 3, 3, 0))
    for kernel in (conv.conv2d.reference, conv.conv2d.fast):
        assert kernel(x, w, (1, 1), pads).shape == (1, 3, 3, 0)
    dy = np.zeros((1, 3, 3, 0), F32)
    np.testing.assert_array_equal(conv.conv2d_grad_input.fast(dy, w, x.shape, (1, 1), pads), np.zeros(x.shape))


# -- Conv2DTranspose's dispatch: the sub-pixel Winograd where chosen, the direct kernels otherwise --
def _transpose_direct(x, w, g):
    """(y before the epilogue, dx, dw) of a "same" 3x3 stride-2 Conv2DTranspose, in float64."""
    out, pads = (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], w.shape[2]), ((0, 1), (0, 1))
    x, w, g = x.astype(np.float64), w.astype(np.float64), g.astype(np.float64)
    return (conv.conv2d_grad_input_reference(x, w, out, (2, 2), pads), conv.conv2d_reference(g, w, (2, 2), pads),
            conv.conv2d_grad_weight_reference(g, x, w.shape, (2, 2), pads))


@pytest.mark.parametrize("setting", ["winograd", "im2col"])
def test_conv2d_transpose_passes_everything_to_the_kernel_chosen(backend, setting):
    """Forward with its bias and ReLU, and the gradients asked for (each alone, both, and
    both by default), by the sub-pixel Winograd ("winograd") and the direct kernels ("im2col")."""
    rng = np.random.default_rng(17)
    x, w = rng.standard_normal((2, 5, 6, 3)).astype(np.float32), rng.standard_normal((3, 3, 4, 3)).astype(np.float32)
    b, g = rng.standard_normal(4).astype(np.float32), rng.standard_normal((2, 10, 12, 4)).astype(np.float32)
    (y, dx, dw), (size_y, size_dx, size_dw) = _transpose_direct(x, w, g), _transpose_direct(abs(x), abs(w), abs(g))
    pads = ((0, 1), (0, 1))
    with tc.use_conv_algorithm(setting):
        assert conv.subpixel.chosen(x.shape, w.shape, (2, 2), pads, g.shape) == (setting == "winograd")
        for relu in (False, True):
            expected = np.maximum(y + b, 0) if relu else y + b
            assert_close_to_magnitude(f"{setting} conv2d_transpose", f"forward, relu={relu}",
                                      conv.conv2d_transpose(x, w, b, g.shape, (2, 2), pads, relu), expected,
                                      size_y + abs(b))
        for need_input, need_weight in [(True, True), (True, False), (False, True)]:
            got = conv.conv2d_transpose_grads(x, g, w, (2, 2), pads, need_input, need_weight)
            for what, asked, have, want, size in [("dx", need_input, got[0], dx, size_dx),
                                                  ("dw", need_weight, got[1], dw, size_dw)]:
                if asked:
                    assert_close_to_magnitude(f"{setting} conv2d_transpose_grads", what, have, want, size)
                else:
                    assert have is None, f"{setting} {what} computed, not asked for"
        by_default = conv.conv2d_transpose_grads(x, g, w, (2, 2), pads)
        assert_close_to_magnitude(f"{setting} conv2d_transpose_grads", "dx by default", by_default[0], dx, size_dx)
        assert_close_to_magnitude(f"{setting} conv2d_transpose_grads", "dw by default", by_default[1], dw, size_dw)


def _recording(monkeypatch, module, name, calls):
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, _real=real, **k: (calls.append((name, k)), _real(*a, **k))[1])


@pytest.mark.parametrize("frozen", [False, True])
def test_the_pooled_fast_paths_take_the_convolution_chosen(monkeypatch, frozen):
    """``conv2d_maxpool_fast`` under a 3x3 pool (not Winograd's fused 2x2) runs the
    convolution ``choose_algorithm`` picks, a frozen kernel's choice included: under "auto",
    one image of 32 channels takes Winograd only with its transform kept."""
    rng = np.random.default_rng(19)
    x, w = rng.standard_normal((1, 11, 11, 32)).astype(F32), (0.1 * rng.standard_normal((3, 3, 32, 4))).astype(F32)
    if frozen:
        winograd_fast.freeze_kernel(w)
    pads, pool = ((1, 1), (1, 1)), ((3, 3), (3, 3), ((0, 0), (0, 0)), (3, 3))
    calls = []
    _recording(monkeypatch, winograd_fast, "winograd_conv2d_fast", calls)
    with tc.use_conv_algorithm("auto"):
        assert conv_fast.choose_algorithm(x.shape, w.shape, (1, 1), pads, frozen) == ("winograd" if frozen else "im2col")
        y, argmax = conv_fast.conv2d_maxpool_fast(x, w, (1, 1), pads, *pool)
    assert [c[0] for c in calls] == (["winograd_conv2d_fast"] if frozen else [])
    y_ref, _ = conv.conv2d_maxpool_reference(x.astype(np.float64), w.astype(np.float64), (1, 1), pads, *pool)
    size = conv.conv2d_reference(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), (1, 1), pads)
    assert_close_to_magnitude("conv2d_maxpool_fast", "output", y, y_ref, size)


@pytest.mark.parametrize("setting", ["auto", "im2col", "winograd"])
@pytest.mark.parametrize("keep_cols", [False, True])
def test_the_pooled_weight_gradient_takes_the_kernel_chosen(monkeypatch, setting, keep_cols):
    """``conv2d_grad_weight_pooled_fast`` (a 3x3 pool of a 32-channel map): im2col's kept
    columns are handed on when the forward kept them; without them, Winograd where
    ``choose_algorithm`` picks it (20x20 maps, 32 channels, 2400 pixels: "auto" does)."""
    rng = np.random.default_rng(23)
    x, w = rng.standard_normal((6, 20, 20, 32)).astype(F32), (0.1 * rng.standard_normal((3, 3, 32, 4))).astype(F32)
    pads, pool = ((1, 1), (1, 1)), ((3, 3), (3, 3), ((0, 0), (0, 0)))
    z_shape = (6, 20, 20, 4)
    with tc.use_conv_algorithm("im2col"):
        _, argmax = conv_fast.conv2d_maxpool_fast(x, w, (1, 1), pads, *pool, (6, 6))
    g = rng.standard_normal((6, 6, 6, 4)).astype(F32)
    cols = conv_fast.conv2d_fast(x, w, (1, 1), pads, keep_cols=True)[1] if keep_cols else None
    saved = conv.ConvSaved(x, w, (1, 1), pads, cols)
    calls = []
    _recording(monkeypatch, winograd_fast, "winograd_conv2d_grad_weight_fast", calls)
    _recording(monkeypatch, conv_fast, "conv2d_grad_weight_fast", calls)
    with tc.use_conv_algorithm(setting):
        dw = conv_fast.conv2d_grad_weight_pooled_fast(g, argmax, saved, z_shape, *pool)
    winograd_chosen = setting != "im2col" and not keep_cols
    assert [c[0] for c in calls] == ["winograd_conv2d_grad_weight_fast" if winograd_chosen else "conv2d_grad_weight_fast"]
    if not winograd_chosen:
        assert calls[0][1].get("cols") is cols
    expected, size = (conv.conv2d_grad_weight_pooled_reference(
        a.astype(np.float64), argmax, conv.ConvSaved(b.astype(np.float64), w.astype(np.float64), (1, 1), pads, None),
        z_shape, *pool) for a, b in ((g, x), (np.abs(g), np.abs(x))))
    assert_close_to_magnitude("conv2d_grad_weight_pooled_fast", "dw", dw, expected, size)


@pytest.mark.parametrize("pads, chosen", [(((1, 1), (1, 1)), "conv2d_grad_weight_fast"),
                                          (((0, 0), (0, 0)), "winograd_conv2d_grad_weight_fast")])
def test_the_pooled_weight_gradient_chooses_by_the_paddings(monkeypatch, pads, chosen):
    """64 channels on 8x8 maps: "auto" takes Winograd for the 6x6 "valid" output (one
    whole F(6x6) tile) and im2col for the 8x8 "same" one: the paddings reach the choice."""
    rng = np.random.default_rng(29)
    x, w = rng.standard_normal((32, 8, 8, 64)).astype(F32), (0.1 * rng.standard_normal((3, 3, 64, 2))).astype(F32)
    side = 8 if pads[0][0] else 6
    pool, z_shape = ((2, 2), (1, 1), ((0, 0), (0, 0))), (32, side, side, 2)
    with tc.use_conv_algorithm("im2col"):
        _, argmax = conv_fast.conv2d_maxpool_fast(x, w, (1, 1), pads, *pool, (side - 1, side - 1))
    g = rng.standard_normal(argmax.shape).astype(F32)
    calls = []
    _recording(monkeypatch, winograd_fast, "winograd_conv2d_grad_weight_fast", calls)
    _recording(monkeypatch, conv_fast, "conv2d_grad_weight_fast", calls)
    with tc.use_conv_algorithm("auto"):
        dw = conv_fast.conv2d_grad_weight_pooled_fast(g, argmax, conv.ConvSaved(x, w, (1, 1), pads, None), z_shape, *pool)
    assert [c[0] for c in calls] == [chosen]
    expected, size = (conv.conv2d_grad_weight_pooled_reference(
        a.astype(np.float64), argmax, conv.ConvSaved(b.astype(np.float64), w.astype(np.float64), (1, 1), pads, None),
        z_shape, *pool) for a, b in ((g, x), (np.abs(g), np.abs(x))))
    assert_close_to_magnitude("conv2d_grad_weight_pooled_fast", "dw", dw, expected, size)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_the_padded_plane_keeps_the_inputs_dtype(dtype):
    """Kills ``x__padded_plane__mutmut_5``, ``_7`` and ``_12`` (the zeros in float64,
    NumPy's default, whatever x's dtype): a float32 face's plane stays float32, the
    dtype the one-channel kernels are compiled for (float64 would compile them again,
    read twice the bytes and multiply in another precision). Each side's padding is its own."""
    x = np.arange(1, 13, dtype=dtype).reshape(2, 2, 3, 1)
    xp = conv_fast._padded_plane(x, ((1, 2), (0, 1)))
    assert xp.dtype == dtype and xp.shape == (2, 5, 4)
    np.testing.assert_array_equal(xp[:, 1:3, 0:3], x[..., 0])
    inside = np.zeros(xp.shape, bool)
    inside[:, 1:3, 0:3] = True
    assert not xp[~inside].any()
