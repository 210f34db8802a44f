"""Checks of tinycnn/kernels/winograd.py that its mutation run (tests/mutation/run.sh)
showed missing: the matrices and the reference kernels in the precision asked for; the
gate's messages in full; F(6x6) only from ``F6_MIN_TILES`` tiles in the batch; the fast
path taking the spelt-out F(4x4) and F(6x6) transforms, the loops otherwise; each reference
entry's tile chosen for its own batch; the output transform's adjoint as its transpose."""
import numpy as np
import pytest

from helpers import assert_close_to_magnitude
from tinycnn.kernels import conv, winograd as W, winograd_fast as WF

F32, F64 = np.float32, np.float64


@pytest.mark.parametrize("m", sorted(W.MATRICES))
def test_the_matrices_come_in_the_dtype_asked_for(m):
    for got, exact in zip(W.matrices(m), W.MATRICES[m]):
        assert got.dtype == F32 and np.array_equal(got, exact.astype(F32))
    for got, exact in zip(W.matrices(m, F64), W.MATRICES[m]):
        assert got.dtype == F64 and np.array_equal(got, exact)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("m", sorted(W.MATRICES))
def test_reference_kernels_compute_in_their_inputs_precision(dtype, m):
    rng = np.random.default_rng(m)
    x, w = rng.standard_normal((2, 7, 8, 3)), rng.standard_normal((3, 3, 3, 2))
    pads = ((1, 0), (0, 1))
    dy = rng.standard_normal(conv.conv2d_output_shape(x.shape, w.shape, (1, 1), pads))
    direct = (conv.conv2d_reference(x, w, (1, 1), pads), conv.conv2d_grad_input_reference(dy, w, x.shape, (1, 1), pads),
              conv.conv2d_grad_weight_reference(x, dy, w.shape, (1, 1), pads))          # float64
    got = (W.winograd_conv2d_reference(x.astype(dtype), w.astype(dtype), (1, 1), pads, m),
           W.winograd_conv2d_grad_input_reference(dy.astype(dtype), w.astype(dtype), x.shape, (1, 1), pads, m),
           W.winograd_conv2d_grad_weight_reference(x.astype(dtype), dy.astype(dtype), w.shape, (1, 1), pads, m))
    tol = 1e-4 if dtype == F32 else 1e-9
    for name, g, d in zip(("forward", "input gradient", "weight gradient"), got, direct):
        assert g.dtype == dtype, f"F({m}x{m}) {name}: {g.dtype}"
        np.testing.assert_allclose(g, d, rtol=tol, atol=tol, err_msg=f"F({m}x{m}) {name}")
    assert W.kernel_transform(w.astype(dtype), m).dtype == dtype


def refusal(*args, **kwargs):
    with pytest.raises(ValueError) as e:
        W.check_winograd_shapes(*args, **kwargs)
    return str(e.value)


def test_the_gate_names_each_problem_in_full():
    none = ((0, 0), (0, 0))
    assert refusal((1, 5, 5, 2), (3, 3, 2, 1), (2, 1), none, who="conv2d") == "conv2d: Winograd F(m, 3x3) needs a " \
        "3x3 kernel and strides (1, 1), got kernel (3, 3) and strides (2, 1)"
    assert refusal((1, 5, 5, 2), (3, 5, 2, 1), (1, 1), none).startswith("winograd: Winograd F(m, 3x3) needs a 3x3")
    assert refusal((1, 5, 5, 2), (5, 3, 2, 1), (1, 1), none).startswith("winograd: Winograd F(m, 3x3) needs a 3x3")
    assert refusal((1, 5, 5, 2), (3, 3, 2), (1, 1), none).startswith("winograd: Winograd F(m, 3x3) needs a 3x3")
    assert refusal((1, 5, 5, 2), (3, 3, 4, 1), (1, 1), none) == "winograd: input (1, 5, 5, 2) has 2 channels, " \
        "kernel (3, 3, 4, 1) expects 4"
    assert refusal((5, 5, 2), (3, 3, 2, 1), (1, 1), none).startswith("winograd: input (5, 5, 2) has 2 channels")
    assert refusal((1, 2, 5, 2), (3, 3, 2, 1), (1, 1), none) == "winograd: paddings ((0, 0), (0, 0)) on input " \
        "(1, 2, 5, 2) leave no output"
    assert refusal((1, 5, 2, 2), (3, 3, 2, 1), (1, 1), none).endswith("leave no output")
    assert refusal((1, 5, 5, 2), (3, 3, 2, 1), (1, 1), ((0, -1), (0, 0))).endswith("leave no output")
    assert refusal((1, 5, 5, 2), (3, 3, 2, 1), (1, 1), ((0, 0), (-1, 0))).endswith("leave no output")
    assert refusal((1, 5, 5, 2), (3, 3, 2, 1), (1, 1), none, (1, 3, 3, 2)) == "winograd: output gradient has shape " \
        "(1, 3, 3, 2), the convolution of input (1, 5, 5, 2) gives (1, 3, 3, 1)"
    # at the edges, accepted: an output of one pixel, a matching gradient
    W.check_winograd_shapes((1, 3, 3, 2), (3, 3, 2, 1), (1, 1), none, (1, 1, 1, 1))
    W.check_winograd_shapes((1, 1, 1, 2), (3, 3, 2, 1), (1, 1), ((1, 1), (1, 1)))


