"""The Numba kernels (``.fast``) against the readable NumPy kernels (``.reference``),
and proof that the layers call whichever the backend setting selects.

Random shapes, strides and (asymmetric) paddings come from hypothesis (the same examples
under CI, fresh ones locally: ``hypothesis_profiles.py``).
The fast kernels use ``fastmath`` and another summation order, so they are compared
with a float32 tolerance: RTOL = 1e-5, ATOL = 1e-5 (scaled to the array's largest value).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tinycnn as tc
from helpers import assert_close, distinct_values, random_array, window_problems
from tinycnn import backend as B
from tinycnn.kernels import activation, conv, conv_fast, dropout, norm, optim, pool
from tinycnn.kernels.shapes import conv_output_size, tap_slice

RTOL, ATOL = 1e-5, 1e-5
SOME = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@st.composite
def conv_problems(draw):
    """(x, w, strides, pads, out_shape, label): any padding below the kernel size."""
    x, k, strides, pads = draw(window_problems(max_channels=4, max_m=4, max_kernel=4, max_size=9))
    out = conv.conv2d_output_shape(x.shape, k.shape, strides, pads)
    return x, k, strides, pads, out, f"conv x {x.shape} w {k.shape} strides {strides} pads {pads}"


@SOME
@given(conv_problems(), st.integers(0, 2**16))
def test_conv2d_fast_equals_reference(problem, seed):
    x, w, strides, pads, out_shape, label = problem
    dy = random_array(np.random.default_rng(seed), out_shape)
    assert_close(label, "conv2d", conv.conv2d.fast(x, w, strides, pads), conv.conv2d.reference(x, w, strides, pads),
                 RTOL, ATOL)
    assert_close(label, "conv2d_grad_input", conv.conv2d_grad_input.fast(dy, w, x.shape, strides, pads),
                 conv.conv2d_grad_input.reference(dy, w, x.shape, strides, pads), RTOL, ATOL)
    expected_dw = conv.conv2d_grad_weight.reference(x, dy, w.shape, strides, pads)
    assert_close(label, "conv2d_grad_weight", conv.conv2d_grad_weight.fast(x, dy, w.shape, strides, pads),
                 expected_dw, RTOL, ATOL)
    # the forward may keep its column matrix for the weight gradient to reuse
    y, cols = conv.conv2d.fast(x, w, strides, pads, keep_cols=True)
    assert_close(label, "conv2d(keep_cols=True)", y, conv.conv2d.reference(x, w, strides, pads), RTOL, ATOL)
    assert_close(label, "conv2d_grad_weight(cols=kept)",
                 conv.conv2d_grad_weight.fast(x, dy, w.shape, strides, pads, cols=cols), expected_dw, RTOL, ATOL)
    # both products from one gather, as Conv2DTranspose's backward asks for them
    y, dw = conv.conv2d_and_grad_weight.fast(x, w, dy, strides, pads)
    assert_close(label, "conv2d_and_grad_weight: conv", y, conv.conv2d.reference(x, w, strides, pads), RTOL, ATOL)
    assert_close(label, "conv2d_and_grad_weight: grad_weight", dw, expected_dw, RTOL, ATOL)


@pytest.mark.parametrize("strides, pads", [((1, 1), ((0, 0), (0, 0))), ((1, 1), ((1, 1), (1, 1))),
                                            ((2, 2), ((0, 1), (0, 1))), ((2, 1), ((2, 0), (1, 2)))])
def test_one_channel_direct_kernel_equals_reference(strides, pads, monkeypatch):
    """A one-channel input (a first layer on gray faces) takes the direct kernel when the
    call is large enough, im2col otherwise: both must be the convolution."""
    rng = np.random.default_rng(7)
    x, w = random_array(rng, (3, 13, 11, 1)), random_array(rng, (3, 3, 1, 40))
    expected = conv.conv2d.reference(x, w, strides, pads)
    label = f"one channel strides {strides} pads {pads}"
    for small_work in (0, x.size + 1):       # direct, then im2col
        monkeypatch.setattr(B, "SMALL_WORK", small_work)
        assert_close(label, f"conv2d (SMALL_WORK={small_work})", conv.conv2d.fast(x, w, strides, pads),
                     expected, RTOL, ATOL)
    # as a first layer trains: the forward keeps no columns for a 3x3 stride-1 kernel,
    # and the weight gradient then takes the spelt-out kernel
    dy = random_array(rng, expected.shape)
    y, cols = conv.conv2d_keeping_fast(x, w, strides, pads)
    assert_close(label, "conv2d_keeping_fast", y, expected, RTOL, ATOL)
    assert (cols is None) == (strides == (1, 1))
    expected_dw = conv.conv2d_grad_weight.reference(x, dy, w.shape, strides, pads)
    assert_close(label, "conv2d_grads weight grad", conv.conv2d_grads(x, dy, w, strides, pads, need_input=False,
                                                                       cols=cols)[1], expected_dw, RTOL, ATOL)
    assert_close(label, "conv2d_grad_weight", conv.conv2d_grad_weight.fast(x, dy, w.shape, strides, pads),
                 expected_dw, RTOL, ATOL)


@pytest.mark.parametrize("impl", ["reference", "fast"])
@SOME
@given(conv_problems(), st.integers(0, 2**16))
def test_conv_gradients_are_adjoints(impl, problem, seed):
    """<conv(x, w), dy> = <x, grad_input(dy, w)> = <w, grad_weight(x, dy)>, exactly the
    statement that the two gradients are the transposes of the forward map."""
    x, w, strides, pads, out_shape, label = problem
    dy = random_array(np.random.default_rng(seed), out_shape)
    f = {k: getattr(getattr(conv, k), impl) for k in ("conv2d", "conv2d_grad_input", "conv2d_grad_weight")}
    y = f["conv2d"](x, w, strides, pads)
    lhs = np.sum(y.astype(np.float64) * dy)
    via_x = np.sum(x.astype(np.float64) * f["conv2d_grad_input"](dy, w, x.shape, strides, pads))
    via_w = np.sum(w.astype(np.float64) * f["conv2d_grad_weight"](x, dy, w.shape, strides, pads))
    scale = np.sum(np.abs(y.astype(np.float64) * dy)) + 1.0
    assert abs(lhs - via_x) < 1e-5 * scale, f"{label} ({impl}): <conv(x), dy> = {lhs}, <x, grad_input(dy)> = {via_x}"
    assert abs(lhs - via_w) < 1e-5 * scale, f"{label} ({impl}): <conv(x), dy> = {lhs}, <w, grad_weight> = {via_w}"


def test_conv2d_fast_in_chunks(monkeypatch):
    """A batch larger than one chunk of the column matrix: every chunk boundary right."""
    rng = np.random.default_rng(0)
    x, w = random_array(rng, (5, 6, 7, 3)), random_array(rng, (3, 3, 3, 4))
    strides, pads = (2, 1), ((1, 1), (1, 0))
    dy = random_array(rng, conv.conv2d_output_shape(x.shape, w.shape, strides, pads))
    monkeypatch.setattr(conv_fast, "_CHUNK_BYTES", 2 * 1024)  # a few images per chunk
    assert conv_fast._chunk_size(5, *dy.shape[1:3], 27) < 5
    label = f"conv in chunks, x {x.shape}"
    assert_close(label, "conv2d", conv.conv2d.fast(x, w, strides, pads), conv.conv2d.reference(x, w, strides, pads),
                 RTOL, ATOL)
    y, cols = conv.conv2d.fast(x, w, strides, pads, keep_cols=True)
    assert cols.shape == (dy.size // 4, 27)
    assert_close(label, "conv2d_grad_input", conv.conv2d_grad_input.fast(dy, w, x.shape, strides, pads),
                 conv.conv2d_grad_input.reference(dy, w, x.shape, strides, pads), RTOL, ATOL)
    expected_dw = conv.conv2d_grad_weight.reference(x, dy, w.shape, strides, pads)
    assert_close(label, "conv2d_grad_weight", conv.conv2d_grad_weight.fast(x, dy, w.shape, strides, pads),
                 expected_dw, RTOL, ATOL)
    assert_close(label, "conv2d_grad_weight(cols)", conv.conv2d_grad_weight.fast(x, dy, w.shape, strides, pads, cols),
                 expected_dw, RTOL, ATOL)
    y, dw = conv.conv2d_and_grad_weight.fast(x, w, dy, strides, pads)
    assert_close(label, "conv2d_and_grad_weight: conv", y, conv.conv2d.reference(x, w, strides, pads), RTOL, ATOL)
    assert_close(label, "conv2d_and_grad_weight: grad_weight", dw, expected_dw, RTOL, ATOL)


# (C, strides, pads, pool size = pool strides, pool pads): convolutions followed by a max pool
POOLED = [
    (1, (1, 1), ((0, 0), (0, 0)), (2, 2), ((0, 0), (0, 0))),      # a first layer, valid, as small3's
    (1, (1, 1), ((1, 1), (1, 1)), (2, 2), ((0, 0), (0, 0))),      # 'same', as updown's
    (1, (2, 1), ((2, 0), (1, 2)), (3, 2), ((1, 1), (0, 1))),      # strides, odd pool, padded pool windows
    (1, (1, 1), ((0, 0), (0, 0)), (3, 3), ((0, 0), (0, 0))),      # 3x3 windows, a row and column left over
    (3, (1, 1), ((1, 1), (1, 1)), (2, 2), ((0, 0), (0, 0))),      # several channels: the two-kernel route
]


def assert_winning_taps_agree(label, argmax, z_ref, pool_size, pool_pads, out_hw):
    """Each window's winning tap in ``argmax`` (from a convolution computed another way)
    holds, in the reference convolution ``z_ref``, the window's maximum or a value within
    the comparison's float32 tolerance of it: where two taps are that close, another
    summation order (another BLAS kernel, another thread count) may make either the larger.
    Elsewhere the tap must be the reference's own."""
    ho, wo = out_hw
    padded = np.pad(z_ref, ((0, 0), pool_pads[0], pool_pads[1], (0, 0)), constant_values=-np.inf)
    taps = np.stack([padded[tap_slice(a, b, ho, wo, pool_size)]
                     for a in range(pool_size[0]) for b in range(pool_size[1])])   # (taps, N, HO, WO, C)
    best = np.nanmax(np.where(np.isnan(taps), -np.inf, taps), axis=0)
    chosen = np.take_along_axis(taps, argmax[None].astype(np.int64), axis=0)[0]
    tol = RTOL * np.abs(best) + ATOL * max(1.0, float(np.abs(best[np.isfinite(best)]).max(initial=0)))
    windows = ~np.isnan(taps).any(axis=0)
    wrong = windows & ~(chosen >= best - 2 * tol)
    assert not wrong.any(), (f"{label}: argmax at {np.argwhere(wrong)[0].tolist()} picks tap "
                             f"{int(argmax[wrong][0])} holding {chosen[wrong][0]:.6g}, the window's maximum is "
                             f"{best[wrong][0]:.6g}; {int(wrong.sum())} windows differ")


