"""Conv2DTranspose (3x3, strides 2, "same") by the sub-pixel Winograd: the algebra, both
kernels (NumPy reference and Numba) against the direct transposed convolution in float64,
when it is chosen, and the layer and the inference plan using it.

Held to the library's float32 tolerance against float64, as test_winograd.py, the ATOL
relative to the largest sum of absolute products behind a value (``helpers.
assert_close_to_magnitude``): the transforms' rounding scales with those terms, not with
the result (measured on the reference kernel, F(6x6, 2x2): 1.6e-5 of a tile's largest
output with a single channel, 2.7e-5 with 128, the same as winograd.py's F(6x6, 3x3)).
A broken matrix entry is shown to fail that same tolerance.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tinycnn as tc
from helpers import assert_close, assert_close_to_magnitude, random_array
from tinycnn import backend as B
from tinycnn.kernels import conv, subpixel as S, subpixel_fast as SF, winograd_fast as WF
from tinycnn.kernels.shapes import paddings

SOME = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IMPLS = ["reference", "fast"]
SAME = ((0, 1), (0, 1))   # the padding of the convolution whose gradient a "same" Conv2DTranspose is


def f64(a):
    return a.astype(np.float64)


def direct(x, w, dy):
    """(y, dx, dw) of the transposed convolution, directly, in float64."""
    n, h, wd, _ = x.shape
    out = (n, 2 * h, 2 * wd, w.shape[2])
    pads = paddings("same", out[1:3], (3, 3), (2, 2))
    assert pads == SAME
    return (conv.conv2d_grad_input_reference(f64(x), f64(w), out, (2, 2), pads),
            conv.conv2d_reference(f64(dy), f64(w), (2, 2), pads),
            conv.conv2d_grad_weight_reference(f64(dy), f64(x), w.shape, (2, 2), pads))


def magnitudes(x, w, dy):
    """The same three of |x|, |w| and |dy|: the largest sums of absolute products."""
    return direct(np.abs(x), np.abs(w), np.abs(dy))


@pytest.mark.parametrize("m", sorted(S.MATRICES))
def test_one_dimensional_identity_holds_exactly(m):
    """y = A^T [(G g) * (B^T d)] is the 2-tap correlation of d with g (float64)."""
    BT, G, AT = S.matrices(m, np.float64)
    rng = np.random.default_rng(m)
    for _ in range(10):
        d, g = rng.standard_normal(m + 1), rng.standard_normal(2)
        np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), [d[k:k + 2] @ g for k in range(m)],
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m, r, points", [(2, 3, (0, 1, -1)), (4, 3, (0, 1, -1, 2, -2)), (3, 2, (0, 1, -1, 2)),
                                          (5, 3, (0, 1, -1, 2, -2, 1 / 2, -1 / 2))])
def test_toom_cook_gives_a_minimal_algorithm_for_any_points(m, r, points):
    """The construction, with infinity and without, for 3-tap kernels too: winograd.py's
    F(2x2, 3x3) and F(4x4, 3x3) points."""
    BT, G, AT = S.toom_cook(m, r, points)
    rng = np.random.default_rng(len(points))
    d, g = rng.standard_normal(m + r - 1), rng.standard_normal(r)
    np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), [d[k:k + r] @ g for k in range(m)], atol=1e-11)
    with pytest.raises(ValueError, match="distinct finite points"):
        S.toom_cook(m, r, points[:-2])
    with pytest.raises(ValueError, match="distinct finite points"):
        S.toom_cook(m, r, points[:-1] + points[:1])


def test_f6_is_winogradpy_f6_less_infinity():
    """As subpixel.POINTS says: F(6x6, 2x2)'s B^T and A^T are F(6x6, 3x3)'s without
    infinity's row and column, row 0 negated (its Lagrange polynomial's sign)."""
    from tinycnn.kernels import winograd as W
    BT, _, AT = S.MATRICES[6]
    np.testing.assert_array_equal(BT[1:], W.BT_6[1:7, :7])
    np.testing.assert_array_equal(BT[0], -W.BT_6[0, :7])
    np.testing.assert_array_equal(AT, W.AT_6[:, :7])


def spelt_out(transform, size):
    """The matrix of a spelt-out 1-D transform: its outputs for each unit vector, as columns."""
    return np.array([transform(*np.eye(size)[k]) for k in range(size)], np.float64).T


def test_spelt_out_transforms_are_the_matrices():
    BT, _, AT = S.MATRICES[6]
    np.testing.assert_array_equal(spelt_out(SF._bt7, 7), BT)
    np.testing.assert_array_equal(spelt_out(SF._b7, 7), BT.T)
    np.testing.assert_array_equal(spelt_out(SF._at7, 7), AT)
    np.testing.assert_array_equal(spelt_out(SF._a7, 6), AT.T)


def test_the_subpixel_kernel_copies_each_tap_once():
    """Each 3x3 tap lands in exactly the phases that use it (tap 1 of an axis in the odd
    phase, taps 0 and 2 in the even one), and the adjoint adds them back:
    <k(w), k'> = <w, k^T(k')>."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 4, 5))
    k = S.subpixel_kernel(w)
    assert k.shape == (2, 2, 5, 2, 2, 4)
    assert np.count_nonzero(k) == w.size   # 9 taps: 4 + 2 + 2 + 1 over the four phases
    np.testing.assert_array_equal(k[1, 1, :, 1, 1], w[1, 1].T)   # odd row, odd column: the centre tap
    np.testing.assert_array_equal(k[0, 0, :, 0, 0], w[2, 2].T)   # even, even, from the window's corner
    np.testing.assert_array_equal(k[1, 1, :, 0, 0], w[0, 0].T)
    other = rng.standard_normal(k.shape)
    assert np.isclose((k * other).sum(), (w * S.subpixel_kernel_adjoint(other)).sum())


