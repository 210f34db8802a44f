"""The fast versions of conv.py's functions, with the same signatures; read conv.py first.

The direct convolution gathers every tap into one matrix (*im2col*: one row per output
pixel, one column per (tap, channel)) and hands the sum to BLAS as one large matrix
product per chunk of the batch; the gather and its adjoint, *col2im*, are Numba loops,
parallel over rows and images. A one-channel input (a first layer on gray faces) has
kernels of its own, and the fused kernels (a convolution with the max pool after it,
with its epilogue and BatchNormalization) never write the convolution's output out.
Every compiled kernel is entered through a checked function (``check_shapes``).
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from .. import backend, memory
from ..backend import PARALLEL, threads_by_size
from . import pool_fast, winograd, winograd_fast
from .shapes import conv2d_output_shape, conv_output_size

_output_shape = conv2d_output_shape


# -- fast: im2col / col2im in Numba, one BLAS product per chunk of the batch -----------------
@njit(parallel=PARALLEL, cache=True, fastmath=True)
def im2col(x, kh, kw, sh, sw, pt, pl, ho, wo, cols):
    """Fill cols (N*HO*WO, KH*KW*C): row = output pixel, columns = (tap, channel)."""
    n_img, h, w, c = x.shape
    for r in prange(n_img * ho):  # one (image, output row) per iteration
        n, oy = r // ho, r % ho
        for ox in range(wo):
            row = r * wo + ox
            for a in range(kh):
                iy = oy * sh + a - pt
                for b in range(kw):
                    ix = ox * sw + b - pl
                    base = (a * kw + b) * c
                    if 0 <= iy < h and 0 <= ix < w:
                        for ch in range(c):
                            cols[row, base + ch] = x[n, iy, ix, ch]
                    else:  # a tap that falls in the zero padding
                        for ch in range(c):
                            cols[row, base + ch] = 0.0


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def col2im(cols, kh, kw, sh, sw, pt, pl, ho, wo, dx):
    """The adjoint of im2col: add every (tap, channel) column back into dx (N, H, W, C)."""
    n_img, h, w, c = dx.shape
    for n in prange(n_img):  # windows overlap inside an image, never across images
        dx[n] = 0.0
        for oy in range(ho):
            for ox in range(wo):
                row = (n * ho + oy) * wo + ox
                for a in range(kh):
                    iy = oy * sh + a - pt
                    if iy < 0 or iy >= h:
                        continue
                    for b in range(kw):
                        ix = ox * sw + b - pl
                        if ix < 0 or ix >= w:
                            continue
                        base = (a * kw + b) * c
                        for ch in range(c):
                            dx[n, iy, ix, ch] += cols[row, base + ch]


_NO_NAN_ASSUMED = {"contract", "arcp", "nsz", "afn", "reassoc"}  # fastmath, but NaN must still win a max


@njit(cache=True, fastmath=_NO_NAN_ASSUMED)
def _one_channel_pixel(x, w, n, oy, ox, sh, sw, pt, pl, out):
    """out (O,) = the convolution of a one-channel x (N, H, W, 1) with w (KH, KW, 1, O)
    at output pixel (n, oy, ox): the sum of KH*KW copies of the O-vector w[a, b, 0],
    each scaled by one input pixel (O innermost: one vector multiply-add per tap)."""
    h, wd = x.shape[1], x.shape[2]
    out[:] = 0.0
    for a in range(w.shape[0]):
        iy = oy * sh + a - pt
        if iy < 0 or iy >= h:
            continue
        for b in range(w.shape[1]):
            ix = ox * sw + b - pl
            if ix < 0 or ix >= wd:
                continue
            v = x[n, iy, ix, 0]
            for k in range(w.shape[3]):
                out[k] += v * w[a, b, 0, k]


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _conv_one_channel(x, w, sh, sw, pt, pl, ho, wo, y):
    """y (N, HO, WO, O) = conv of a one-channel x (N, H, W, 1) with w (KH, KW, 1, O),
    directly, one output pixel at a time."""
    for r in prange(x.shape[0] * ho):  # one (image, output row) per iteration
        n, oy = r // ho, r % ho
        for ox in range(wo):
            _one_channel_pixel(x, w, n, oy, ox, sh, sw, pt, pl, y[n, oy, ox])


# -- one input channel, 3x3, stride 1: the nine taps spelt out ---------------------------------------
# Every first layer of the seven architectures is this case. Above, each tap adds a scaled
# copy of w's O-vector into the output pixel, which goes to memory and back nine times;
# here the nine input pixels are read first, and each output channel is one nine-term sum
# whose running total stays in a register (the channel loop, innermost, is vectorised).
# The input arrives zero-padded (``_padded_plane``), so no tap needs a bounds test.

def _padded_plane(x, pads):
    """x (N, H, W, 1) -> (N, H + top + bottom, W + left + right), zeros around it. (Not
    ``np.pad``: for one face it took 15 times as long, 32 against 2 us.)"""
    (pt, pb), (pl, pr) = pads
    n, h, w, _ = x.shape
    xp = np.zeros((n, h + pt + pb, w + pl + pr), np.result_type(x))
    xp[:, pt:pt + h, pl:pl + w] = x[..., 0]
    return xp


@njit(inline="always")
def _patch3x3(xp, n, iy, ix):
    """The 3x3 patch of plane xp[n] whose top-left pixel is (iy, ix), row by row."""
    return (xp[n, iy, ix], xp[n, iy, ix + 1], xp[n, iy, ix + 2],
            xp[n, iy + 1, ix], xp[n, iy + 1, ix + 1], xp[n, iy + 1, ix + 2],
            xp[n, iy + 2, ix], xp[n, iy + 2, ix + 1], xp[n, iy + 2, ix + 2])


@njit(inline="always")
def _patch4x4(xp, n, iy, ix):
    """The 4x4 patch of plane xp[n] whose top-left pixel is (iy, ix), row by row: what a
    2x2 pool window of a 3x3 convolution's outputs reads."""
    return (xp[n, iy, ix], xp[n, iy, ix + 1], xp[n, iy, ix + 2], xp[n, iy, ix + 3],
            xp[n, iy + 1, ix], xp[n, iy + 1, ix + 1], xp[n, iy + 1, ix + 2], xp[n, iy + 1, ix + 3],
            xp[n, iy + 2, ix], xp[n, iy + 2, ix + 1], xp[n, iy + 2, ix + 2], xp[n, iy + 2, ix + 3],
            xp[n, iy + 3, ix], xp[n, iy + 3, ix + 1], xp[n, iy + 3, ix + 2], xp[n, iy + 3, ix + 3])