@pytest.mark.parametrize("c, strides, pads, pool_size, pool_pads", POOLED)
def test_conv2d_maxpool_fast_equals_reference(c, strides, pads, pool_size, pool_pads):
    """A convolution and the max pool after it: the one-channel kernel that never stores
    the convolution's output, and the two-kernel route, against NumPy. Ties included
    (a zero kernel column gives a channel of zeros: the first tap must win)."""
    rng = np.random.default_rng(3 * c + sum(strides) + sum(pool_size))
    x, w = random_array(rng, (3, 11, 10, c)), random_array(rng, (3, 3, c, 5))
    w[..., 2] = 0.0
    x[0, 4, 4, 0] = np.nan   # NaN wins its windows, as in maxpool
    z_hw = conv.conv2d_output_shape(x.shape, w.shape, strides, pads)[1:3]
    out_hw = tuple(conv_output_size(z_hw[i], pool_size[i], pool_size[i], *pool_pads[i]) for i in range(2))
    label = f"conv2d_maxpool C={c} strides {strides} pads {pads} pool {pool_size} pool pads {pool_pads}"
    args = (x, w, strides, pads, pool_size, pool_size, pool_pads, out_hw)
    (y, argmax), (y_ref, argmax_ref) = conv.conv2d_maxpool.fast(*args), conv.conv2d_maxpool.reference(*args)
    assert np.array_equal(np.isnan(y), np.isnan(y_ref)), f"{label}: NaN positions"
    assert_close(label, "pooled", np.nan_to_num(y), np.nan_to_num(y_ref), RTOL, ATOL)
    # the zero channel's ties and the NaN windows are exact on any machine: the first tap wins
    exact = np.isnan(y_ref)
    exact[..., 2] = True
    np.testing.assert_array_equal(argmax[exact], argmax_ref[exact], err_msg=f"{label}: argmax of ties and NaNs")
    assert_winning_taps_agree(label, argmax, conv.conv2d.reference(x, w, strides, pads), pool_size, pool_pads, out_hw)
    with pytest.raises(ValueError, match="pooled size"):
        conv.conv2d_maxpool.fast(x, w, strides, pads, pool_size, pool_size, pool_pads, (out_hw[0] + 1, out_hw[1]))


