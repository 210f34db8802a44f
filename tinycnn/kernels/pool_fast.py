"""The fast versions of pool.py's functions, with the same signatures; read pool.py first.

Numba loops, parallel over images or output rows, the channels innermost.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import memory
from ..backend import PARALLEL, threads_by_size


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


# -- global average pooling: (N, H, W, C) -> (N, C) -------------------------------------------------
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