def test_f6_takes_at_least_f6_min_tiles():
    assert W.F6_MIN_TILES == 64
    assert W.tile_grid(12, 12, 6) == (2, 2)                                 # 4 tiles an image
    assert [W.choose_tile(12, 12, n) for n in (15, 16)] == [4, 6]
    assert W.tile_grid(13, 7, 4) == (4, 2) and W.tile_grid(12, 8, 4) == (3, 2)


@pytest.mark.parametrize("m, spelt_out", [(2, False), (4, True), (6, True)])
def test_the_fast_path_takes_the_spelt_out_transforms_for_f4_and_f6(monkeypatch, m, spelt_out):
    calls = []
    names = ["_input_transform", "_output_transform", "_output_transform_adjoint", "_input_transform_adjoint"]
    for name in names + [f"{n}_{m}" for n in names if m in (4, 6)]:
        kernel = getattr(WF, name)
        monkeypatch.setattr(WF, name, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 9, 9, 3)).astype(F32), rng.standard_normal((3, 3, 3, 2)).astype(F32)
    dy = rng.standard_normal((2, 9, 9, 2)).astype(F32)
    pads = ((1, 1), (1, 1))
    y = WF.winograd_conv2d_fast(x, w, (1, 1), pads, m)
    dx, dw = WF.winograd_conv2d_grads_fast(x, dy, w, (1, 1), pads, m=m)
    suffix = f"_{m}" if spelt_out else ""
    assert set(calls) == {n + suffix for n in names}, calls
    np.testing.assert_allclose(y, conv.conv2d_reference(x, w, (1, 1), pads), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, conv.conv2d_grad_input_reference(dy, w, x.shape, (1, 1), pads), rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(dw, conv.conv2d_grad_weight_reference(x, dy, w.shape, (1, 1), pads), rtol=1e-4,
                               atol=1e-3)


def test_both_reference_gradients_take_the_tile_of_the_separate_entries():
    """``winograd_conv2d_grads_reference`` computes each gradient with the tile its own entry
    would take (``choose_tile`` of the output and the batch: F(4x4) for one 18x18 map),
    or with the m it is given: the same arrays, to the bit, as those entries."""
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((1, 20, 20, 2)).astype(F32), rng.standard_normal((3, 3, 2, 3)).astype(F32)
    dy, pads = rng.standard_normal((1, 18, 18, 3)).astype(F32), ((0, 0), (0, 0))
    assert W.choose_tile(18, 18, 1) == 4 and W.choose_tile(18, 18) == 6
    results = {}
    for m in (None, 2, 6):
        dx, dw = W.winograd_conv2d_grads_reference(x, dy, w, (1, 1), pads, m=m)
        np.testing.assert_array_equal(dx, W.winograd_conv2d_grad_input_reference(dy, w, x.shape, (1, 1), pads, m))
        np.testing.assert_array_equal(dw, W.winograd_conv2d_grad_weight_reference(x, dy, w.shape, (1, 1), pads, m))
        results[m] = dx
    assert not np.array_equal(results[None], results[2]) and not np.array_equal(results[None], results[6])
    assert W.winograd_conv2d_grads_reference(x, dy, w, (1, 1), pads, need_input=False)[0] is None
    assert W.winograd_conv2d_grads_reference(x, dy, w, (1, 1), pads, need_weight=False)[1] is None


def test_each_reference_entry_takes_the_tile_for_its_own_batch():
    """One image of an 18x18 output is 9 tiles, under ``F6_MIN_TILES``: F(4x4), to the bit."""
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((1, 20, 20, 2)).astype(F32), rng.standard_normal((3, 3, 2, 3)).astype(F32)
    dy, pads = rng.standard_normal((1, 18, 18, 3)).astype(F32), ((0, 0), (0, 0))
    calls = {"forward": lambda m: W.winograd_conv2d_reference(x, w, (1, 1), pads, m),
             "input gradient": lambda m: W.winograd_conv2d_grad_input_reference(dy, w, x.shape, (1, 1), pads, m),
             "weight gradient": lambda m: W.winograd_conv2d_grad_weight_reference(x, dy, w.shape, (1, 1), pads, m)}
    for name, call in calls.items():
        chosen = call(None)
        np.testing.assert_array_equal(chosen, call(4), err_msg=name)
        assert not np.array_equal(chosen, call(6)), name


def test_the_reference_gradients_refuse_a_gradient_of_another_shape():
    x, w, pads = np.zeros((1, 6, 6, 2), F32), np.zeros((3, 3, 2, 3), F32), ((0, 0), (0, 0))
    dy = np.zeros((1, 4, 5, 3), F32)                                  # the convolution gives (1, 4, 4, 3)
    with pytest.raises(ValueError, match=r"^winograd: output gradient has shape \(1, 4, 5, 3\)"):
        W.winograd_conv2d_grad_input_reference(dy, w, x.shape, (1, 1), pads)
    with pytest.raises(ValueError, match=r"^winograd: output gradient has shape \(1, 4, 5, 3\)"):
        W.winograd_conv2d_grad_weight_reference(x, dy, w.shape, (1, 1), pads)


@pytest.mark.parametrize("m", sorted(W.MATRICES))
def test_the_output_transform_adjoint_is_its_transpose_in_float32(m):
    """<A^T M A laid out, dy> = <M, A dY A^T> for any M and dy (float64 sums of float32 arrays)."""
    rng = np.random.default_rng(m)
    th, tw, n = 2, 3, m + 2
    ho, wo = 2 * m - 1, 3 * m - 2                                     # the last blocks cut by the edge
    M = rng.standard_normal((2, th, tw, n, n, 4)).astype(F32)
    dy = rng.standard_normal((2, ho, wo, 4)).astype(F32)
    dM = W.output_transform_adjoint(dy, th, tw, m)
    assert dM.dtype == F32 and dM.shape == M.shape
    y = W.output_transform(M, ho, wo, m)
    assert y.dtype == F32 and y.shape == dy.shape
    lhs, rhs = (y.astype(F64) * dy).sum(), (M.astype(F64) * dM).sum()
    assert abs(lhs - rhs) <= 1e-4 * (np.abs(y.astype(F64) * dy).sum() + 1), (lhs, rhs)


def test_f6_only_where_its_products_are_at_most_0_8_of_f4s():
    # a 9x49 output: 2 x 9 F(6x6) tiles, 64 x 18 = 1152 products, against 0.8 x 36 x (3 x 13) = 1123.2
    assert W.choose_tile(9, 49) == 4


def test_f6_where_its_products_are_exactly_0_8_of_f4s():
    """At most ``F6_MAX_PRODUCTS``, the bound included: a 16x17 output is 3 x 3 F(6x6)
    tiles, 9 x 64 = 576 products, against 4 x 5 F(4x4) tiles, 0.8 x 36 x 20 = 576, a tie
    that double arithmetic keeps exact (on any machine: Python's floats are IEEE doubles).
    Kills ``x_choose_tile__mutmut_29`` (``<`` for ``<=``)."""
    assert W.tile_grid(16, 17, 6) == (3, 3) and W.tile_grid(16, 17, 4) == (4, 5)
    assert W.F6_MAX_PRODUCTS * 36 * 4 * 5 == 64 * 3 * 3
    assert W.choose_tile(16, 17) == 6 and W.choose_tile(17, 16) == 6
    assert W.choose_tile(16, 17, 8) == 6                          # 8 images x 9 tiles: enough


@pytest.mark.parametrize("parallel", [False, True])
def test_blocks_of_about_block_tiles_tiles_and_no_fewer_than_threads(monkeypatch, parallel):
    monkeypatch.setattr(WF, "PARALLEL", parallel)
    monkeypatch.setattr(WF.numba, "get_num_threads", lambda: 4)
    threads = 4 if parallel else 1
    for n_img, tiles in [(5, 9), (5, 64), (1, 200), (40, 1), (300, 1)]:
        expected = max(1, min(round(WF.BLOCK_TILES / tiles), -(-n_img // threads)))
        assert WF._block_images(n_img, tiles) == expected, (n_img, tiles)
    assert WF._block_images(1, 200) == 1 and WF._block_images(5, 64) == 2


def test_one_core_or_one_block_runs_in_the_calling_thread_alone(monkeypatch):
    """``_in_blocks`` on one core, or with one block, hands ``work`` every block in one share,
    run in the calling thread; two cores and five blocks, two shares taken in turn (as
    test_winograd.py's test_blocks_run_on_every_thread, which needs two Numba threads, with
    ``backend.core_count`` set here instead). Kills ``x__in_blocks__mutmut_15`` (at least
    two threads)."""
    import threading
    seen = []
    work = lambda starts: seen.append((threading.get_ident(), starts)) or len(starts)  # noqa: E731
    monkeypatch.setattr(WF.backend, "core_count", lambda: 1)
    assert WF._in_blocks(10, 2, work) == [5] and seen == [(threading.get_ident(), [0, 2, 4, 6, 8])]
    monkeypatch.setattr(WF.backend, "core_count", lambda: 2)
    seen.clear()
    assert WF._in_blocks(3, 4, work) == [1] and seen == [(threading.get_ident(), [0])]
    seen.clear()
    assert WF._in_blocks(10, 2, work) == [3, 2]
    assert sorted(starts for _, starts in seen) == [[0, 4, 8], [2, 6]]


def test_freezing_a_kernel_twice_keeps_its_transforms():
    w = np.random.default_rng(8).standard_normal((3, 3, 2, 4)).astype(F32)
    WF.freeze_kernel(w)
    U = WF._kernel_transform_fast(w, 4)
    WF.freeze_kernel(w)
    assert WF.is_frozen(w) and not w.flags.writeable
    assert WF._kernel_transform_fast(w, 4) is U and not U.flags.writeable


# -- winograd_fast's plain-Python entries (issue 26): the fused max pool, the shared backward,
# freeze_kernel; in several blocks shared between two threads, as tests/test_subpixel.py's
# test_fast_kernel_in_several_blocks_and_threads runs the subpixel kernel

def _magnitude(x, w, pads):
    """The largest sum of absolute products behind any output of conv(x, w)."""
    return conv.conv2d_reference(np.abs(x).astype(F64), np.abs(w).astype(F64), (1, 1), pads)


def _in_two_threads(monkeypatch, block_tiles):
    monkeypatch.setattr(WF, "BLOCK_TILES", block_tiles)
    monkeypatch.setattr(WF.backend, "core_count", lambda: 2)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("m", [None, 2, 4])
def test_the_fused_max_pool_in_several_blocks_and_threads(monkeypatch, m, affine):
    """5 images of a 9x11 output (odd: the pool drops the last row and column), one or two
    images a block, the blocks shared between two threads: each block's pooled map, and the
    tap that won, land in their place."""
    _in_two_threads(monkeypatch, 12)
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((5, 9, 11, 3)).astype(F32), rng.standard_normal((3, 3, 3, 4)).astype(F32)
    pads = ((1, 1), (1, 1))
    b, scale, shift = (rng.standard_normal(4).astype(F32) for _ in range(3))
    z = conv.conv2d_reference(x, w, (1, 1), pads).astype(F64)
    magnitude = _magnitude(x, w, pads)
    if affine:
        z = np.maximum(z + b, 0) * scale + shift
        magnitude = (magnitude + np.abs(b)) * np.abs(scale) + np.abs(shift)
    y, argmax = WF.winograd_conv2d_maxpool(x, w, (1, 1), pads, (4, 5), m, (b, scale, shift) if affine else None)
    assert y.shape == argmax.shape == (5, 4, 5, 4) and y.dtype == F32 and argmax.dtype == np.int32
    taps = np.stack([z[:, a:8:2, c:10:2] for a in range(2) for c in range(2)])       # (4, N, 4, 5, O)
    expected = taps.max(axis=0)
    assert_close_to_magnitude("fused max pool", "y", y, expected, magnitude)
    assert ((0 <= argmax) & (argmax < 4)).all()
    # the winning tap holds the max (within rounding: a near-tie may pick either)
    won = np.take_along_axis(taps, argmax[None].astype(np.intp), axis=0)[0]
    assert_close_to_magnitude("fused max pool", "the winning tap", won, expected, magnitude)


def test_the_fused_max_pool_refuses_another_pooled_size():
    x, w = np.zeros((1, 9, 11, 2), F32), np.zeros((3, 3, 2, 3), F32)
    with pytest.raises(ValueError) as e:
        WF.winograd_conv2d_maxpool(x, w, (1, 1), ((0, 0), (0, 0)), (3, 5))
    assert str(e.value) == "winograd_conv2d_maxpool: pooled size (3, 5), a 2x2 pool of a 7x9 map gives (3, 4)"
    with pytest.raises(ValueError, match="pooled size"):
        WF.winograd_conv2d_maxpool(x, w, (1, 1), ((0, 0), (0, 0)), [4, 4])
    with pytest.raises(ValueError, match="needs a 3x3 kernel"):
        WF.winograd_conv2d_maxpool(x, w, (2, 2), ((0, 0), (0, 0)), (3, 4))


def test_the_fused_max_pool_and_the_backward_take_the_tile_for_their_batch(monkeypatch):
    """One image of an 18x18 output (9 F(4x4) tiles, under ``F6_MIN_TILES``): F(4x4), as
    ``choose_tile`` gives for that batch (F(6x6) for a batch of any size)."""
    assert W.choose_tile(18, 18, 1) == 4 and W.choose_tile(18, 18) == 6
    seen = []
    monkeypatch.setattr(WF, "matrices", lambda m, *a: seen.append(m) or W.matrices(m, *a))
    x, w = np.ones((1, 20, 20, 2), F32), np.ones((3, 3, 2, 3), F32)
    WF.winograd_conv2d_maxpool(x, w, (1, 1), ((0, 0), (0, 0)), (9, 9))
    WF.winograd_conv2d_grads_fast(x, np.ones((1, 18, 18, 3), F32), w, (1, 1), ((0, 0), (0, 0)))
    assert seen and set(seen) == {4}, seen


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("need", ["both", "input", "weight"])
def test_the_backward_in_several_blocks_and_threads(monkeypatch, need, m):
    """5 images, one or two a block, the blocks shared between two threads: each block's dx
    lands in its place, and the threads' shares of dU all add into dw (once each)."""
    _in_two_threads(monkeypatch, 2 * W.tile_grid(7, 9, m)[0] * W.tile_grid(7, 9, m)[1] - 1)
    rng = np.random.default_rng(12)
    x, w = rng.standard_normal((5, 7, 9, 3)).astype(F32), rng.standard_normal((3, 3, 3, 4)).astype(F32)
    dy, pads = rng.standard_normal((5, 7, 9, 4)).astype(F32), ((1, 1), (1, 1))
    ax, aw, ady = (np.abs(a).astype(F64) for a in (x, w, dy))
    dx, dw = WF.winograd_conv2d_grads_fast(x, dy, w, (1, 1), pads, need != "weight", need != "input", m)
    if need == "weight":
        assert dx is None
        dx = WF.winograd_conv2d_grad_input_fast(dy, w, x.shape, (1, 1), pads, m)
    if need == "input":
        assert dw is None
        dw = WF.winograd_conv2d_grad_weight_fast(x, dy, w.shape, (1, 1), pads, m)
    assert dx.shape == x.shape and dw.shape == w.shape and dx.dtype == dw.dtype == F32
    assert_close_to_magnitude("backward in blocks", "dx", dx,
                              conv.conv2d_grad_input_reference(dy, w, x.shape, (1, 1), pads),
                              conv.conv2d_grad_input_reference(ady, aw, x.shape, (1, 1), pads))
    assert_close_to_magnitude("backward in blocks", "dw", dw,
                              conv.conv2d_grad_weight_reference(x, dy, w.shape, (1, 1), pads),
                              conv.conv2d_grad_weight_reference(ax, ady, w.shape, (1, 1), pads))



@pytest.mark.parametrize("m, spelt_out", [(2, False), (4, True), (6, True)])
def test_the_fused_max_pool_takes_the_spelt_out_transforms_for_f4_and_f6(monkeypatch, m, spelt_out):
    calls = []
    names = ["_input_transform", "_output_transform"]
    for name in names + [f"{n}_{m}" for n in names if m in (4, 6)]:
        kernel = getattr(WF, name)
        monkeypatch.setattr(WF, name, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 9, 9, 3)).astype(F32), rng.standard_normal((3, 3, 3, 2)).astype(F32)
    pads = ((1, 1), (1, 1))
    y, _ = WF.winograd_conv2d_maxpool(x, w, (1, 1), pads, (4, 4), m)
    suffix = f"_{m}" if spelt_out else ""
    assert set(calls) == {n + suffix for n in names}, calls
    z = conv.conv2d_reference(x, w, (1, 1), pads)
    expected = np.max([z[:, a:8:2, c:8:2] for a in range(2) for c in range(2)], axis=0)
    assert_close_to_magnitude("fused max pool", "y", y, expected, _magnitude(x, w, pads))