@pytest.mark.parametrize("c, strides, pads, pool_size, pool_pads", POOLED)
def test_conv2d_affine_maxpool_fast_equals_reference(c, strides, pads, pool_size, pool_pads):
    """Inference's Conv2D(relu) -> BatchNormalization -> MaxPooling2D: the one-channel kernel
    that never stores the convolution's output, and the three-kernel route, against NumPy.
    Scales of both signs: with a negative one the window's smallest value wins."""
    rng = np.random.default_rng(5 * c + sum(strides) + sum(pool_size))
    x, w = random_array(rng, (3, 11, 10, c)), random_array(rng, (3, 3, c, 5))
    b, shift = random_array(rng, (5,)), random_array(rng, (5,))
    scale = (rng.uniform(0.5, 1.5, 5) * np.array([1, -1, 1, -1, 1])).astype(np.float32)
    z_hw = conv.conv2d_output_shape(x.shape, w.shape, strides, pads)[1:3]
    out_hw = tuple(conv_output_size(z_hw[i], pool_size[i], pool_size[i], *pool_pads[i]) for i in range(2))
    label = f"conv2d_affine_maxpool C={c} strides {strides} pads {pads} pool {pool_size} pool pads {pool_pads}"
    args = (x, w, b, scale, shift, strides, pads, pool_size, pool_size, pool_pads, out_hw)
    y, y_ref = conv.conv2d_affine_maxpool.fast(*args), conv.conv2d_affine_maxpool.reference(*args)
    assert y.shape == y_ref.shape == (3,) + out_hw + (5,), label
    assert_close(label, "pooled", y, y_ref, RTOL, ATOL)
    with pytest.raises(ValueError, match="pooled size"):
        conv.conv2d_affine_maxpool.fast(*args[:-1], (out_hw[0] + 1, out_hw[1]))


@pytest.mark.parametrize("c, strides, pads, pool_size, pool_pads", POOLED)
def test_conv2d_grad_weight_pooled_fast_equals_reference(c, strides, pads, pool_size, pool_pads):
    """The weight gradient of a convolution whose output was max-pooled, from the pooled
    gradient: the one-channel kernel (never writing the pool's gradient) and the dense
    route, against pool gradient + weight gradient in NumPy. Zeros in g, as a ReLU leaves."""
    rng = np.random.default_rng(c + sum(strides) + sum(pool_size))
    x, w = random_array(rng, (3, 11, 10, c)), random_array(rng, (3, 3, c, 5))
    z, cols = conv.conv2d(x, w, strides, pads, keep_cols=True)
    saved = conv.ConvSaved(x, w, strides, pads, cols)
    out_hw = tuple(conv_output_size(z.shape[1 + i], pool_size[i], pool_size[i], *pool_pads[i]) for i in range(2))
    _, argmax = pool.maxpool.reference(z, pool_size, pool_size, pool_pads, out_hw)
    g = random_array(rng, argmax.shape) * (rng.random(argmax.shape) < 0.6)
    label = f"pooled weight gradient, C={c} strides {strides} pads {pads} pool {pool_size} pool pads {pool_pads}"
    args = (g.astype(np.float32), argmax, saved, z.shape, pool_size, pool_size, pool_pads)
    assert_close(label, "conv2d_grad_weight_pooled", conv.conv2d_grad_weight_pooled.fast(*args),
                 conv.conv2d_grad_weight_pooled.reference(*args), RTOL, ATOL)
    with pytest.raises(ValueError, match="pooled shape"):
        conv.conv2d_grad_weight_pooled.fast(g[:, :1].astype(np.float32), argmax[:, :1], saved, z.shape, pool_size,
                                            pool_size, pool_pads)


def test_kernels_accept_non_contiguous_arrays():
    rng = np.random.default_rng(1)
    x = random_array(rng, (2, 9, 8, 6))[:, ::2, 1:, ::2]  # a strided view
    w = random_array(rng, (3, 2, 4, 3)).transpose(0, 1, 2, 3)[:, :, 1:, :]
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    pads = ((1, 1), (0, 1))
    label = "non-contiguous x, w"
    assert_close(label, "conv2d", conv.conv2d.fast(x, w, (1, 1), pads), conv.conv2d.reference(x, w, (1, 1), pads),
                 RTOL, ATOL)
    xs = distinct_values(rng, (2, 9, 8, 6))[:, ::2, 1:, ::2]
    y_f, a_f = pool.maxpool.fast(xs, (2, 2), (2, 2), ((0, 1), (0, 1)), (3, 4))
    y_r, a_r = pool.maxpool.reference(xs, (2, 2), (2, 2), ((0, 1), (0, 1)), (3, 4))
    assert np.array_equal(y_f, y_r) and np.array_equal(a_f, a_r)
    x2 = random_array(rng, (12, 8))[:, ::2]
    for got, exp, what in zip(norm.batchnorm_forward.fast(x2, np.ones(4, np.float32), np.zeros(4, np.float32), 1e-3),
                              norm.batchnorm_forward.reference(x2, np.ones(4, np.float32), np.zeros(4, np.float32), 1e-3),
                              ("y", "mean", "var", "inv_std")):
        assert_close(label, f"batchnorm_forward {what}", got, exp, RTOL, ATOL)