@njit(inline="always")
def _taps3x3(p00, p01, p02, p10, p11, p12, p20, p21, p22, w9, k):
    """The 3x3 correlation of a patch (p_ab, row a, column b) with w9[3 a + b, k]."""
    return (p00 * w9[0, k] + p01 * w9[1, k] + p02 * w9[2, k] + p10 * w9[3, k] + p11 * w9[4, k]
            + p12 * w9[5, k] + p20 * w9[6, k] + p21 * w9[7, k] + p22 * w9[8, k])


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _conv3x3_one_channel(xp, w9, y):
    """y (N, HO, WO, O) = the stride-1 convolution of a padded plane xp (N, HO + 2, WO + 2)
    with w9 (9, O), the 3x3 kernel's taps in rows."""
    n_img, ho, wo, o = y.shape
    for r in prange(n_img * ho):  # one (image, output row) per iteration
        n, iy = r // ho, r % ho
        for ix in range(wo):
            p00, p01, p02, p10, p11, p12, p20, p21, p22 = _patch3x3(xp, n, iy, ix)
            out = y[n, iy, ix]
            for k in range(o):
                out[k] = _taps3x3(p00, p01, p02, p10, p11, p12, p20, p21, p22, w9, k)


@njit(parallel=PARALLEL, cache=True, fastmath=_NO_NAN_ASSUMED)
def _conv3x3_one_channel_maxpool2x2(xp, w9, y, argmax):
    """y, argmax (N, PH, PW, O): the 2x2, stride-2 max pool of the stride-1 convolution
    z of a padded plane xp with w9 (9, O). A pool window's four z pixels read one 4x4
    patch of xp; the patch is loaded once and the four sums share each tap's weight."""
    n_img, gh, gw, o = y.shape
    for r in prange(n_img * gh):  # one (image, pooled row) per iteration
        n, py = r // gh, r % gh
        iy = 2 * py
        for px in range(gw):
            ix = 2 * px
            (p00, p01, p02, p03, p10, p11, p12, p13,
             p20, p21, p22, p23, p30, p31, p32, p33) = _patch4x4(xp, n, iy, ix)
            out, arg = y[n, py, px], argmax[n, py, px]
            for k in range(o):
                best, t = _taps3x3(p00, p01, p02, p10, p11, p12, p20, p21, p22, w9, k), 0  # window tap 0: z[iy, ix]
                z = _taps3x3(p01, p02, p03, p11, p12, p13, p21, p22, p23, w9, k)  # tap 1: z[iy, ix + 1]
                if z > best or (z != z and best == best):  # as _maxpool_numba: first tap wins a tie, NaN wins
                    best, t = z, 1
                z = _taps3x3(p10, p11, p12, p20, p21, p22, p30, p31, p32, w9, k)  # tap 2: z[iy + 1, ix]
                if z > best or (z != z and best == best):
                    best, t = z, 2
                z = _taps3x3(p11, p12, p13, p21, p22, p23, p31, p32, p33, w9, k)  # tap 3: z[iy + 1, ix + 1]
                if z > best or (z != z and best == best):
                    best, t = z, 3
                out[k], arg[k] = best, t


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _conv3x3_one_channel_grad_weight(xp, dy, parts):
    """parts (N, 9, O): each image's weight gradient of the stride-1 3x3 convolution of a
    padded plane xp (N, HO + 2, WO + 2), the nine taps in rows: the sum over output pixels
    of the pixel's 3x3 patch times its gradient dy (N, HO, WO, O)."""
    n_img, ho, wo, o = dy.shape
    for n in prange(n_img):  # one image per iteration: its own rows of parts, no race
        acc = parts[n]
        acc[:] = 0.0
        for iy in range(ho):
            for ix in range(wo):
                p00, p01, p02, p10, p11, p12, p20, p21, p22 = _patch3x3(xp, n, iy, ix)
                g = dy[n, iy, ix]
                for k in range(o):
                    gk = g[k]
                    acc[0, k] += p00 * gk
                    acc[1, k] += p01 * gk
                    acc[2, k] += p02 * gk
                    acc[3, k] += p10 * gk
                    acc[4, k] += p11 * gk
                    acc[5, k] += p12 * gk
                    acc[6, k] += p20 * gk
                    acc[7, k] += p21 * gk
                    acc[8, k] += p22 * gk