def check_all(impl, m, x, w, b, dy, label):
    """Forward (with and without the epilogue) and both gradients against float64."""
    y, dx, dw = direct(x, w, dy)
    run, grads = getattr(conv.subpixel_conv_transpose, impl), getattr(conv.subpixel_conv_transpose_grads, impl)
    label = f"{label} F({m}x{m},2x2) {impl}"
    size_y, size_dx, size_dw = magnitudes(x, w, dy)
    size_b = size_y + np.abs(b)

    def near(what, got, expected, size=None):
        assert_close_to_magnitude(label, what, got, expected, size_b if size is None else size)

    near("forward", run(x, w, m=m), y, size_y)
    near("forward + bias", run(x, w, b, m=m), y + b)
    near("forward + bias + relu", run(x, w, b, True, m=m), np.maximum(y + b, 0))
    mean = getattr(conv.subpixel_conv_transpose_mean, impl)
    near("mean + bias", mean(x, w, b, m=m), (y + b).mean(axis=(1, 2)))
    near("mean + bias + relu", mean(x, w, b, True, m=m), np.maximum(y + b, 0).mean(axis=(1, 2)))
    both = grads(x, dy, w, m=m)
    near("input grad", both[0], dx, size_dx)
    near("weight grad", both[1], dw, size_dw)
    only_x, only_w = grads(x, dy, w, need_weight=False, m=m), grads(x, dy, w, need_input=False, m=m)
    assert only_x[1] is None and only_w[0] is None
    near("input grad alone", only_x[0], dx, size_dx)
    near("weight grad alone", only_w[1], dw, size_dw)


@st.composite
def problems(draw):
    """Any H, W (partial tiles on both edges), channels, batch."""
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    h, wd = draw(st.integers(1, 15)), draw(st.integers(1, 15))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return (random_array(rng, (n, h, wd, c)), random_array(rng, (3, 3, o, c)), random_array(rng, (o,)),
            random_array(rng, (n, 2 * h, 2 * wd, o)), f"subpixel x {(n, h, wd, c)} w {(3, 3, o, c)}")


@pytest.mark.parametrize("m", sorted(S.MATRICES))
@pytest.mark.parametrize("impl", IMPLS)
@SOME
@given(problems())
@example((np.ones((1, 1, 1, 1), np.float32), np.ones((3, 3, 1, 1), np.float32), np.ones(1, np.float32),
          np.ones((1, 2, 2, 1), np.float32), "one input pixel"))
def test_subpixel_equals_the_transposed_convolution(impl, m, problem):
    check_all(impl, m, *problem)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(3, 6, 6, 256, 128), (2, 12, 12, 128, 64), (2, 24, 24, 64, 32)])
def test_subpixel_on_updowns_layers(impl, shape):
    """updown's three Conv2DTranspose layers, each with the tile size chosen for it."""
    n, h, wd, c, o = shape
    rng = np.random.default_rng(h)
    x, w = random_array(rng, (n, h, wd, c)), random_array(rng, (3, 3, o, c), 0.05)
    check_all(impl, S.choose_tile(h, wd), x, w, random_array(rng, (o,)), random_array(rng, (n, 2 * h, 2 * wd, o)),
              "updown layer")