# -- max pooling -----------------------------------------------------------------------------------
@st.composite
def pool_problems(draw, ties=False):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pool_hw = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    same = draw(st.booleans())
    h, w = draw(st.integers(pool_hw[0], 8)), draw(st.integers(pool_hw[1], 8))
    if same:
        pads = (conv.same_padding(h, pool_hw[0], strides[0]), conv.same_padding(w, pool_hw[1], strides[1]))
    else:
        pads = ((0, 0), (0, 0))
    out_hw = conv.conv2d_output_shape((n, h, w, c), pool_hw + (c, c), strides, pads)[1:3]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.integers(0, 3, (n, h, w, c)).astype(np.float32) if ties else distinct_values(rng, (n, h, w, c))
    label = f"maxpool x {x.shape} pool {pool_hw} strides {strides} pads {pads}" + (" with ties" if ties else "")
    return x, pool_hw, strides, pads, out_hw, label


@SOME
@given(st.one_of(pool_problems(), pool_problems(ties=True)), st.integers(0, 2**16))
@example((np.array([[[[1.0], [1.0]], [[1.0], [1.0]]]], np.float32), (2, 2), (1, 1), ((0, 1), (0, 1)), (2, 2),
          "maxpool all equal, same padding"), 0)
@example((distinct_values(np.random.default_rng(1), (2, 7, 5, 3)), (2, 2), (2, 2), ((0, 0), (0, 0)), (3, 2),
          "maxpool tiled (stride == pool), valid, odd sizes: uncovered last row and column"), 1)
@example((distinct_values(np.random.default_rng(2), (1, 7, 8, 2)), (3, 3), (3, 3), ((1, 1), (0, 1)), (3, 3),
          "maxpool tiled (stride == pool), same padding before and after"), 2)
@example((distinct_values(np.random.default_rng(3), (2, 6, 6, 4)), (2, 3), (2, 2), ((0, 0), (0, 0)), (3, 2),
          "maxpool overlapping in width only: the scatter kernel"), 3)
def test_maxpool_fast_equals_reference(problem, seed):
    """Same maxima, the same winning taps (ties: the first in row-major order), the same
    gradient routing."""
    x, pool_hw, strides, pads, out_hw, label = problem
    y_f, arg_f = pool.maxpool.fast(x, pool_hw, strides, pads, out_hw)
    y_r, arg_r = pool.maxpool.reference(x, pool_hw, strides, pads, out_hw)
    assert_close(label, "maxpool output", y_f, y_r, 0, 0)
    assert np.array_equal(arg_f, arg_r), f"{label}: argmax differs at {np.argwhere(arg_f != arg_r)[:3].tolist()}"
    dy = random_array(np.random.default_rng(seed), y_r.shape)
    assert_close(label, "maxpool_grad", pool.maxpool_grad.fast(dy, arg_r, x.shape, pool_hw, strides, pads),
                 pool.maxpool_grad.reference(dy, arg_r, x.shape, pool_hw, strides, pads), RTOL, ATOL)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 4), (3, 48, 48, 32)])
def test_global_average_pool_fast_equals_reference(shape):
    rng = np.random.default_rng(11)
    x, dy = random_array(rng, shape), random_array(rng, (shape[0], shape[3]))
    label = f"global average pool of {shape}"
    assert_close(label, "global_average_pool", pool.global_average_pool.fast(x),
                 pool.global_average_pool.reference(x), RTOL, ATOL)
    assert_close(label, "global_average_pool_grad", pool.global_average_pool_grad.fast(dy, shape),
                 pool.global_average_pool_grad.reference(dy, shape), RTOL, ATOL)
    with pytest.raises(ValueError, match="output gradient has shape"):
        pool.global_average_pool_grad.fast(np.zeros((shape[0], shape[3] + 1), np.float32), shape)


def test_maxpool_tie_goes_to_first_tap():
    x = np.array([[[[2.0], [5.0]], [[5.0], [1.0]]]], np.float32)  # 5 at taps 1 and 2
    for impl in ("reference", "fast"):
        y, argmax = getattr(pool.maxpool, impl)(x, (2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1))
        assert y.item() == 5.0 and argmax.item() == 1, f"maxpool {impl}: got {y.item()} at tap {argmax.item()}"


# -- batch normalisation ------------------------------------------------------------------------------
@SOME
@given(m=st.integers(1, 300), c=st.integers(1, 5), offset=st.sampled_from([0.0, 3.0, 100.0]),
       seed=st.integers(0, 2**16))
@example(m=1, c=2, offset=0.0, seed=0)
def test_batchnorm_fast_equals_reference(m, c, offset, seed):
    """Including a large mean (100): the fast kernel's one-pass variance must hold up."""
    rng = np.random.default_rng(seed)
    x2 = random_array(rng, (m, c)) + np.float32(offset)
    gamma, beta = random_array(rng, (c,)) + 1, random_array(rng, (c,))
    g2 = random_array(rng, (m, c))
    label = f"batchnorm x2 {x2.shape} offset {offset}"
    fast = norm.batchnorm_forward.fast(x2, gamma, beta, 1e-3)
    ref = norm.batchnorm_forward.reference(x2, gamma, beta, 1e-3)
    assert len(fast) == len(ref)
    # float32 x near `offset` carries only ~1e-7 * offset of absolute precision, and the two
    # kernels sum in different orders: the absolute tolerance scales with the offset
    atol = 1e-5 * (1.0 + offset)
    for what, got, exp in zip(("y", "mean", "var", "inv_std"), fast, ref):
        assert_close(label, f"batchnorm_forward {what}", got, exp, 1e-4, atol)
    _, mean, _, inv_std = ref
    fast = norm.batchnorm_backward.fast(g2, x2, mean, gamma, inv_std)
    ref = norm.batchnorm_backward.reference(g2, x2, mean, gamma, inv_std)
    for what, got, exp in zip(("dx", "dgamma", "dbeta"), fast, ref):
        assert_close(label, f"batchnorm_backward {what}", got, exp, 1e-4, 1e-5)