def _is_3x3_stride_1(w_shape, strides):
    return tuple(w_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)


_CHUNK_BYTES = 16 << 20  # keep one chunk's column matrix around 16 MiB


def _chunk_size(n, ho, wo, k):
    per_image = ho * wo * k * 4
    return int(max(1, min(n, _CHUNK_BYTES // max(per_image, 1))))


def check_shapes(who, x_shape, w_shape, strides, pads, dy_shape=None):
    """The one gate in front of the compiled kernels, which do not check bounds: every
    size they index by is derived here from shapes that must agree, or a ValueError
    names the call and the shapes."""
    problem = None
    if len(x_shape) != 4 or len(w_shape) != 4:
        problem = "input and kernel must be 4-D (N, H, W, C) and (KH, KW, C, O)"
    elif x_shape[3] != w_shape[2]:
        problem = f"input has {x_shape[3]} channels, the kernel expects {w_shape[2]}"
    elif min(strides) < 1 or min(min(p) for p in pads) < 0:
        problem = f"strides must be >= 1 and paddings >= 0, got strides {tuple(strides)} pads {tuple(pads)}"
    elif min(_output_shape(x_shape, w_shape, strides, pads)[1:3]) < 1:
        problem = "the kernel is larger than the padded input"
    elif dy_shape is not None and tuple(dy_shape) != _output_shape(x_shape, w_shape, strides, pads):
        problem = f"output gradient has shape {tuple(dy_shape)}, the convolution gives " \
                  f"{_output_shape(x_shape, w_shape, strides, pads)}"
    if problem:
        raise ValueError(f"{who}: {problem} (input {tuple(x_shape)}, kernel {tuple(w_shape)})")


@threads_by_size
def conv2d_fast(x, w, strides, pads, keep_cols=False):
    """As conv2d_reference; with ``keep_cols`` also returns the full column matrix
    (N*HO*WO, KH*KW*C), which the weight gradient can then reuse instead of gathering
    the input again."""
    check_shapes("conv2d", x.shape, w.shape, strides, pads)
    n, ho, wo, o = _output_shape(x.shape, w.shape, strides, pads)
    kh, kw, c, _ = w.shape
    k = kh * kw * c
    x = np.ascontiguousarray(x)
    y = memory.empty((n, ho, wo, o))
    if c == 1 and not keep_cols and (x.size >= backend.SMALL_WORK or (_is_3x3_stride_1(w.shape, strides) and o <= 64)):
        # One input channel (a first layer on gray faces): im2col's matrix would be KH*KW
        # columns wide, too narrow for BLAS to run near its peak, and a pass of its own; the
        # direct kernels measured faster, at one face only up to 64 output channels
        # (bench/README.md, "Measurements behind the kernels' choices").
        if _is_3x3_stride_1(w.shape, strides):
            _conv3x3_one_channel(_padded_plane(x, pads), np.ascontiguousarray(w, np.float32).reshape(9, o), y)
        else:
            _conv_one_channel(x, np.ascontiguousarray(w), strides[0], strides[1], pads[0][0], pads[1][0], ho, wo, y)
        return y
    w2 = np.ascontiguousarray(w).reshape(k, o)
    y2 = y.reshape(n * ho * wo, o)
    step = _chunk_size(n, ho, wo, k)
    cols = memory.empty(((n if keep_cols else step) * ho * wo, k))
    for s in range(0, n, step):
        m = min(step, n - s)
        rows = slice(s * ho * wo, (s + m) * ho * wo)
        part = cols[rows] if keep_cols else cols[:m * ho * wo]
        im2col(x[s:s + m], kh, kw, strides[0], strides[1], pads[0][0], pads[1][0], ho, wo, part)
        backend.matmul(part, w2, out=y2[rows])
    return (y, cols) if keep_cols else y


# Keep im2col's column matrix for the weight gradient only while it is at most this wide.
# Narrow (few input channels, K = KH*KW*C) it is cheap to keep and dear to gather again,
# since the gather is most of the work there; wide, writing it all out and reading it
# back costs more memory traffic than gathering it again chunk by chunk in the backward
# (bench/README.md, "Measurements behind the kernels' choices").
KEEP_COLS_MAX_WIDTH = 144


def conv2d_keeping_fast(x, w, strides, pads):
    """(y, cols): ``conv2d_fast``, and its column matrix when keeping it pays for the
    weight gradient (``conv2d_grad_weight_fast(cols=...)``), else None. A 3x3 stride-1
    kernel on one channel (a first layer) keeps nothing: its spelt-out kernels both ways
    measured faster than im2col with kept columns (the same page)."""
    kh, kw, c, _ = w.shape
    if kh * kw * c > KEEP_COLS_MAX_WIDTH or (c == 1 and _is_3x3_stride_1(w.shape, strides)):
        return conv2d_fast(x, w, strides, pads), None
    return conv2d_fast(x, w, strides, pads, keep_cols=True)


@threads_by_size
def conv2d_grad_input_fast(dy, w, x_shape, strides, pads):
    check_shapes("conv2d_grad_input", x_shape, w.shape, strides, pads, dy.shape)
    n, ho, wo, o = dy.shape
    kh, kw, c, _ = w.shape
    w2t = w.reshape(kh * kw * c, o).T  # a transposed view: BLAS reads it as it is, no copy
    dy2 = np.ascontiguousarray(dy).reshape(n * ho * wo, o)
    dx = memory.empty(x_shape)
    step = _chunk_size(n, ho, wo, kh * kw * c)
    cols = memory.empty((step * ho * wo, kh * kw * c))
    for s in range(0, n, step):
        m = min(step, n - s)
        part = cols[:m * ho * wo]
        backend.matmul(dy2[s * ho * wo:(s + m) * ho * wo], w2t, out=part)
        col2im(part, kh, kw, strides[0], strides[1], pads[0][0], pads[1][0], ho, wo, dx[s:s + m])
    return dx


def _sum_of_products(cols, dy2, rows=8192):
    """cols.T @ dy2 for a tall (M, K) cols and (M, O) dy2: a long sum over M, which
    ``backend.matmul`` splits between the threads.

    With few columns (a first layer: K = 9) one product this long runs badly; summing
    products of row blocks keeps every product well shaped."""
    if cols.shape[1] >= 64:
        return backend.matmul(cols.T, dy2)

    def blocks(share):
        part = np.zeros((cols.shape[1], dy2.shape[1]), np.float32)
        for s in range(share.start, share.stop, rows):
            e = min(s + rows, share.stop)
            part += cols[s:e].T @ dy2[s:e]
        return part
    threads = max(1, min(backend.core_count(), -(-len(cols) // rows)))   # at least one, for an empty batch
    return sum(backend.on_cores([functools.partial(blocks, share) for share in backend.split_evenly(len(cols), threads)]))


@threads_by_size
def conv2d_grad_weight_fast(x, dy, w_shape, strides, pads, cols=None):
    """As conv2d_grad_weight_reference; ``cols`` is the column matrix kept by the forward."""
    check_shapes("conv2d_grad_weight", x.shape, w_shape, strides, pads, dy.shape)
    n, ho, wo, o = dy.shape
    kh, kw, c, _ = w_shape
    dy2 = np.ascontiguousarray(dy).reshape(n * ho * wo, o)
    if cols is not None:
        return _sum_of_products(cols, dy2).reshape(w_shape)
    if c == 1 and _is_3x3_stride_1(w_shape, strides):
        # a first layer (see conv2d_keeping_fast): the spelt-out taps, each image's sums in
        # float32, the images' added in float64
        parts = memory.empty((n, 9, o))
        _conv3x3_one_channel_grad_weight(_padded_plane(x, pads), dy2.reshape(n, ho, wo, o), parts)
        return parts.sum(axis=0, dtype=np.float64).astype(np.float32).reshape(w_shape)
    x = np.ascontiguousarray(x)
    dw = np.zeros((kh * kw * c, o), np.float32)
    step = _chunk_size(n, ho, wo, kh * kw * c)
    cols = memory.empty((step * ho * wo, kh * kw * c))
    for s in range(0, n, step):
        m = min(step, n - s)
        part = cols[:m * ho * wo]
        im2col(x[s:s + m], kh, kw, strides[0], strides[1], pads[0][0], pads[1][0], ho, wo, part)
        dw += _sum_of_products(part, dy2[s * ho * wo:(s + m) * ho * wo])
    return dw.reshape(w_shape)


@threads_by_size
def conv2d_and_grad_weight_fast(x, w, dy, strides, pads):
    """As the reference, gathering each chunk's columns once for both products while
    they are still in cache (twice as many gathers otherwise)."""
    check_shapes("conv2d_and_grad_weight", x.shape, w.shape, strides, pads, dy.shape)
    n, ho, wo, o = dy.shape
    kh, kw, c, _ = w.shape
    k = kh * kw * c
    x = np.ascontiguousarray(x)
    w2 = np.ascontiguousarray(w).reshape(k, o)
    dy2 = np.ascontiguousarray(dy).reshape(n * ho * wo, o)
    y = memory.empty((n, ho, wo, o))
    y2 = y.reshape(n * ho * wo, o)
    dw = np.zeros((k, o), np.float32)
    step = _chunk_size(n, ho, wo, k)
    cols = memory.empty((step * ho * wo, k))
    for s in range(0, n, step):
        m = min(step, n - s)
        rows = slice(s * ho * wo, (s + m) * ho * wo)
        part = cols[:m * ho * wo]
        im2col(x[s:s + m], kh, kw, strides[0], strides[1], pads[0][0], pads[1][0], ho, wo, part)
        backend.matmul(part, w2, out=y2[rows])
        dw += _sum_of_products(part, dy2[rows])
    return y, dw.reshape(w.shape)


# -- the epilogue: bias and ReLU, fused into one pass each way ---------------------------------
@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _bias_relu(y2, b, relu):
    m, c = y2.shape
    for i in prange(m):
        for j in range(c):
            v = y2[i, j] + b[j]
            y2[i, j] = max(v, 0.0) if relu else v


_BLOCKS = 64  # the bias gradient is summed per block of rows, so that the cores share it


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _bias_relu_grad(g2, y2, relu, out, db):
    m, c = g2.shape
    acc = np.zeros((_BLOCKS, c))
    rows = (m + _BLOCKS - 1) // _BLOCKS
    for k in prange(_BLOCKS):
        for i in range(k * rows, min(m, (k + 1) * rows)):
            for j in range(c):
                v = g2[i, j] if (not relu or y2[i, j] > 0) else 0.0
                out[i, j] = v
                acc[k, j] += v
    db[:] = acc.sum(axis=0)


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _bias_relu_affine(y2, b, scale, shift):
    m, c = y2.shape
    for i in prange(m):
        for j in range(c):
            y2[i, j] = max(y2[i, j] + b[j], 0.0) * scale[j] + shift[j]


@threads_by_size
def bias_relu_affine_fast(y, b, scale, shift):
    c = y.shape[-1]
    if not y.flags.c_contiguous or not all(v.shape == (c,) for v in (b, scale, shift)):
        raise ValueError(f"bias_relu_affine: y {y.shape} must be C-contiguous and b, scale, shift ({c},), "
                         f"got {b.shape}, {scale.shape}, {shift.shape}")
    _bias_relu_affine(y.reshape(-1, c), np.asarray(b, np.float32), np.asarray(scale, np.float32),
                      np.asarray(shift, np.float32))
    return y


@threads_by_size
def bias_relu_fast(y, b, relu):
    _bias_relu(y.reshape(-1, y.shape[-1]), b, relu)
    return y


@threads_by_size
def bias_relu_grad_fast(g, y, relu):
    c = g.shape[-1]
    out, db = memory.empty(g.shape), np.empty(c, np.float32)  # C order: g may be a broadcast view
    _bias_relu_grad(np.ascontiguousarray(g).reshape(-1, c), y.reshape(-1, c), relu, out.reshape(-1, c), db)
    return out, db


# -- which algorithm: the direct sum (im2col) or Winograd ------------------------------------------
def choose_algorithm(x_shape, w_shape, strides, pads=((0, 0), (0, 0)), frozen=False):
    """``"winograd"`` or ``"im2col"`` for a convolution of x (N, H, W, C) with w (KH, KW, C, O).

    Winograd applies to 3x3 kernels with stride 1. Under ``set_conv_algorithm("auto")``
    it is used where it measured faster on this project's layers (bench/README.md,
    "Measurements behind the kernels' choices"): with at least 64 input channels and an
    input of at least 9x9, or at least 32 channels on a map of at least 20x20, and at
    least 2048 input pixels in the batch. With fewer channels the (tiles, C) x (C, O)
    products are too thin to pay for the transforms; on smaller maps most of each 4x4
    output tile falls past the edge; in a small batch (one face) transforming the kernel
    costs more than the products save. A map of 6x6 outputs (``pads`` give the output's
    size; 'valid' when not given) with at least 64 channels is one F(6x6, 3x3) tile per
    image (``winograd.choose_tile``) with nothing past the edge; a 5x5 output (vggbn's
    7x7x256 'valid') leaves a third of its one tile unused and still takes 64 products
    against im2col's 225.

    A ``frozen`` kernel (``winograd_fast.freeze_kernel``: an inference copy's) keeps its
    transform, and then F(4x4) pays at any batch on an output of at least 8x8 with 32+
    input channels and C x O up to 128 x 256: with no kernel transform to pay for at
    each call, Winograd measured faster there from one image on.
    """
    mode = backend.get_conv_algorithm()
    applies = tuple(w_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)
    if mode == "im2col" or not applies:
        return "im2col"
    if mode == "winograd":
        return "winograd"
    n, h, w, c = x_shape
    ho, wo = h + sum(pads[0]) - 2, w + sum(pads[1]) - 2
    if frozen and c >= 32 and min(ho, wo) >= 8 and c * w_shape[3] <= 128 * 256:
        return "winograd"
    if n * h * w < 2048:
        return "im2col"
    if (c >= 64 and min(h, w) >= 9) or (c >= 32 and min(h, w) >= 20):
        return "winograd"
    # whole F(6x6) tiles, or one tile per image with at least 5x5 of its 6x6 outputs used
    f6_tiles_fit = ho > 0 and wo > 0 and (ho % 6 == 0 and wo % 6 == 0 or 5 <= min(ho, wo) <= max(ho, wo) <= 6)
    return "winograd" if c >= 64 and f6_tiles_fit and winograd.choose_tile(ho, wo) == 6 else "im2col"


def _conv2d_chosen(x, w, strides, pads):
    """The convolution by the chosen algorithm's fast kernel (``conv.conv2d`` on the fast backend)."""
    if choose_algorithm(x.shape, w.shape, strides, pads, winograd_fast.is_frozen(w)) == "winograd":
        return winograd_fast.winograd_conv2d_fast(x, w, strides, pads)
    return conv2d_fast(x, w, strides, pads)


def _conv2d_grad_weight_chosen(x, dy, w_shape, strides, pads, cols=None):
    """The weight gradient by the chosen algorithm's fast kernel (``conv.conv2d_grad_weight``
    on the fast backend)."""
    if cols is None and choose_algorithm(x.shape, w_shape, strides, pads) == "winograd":
        return winograd_fast.winograd_conv2d_grad_weight_fast(x, dy, w_shape, strides, pads)
    return conv2d_grad_weight_fast(x, dy, w_shape, strides, pads, cols=cols)


# -- a convolution and the max pool after it ------------------------------------------------------
@njit(parallel=PARALLEL, cache=True, fastmath=_NO_NAN_ASSUMED)
def _conv_one_channel_maxpool(x, w, sh, sw, pt, pl, zh, zw, ph, pw, ppt, ppl, y, argmax):
    """y, argmax (N, PH, PW, O): the max pool, windows PH x PW tiling z, of the
    convolution z of a one-channel x with w, window by window: each tap's O-vector of z
    is computed (``_one_channel_pixel``) and compared at once, so z is never stored."""
    o = w.shape[3]
    gh, gw = y.shape[1], y.shape[2]
    for r in prange(x.shape[0] * gh):  # one (image, pooled row) per iteration
        n, py = r // gh, r % gh
        z = np.empty(o, np.float32)
        for px in range(gw):
            for k in range(o):
                y[n, py, px, k] = -np.inf
                argmax[n, py, px, k] = 0
            for t in range(ph * pw):
                zy, zx = py * ph + t // pw - ppt, px * pw + t % pw - ppl
                if zy < 0 or zy >= zh or zx < 0 or zx >= zw:
                    continue
                _one_channel_pixel(x, w, n, zy, zx, sh, sw, pt, pl, z)
                for k in range(o):  # as _maxpool_numba: the first tap wins a tie, a NaN wins
                    best = y[n, py, px, k]
                    if z[k] > best or (z[k] != z[k] and best == best):
                        y[n, py, px, k] = z[k]
                        argmax[n, py, px, k] = t


@threads_by_size
def conv2d_maxpool_fast(x, w, strides, pads, pool_size, pool_strides, pool_pads, pool_hw):
    """As the reference. A one-channel input (a first layer on gray faces) under tiling
    windows takes one kernel that never writes z, and with a 3x3 kernel at stride 1 and
    2x2 windows (every first layer here) a spelt-out one, both measured faster than the
    convolution and the pool apart (bench/README.md, "Measurements behind the kernels'
    choices"). A convolution computed by Winograd under 2x2 windows pools each block of
    images while its output is in cache (``winograd_fast.winograd_conv2d_maxpool``).
    Otherwise the chosen convolution (``conv.conv2d``) and ``pool.maxpool``."""
    check_shapes("conv2d_maxpool", x.shape, w.shape, strides, pads)
    n, zh, zw, o = _output_shape(x.shape, w.shape, strides, pads)
    expected = tuple(conv_output_size((zh, zw)[i], pool_size[i], pool_strides[i], *pool_pads[i]) for i in range(2))
    if tuple(pool_hw) != expected:
        raise ValueError(f"conv2d_maxpool: pooled size {tuple(pool_hw)}, the pool of a {zh}x{zw} map gives {expected}")
    spelt_out = _is_3x3_stride_1(w.shape, strides) and tuple(pool_size) == tuple(pool_strides) == (2, 2) \
        and not any(map(any, pool_pads))
    if x.shape[3] == 1 and tuple(pool_size) == tuple(pool_strides) and (x.size >= backend.SMALL_WORK or spelt_out):
        ph, pw = pool_size
        y = memory.empty((n,) + expected + (o,))
        argmax = memory.empty(y.shape, np.int32)
        if spelt_out:
            w9 = np.ascontiguousarray(w, np.float32).reshape(9, o)
            _conv3x3_one_channel_maxpool2x2(_padded_plane(x, pads), w9, y, argmax)
            return y, argmax
        _conv_one_channel_maxpool(np.ascontiguousarray(x), np.ascontiguousarray(w), strides[0], strides[1],
                                  pads[0][0], pads[1][0], zh, zw, ph, pw, pool_pads[0][0], pool_pads[1][0], y, argmax)
        return y, argmax
    if tuple(pool_size) == tuple(pool_strides) == (2, 2) and not any(map(any, pool_pads)) \
            and choose_algorithm(x.shape, w.shape, strides, pads, winograd_fast.is_frozen(w)) == "winograd":
        return winograd_fast.winograd_conv2d_maxpool(x, w, strides, pads, pool_hw)
    return pool_fast.maxpool_fast(_conv2d_chosen(x, w, strides, pads), pool_size, pool_strides, pool_pads, pool_hw)


# -- the weight gradient of a convolution whose output was max-pooled ------------------------------
@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _grad_weight_pooled_one_channel(x, g, argmax, kh, kw, sh, sw, pt, pl, ph, pw, ppt, ppl, zh, zw, parts):
    """parts[n] (KH*KW, O) = image n's weight gradient, for a one-channel x and windows
    that tile z (pool stride = pool size). The pool's gradient is never written out:
    for each pooled pixel and each tap t of its window, the gradient of the channels
    whose winner is t multiplies the input pixels that tap's output saw."""
    n_img, h, wd, _ = x.shape
    o = g.shape[3]
    for n in prange(n_img):
        m = np.empty(o, np.float32)
        part = parts[n]
        part[:] = 0.0
        for py in range(g.shape[1]):
            for px in range(g.shape[2]):
                for t in range(ph * pw):
                    zy, zx = py * ph + t // pw - ppt, px * pw + t % pw - ppl
                    if zy < 0 or zy >= zh or zx < 0 or zx >= zw:
                        continue
                    for k in range(o):
                        m[k] = g[n, py, px, k] if argmax[n, py, px, k] == t else 0.0
                    for a in range(kh):
                        iy = zy * sh + a - pt
                        if iy < 0 or iy >= h:
                            continue
                        for b in range(kw):
                            ix = zx * sw + b - pl
                            if ix < 0 or ix >= wd:
                                continue
                            v = x[n, iy, ix, 0]
                            for k in range(o):
                                part[a * kw + b, k] += m[k] * v


@threads_by_size
def conv2d_grad_weight_pooled_fast(g, argmax, saved, z_shape, pool_size, pool_strides, pool_pads):
    """As the reference. For a one-channel input (a first layer on gray faces) under
    tiling windows, one pass over the pooled gradient, without writing the pool's
    gradient (z's size) and reading it back, which measured faster than the pool's
    gradient and the weight gradient from the kept columns (bench/README.md,
    "Measurements behind the kernels' choices"). Otherwise those two fast kernels."""
    x, w = saved.x, saved.w
    check_shapes("conv2d_grad_weight_pooled", x.shape, w.shape, saved.strides, saved.pads, z_shape)
    pooled = (z_shape[0],) + tuple(conv_output_size(z_shape[1 + i], pool_size[i], pool_strides[i], *pool_pads[i])
                                   for i in range(2)) + (z_shape[3],)
    if g.shape != pooled or argmax.shape != pooled:
        raise ValueError(f"conv2d_grad_weight_pooled: the pooled gradient {g.shape} and argmax {argmax.shape} "
                         f"must both have the pooled shape {pooled} (conv output {tuple(z_shape)})")
    if x.shape[3] == 1 and tuple(pool_size) == tuple(pool_strides):
        kh, kw, _, o = w.shape
        parts = memory.empty((x.shape[0], kh * kw, o))
        _grad_weight_pooled_one_channel(np.ascontiguousarray(x), np.ascontiguousarray(g), argmax, kh, kw,
                                        saved.strides[0], saved.strides[1], saved.pads[0][0], saved.pads[1][0],
                                        pool_size[0], pool_size[1], pool_pads[0][0], pool_pads[1][0],
                                        z_shape[1], z_shape[2], parts)
        return parts.sum(axis=0, dtype=np.float64).astype(np.float32).reshape(w.shape)
    dz = pool_fast.maxpool_grad_fast(g, argmax, z_shape, pool_size, pool_strides, pool_pads)
    return _conv2d_grad_weight_chosen(x, dz, w.shape, saved.strides, saved.pads, cols=saved.cols)


# -- inference: a ReLU convolution, the BatchNormalization after it and a max pool -------------
@njit(parallel=PARALLEL, cache=True, fastmath=_NO_NAN_ASSUMED)
def _conv3x3_one_channel_affine_maxpool2x2(xp, w9, b, scale, shift, y):
    """y (N, PH, PW, O): the 2x2, stride-2 max pool of max(z + b, 0) * scale + shift, z the
    stride-1 convolution of a padded plane xp with w9 (9, O); z itself is never stored.
    A window's four pixels read one 4x4 patch of xp, loaded once (as
    ``_conv3x3_one_channel_maxpool2x2``)."""
    n_img, gh, gw, o = y.shape
    for r in prange(n_img * gh):  # one (image, pooled row) per iteration
        n, py = r // gh, r % gh
        iy = 2 * py
        for px in range(gw):
            ix = 2 * px
            (p00, p01, p02, p03, p10, p11, p12, p13,
             p20, p21, p22, p23, p30, p31, p32, p33) = _patch4x4(xp, n, iy, ix)
            out = y[n, py, px]
            for k in range(o):
                bk, sk, tk = b[k], scale[k], shift[k]
                best = max(_taps3x3(p00, p01, p02, p10, p11, p12, p20, p21, p22, w9, k) + bk, 0.0) * sk + tk
                v = max(_taps3x3(p01, p02, p03, p11, p12, p13, p21, p22, p23, w9, k) + bk, 0.0) * sk + tk
                best = v if v > best else best
                v = max(_taps3x3(p10, p11, p12, p20, p21, p22, p30, p31, p32, w9, k) + bk, 0.0) * sk + tk
                best = v if v > best else best
                v = max(_taps3x3(p11, p12, p13, p21, p22, p23, p31, p32, p33, w9, k) + bk, 0.0) * sk + tk
                out[k] = v if v > best else best


@threads_by_size
def conv2d_affine_maxpool_fast(x, w, b, scale, shift, strides, pads, pool_size, pool_strides, pool_pads, pool_hw):
    """As the reference. A one-channel input, a 3x3 kernel at stride 1 and 2x2 windows
    (gap4's first layer) take one kernel that writes only the pooled map; the
    convolution's output (256 channels of 46x46 a face there) never goes to memory and
    back (bench/README.md, "The inference plan"). A convolution by Winograd under 2x2
    windows applies the epilogue and pools each block of images while its output is in
    cache (``winograd_fast.winograd_conv2d_maxpool``). Otherwise the chosen convolution, its
    epilogue and the pool, one after another."""
    check_shapes("conv2d_affine_maxpool", x.shape, w.shape, strides, pads)
    n, zh, zw, o = _output_shape(x.shape, w.shape, strides, pads)
    expected = tuple(conv_output_size((zh, zw)[i], pool_size[i], pool_strides[i], *pool_pads[i]) for i in range(2))
    if tuple(pool_hw) != expected:
        raise ValueError(f"conv2d_affine_maxpool: pooled size {tuple(pool_hw)}, the pool of a {zh}x{zw} map "
                         f"gives {expected}")
    b, scale, shift = (np.asarray(v, np.float32) for v in (b, scale, shift))
    if x.shape[3] == 1 and _is_3x3_stride_1(w.shape, strides) and tuple(pool_size) == tuple(pool_strides) == (2, 2) \
            and not any(map(any, pool_pads)):
        y = memory.empty((n,) + expected + (o,))
        _conv3x3_one_channel_affine_maxpool2x2(_padded_plane(x, pads), np.ascontiguousarray(w, np.float32).reshape(9, o),
                                               b, scale, shift, y)
        return y
    if tuple(pool_size) == tuple(pool_strides) == (2, 2) and not any(map(any, pool_pads)) \
            and choose_algorithm(x.shape, w.shape, strides, pads, winograd_fast.is_frozen(w)) == "winograd":
        return winograd_fast.winograd_conv2d_maxpool(x, w, strides, pads, pool_hw, affine=(b, scale, shift))[0]
    y = bias_relu_affine_fast(_conv2d_chosen(x, w, strides, pads), b, scale, shift)
    return pool_fast.maxpool_fast(y, pool_size, pool_strides, pool_pads, pool_hw)[0]


