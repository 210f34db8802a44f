"""Pooling kernels: max pooling, and global average pooling at the end of this file.

Shapes: ``x`` (N, H, W, C) -> ``y`` (N, HO, WO, C), with ``argmax`` (N, HO, WO, C) the
index ``a * PW + b`` of the window tap that won. Backward routes each output gradient
to that one input position and nowhere else: the max is locally the identity on the
winner and constant in the others. Padding (Keras ``same``) is filled with -inf so it
never wins. On a tie the first tap in row-major order wins, as in ``np.argmax``.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import memory
from ..backend import PARALLEL, dispatch, threads_by_size
from .shapes import tap_slice


def maxpool_reference(x, pool, strides, pads, out_hw):
    """y, argmax = max over each window of x (N, H, W, C)."""
    ho, wo = out_hw
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-np.inf)
    taps = np.stack([xp[tap_slice(a, b, ho, wo, strides)]
                     for a in range(pool[0]) for b in range(pool[1])])  # (taps, N, HO, WO, C)
    argmax = taps.argmax(axis=0).astype(np.int32)
    y = np.take_along_axis(taps, argmax[None], axis=0)[0]
    return y, argmax


def maxpool_grad_reference(dy, argmax, x_shape, pool, strides, pads):
    """dx (N, H, W, C): dy routed to the winning tap of each window."""
    n, h, w, c = x_shape
    (pt, pb), (pl, pr) = pads
    ho, wo = dy.shape[1:3]
    dxp = np.zeros((n, h + pt + pb, w + pl + pr, c), np.float32)
    for a in range(pool[0]):
        for b in range(pool[1]):
            dxp[tap_slice(a, b, ho, wo, strides)] += np.where(argmax == a * pool[1] + b, dy, 0)
    return dxp[:, pt:pt + h, pl:pl + w, :]


@njit(nogil=True, cache=True)
def _maxpool_row(x, n, oy, ph, pw, sh, sw, pt, pl, wo, y, argmax):
    """Output row oy of image n: y, argmax[n, oy] over the windows of x[n]."""
    _, h, w, c = x.shape
    for ox in range(wo):
        for ch in range(c):
            y[n, oy, ox, ch] = -np.inf
            argmax[n, oy, ox, ch] = 0
        for a in range(ph):  # taps outside, channels inside: reads stay contiguous
            iy = oy * sh + a - pt
            if iy < 0 or iy >= h:
                continue
            for b in range(pw):
                ix = ox * sw + b - pl
                if ix < 0 or ix >= w:
                    continue
                for ch in range(c):
                    v = x[n, iy, ix, ch]
                    best = y[n, oy, ox, ch]
                    # strict: the first tap wins a tie; a NaN wins as in np.argmax (the first one)
                    if v > best or (v != v and best == best):
                        y[n, oy, ox, ch] = v
                        argmax[n, oy, ox, ch] = a * pw + b


@njit(parallel=PARALLEL, cache=True)
def _maxpool_numba(x, ph, pw, sh, sw, pt, pl, ho, wo, y, argmax):
    for r in prange(x.shape[0] * ho):
        _maxpool_row(x, r // ho, r % ho, ph, pw, sh, sw, pt, pl, wo, y, argmax)


@njit(nogil=True, cache=True)
def maxpool_serial(x, ph, pw, sh, sw, pt, pl, ho, wo, y, argmax):
    """``_maxpool_numba`` in the calling thread alone, the GIL released: for a block of
    images inside one of tinycnn's own threads (``winograd_fast.winograd_conv2d_maxpool``)."""
    for n in range(x.shape[0]):
        for oy in range(ho):
            _maxpool_row(x, n, oy, ph, pw, sh, sw, pt, pl, wo, y, argmax)