@SOME
@given(m=st.integers(1, 300), c=st.integers(1, 5), offset=st.sampled_from([0.0, 3.0]), seed=st.integers(0, 2**16))
@example(m=1, c=2, offset=0.0, seed=0)
def test_batchnorm_relu_fast_equals_reference(m, c, offset, seed):
    """BatchNorm with the ReLU after it, in one kernel each way: beta around 0 puts every
    channel's outputs on both sides of the kink, and the backward's mask is the output's."""
    rng = np.random.default_rng(seed)
    x2 = random_array(rng, (m, c)) + np.float32(offset)
    gamma, beta = random_array(rng, (c,)) + 1, random_array(rng, (c,), 0.3)
    g2 = random_array(rng, (m, c))
    label = f"batchnorm_relu x2 {x2.shape} offset {offset}"
    fast = norm.batchnorm_relu_forward.fast(x2, gamma, beta, 1e-3)
    ref = norm.batchnorm_relu_forward.reference(x2, gamma, beta, 1e-3)
    atol = 1e-5 * (1.0 + offset)
    for what, got, exp in zip(("y", "mean", "var", "inv_std"), fast, ref):
        assert_close(label, f"batchnorm_relu_forward {what}", got, exp, 1e-4, atol)
    y2, mean, _, inv_std = ref
    assert (y2 >= 0).all()
    fast = norm.batchnorm_relu_backward.fast(g2, y2, x2, mean, gamma, inv_std)
    ref = norm.batchnorm_relu_backward.reference(g2, y2, x2, mean, gamma, inv_std)
    for what, got, exp in zip(("dx", "dgamma", "dbeta"), fast, ref):
        assert_close(label, f"batchnorm_relu_backward {what}", got, exp, 1e-4, 1e-5)
    with pytest.raises(ValueError, match="batchnorm_relu_backward: gradient"):
        norm.batchnorm_relu_backward.fast(g2[:, :0], y2, x2, mean, gamma, inv_std)


@SOME
@given(m=st.integers(1, 300), c=st.integers(1, 5), seed=st.integers(0, 2**16))
@example(m=1, c=2, seed=0)
@example(m=282, c=2, seed=1879)   # db: 0.0964735 (fast) against 0.0964521, where sum |dz| is 333
def test_bias_relu_batchnorm_fast_equals_reference(m, c, seed):
    """A ReLU convolution's epilogue inside BatchNorm's passes: z (overwritten by y =
    relu(z + b)), the normalised output and the statistics; backward's masked input
    gradient with the bias sum. The bias is drawn so that some channels are mostly off."""
    rng = np.random.default_rng(seed)
    z2, b = random_array(rng, (m, c)), random_array(rng, (c,))
    gamma, beta = random_array(rng, (c,)) + 1, random_array(rng, (c,))
    g2 = random_array(rng, (m, c))
    label = f"bias_relu_batchnorm z2 {z2.shape}"
    fast = norm.bias_relu_batchnorm_forward.fast(z2.copy(), b, gamma, beta, 1e-3)
    ref = norm.bias_relu_batchnorm_forward.reference(z2.copy(), b, gamma, beta, 1e-3)
    for what, got, exp in zip(("out", "y", "mean", "var", "inv_std"), fast, ref):
        assert_close(label, f"bias_relu_batchnorm_forward {what}", got, exp, 1e-4, 1e-5)
    z_in_place = z2.copy()
    assert norm.bias_relu_batchnorm_forward.fast(z_in_place, b, gamma, beta, 1e-3)[1] is z_in_place
    _, y2, mean, _, inv_std = ref
    fast = norm.bias_relu_batchnorm_backward.fast(g2, y2, mean, gamma, inv_std)
    ref = norm.bias_relu_batchnorm_backward.reference(g2, y2, mean, gamma, inv_std)
    for what, got, exp in zip(("dz", "dgamma", "dbeta"), fast[:1] + fast[2:], ref[:1] + ref[2:]):
        assert_close(label, f"bias_relu_batchnorm_backward {what}", got, exp, 1e-4, 1e-5)
    # db is dz summed over rows, by the reference in float32: where the terms cancel (sum |dz| far
    # above |db|), that sum is off by up to about log2(M) float32 epsilons of sum |dz|
    cancel = np.log2(max(m, 2)) * np.finfo(np.float32).eps * np.abs(ref[0]).sum(axis=0, dtype=np.float64)
    db_tol = 1e-4 * np.abs(ref[1]) + 1e-5 * max(1.0, float(np.abs(ref[1]).max())) + cancel
    db_err = np.abs(fast[1].astype(np.float64) - ref[1])
    assert (db_err <= db_tol).all(), f"{label} bias_relu_batchnorm_backward db: got {fast[1]}, expected {ref[1]}, " \
                                     f"tolerance {db_tol}"
    with pytest.raises(ValueError, match="bias_relu_batchnorm_forward: z2 must be"):
        norm.bias_relu_batchnorm_forward.fast(z2.astype(np.float64), b, gamma, beta, 1e-3)
    with pytest.raises(ValueError, match="bias_relu_batchnorm_backward: gradient"):
        norm.bias_relu_batchnorm_backward.fast(g2[:0], y2, mean, gamma, inv_std)


