"""Winograd F(m x m, 3x3): the algebra, both kernels (NumPy reference and Numba) against
the direct convolution in float64, the algorithm switch, and the layer using it.

The float32 error of Winograd is larger than the direct sum's (the transforms add and
subtract terms of different sizes), so its kernels are held to the library's float32
tolerance against a float64 direct convolution (RTOL 1e-4, ATOL 1e-5), the ATOL relative
to the largest sum of absolute products behind a value (the convolution of |x| with
|w|), which bounds the rounding of any order of summation: an output near zero still
carries the rounding of the large terms that cancelled into it. A deliberately broken
transform matrix is shown to fail that same tolerance by far.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fer_models
import tinycnn as tc
from helpers import RTOL, ATOL, assert_close, assert_close_to_magnitude, random_array
from tinycnn import backend as B
from tinycnn.kernels import conv, winograd as W, winograd_fast as WF

SOME = settings(max_examples=20, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
IMPLS = ["reference", "fast"]


@pytest.mark.parametrize("m", sorted(W.MATRICES))
def test_one_dimensional_identity_holds_exactly(m):
    """y = A^T [(G g) * (B^T d)] is the 3-tap correlation of d with g (float64)."""
    BT, G, AT = W.matrices(m, np.float64)
    rng = np.random.default_rng(m)
    for _ in range(10):
        d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
        direct = np.array([d[k:k + 3] @ g for k in range(m)])
        np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), direct, rtol=1e-12, atol=1e-12)
    assert BT.shape == (m + 2, m + 2) and G.shape == (m + 2, 3) and AT.shape == (m, m + 2)


@st.composite
def problems(draw):
    """(x, w, pads, dy, label): 3x3 kernels, any H, W (partial tiles), any padding <= 2."""
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    pads = ((draw(st.integers(0, 2)), draw(st.integers(0, 2))), (draw(st.integers(0, 2)), draw(st.integers(0, 2))))
    h = draw(st.integers(max(1, 3 - sum(pads[0])), 13))
    wd = draw(st.integers(max(1, 3 - sum(pads[1])), 13))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x, w = random_array(rng, (n, h, wd, c)), random_array(rng, (3, 3, c, o))
    dy = random_array(rng, (n, h + sum(pads[0]) - 2, wd + sum(pads[1]) - 2, o))
    return x, w, pads, dy, f"winograd x {x.shape} w {w.shape} pads {pads}"


def check_all(impl, m, x, w, pads, dy, label):
    """Forward, input gradient and weight gradient against the float64 direct kernels,
    each within the tolerance relative to its largest sum of absolute products
    (``assert_close_to_magnitude``: the transforms' rounding scales with those, not with
    the result)."""
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    expected_y = conv.conv2d_reference(f64(x), f64(w), (1, 1), pads)
    expected_dx = conv.conv2d_grad_input_reference(f64(dy), f64(w), x.shape, (1, 1), pads)
    expected_dw = conv.conv2d_grad_weight_reference(f64(x), f64(dy), w.shape, (1, 1), pads)
    size_y = conv.conv2d_reference(np.abs(f64(x)), np.abs(f64(w)), (1, 1), pads)
    size_dx = conv.conv2d_grad_input_reference(np.abs(f64(dy)), np.abs(f64(w)), x.shape, (1, 1), pads)
    size_dw = conv.conv2d_grad_weight_reference(np.abs(f64(x)), np.abs(f64(dy)), w.shape, (1, 1), pads)
    label = f"{label} F({m}x{m},3x3) {impl}"

    def near(what, got, expected, size):
        assert_close_to_magnitude(label, what, got, expected, size)

    near("forward", getattr(conv.winograd_conv2d, impl)(x, w, (1, 1), pads, m=m), expected_y, size_y)
    near("input grad", getattr(conv.winograd_conv2d_grad_input, impl)(dy, w, x.shape, (1, 1), pads, m=m),
         expected_dx, size_dx)
    near("weight grad", getattr(conv.winograd_conv2d_grad_weight, impl)(x, dy, w.shape, (1, 1), pads, m=m),
         expected_dw, size_dw)
    both = getattr(conv.winograd_conv2d_grads, impl)(x, dy, w, (1, 1), pads, m=m)
    near("input grad (both at once)", both[0], expected_dx, size_dx)
    near("weight grad (both at once)", both[1], expected_dw, size_dw)
    assert getattr(conv.winograd_conv2d_grads, impl)(x, dy, w, (1, 1), pads, need_input=False, m=m)[0] is None
    assert getattr(conv.winograd_conv2d_grads, impl)(x, dy, w, (1, 1), pads, need_weight=False, m=m)[1] is None


@pytest.mark.parametrize("m", sorted(W.MATRICES))
@pytest.mark.parametrize("impl", IMPLS)
@SOME
@given(problems())
@example((np.ones((1, 3, 3, 1), np.float32), np.ones((3, 3, 1, 1), np.float32), ((0, 0), (0, 0)),
          np.ones((1, 1, 1, 1), np.float32), "one output pixel"))
def test_winograd_equals_direct_convolution(impl, m, problem):
    check_all(impl, m, *problem)


@pytest.mark.parametrize("impl", IMPLS)
def test_winograd_on_a_seed_layer_shape(impl):
    """A real layer (vggbn's 4th: 20x20x128 -> 128, valid) in several batch chunks."""
    rng = np.random.default_rng(7)
    x, w = random_array(rng, (3, 20, 20, 128)), random_array(rng, (3, 3, 128, 128), 0.05)
    dy = random_array(rng, (3, 18, 18, 128))
    check_all(impl, W.TILE, x, w, ((0, 0), (0, 0)), dy, "vggbn layer")


def test_fast_kernel_in_several_blocks(monkeypatch):
    monkeypatch.setattr(WF, "BLOCK_TILES", 20)  # two images of 3 x 3 tiles per block
    rng = np.random.default_rng(3)
    x, w = random_array(rng, (5, 9, 11, 4)), random_array(rng, (3, 3, 4, 3))
    assert WF._block_images(5, 3 * 3) == 2
    check_all("fast", 4, x, w, ((1, 1), (1, 1)), random_array(rng, (5, 9, 11, 3)), "in blocks")


@pytest.mark.parametrize("m", sorted(W.MATRICES))
@pytest.mark.parametrize("what", ["BT", "G", "AT"])
@pytest.mark.parametrize("impl", IMPLS)
def test_a_broken_transform_matrix_fails_the_tolerance(monkeypatch, impl, what, m):
    """The tolerance is honest: one entry of one matrix off by 1% is caught."""
    if impl == "fast" and m in (4, 6) and what != "G":
        pytest.skip("the fast F(4x4) and F(6x6) transforms spell B^T and A^T out instead of reading them: "
                    "test_spelt_out_transforms_are_the_matrices checks those")
    BT, G, AT = (a.copy() for a in W.MATRICES[m])
    broken = {"BT": BT, "G": G, "AT": AT}[what]
    broken[1, 1] *= 1.01  # a nonzero entry in each of the six matrices
    monkeypatch.setitem(W.MATRICES, m, (BT, G, AT))
    rng = np.random.default_rng(5)
    x, w = random_array(rng, (2, 8, 8, 3)), random_array(rng, (3, 3, 3, 2))
    with pytest.raises(AssertionError, match="outside rtol"):
        check_all(impl, m, x, w, ((1, 1), (1, 1)), random_array(rng, (2, 8, 8, 2)), "broken " + what)


def spelt_out(transform, size):
    """The matrix of a spelt-out 1-D transform: its outputs for each unit vector, as columns."""
    return np.array([transform(*np.eye(size)[k]) for k in range(size)], np.float64).T


@pytest.mark.parametrize("m, bt, b, at, a", [(4, WF._bt4, WF._b4, WF._at4, WF._a4), (6, WF._bt6, WF._b6, WF._at6, WF._a6)])
def test_spelt_out_transforms_are_the_matrices(m, bt, b, at, a):
    """The fast F(4x4, 3x3) and F(6x6, 3x3) kernels write B^T, B, A^T and A as arithmetic;
    each must be exactly its matrix (entries of a few bits: quarters, powers of two, so
    float64 equality), or the kernels compute another algorithm with the same test
    results on the matrices."""
    BT, _, AT = W.MATRICES[m]
    np.testing.assert_array_equal(spelt_out(bt, m + 2), BT)
    np.testing.assert_array_equal(spelt_out(b, m + 2), BT.T)
    np.testing.assert_array_equal(spelt_out(at, m + 2), AT)
    np.testing.assert_array_equal(spelt_out(a, m), AT.T)


def test_winograd_needs_3x3_stride_1():
    x, w = np.zeros((1, 5, 5, 2), np.float32), np.zeros((3, 3, 2, 1), np.float32)
    with pytest.raises(ValueError, match="3x3 kernel and strides"):
        conv.winograd_conv2d(x, w, (2, 2), ((0, 0), (0, 0)))
    with pytest.raises(ValueError, match="3x3 kernel and strides"):
        conv.winograd_conv2d(x, np.zeros((5, 5, 2, 1), np.float32), (1, 1), ((0, 0), (0, 0)))
    with pytest.raises(ValueError, match="has 2 channels"):
        conv.winograd_conv2d(x, np.zeros((3, 3, 4, 1), np.float32), (1, 1), ((0, 0), (0, 0)))
    with pytest.raises(ValueError, match="tile size"):
        W.matrices(3)


# -- the switch ---------------------------------------------------------------------------------
def test_choose_algorithm_follows_the_setting():
    big, first, one_face = (16, 12, 12, 64), (8, 48, 48, 1), (1, 12, 12, 64)
    k3, k3_first, k5 = (3, 3, 64, 64), (3, 3, 1, 32), (5, 5, 64, 64)
    with tc.use_conv_algorithm("auto"):
        assert conv.choose_algorithm(big, k3, (1, 1)) == "winograd"
        assert conv.choose_algorithm(first, k3_first, (1, 1)) == "im2col"
        assert conv.choose_algorithm(one_face, k3, (1, 1)) == "im2col"
        assert conv.choose_algorithm(big, k3, (2, 2)) == "im2col"
        assert conv.choose_algorithm(big, k5, (1, 1)) == "im2col"
        k3_32 = (3, 3, 32, 64)   # 32 channels: only on large maps
        assert conv.choose_algorithm((8, 23, 23, 32), k3_32, (1, 1)) == "winograd"
        assert conv.choose_algorithm((8, 19, 19, 32), k3_32, (1, 1)) == "im2col"
        assert conv.choose_algorithm((8, 46, 46, 16), (3, 3, 16, 64), (1, 1)) == "im2col"
        # a 6x6 map of 64+ channels, 'same': one whole F(6x6) tile per image; 'valid' (4x4 out) is not
        same, valid = ((1, 1), (1, 1)), ((0, 0), (0, 0))
        assert conv.choose_algorithm((128, 6, 6, 128), (3, 3, 128, 256), (1, 1), same) == "winograd"
        assert conv.choose_algorithm((128, 6, 6, 128), (3, 3, 128, 256), (1, 1), valid) == "im2col"
        # a 5x5 output: one F(6x6) tile per image, 64 products against 225, in a batch
        assert conv.choose_algorithm((128, 7, 7, 256), (3, 3, 256, 256), (1, 1), valid) == "winograd"
        assert conv.choose_algorithm((8, 7, 7, 256), (3, 3, 256, 256), (1, 1), valid) == "im2col"
        assert conv.choose_algorithm((128, 8, 8, 256), (3, 3, 256, 256), (1, 1), valid) == "winograd"  # 6x6 out
        assert conv.choose_algorithm((128, 5, 5, 256), (3, 3, 256, 256), (1, 1), valid) == "im2col"  # 3x3 out
        assert conv.choose_algorithm((128, 6, 6, 32), (3, 3, 32, 64), (1, 1), same) == "im2col"
    with tc.use_conv_algorithm("winograd"):
        assert conv.choose_algorithm(first, k3_first, (1, 1)) == "winograd"
        assert conv.choose_algorithm(big, k5, (1, 1)) == "im2col"  # Winograd does not apply
    with tc.use_conv_algorithm("im2col"):
        assert conv.choose_algorithm(big, k3, (1, 1)) == "im2col"
    assert tc.get_conv_algorithm() == "auto"
    with pytest.raises(ValueError, match="expected one of"):
        tc.set_conv_algorithm("fft")


def test_choose_tile_takes_f6_where_its_products_are_fewer():
    """F(6x6) where its 64 products per tile over fewer tiles are at most 0.8 of F(4x4)'s:
    an 18x18 output (9 x 64 = 576 against 25 x 36 = 900), 12x12 (256 against 324), 6x6
    (64 against 144); not 44x44 (4096 against 4356) or 20x20 (1024 against 900)."""
    for (ho, wo), m in [((18, 18), 6), ((12, 12), 6), ((6, 6), 6), ((5, 5), 6), ((30, 18), 6), ((44, 44), 4),
                        ((20, 20), 4), ((7, 7), 4), ((2, 2), 4), ((1, 1), 4)]:
        assert W.choose_tile(ho, wo) == m, (ho, wo)
    # and only on at least F6_MIN_TILES of its tiles in the batch: 18x18 is 9 tiles an image
    assert [W.choose_tile(18, 18, n) for n in (1, 7, 8, 128)] == [4, 4, 6, 6]


@pytest.mark.parametrize("impl", IMPLS)
def test_the_tile_is_chosen_from_the_output_size(impl, monkeypatch):
    """Without m, each entry takes ``choose_tile``'s F(m x m) for its output: the same
    results as asking for that m, not those of another."""
    rng = np.random.default_rng(3)
    x, w = random_array(rng, (8, 20, 20, 3)), random_array(rng, (3, 3, 3, 4))  # 18x18 output, 72 tiles: F(6x6)
    dy, pads = random_array(rng, (8, 18, 18, 4)), ((0, 0), (0, 0))
    for f, args in [(conv.winograd_conv2d, (x, w, (1, 1), pads)),
                    (conv.winograd_conv2d_grad_input, (dy, w, x.shape, (1, 1), pads)),
                    (conv.winograd_conv2d_grad_weight, (x, dy, w.shape, (1, 1), pads))]:
        chosen = getattr(f, impl)(*args)
        np.testing.assert_array_equal(chosen, getattr(f, impl)(*args, m=6))
        assert not np.array_equal(chosen, getattr(f, impl)(*args, m=4))  # rounding differs between tile sizes
    monkeypatch.setattr(W, "F6_MAX_PRODUCTS", 0.6)
    np.testing.assert_array_equal(getattr(conv.winograd_conv2d, impl)(x, w, (1, 1), pads),
                                  getattr(conv.winograd_conv2d, impl)(x, w, (1, 1), pads, m=4))


def test_the_layer_calls_winograd_when_chosen(monkeypatch):
    """Conv2D goes through the Winograd kernels (forward and both gradients) when the
    setting says so, and gives the im2col result and gradients."""
    calls = []

    def recording(fn, name):
        return lambda *a, **k: calls.append(name) or fn(*a, **k)

    for name in ("winograd_conv2d", "winograd_conv2d_grads"):
        original = getattr(conv, name)
        monkeypatch.setattr(conv, name, B.dispatch(recording(original.reference, name), recording(original.fast, name)))
    rng = np.random.default_rng(0)
    x = random_array(rng, (2, 10, 10, 8))
    g = random_array(rng, (2, 10, 10, 16))
    results = {}
    for algorithm in ("im2col", "winograd"):
        layer = tc.layers.Conv2D(16, 3, padding="same", activation="relu")
        layer.ensure_built((10, 10, 8), np.random.default_rng(1))
        xt = tc.Tensor(x, requires_grad=True)
        with tc.use_conv_algorithm(algorithm):
            y = layer(xt, training=True)
            y.backward(g)
        results[algorithm] = (y.numpy(), xt.grad, layer.kernel.grad, layer.bias.grad)
    assert calls == ["winograd_conv2d", "winograd_conv2d_grads"]  # both gradients in one pass
    for what, a, b in zip(("output", "input grad", "kernel grad", "bias grad"), *results.values()):
        assert_close("Conv2D(16, 3, same, relu) winograd vs im2col", what, b, a, RTOL, ATOL)


@pytest.mark.parametrize("m", sorted(W.MATRICES))
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, pads", [((5, 9, 7, 5), ((1, 1), (1, 1))), ((4, 12, 11, 3), ((0, 0), (0, 0)))])
def test_blocks_shared_between_threads(m, threads, shape, pads, monkeypatch):
    """The fast path's blocks of images, on one thread or shared between two (5 blocks:
    an uneven share), give the float64 direct results; the forward and the input gradient
    (each image on its own) are the same bits either way."""
    import numba
    monkeypatch.setattr(WF, "BLOCK_TILES", 1)          # one image per block
    rng = np.random.default_rng(m)
    x, w = random_array(rng, shape), random_array(rng, (3, 3, shape[3], 6))
    dy = random_array(rng, conv.conv2d_output_shape(x.shape, w.shape, (1, 1), pads))
    previous = numba.get_num_threads()
    results = {}
    try:
        for t in sorted({1, threads}):
            numba.set_num_threads(min(t, numba.config.NUMBA_NUM_THREADS))
            check_all("fast", m, x, w, pads, dy, f"{t} thread(s), blocks of one image")
            results[t] = (conv.winograd_conv2d.fast(x, w, (1, 1), pads, m=m),
                          conv.winograd_conv2d_grad_input.fast(dy, w, x.shape, (1, 1), pads, m=m))
    finally:
        numba.set_num_threads(previous)
    for a, b in zip(results[1], results[threads]):
        np.testing.assert_array_equal(a, b)


def test_blocks_run_on_every_thread(monkeypatch):
    """With two threads and several blocks, the shares go to two threads, the blocks taken
    in turn, the caller running the first share; with one block or one thread, the
    caller's thread runs it alone."""
    import threading

    import numba
    if numba.config.NUMBA_NUM_THREADS < 2 or not WF.PARALLEL:
        pytest.skip("needs two Numba threads")
    seen = []
    work = lambda starts: seen.append((threading.get_ident(), starts)) or len(starts)  # noqa: E731
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        assert WF._in_blocks(10, 2, work) == [3, 2]
        assert sorted(starts for _, starts in seen) == [[0, 4, 8], [2, 6]]
        assert dict((tuple(starts), ident) for ident, starts in seen)[(0, 4, 8)] == threading.get_ident()
        assert len({ident for ident, _ in seen}) == 2
        seen.clear()
        assert WF._in_blocks(3, 4, work) == [1] and seen == [(threading.get_ident(), [0])]
        # a map of one tile per image: about BLOCK_TILES images a block, but a block for each thread
        assert WF._block_images(128, 1) == 64 and WF._block_images(1000, 1) == WF.BLOCK_TILES
        numba.set_num_threads(1)
        seen.clear()
        assert WF._in_blocks(10, 2, work) == [5] and seen[0][0] == threading.get_ident()
    finally:
        numba.set_num_threads(previous)


def test_one_image_splits_its_products_and_a_batch_its_blocks(monkeypatch):
    """One face's block has the cores to itself: its large stack of products is split
    between two threads (inside the one-thread block ``predict`` runs one face in, too);
    a batch's blocks are shared between the threads, and then no share splits its
    products again (each waits for no one). Split or not, the face's outputs are the same."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2 or not WF.PARALLEL:
        pytest.skip("needs two Numba threads")
    from tinycnn import backend
    calls = []
    on_cores = backend.on_cores
    monkeypatch.setattr(backend, "on_cores", lambda jobs: calls.append(len(jobs)) or on_cores(jobs))
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 3, 128, 256)).astype(np.float32)
    x = rng.standard_normal((3, 12, 12, 128)).astype(np.float32)
    pads = ((1, 1), (1, 1))
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        WF.freeze_kernel(w)          # as an inference copy's: its transform computed once, here
        WF._kernel_transform_fast(w, 4)
        calls.clear()
        with backend.one_numba_thread():
            one = WF.winograd_conv2d_fast(x[:1], w, (1, 1), pads, m=4)   # 36 x (9, 128) @ (128, 256): 10.6M
        assert calls == [1, 2]   # the blocks: one share; its products: two
        calls.clear()
        WF.winograd_conv2d_fast(x, w, (1, 1), pads, m=4)
        assert calls == [2]      # two shares of blocks, each multiplying in its own thread
        numba.set_num_threads(1)
        calls.clear()
        alone = WF.winograd_conv2d_fast(x[:1], w, (1, 1), pads, m=4)
        assert calls == [1]      # one core: nothing split
    finally:
        numba.set_num_threads(previous)
    np.testing.assert_array_equal(one, alone)   # each point's product whole either way


def test_a_frozen_kernel_keeps_its_transform(monkeypatch):
    """``freeze_kernel`` makes the array read-only and its transforms are computed once per
    tile size; another array, even equal, is not frozen; the entry goes with the array."""
    import gc
    rng = np.random.default_rng(9)
    w = random_array(rng, (3, 3, 4, 5))
    WF.freeze_kernel(w)
    assert WF.is_frozen(w) and not w.flags.writeable and not WF.is_frozen(w.copy())
    computed = []
    original = np.kron
    monkeypatch.setattr(WF.np, "kron", lambda *a: computed.append(1) or original(*a))
    u4 = WF._kernel_transform_fast(w, 4)
    assert WF._kernel_transform_fast(w, 4) is u4 and not u4.flags.writeable
    WF._kernel_transform_fast(w, 6)
    assert len(computed) == 2                      # F(4x4) once, F(6x6) once
    x = random_array(rng, (1, 12, 12, 4))
    np.testing.assert_allclose(conv.winograd_conv2d.fast(x, w, (1, 1), ((1, 1), (1, 1))),
                               conv.winograd_conv2d.fast(x, w.copy(), (1, 1), ((1, 1), (1, 1))), rtol=0, atol=0)
    key = id(w)
    del w, u4
    gc.collect()
    assert key not in WF._frozen


def test_a_frozen_kernel_takes_winograd_from_one_image():
    """With its transform kept, F(4x4) from one image on maps of 8x8 outputs or more, 32+
    channels, C x O up to 128 x 256; the others as without it."""
    with tc.use_conv_algorithm("auto"):
        for x_shape, w_shape, pads, frozen, expected in [
                ((1, 22, 22, 64), (3, 3, 64, 128), ((0, 0), (0, 0)), True, "winograd"),
                ((1, 22, 22, 64), (3, 3, 64, 128), ((0, 0), (0, 0)), False, "im2col"),
                ((1, 24, 24, 32), (3, 3, 32, 64), ((1, 1), (1, 1)), True, "winograd"),
                ((1, 9, 9, 128), (3, 3, 128, 256), ((0, 0), (0, 0)), True, "im2col"),       # 7x7 out
                ((1, 10, 10, 256), (3, 3, 256, 512), ((0, 0), (0, 0)), True, "im2col"),     # C x O
                ((1, 48, 48, 1), (3, 3, 1, 32), ((1, 1), (1, 1)), True, "im2col"),          # a first layer
                ((128, 9, 9, 128), (3, 3, 128, 256), ((0, 0), (0, 0)), True, "winograd")]:  # the batch rule
            assert conv.choose_algorithm(x_shape, w_shape, (1, 1), pads, frozen) == expected, (x_shape, frozen)
    with tc.use_conv_algorithm("im2col"):
        assert conv.choose_algorithm((1, 22, 22, 64), (3, 3, 64, 128), (1, 1), frozen=True) == "im2col"


def test_an_inference_copy_freezes_its_kernels():
    """Every Conv2D kernel of an inference copy is frozen, none of the model's; one face
    through the copy gives the model's output (Winograd with the kept transform)."""
    model = fer_models.build("vggbn", seed=2)
    x = np.random.default_rng(10).random((1, 48, 48, 1), dtype=np.float32)
    with tc.no_grad():
        expected = model(x).numpy()
    copy = model.inference_copy()
    convs = [layer for layer in copy.all_layers() if isinstance(layer, tc.layers.Conv2D)]
    assert convs and all(WF.is_frozen(layer.kernel.data) for layer in convs)
    assert not any(WF.is_frozen(layer.kernel.data) for layer in model.all_layers() if isinstance(layer, tc.layers.Conv2D))
    with tc.no_grad():
        assert_close("vggbn inference copy, one face", "output", copy(x).numpy(), expected, RTOL, ATOL)


@pytest.mark.parametrize("m", [4, 6])
@pytest.mark.parametrize("size, pads", [(23, ((0, 0), (0, 0))), (12, ((1, 1), (1, 1))), (9, ((0, 1), (1, 0)))])
def test_winograd_conv2d_maxpool_is_the_pool_of_the_convolution(m, size, pads):
    """Each block's output pooled in cache (2x2 windows, an odd output's last row and column
    left out as a valid pool leaves them): the pooled map of the reference convolution,
    and winning taps holding the window's maximum (ties are broken by rounding here)."""
    from tinycnn.kernels import pool
    rng = np.random.default_rng(size + m)
    x, w = rng.standard_normal((5, size, size + 1, 6)).astype(np.float32), rng.standard_normal((3, 3, 6, 4)).astype(np.float32)
    z = conv.conv2d_reference(x, w, (1, 1), pads)
    pool_hw = (z.shape[1] // 2, z.shape[2] // 2)
    y_ref, _ = pool.maxpool_reference(z, (2, 2), (2, 2), ((0, 0), (0, 0)), pool_hw)
    y, argmax = WF.winograd_conv2d_maxpool(x, w, (1, 1), pads, pool_hw, m=m)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    taps = np.stack([z[:, a:2 * pool_hw[0]:2, b:2 * pool_hw[1]:2] for a in (0, 1) for b in (0, 1)])
    chosen = np.take_along_axis(taps, argmax[None].astype(np.int64), axis=0)[0]
    np.testing.assert_allclose(chosen, y_ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="pooled size"):
        WF.winograd_conv2d_maxpool(x, w, (1, 1), pads, (pool_hw[0] + 1, pool_hw[1]), m=m)


@pytest.mark.parametrize("m", [4, 6])
def test_winograd_conv2d_maxpool_with_the_batchnorm_epilogue(m):
    """With ``affine`` (a ReLU convolution's bias, then an inference BatchNorm's scale of
    both signs and shift) each block's output is mapped before it is pooled: the pool of
    the mapped reference convolution, and ``conv2d_affine_maxpool`` takes this route for
    a Winograd layer."""
    from tinycnn.kernels import pool
    rng = np.random.default_rng(40 + m)
    x, w = rng.standard_normal((5, 14, 13, 6)).astype(np.float32), rng.standard_normal((3, 3, 6, 4)).astype(np.float32)
    b, shift = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    scale = np.array([0.7, -1.3, 1.1, -0.4], np.float32)
    pads = ((0, 0), (0, 0))
    z = conv.bias_relu_affine_reference(conv.conv2d_reference(x, w, (1, 1), pads), b, scale, shift)
    pool_hw = (z.shape[1] // 2, z.shape[2] // 2)
    y_ref, _ = pool.maxpool_reference(z, (2, 2), (2, 2), pads, pool_hw)
    y, _ = WF.winograd_conv2d_maxpool(x, w, (1, 1), pads, pool_hw, m=m, affine=(b, scale, shift))
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    with tc.use_conv_algorithm("winograd"):
        got = conv.conv2d_affine_maxpool.fast(x, w, b, scale, shift, (1, 1), pads, (2, 2), (2, 2), pads, pool_hw)
    np.testing.assert_allclose(got, y_ref, rtol=1e-4, atol=1e-4)