@pytest.mark.parametrize("threads", [1, 2])
def test_fast_kernel_in_several_blocks_and_threads(monkeypatch, threads):
    """Several blocks of images, shared between the threads: each block's tiles and each
    thread's share of the weight gradient land in their place."""
    monkeypatch.setattr(WF, "BLOCK_TILES", 4)     # two images of 2 x 2 tiles per block
    monkeypatch.setattr(B, "core_count", lambda: threads)
    rng = np.random.default_rng(3)
    x, w = random_array(rng, (5, 9, 11, 4)), random_array(rng, (3, 3, 3, 4))
    assert WF._block_images(5, 2 * 2) >= 1
    check_all("fast", 6, x, w, random_array(rng, (3,)), random_array(rng, (5, 18, 22, 3)), "in blocks")


@pytest.mark.parametrize("m", sorted(S.MATRICES))
@pytest.mark.parametrize("what", ["BT", "G", "AT"])
@pytest.mark.parametrize("impl", IMPLS)
def test_a_broken_transform_matrix_fails_the_tolerance(monkeypatch, impl, what, m):
    """The tolerance is honest: one entry of one matrix off by 1% is caught."""
    if impl == "fast" and m == 6 and what != "G":
        pytest.skip("the fast F(6x6, 2x2) transforms spell B^T and A^T out: "
                    "test_spelt_out_transforms_are_the_matrices checks those")
    BT, G, AT = (a.copy() for a in S.MATRICES[m])
    broken = {"BT": BT, "G": G, "AT": AT}[what]
    broken[1, 1] *= 1.01
    monkeypatch.setitem(S.MATRICES, m, (BT, G, AT))
    rng = np.random.default_rng(5)
    x, w = random_array(rng, (2, 8, 8, 3)), random_array(rng, (3, 3, 2, 3))
    with pytest.raises(AssertionError, match="outside rtol"):
        check_all(impl, m, x, w, random_array(rng, (2,)), random_array(rng, (2, 16, 16, 2)), "broken " + what)


def test_where_it_applies():
    x, w = (4, 6, 6, 8), (3, 3, 5, 8)
    assert S.applies(x, w, (2, 2), SAME, (4, 12, 12, 5))
    assert not S.applies(x, (5, 5, 5, 8), (2, 2), SAME, (4, 12, 12, 5))      # another kernel size
    assert not S.applies(x, w, (1, 1), SAME, (4, 12, 12, 5))                 # another stride
    assert not S.applies(x, w, (2, 2), ((0, 0), (0, 0)), (4, 13, 13, 5))    # "valid": 2H + 1
    assert not S.applies(x, w, (2, 2), ((1, 0), (0, 1)), (4, 12, 12, 5))    # the first tap elsewhere
    assert not S.applies(x, (3, 3, 5, 7), (2, 2), SAME, (4, 12, 12, 5))      # channels that disagree
    with pytest.raises(ValueError, match=r"subpixel_conv_transpose: needs a \(3, 3, O, C\) kernel"):
        SF.subpixel_conv_transpose_fast(np.zeros((1, 4, 4, 2), np.float32), np.zeros((5, 5, 3, 2), np.float32))
    with pytest.raises(ValueError, match="tile size must be one of"):
        S.matrices(5)