@pytest.mark.parametrize("shape", [(1,), (3, 3, 4, 5), (7,)])
def test_adam_update_fast_equals_reference_to_the_bit(shape):
    """One pass in Numba, the same float32 operations in the same order as NumPy's eight:
    the same bits, over several steps; bad shapes or dtypes are refused."""
    rng = np.random.default_rng(len(shape))
    value = random_array(rng, shape)
    slots = {impl: (value.copy(), np.zeros(shape, np.float32), np.zeros(shape, np.float32))
             for impl in ("reference", "fast")}
    for step in range(1, 4):
        grad = random_array(rng, shape)
        for impl, (p, m, v) in slots.items():
            getattr(optim.adam_update, impl)(p, grad, m, v, 0.9, 0.999, 1e-3 * step, 1e-7)
    for a, b in zip(slots["fast"], slots["reference"]):
        np.testing.assert_array_equal(a, b)
    p, m, v = slots["fast"]
    with pytest.raises(ValueError, match="adam_update"):
        optim.adam_update.fast(p, grad.astype(np.float64), m, v, 0.9, 0.999, 1e-3, 1e-7)


# -- which kernel the layers call ----------------------------------------------------------------------
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 5, 3, 4), (3, 7)])
def test_bias_relu_fast_equals_reference(shape, relu):
    rng = np.random.default_rng(len(shape))
    y, b, g = random_array(rng, shape), random_array(rng, shape[-1:]), random_array(rng, shape)
    label = f"bias_relu {shape} relu={relu}"
    out_ref = conv.bias_relu.reference(y.copy(), b, relu)
    out_fast = conv.bias_relu.fast(y.copy(), b, relu)
    assert_close(label, "output", out_fast, out_ref, 1e-6, 1e-7)
    for what, got, exp in zip(("masked gradient", "bias gradient"), conv.bias_relu_grad.fast(g, out_ref, relu),
                              conv.bias_relu_grad.reference(g, out_ref, relu)):
        assert_close(label, what, got, exp, 1e-5, 1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 5, 3, 4), (3, 7)])
def test_bias_relu_affine_fast_equals_reference(shape):
    rng = np.random.default_rng(len(shape) + 5)
    y = random_array(rng, shape)
    b, s, t = (random_array(rng, shape[-1:]) for _ in range(3))
    assert_close(f"bias_relu_affine {shape}", "output", conv.bias_relu_affine.fast(y.copy(), b, s, t),
                 conv.bias_relu_affine.reference(y.copy(), b, s, t), 1e-6, 1e-7)
    with pytest.raises(ValueError, match="bias_relu_affine"):
        conv.bias_relu_affine.fast(y.copy(), b[:0], s, t)


@pytest.mark.parametrize("shape", [(4,), (2, 5, 3, 4), (3, 7)])
def test_relu_grad_fast_equals_reference(shape):
    """The ReLU's gradient: g where the output is positive, exactly zero elsewhere (also
    where g is inf or NaN: a unit that was off passes nothing back; and where the output
    is NaN, as TensorFlow's g * (y > 0): the fast kernel once passed g there, compiled
    with fastmath, which assumes no NaN), on any layout of g."""
    rng = np.random.default_rng(len(shape) + 9)
    y = np.maximum(random_array(rng, shape), 0)
    g = random_array(rng, shape)
    g.reshape(-1)[:2] = (np.inf, np.nan)
    y.reshape(-1)[:3] = (0.0, 0.0, np.nan)
    label = f"relu_grad {shape}"
    np.testing.assert_array_equal(activation.relu_grad.fast(g, y), activation.relu_grad.reference(g, y), label)
    np.testing.assert_array_equal(activation.relu_grad.fast(g.T, y.T), activation.relu_grad.reference(g.T, y.T),
                                  label + " transposed")
    with pytest.raises(ValueError, match=r"relu_grad: gradient \(2,\) and output \(3,\)"):
        activation.relu_grad.fast(np.zeros(2, np.float32), np.zeros(3, np.float32))


def test_nan_goes_through_relu_and_maxpool_alike_on_both_backends():
    """A NaN inside a network (an overflow upstream) must look the same on both paths:
    ReLU keeps it, max-pool lets it win its window (the first one, as np.argmax)."""
    y = np.array([[np.nan, -1.0, 2.0, np.inf, -np.inf]], np.float32)
    b = np.zeros(5, np.float32)
    np.testing.assert_array_equal(conv.bias_relu.fast(y.copy(), b, True), conv.bias_relu.reference(y.copy(), b, True))
    x = np.array([1.0, np.nan, 3.0, 2.0, -1, -2, np.nan, np.nan], np.float32).reshape(1, 2, 4, 1)
    fast = pool.maxpool.fast(x, (2, 2), (2, 2), ((0, 0), (0, 0)), (1, 2))
    ref = pool.maxpool.reference(x, (2, 2), (2, 2), ((0, 0), (0, 0)), (1, 2))
    np.testing.assert_array_equal(fast[0], ref[0])
    np.testing.assert_array_equal(fast[1], ref[1])


def test_bias_relu_grad_of_a_broadcast_gradient():
    """GlobalAveragePooling2D hands back a broadcast view (and astype keeps its odd strides):
    the fast kernel once wrote into a reshaped copy and returned uninitialised memory."""
    rng = np.random.default_rng(11)
    y = np.maximum(random_array(rng, (4, 5, 5, 3)), 0)
    g = np.broadcast_to(random_array(rng, (4, 1, 1, 3)), y.shape).astype(np.float32)
    assert not g.flags["C_CONTIGUOUS"]
    for what, got, exp in zip(("masked gradient", "bias gradient"), conv.bias_relu_grad.fast(g, y, True),
                              conv.bias_relu_grad.reference(g, y, True)):
        assert_close("bias_relu_grad of a broadcast gradient", what, got, exp, 1e-5, 1e-6)