@njit(parallel=PARALLEL, cache=True)
def _maxpool_grad_numba(dy, argmax, pw, sh, sw, pt, pl, dx):
    """Any windows, overlapping ones included: zero dx, then add each output gradient
    into its winner's position (a scatter)."""
    n_img, ho, wo, c = dy.shape
    for n in prange(n_img):  # overlapping windows (stride < pool) stay within one image
        dx[n] = 0.0
        for oy in range(ho):
            for ox in range(wo):
                for ch in range(c):
                    tap = argmax[n, oy, ox, ch]
                    dx[n, oy * sh + tap // pw - pt, ox * sw + tap % pw - pl, ch] += dy[n, oy, ox, ch]


@njit(parallel=PARALLEL, cache=True)
def _maxpool_grad_tiled_numba(dy, argmax, ph, pw, pt, pl, dx):
    """Windows that tile the input (stride == pool, the usual case): each input position
    lies in at most one window, so dx is written once, in its own order, as a gather:
    dy where the position won its window, else 0. No zeroing pass, no scatter, no
    division per element; the channel loop reads and writes contiguous memory."""
    n_img, ho, wo, c = dy.shape
    h, w = dx.shape[1], dx.shape[2]
    for n in prange(n_img):
        for iy in range(h):
            oy = (iy + pt) // ph
            if oy >= ho:  # a row below the last window (valid pooling of an odd size)
                dx[n, iy] = 0.0
                continue
            a = iy + pt - oy * ph
            for ix in range(w):
                ox = (ix + pl) // pw
                if ox >= wo:
                    dx[n, iy, ix] = 0.0
                    continue
                tap = a * pw + (ix + pl - ox * pw)
                for ch in range(c):
                    won = argmax[n, oy, ox, ch] == tap
                    dx[n, iy, ix, ch] = dy[n, oy, ox, ch] if won else np.float32(0.0)


@threads_by_size
def maxpool_fast(x, pool, strides, pads, out_hw):
    n, _, _, c = x.shape
    y = memory.empty((n, out_hw[0], out_hw[1], c))
    argmax = memory.empty(y.shape, np.int32)
    _maxpool_numba(np.ascontiguousarray(x), pool[0], pool[1], strides[0], strides[1],
                   pads[0][0], pads[1][0], out_hw[0], out_hw[1], y, argmax)
    return y, argmax


@threads_by_size
def maxpool_grad_fast(dy, argmax, x_shape, pool, strides, pads):
    dx = memory.empty(x_shape)
    dy = np.ascontiguousarray(dy)
    if tuple(strides) == tuple(pool):
        _maxpool_grad_tiled_numba(dy, argmax, pool[0], pool[1], pads[0][0], pads[1][0], dx)
    else:
        _maxpool_grad_numba(dy, argmax, pool[1], strides[0], strides[1], pads[0][0], pads[1][0], dx)
    return dx


maxpool = dispatch(maxpool_reference, maxpool_fast)
maxpool_grad = dispatch(maxpool_grad_reference, maxpool_grad_fast)


# -- global average pooling: (N, H, W, C) -> (N, C) -------------------------------------------------
def global_average_pool_reference(x):
    """y (N, C) = the mean of x (N, H, W, C) over height and width."""
    return x.mean(axis=(1, 2), dtype=np.float32)


def global_average_pool_grad_reference(dy, x_shape):
    """dx (N, H, W, C): every position of a channel gets an equal share, dy / (H * W)."""
    share = dy / np.float32(x_shape[1] * x_shape[2])
    return np.broadcast_to(share[:, None, None, :], x_shape).astype(np.float32, order="C")


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _global_average_pool_numba(x, y):
    n_img, h, w, c = x.shape
    for n in prange(n_img):
        acc = np.zeros(c)  # float64: thousands of positions summed
        for iy in range(h):
            for ix in range(w):
                for ch in range(c):
                    acc[ch] += x[n, iy, ix, ch]
        for ch in range(c):
            y[n, ch] = acc[ch] / (h * w)


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _global_average_pool_grad_numba(dy, dx):
    n_img, h, w, c = dx.shape
    for n in prange(n_img):
        share = dy[n] / np.float32(h * w)
        for iy in range(h):
            for ix in range(w):
                for ch in range(c):
                    dx[n, iy, ix, ch] = share[ch]


@threads_by_size
def global_average_pool_fast(x):
    if x.ndim != 4:
        raise ValueError(f"global_average_pool: the input must be 4-D (N, H, W, C), got shape {x.shape}")
    y = np.empty((x.shape[0], x.shape[3]), np.float32)
    _global_average_pool_numba(np.ascontiguousarray(x), y)
    return y


@threads_by_size
def global_average_pool_grad_fast(dy, x_shape):
    expected = (x_shape[0], x_shape[3]) if len(x_shape) == 4 else "a 4-D input (N, H, W, C)"
    if dy.shape != expected:
        raise ValueError(f"global_average_pool_grad: output gradient has shape {dy.shape}, "
                         f"the pooling of {tuple(x_shape)} gives {expected}")
    dx = memory.empty(x_shape)
    _global_average_pool_grad_numba(np.ascontiguousarray(dy, np.float32), dx)
    return dx


global_average_pool = dispatch(global_average_pool_reference, global_average_pool_fast)
global_average_pool_grad = dispatch(global_average_pool_grad_reference, global_average_pool_grad_fast)