def test_chosen_follows_the_setting_and_the_size():
    w = (3, 3, 5, 8)
    big, small = (S.MIN_TILES, 6, 6, 8), (S.MIN_TILES - 1, 6, 6, 8)   # one F(6x6) tile per image
    out = lambda x: (x[0], 2 * x[1], 2 * x[2], 5)  # noqa: E731
    assert S.applies(small, w, (2, 2), SAME, out(small))
    assert S.chosen(big, w, (2, 2), SAME, out(big))
    assert not S.chosen(small, w, (2, 2), SAME, out(small))
    assert S.chosen((S.MIN_TILES // 4, 12, 12, 8), w, (2, 2), SAME, out((S.MIN_TILES // 4, 12, 12, 8)))  # 4 tiles each
    with tc.use_conv_algorithm("winograd"):
        assert S.chosen(small, w, (2, 2), SAME, out(small))
        assert not S.chosen(small, w, (1, 1), SAME, out(small))   # forced, but only where it applies
    with tc.use_conv_algorithm("im2col"):
        assert not S.chosen(big, w, (2, 2), SAME, out(big))


@pytest.mark.parametrize("relu", [False, True])
def test_the_layer_and_the_plan_take_it_when_chosen(monkeypatch, backend, relu):
    """A Conv2DTranspose layer, forward and backward, and ``predict``'s plan: the sub-pixel
    kernels are called where chosen, and the results are the direct kernels' (float32)."""
    calls = []
    for name in ("subpixel_conv_transpose", "subpixel_conv_transpose_grads"):
        real = getattr(conv, name)
        monkeypatch.setattr(conv, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])
    rng = np.random.default_rng(1)
    model = tc.Sequential([tc.layers.Conv2DTranspose(6, 3, strides=2, padding="same",
                                                     activation="relu" if relu else None)])
    model.build((5, 5, 4))
    model.layers[0].bias.data[:] = random_array(rng, (6,))
    x, g = random_array(rng, (3, 5, 5, 4)), random_array(rng, (3, 10, 10, 6))

    def run(setting):
        with tc.use_conv_algorithm(setting):
            xt = tc.Tensor(x, requires_grad=True)
            y = model(xt, training=True)
            (y * tc.Tensor(g)).sum().backward()
            grads = xt.grad.copy(), model.layers[0].kernel.grad.copy(), model.layers[0].bias.grad.copy()
            for p in model.parameters():
                p.grad = None
            return y.data.copy(), grads, model.predict(x)

    expected = run("im2col")
    assert calls == []
    got = run("winograd")
    assert calls == ["subpixel_conv_transpose", "subpixel_conv_transpose_grads", "subpixel_conv_transpose"]
    assert_close("Conv2DTranspose", "output", got[0], expected[0])
    for what, a, b in zip(("input grad", "kernel grad", "bias grad"), got[1], expected[1]):
        assert_close("Conv2DTranspose", what, a, b)
    assert_close("Conv2DTranspose", "predict", got[2], expected[2])


def test_an_inference_copy_keeps_the_transform_and_follows_new_weights():
    """``predict`` on a large batch goes through the frozen kernel's kept transform, and a
    model whose weights change predicts with the new ones."""
    rng = np.random.default_rng(2)
    model = tc.Sequential([tc.layers.Conv2DTranspose(3, 3, strides=2, padding="same")])
    model.build((6, 6, 4))
    x = random_array(rng, (S.MIN_TILES, 6, 6, 4))
    first = model.predict(x)
    copy = model._current_inference_copy()
    assert WF.is_frozen(copy.layers[0].kernel.data)
    assert ("subpixel", 6) in WF._frozen_transforms(copy.layers[0].kernel.data)
    with tc.use_conv_algorithm("im2col"):
        assert_close("frozen", "predict", first, model.predict(x))
    model.layers[0].kernel.data[...] = random_array(rng, model.layers[0].kernel.shape)
    again = model.predict(x)
    with tc.use_conv_algorithm("im2col"):
        assert_close("after new weights", "predict", again, model.predict(x))
    assert np.abs(again - first).max() > 1e-3


@pytest.mark.parametrize("setting", ["winograd", "auto", "im2col"])
def test_the_plan_takes_the_mean_of_a_conv_transpose_in_one_step(setting):
    """Conv2DTranspose then GlobalAveragePooling2D is one step of the plan, whose result is
    the two layers' called one by one, whichever algorithm runs it."""
    rng = np.random.default_rng(4)
    model = tc.Sequential([tc.layers.Conv2DTranspose(6, 3, strides=2, padding="same", activation="relu"),
                           tc.layers.GlobalAveragePooling2D(), tc.layers.Dense(3)])
    model.build((13, 7, 5))
    model.layers[0].bias.data[:] = random_array(rng, (6,))
    x = random_array(rng, (S.MIN_TILES // 2 + 1, 13, 7, 5))    # two F(6x6) tiles per image: chosen under "auto"
    steps = model.inference_plan().steps
    assert [s.label for s in steps] == ["Conv2DTranspose(relu) + GlobalAveragePooling2D", "Dense"]
    with tc.use_conv_algorithm(setting):
        got = model.predict(x)
        with tc.no_grad():
            expected = x
            for layer in model.layers:
                expected = layer(tc.Tensor(expected), training=False).data
    assert_close("Conv2DTranspose + GlobalAveragePooling2D", f"predict ({setting})", got, expected)