def test_batchnorm_inference_fast_equals_reference():
    rng = np.random.default_rng(7)
    x2 = random_array(rng, (37, 5))
    mean, inv_std = random_array(rng, (5,)), np.abs(random_array(rng, (5,))) + 0.5
    gamma, beta = random_array(rng, (5,)), random_array(rng, (5,))
    assert_close("batchnorm_inference (37, 5)", "y", norm.batchnorm_inference.fast(x2, mean, inv_std, gamma, beta),
                 norm.batchnorm_inference.reference(x2, mean, inv_std, gamma, beta), 1e-5, 1e-6)


def test_backend_setting():
    assert B.get_backend() in B.BACKENDS
    with tc.use_backend("numpy"):
        assert tc.get_backend() == "numpy"
        with pytest.raises(RuntimeError):
            with tc.use_backend("numba"):
                assert tc.get_backend() == "numba"
                raise RuntimeError
        assert tc.get_backend() == "numpy"  # restored after the exception
    with pytest.raises(ValueError, match="cuda"):
        tc.set_backend("cuda")


def test_dispatch_selects_by_backend():
    kernel = B.dispatch(lambda: "reference", lambda: "fast")
    with tc.use_backend("numpy"):
        assert kernel() == "reference"
    with tc.use_backend("numba"):
        assert kernel() == "fast"


def test_small_calls_run_on_one_thread_large_ones_on_all(monkeypatch):
    import numba
    seen = []
    spy = B.threads_by_size(lambda a: seen.append(numba.get_num_threads()) or a.size)
    monkeypatch.setattr(B, "SMALL_WORK", 1000)   # the tests lift it (conftest); restore a limit
    all_threads = numba.get_num_threads()
    assert spy(np.zeros(999)) == 999 and spy(np.zeros(1000)) == 1000
    assert seen == ([1, all_threads] if B.PARALLEL else [all_threads, all_threads])
    assert numba.get_num_threads() == all_threads        # restored after the small call
    with pytest.raises(ZeroDivisionError):               # ... and after one that raised
        B.threads_by_size(lambda a: 1 / 0)(np.zeros(3))
    assert numba.get_num_threads() == all_threads
    # the fast kernels are decorated: same result on either path
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((3, 3, 3, 4)).astype(np.float32)
    small = conv.conv2d.fast(x, w, (1, 1), ((1, 1), (1, 1)))
    monkeypatch.setattr(B, "SMALL_WORK", 0)
    np.testing.assert_array_equal(conv.conv2d.fast(x, w, (1, 1), ((1, 1), (1, 1))), small)


@pytest.mark.parametrize("shape, rate", [((7,), 0.5), ((3, 5, 4, 6), 0.3), ((2, 9, 9, 16), 0.9)])
def test_dropout_fast_equals_reference(shape, rate):
    rng = np.random.default_rng(3)
    x, g = random_array(rng, shape), random_array(rng, shape)
    u = rng.random(shape, dtype=np.float32)
    y, keep = dropout.dropout.fast(x, u, rate)
    y_ref, keep_ref = dropout.dropout.reference(x, u, rate)
    np.testing.assert_array_equal(keep, u >= rate)
    np.testing.assert_array_equal(keep, keep_ref)
    assert keep.dtype == np.bool_ and y.dtype == np.float32
    assert_close(f"dropout {shape} rate {rate}", "y", y, y_ref, 1e-6, 0)
    np.testing.assert_allclose(y[keep], x[keep] / (1 - rate), rtol=1e-6)
    assert (y[~keep] == 0).all()
    dx = dropout.dropout_grad.fast(g, keep, rate)
    assert_close(f"dropout_grad {shape} rate {rate}", "dx", dx, dropout.dropout_grad.reference(g, keep, rate), 1e-6, 0)
    with pytest.raises(ValueError, match=r"dropout: the values \(7,\) and the mask \(8,\)"):
        dropout.dropout.fast(np.zeros(7, np.float32), np.zeros(8, np.float32), rate)


KERNELS = {conv: ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_and_grad_weight",
                  "conv2d_maxpool", "conv2d_grad_weight_pooled", "conv2d_affine_maxpool", "bias_relu", "bias_relu_grad",
                  "bias_relu_affine"), pool: ("maxpool", "maxpool_grad", "global_average_pool", "global_average_pool_grad"),
           norm: ("batchnorm_forward", "batchnorm_backward", "batchnorm_inference", "batchnorm_relu_forward",
                  "batchnorm_relu_backward", "bias_relu_batchnorm_forward", "bias_relu_batchnorm_backward"),
           dropout: ("dropout", "dropout_grad"), activation: ("relu_grad",), optim: ("adam_update",)}


def test_each_kernel_dispatches_between_its_two_implementations():
    for module, names in KERNELS.items():
        for name in names:
            kernel = getattr(module, name)
            assert kernel.reference is getattr(module, f"{name}_reference"), f"{name}.reference"
            assert kernel.fast is getattr(module, f"{name}_fast"), f"{name}.fast"


LAYER_CALLS = [
    ("Conv2D", lambda: tc.layers.Conv2D(2, 3, strides=2, padding="same"), (2, 5, 5, 3),
     {"conv2d", "conv2d_grad_input", "conv2d_grad_weight", "bias_relu", "bias_relu_grad"}),
    ("Conv2D without bias or ReLU (no epilogue)", lambda: tc.layers.Conv2D(2, 3, use_bias=False), (2, 5, 5, 3),
     {"conv2d", "conv2d_grad_input", "conv2d_grad_weight"}),
    ("Conv2DTranspose", lambda: tc.layers.Conv2DTranspose(2, 3, strides=2), (2, 3, 3, 3),
     {"conv2d_grad_input", "conv2d_and_grad_weight", "bias_relu", "bias_relu_grad"}),
    ("Conv2D then MaxPooling2D", lambda: tc.Sequential([tc.layers.Conv2D(2, 3, padding="same", activation="relu"),
                                                        tc.layers.MaxPooling2D(2)]), (2, 5, 5, 3),
     {"conv2d", "conv2d_grad_input", "conv2d_grad_weight", "maxpool", "maxpool_grad", "bias_relu", "bias_relu_grad"}),
    ("MaxPooling2D", lambda: tc.layers.MaxPooling2D(2), (2, 4, 4, 3), {"maxpool", "maxpool_grad"}),
    ("GlobalAveragePooling2D", lambda: tc.layers.GlobalAveragePooling2D(), (2, 4, 3, 3),
     {"global_average_pool", "global_average_pool_grad"}),
    ("BatchNormalization", lambda: tc.layers.BatchNormalization(), (2, 3, 3, 3),
     {"batchnorm_forward", "batchnorm_backward"}),
    ("Dropout", lambda: tc.layers.Dropout(0.5, seed=0), (2, 3, 3, 3), {"dropout", "dropout_grad"}),
    ("ReLU", lambda: tc.layers.ReLU(), (2, 3, 3, 3), {"relu_grad"}),
    ("BatchNormalization then ReLU", lambda: tc.Sequential([tc.layers.BatchNormalization(), tc.layers.ReLU()]),
     (2, 3, 3, 3), {"batchnorm_relu_forward", "batchnorm_relu_backward"}),
    ("Conv2D(relu) then BatchNormalization",
     lambda: tc.Sequential([tc.layers.Conv2D(2, 3, activation="relu"), tc.layers.BatchNormalization()]), (2, 5, 5, 3),
     {"conv2d", "conv2d_grad_input", "conv2d_grad_weight", "bias_relu_batchnorm_forward",
      "bias_relu_batchnorm_backward"}),
]


@pytest.mark.parametrize("name, make, shape, expected", LAYER_CALLS, ids=[c[0] for c in LAYER_CALLS])
def test_layers_call_the_selected_kernel(backend, monkeypatch, name, make, shape, expected):
    """Every kernel is swapped for a dispatcher over recording wrappers of its two
    implementations; a layer's forward and backward must go through them, and only
    through the implementation the backend selects."""
    calls = []

    def recording(kernel_name, impl, fn):
        def wrapper(*args, **kwargs):
            calls.append((kernel_name, impl))
            if impl == "reference" and kernel_name == "conv2d" and kwargs.pop("keep_cols", False):
                return fn(*args, **kwargs), None   # the reference keeps no column matrix
            if impl == "reference" and kernel_name == "conv2d_grad_weight":
                kwargs.pop("cols", None)
            return fn(*args, **kwargs)
        return wrapper

    for module, names in KERNELS.items():
        for kernel_name in names:
            kernel = getattr(module, kernel_name)
            monkeypatch.setattr(module, kernel_name, B.dispatch(recording(kernel_name, "reference", kernel.reference),
                                                                recording(kernel_name, "fast", kernel.fast)))
    x = tc.Tensor(distinct_values(np.random.default_rng(0), shape), requires_grad=True)
    y = make()(x, training=True)
    y.backward(random_array(np.random.default_rng(1), y.shape))
    impl = "fast" if backend == "numba" else "reference"
    assert {k for k, _ in calls} == expected, f"{name} called {sorted({k for k, _ in calls})}"
    assert {i for _, i in calls} == {impl}, f"{name} on the {backend} backend called {calls}"


# -- the gate in front of the compiled kernels ------------------------------------------------------
MISMATCHES = [
    ("channels", lambda: conv.conv2d.fast(np.zeros((2, 5, 5, 64), np.float32), np.zeros((3, 3, 8, 8), np.float32),
                                          (1, 1), ((1, 1), (1, 1))), "input has 64 channels, the kernel expects 8"),
    ("kernel too big", lambda: conv.conv2d.fast(np.zeros((1, 2, 2, 1), np.float32), np.zeros((3, 3, 1, 1), np.float32),
                                                (1, 1), ((0, 0), (0, 0))), "larger than the padded input"),
    ("negative padding", lambda: conv.conv2d.fast(np.zeros((1, 5, 5, 1), np.float32),
                                                  np.zeros((3, 3, 1, 1), np.float32), (1, 1), ((-1, 0), (0, 0))),
     "paddings >= 0"),
    ("dy shape", lambda: conv.conv2d_grad_input.fast(np.zeros((1, 9, 9, 2), np.float32), np.zeros((3, 3, 1, 2), np.float32),
                                                     (1, 5, 5, 1), (1, 1), ((0, 0), (0, 0))), "output gradient has shape"),
    ("dy shape (weight)", lambda: conv.conv2d_grad_weight.fast(np.zeros((1, 5, 5, 1), np.float32),
                                                               np.zeros((1, 9, 9, 2), np.float32), (3, 3, 1, 2), (1, 1),
                                                               ((0, 0), (0, 0))), "output gradient has shape"),
    ("winograd channels", lambda: conv.winograd_conv2d.fast(np.zeros((2, 9, 9, 64), np.float32),
                                                                     np.zeros((3, 3, 8, 8), np.float32), (1, 1),
                                                                     ((1, 1), (1, 1))), "has 64 channels"),
    ("winograd dy shape", lambda: conv.winograd_conv2d_grads.fast(
        np.zeros((1, 9, 9, 4), np.float32), np.zeros((1, 3, 3, 4), np.float32), np.zeros((3, 3, 4, 4), np.float32),
        (1, 1), ((0, 0), (0, 0))), "output gradient has shape"),
]


@pytest.mark.parametrize("case, call, message", MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_compiled_kernels_refuse_shapes_that_disagree(case, call, message):
    """A ValueError naming the shapes, never a write past a buffer (Numba does not check bounds)."""
    with pytest.raises(ValueError, match=message):
        call()


def test_residual_block_called_on_other_channels_raises(backend):
    """Issue 12's first row: the block built for 8 channels, then handed 64, used to abort the process."""
    block = tc.layers.Residual([tc.layers.Conv2D(8, 3, padding="same")])
    block(np.zeros((1, 6, 6, 8), np.float32))
    with pytest.raises(ValueError, match="built for 8 input channels"):
        block(np.zeros((1, 6, 6, 64), np.float32))
