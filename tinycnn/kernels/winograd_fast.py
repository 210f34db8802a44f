"""The fast versions of winograd.py's functions, with the same signatures; read winograd.py first.

The transforms are Numba loops (for F(4x4) and F(6x6) spelt out with B^T's and A^T's
entries as constants), the (m + 2)^2 products per tile position are BLAS products, and
the batch goes through in blocks of images that stay in a core's cache. A kernel that
will not change (``freeze_kernel``) keeps its transform between calls.
"""
from __future__ import annotations

import functools
import math
import weakref

import numba
import numpy as np
from numba import njit

from .. import backend, memory
from ..backend import PARALLEL, threads_by_size
from . import pool_fast
from .winograd import _output_hw, check_winograd_shapes, choose_tile, matrices, tile_grid


# -- fast: the transforms in Numba, the (m + 2)^2 products in BLAS, block by block --------------
# Layout of the fast path: V (n*n, T, C) and M (n*n, T, O) with T = images x TH x TW tiles of a
# block, so that each position's product is one contiguous (T, C) @ (C, O) matmul. The kernels
# take one block of images and run on one thread (``_in_blocks`` shares the blocks between
# the cores), with the GIL released; a block that has the cores to itself (one face) splits
# its large products between them (``backend.stacked_matmul``).

@njit(nogil=True, cache=True, fastmath=True)
def _input_transform(x, pt, pl, th, tw, BT, V):
    """V[i*n + j, tile, :] = (B^T d B)[i, j] for every tile d of x (zero outside x)."""
    n_img, h, w, c = x.shape
    n = BT.shape[0]
    m = n - 2
    for img in range(n_img):
        d = np.empty((n, n, c), np.float32)
        tmp = np.empty((n, n, c), np.float32)
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                for a in range(n):
                    iy = ty * m + a - pt
                    for b in range(n):
                        ix = tx * m + b - pl
                        if 0 <= iy < h and 0 <= ix < w:
                            for ch in range(c):
                                d[a, b, ch] = x[img, iy, ix, ch]
                        else:
                            for ch in range(c):
                                d[a, b, ch] = 0.0
                for i in range(n):  # tmp = B^T d, skipping B's zeros
                    for b in range(n):
                        for ch in range(c):
                            tmp[i, b, ch] = 0.0
                        for a in range(n):
                            coef = BT[i, a]
                            if coef != 0.0:
                                for ch in range(c):
                                    tmp[i, b, ch] += coef * d[a, b, ch]
                for i in range(n):  # V = tmp B
                    for j in range(n):
                        out = V[i * n + j, tile]
                        for ch in range(c):
                            out[ch] = 0.0
                        for b in range(n):
                            coef = BT[j, b]
                            if coef != 0.0:
                                for ch in range(c):
                                    out[ch] += coef * tmp[i, b, ch]


@njit(nogil=True, cache=True, fastmath=True)
def _output_transform(M, AT, y):
    """y[img, ty*m + k, tx*m + l, :] = (A^T M A)[k, l] for every tile, inside y only."""
    n_img, ho, wo, o = y.shape
    m, n = AT.shape
    th, tw = -(-ho // m), -(-wo // m)
    for img in range(n_img):
        tmp = np.empty((m, n, o), np.float32)
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                for k in range(m):  # tmp = A^T M
                    for j in range(n):
                        for oc in range(o):
                            tmp[k, j, oc] = 0.0
                        for i in range(n):
                            coef = AT[k, i]
                            if coef != 0.0:
                                src = M[i * n + j, tile]
                                for oc in range(o):
                                    tmp[k, j, oc] += coef * src[oc]
                for k in range(m):  # Y = tmp A, written where it falls inside y
                    oy = ty * m + k
                    if oy >= ho:
                        break
                    for l in range(m):
                        ox = tx * m + l
                        if ox >= wo:
                            break
                        out = y[img, oy, ox]
                        for oc in range(o):
                            out[oc] = 0.0
                        for j in range(n):
                            coef = AT[l, j]
                            if coef != 0.0:
                                for oc in range(o):
                                    out[oc] += coef * tmp[k, j, oc]


@njit(nogil=True, cache=True, fastmath=True)
def _output_transform_adjoint(dy, AT, th, tw, dM):
    """dM[i*n + j, tile, :] = (A dY A^T)[i, j], dY the tile's m x m block of dy (zero outside)."""
    n_img, ho, wo, o = dy.shape
    m, n = AT.shape
    for img in range(n_img):
        tmp = np.empty((n, m, o), np.float32)
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                for i in range(n):  # tmp = A dY (rows of dY past the edge are zero)
                    for l in range(m):
                        for oc in range(o):
                            tmp[i, l, oc] = 0.0
                        ox = tx * m + l
                        if ox >= wo:
                            continue
                        for k in range(m):
                            oy = ty * m + k
                            coef = AT[k, i]
                            if oy < ho and coef != 0.0:
                                src = dy[img, oy, ox]
                                for oc in range(o):
                                    tmp[i, l, oc] += coef * src[oc]
                for i in range(n):  # dM = tmp A^T
                    for j in range(n):
                        out = dM[i * n + j, tile]
                        for oc in range(o):
                            out[oc] = 0.0
                        for l in range(m):
                            coef = AT[l, j]
                            if coef != 0.0:
                                for oc in range(o):
                                    out[oc] += coef * tmp[i, l, oc]


@njit(nogil=True, cache=True, fastmath=True)
def _input_transform_adjoint(dV, BT, pt, pl, th, tw, dx):
    """dx = sum over tiles of B dV B^T, each added at its tile's place (tiles overlap)."""
    n_img, h, w, c = dx.shape
    n = BT.shape[0]
    m = n - 2
    for img in range(n_img):  # tiles overlap inside an image, never across images
        dx[img] = 0.0
        tmp = np.empty((n, n, c), np.float32)
        acc = np.empty(c, np.float32)
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                for a in range(n):  # tmp = B dV
                    for j in range(n):
                        for ch in range(c):
                            tmp[a, j, ch] = 0.0
                        for i in range(n):
                            coef = BT[i, a]
                            if coef != 0.0:
                                src = dV[i * n + j, tile]
                                for ch in range(c):
                                    tmp[a, j, ch] += coef * src[ch]
                for a in range(n):  # dd = tmp B^T, added into dx inside x only
                    iy = ty * m + a - pt
                    if iy < 0 or iy >= h:
                        continue
                    for b in range(n):
                        ix = tx * m + b - pl
                        if ix < 0 or ix >= w:
                            continue
                        for ch in range(c):
                            acc[ch] = 0.0
                        for j in range(n):
                            coef = BT[j, b]
                            if coef != 0.0:
                                for ch in range(c):
                                    acc[ch] += coef * tmp[a, j, ch]
                        out = dx[img, iy, ix]
                        for ch in range(c):
                            out[ch] += acc[ch]


# -- F(4x4, 3x3) spelt out: the same four transforms with B^T and A^T's entries as constants -----
# The loops above read the matrices' entries at run time and skip their zeros one test at a
# time, which costs as much as the arithmetic when a tile holds few channels (bench/README.md,
# "Measurements behind the kernels' choices"). Here each 1-D transform is written as its rows,
# applied along a tile's rows and then its columns with the channels innermost, where the
# compiler vectorises them. Same maths as ``BT_4`` and ``AT_4``, and the same tests.

# float32 constants: an integer literal would turn the float32 arithmetic into float64
_2, _4, _5, _8 = np.float32(2), np.float32(4), np.float32(5), np.float32(8)


@njit(inline="always")
def _bt4(d0, d1, d2, d3, d4, d5):
    """B^T d for F(4x4, 3x3): the rows of ``BT_4``."""
    return (_4 * d0 - _5 * d2 + d4, -_4 * (d1 + d2) + d3 + d4, _4 * (d1 - d2) - d3 + d4,
            _2 * (d3 - d1) - d2 + d4, _2 * (d1 - d3) - d2 + d4, _4 * d1 - _5 * d3 + d5)


@njit(inline="always")
def _b4(v0, v1, v2, v3, v4, v5):
    """B v, the adjoint of ``_bt4``: the columns of ``BT_4``."""
    return (_4 * v0, _4 * (v2 - v1 + v5) + _2 * (v4 - v3), -_5 * v0 - _4 * (v1 + v2) - v3 - v4,
            v1 - v2 + _2 * (v3 - v4) - _5 * v5, v0 + v1 + v2 + v3 + v4, v5)


@njit(inline="always")
def _at4(m0, m1, m2, m3, m4, m5):
    """A^T m for F(4x4, 3x3): the rows of ``AT_4`` (6 values in, 4 out)."""
    s, t = m1 + m2, m1 - m2
    u, v = m3 + m4, m3 - m4
    return m0 + s + u, t + _2 * v, s + _4 * u, t + _8 * v + m5


@njit(inline="always")
def _a4(y0, y1, y2, y3):
    """A y, the adjoint of ``_at4`` (4 values in, 6 out)."""
    e, o = y0 + y2, y1 + y3
    e4, o2 = y0 + _4 * y2, _2 * y1 + _8 * y3
    return y0, e + o, e - o, e4 + o2, e4 - o2, y3


@njit(nogil=True, cache=True, fastmath=True)
def _input_transform_4(x, pt, pl, th, tw, V):
    """As ``_input_transform`` with F(4x4, 3x3)'s B^T."""
    n_img, h, w, c = x.shape
    for img in range(n_img):
        d = np.empty((6, 6, c), np.float32)
        tmp = np.empty((6, 6, c), np.float32)
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                y0, x0 = ty * 4 - pt, tx * 4 - pl
                if 0 <= y0 and y0 + 6 <= h and 0 <= x0 and x0 + 6 <= w:  # inside x: read it in place
                    src = x[img]
                else:  # on an edge: copy the tile with its zeros first
                    for a in range(6):
                        for b in range(6):
                            if 0 <= y0 + a < h and 0 <= x0 + b < w:
                                for ch in range(c):
                                    d[a, b, ch] = x[img, y0 + a, x0 + b, ch]
                            else:
                                for ch in range(c):
                                    d[a, b, ch] = 0.0
                    src, y0, x0 = d, 0, 0
                for a in range(6):  # along each row: tmp = d B
                    row = src[y0 + a]
                    for ch in range(c):
                        r = _bt4(row[x0, ch], row[x0 + 1, ch], row[x0 + 2, ch], row[x0 + 3, ch], row[x0 + 4, ch],
                                 row[x0 + 5, ch])
                        for j in range(6):
                            tmp[a, j, ch] = r[j]
                for j in range(6):  # down each column: V = B^T tmp
                    for ch in range(c):
                        r = _bt4(tmp[0, j, ch], tmp[1, j, ch], tmp[2, j, ch], tmp[3, j, ch], tmp[4, j, ch],
                                 tmp[5, j, ch])
                        for i in range(6):
                            V[i * 6 + j, tile, ch] = r[i]


@njit(nogil=True, cache=True, fastmath=True)
def _output_transform_4(M, y):
    """As ``_output_transform`` with F(4x4, 3x3)'s A^T."""
    n_img, ho, wo, o = y.shape
    th, tw = -(-ho // 4), -(-wo // 4)
    for img in range(n_img):
        tmp = np.empty((4, 6, o), np.float32)
        row = np.empty((4, o), np.float32)
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                for j in range(6):  # down each column: tmp = A^T M
                    for oc in range(o):
                        r = _at4(M[j, tile, oc], M[6 + j, tile, oc], M[12 + j, tile, oc], M[18 + j, tile, oc],
                                 M[24 + j, tile, oc], M[30 + j, tile, oc])
                        for k in range(4):
                            tmp[k, j, oc] = r[k]
                cols = min(4, wo - tx * 4)
                for k in range(min(4, ho - ty * 4)):  # along each row: Y = tmp A, inside y only
                    out = y[img, ty * 4 + k]
                    for oc in range(o):
                        r = _at4(tmp[k, 0, oc], tmp[k, 1, oc], tmp[k, 2, oc], tmp[k, 3, oc], tmp[k, 4, oc],
                                 tmp[k, 5, oc])
                        for l in range(4):
                            row[l, oc] = r[l]
                    for l in range(cols):
                        for oc in range(o):
                            out[tx * 4 + l, oc] = row[l, oc]


@njit(nogil=True, cache=True, fastmath=True)
def _output_transform_adjoint_4(dy, th, tw, dM):
    """As ``_output_transform_adjoint`` with F(4x4, 3x3)'s A."""
    n_img, ho, wo, o = dy.shape
    for img in range(n_img):
        blk = np.zeros((4, 4, o), np.float32)
        tmp = np.empty((4, 6, o), np.float32)
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                rows, cols = min(4, ho - ty * 4), min(4, wo - tx * 4)
                if rows == 4 and cols == 4:  # inside dy: read it in place
                    src, y0, x0 = dy[img], ty * 4, tx * 4
                else:  # past an edge: copy the block with its zeros first
                    for k in range(4):
                        for l in range(4):
                            if k < rows and l < cols:
                                for oc in range(o):
                                    blk[k, l, oc] = dy[img, ty * 4 + k, tx * 4 + l, oc]
                            else:
                                for oc in range(o):
                                    blk[k, l, oc] = 0.0
                    src, y0, x0 = blk, 0, 0
                for k in range(4):  # along each row: tmp = dY A^T
                    row = src[y0 + k]
                    for oc in range(o):
                        r = _a4(row[x0, oc], row[x0 + 1, oc], row[x0 + 2, oc], row[x0 + 3, oc])
                        for j in range(6):
                            tmp[k, j, oc] = r[j]
                for j in range(6):  # down each column: dM = A tmp
                    for oc in range(o):
                        r = _a4(tmp[0, j, oc], tmp[1, j, oc], tmp[2, j, oc], tmp[3, j, oc])
                        for i in range(6):
                            dM[i * 6 + j, tile, oc] = r[i]


@njit(nogil=True, cache=True, fastmath=True)
def _input_transform_adjoint_4(dV, pt, pl, th, tw, dx):
    """As ``_input_transform_adjoint`` with F(4x4, 3x3)'s B."""
    n_img, h, w, c = dx.shape
    for img in range(n_img):
        dx[img] = 0.0
        tmp = np.empty((6, 6, c), np.float32)
        dd = np.empty((6, c), np.float32)
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                for j in range(6):  # down each column: tmp = B dV
                    for ch in range(c):
                        r = _b4(dV[j, tile, ch], dV[6 + j, tile, ch], dV[12 + j, tile, ch], dV[18 + j, tile, ch],
                                dV[24 + j, tile, ch], dV[30 + j, tile, ch])
                        for a in range(6):
                            tmp[a, j, ch] = r[a]
                for a in range(6):  # along each row: dd = tmp B^T, added into dx inside x only
                    iy = ty * 4 + a - pt
                    if iy < 0 or iy >= h:
                        continue
                    for ch in range(c):
                        r = _b4(tmp[a, 0, ch], tmp[a, 1, ch], tmp[a, 2, ch], tmp[a, 3, ch], tmp[a, 4, ch],
                                tmp[a, 5, ch])
                        for b in range(6):
                            dd[b, ch] = r[b]
                    for b in range(6):
                        ix = tx * 4 + b - pl
                        if 0 <= ix < w:
                            out = dx[img, iy, ix]
                            for ch in range(c):
                                out[ch] += dd[b, ch]


# -- F(6x6, 3x3) spelt out, as F(4x4) above: 8x8 tiles, 6x6 output blocks ---------------------
# The four kernels repeat F(4x4)'s loops with eight values per tile row instead of six. One
# kernel per transform for both sizes (the 1-D transform passed in as an argument, or built
# by a factory around a closure) measured slower and was dropped: the compiler then no
# longer unrolls the tile's values or vectorises over the channels (bench/README.md,
# "Measurements behind the kernels' choices").
# Constants as float32, for the reason given above _bt4.
_h, _q = np.float32(0.5), np.float32(0.25)
_16, _32, _5q, _5h = np.float32(16), np.float32(32), np.float32(1.25), np.float32(2.5)
_17q, _21q = np.float32(4.25), np.float32(5.25)
_8th, _16th, _32th = np.float32(0.125), np.float32(0.0625), np.float32(0.03125)


@njit(inline="always")
def _bt6(d0, d1, d2, d3, d4, d5, d6, d7):
    """B^T d for F(6x6, 3x3): the rows of ``BT_6``, each pair of rows sharing its even and odd parts."""
    e1, o1 = d2 + d6 - _17q * d4, d1 + d5 - _17q * d3
    e2, o2 = _q * d2 - _5q * d4 + d6, _h * d1 - _5h * d3 + _2 * d5
    e3, o3 = _4 * d2 - _5 * d4 + d6, _2 * d1 - _5h * d3 + _h * d5
    return (d0 - d6 + _21q * (d4 - d2), e1 + o1, e1 - o1, e2 + o2, e2 - o2, e3 + o3, e3 - o3,
            d7 - d1 + _21q * (d3 - d5))


@njit(inline="always")
def _b6(v0, v1, v2, v3, v4, v5, v6, v7):
    """B v, the adjoint of ``_bt6``: the columns of ``BT_6``."""
    s1, t1, s2, t2, s3, t3 = v1 + v2, v1 - v2, v3 + v4, v3 - v4, v5 + v6, v5 - v6
    return (v0, t1 + _h * t2 + _2 * t3 - v7, s1 + _q * s2 + _4 * s3 - _21q * v0,
            _21q * v7 - _17q * t1 - _5h * (t2 + t3), _21q * v0 - _17q * s1 - _5q * s2 - _5 * s3,
            t1 + _2 * t2 + _h * t3 - _21q * v7, s1 + s2 + s3 - v0, v7)


@njit(inline="always")
def _at6(m0, m1, m2, m3, m4, m5, m6, m7):
    """A^T m for F(6x6, 3x3): the rows of ``AT_6`` (8 values in, 6 out)."""
    s1, t1, s2, t2, s3, t3 = m1 + m2, m1 - m2, m3 + m4, m3 - m4, m5 + m6, m5 - m6
    return (m0 + s1 + s2 + s3, t1 + _2 * t2 + _h * t3, s1 + _4 * s2 + _q * s3, t1 + _8 * t2 + _8th * t3,
            s1 + _16 * s2 + _16th * s3, t1 + _32 * t2 + _32th * t3 + m7)


@njit(inline="always")
def _a6(y0, y1, y2, y3, y4, y5):
    """A y, the adjoint of ``_at6`` (6 values in, 8 out)."""
    e1, o1 = y0 + y2 + y4, y1 + y3 + y5
    e2, o2 = y0 + _4 * y2 + _16 * y4, _2 * y1 + _8 * y3 + _32 * y5
    e3, o3 = y0 + _q * y2 + _16th * y4, _h * y1 + _8th * y3 + _32th * y5
    return y0, e1 + o1, e1 - o1, e2 + o2, e2 - o2, e3 + o3, e3 - o3, y5


@njit(nogil=True, cache=True, fastmath=True)
def _input_transform_6(x, pt, pl, th, tw, V):
    """As ``_input_transform`` with F(6x6, 3x3)'s B^T."""
    n_img, h, w, c = x.shape
    for img in range(n_img):
        d = np.empty((8, 8, c), np.float32)
        tmp = np.empty((8, 8, c), np.float32)
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                y0, x0 = ty * 6 - pt, tx * 6 - pl
                if 0 <= y0 and y0 + 8 <= h and 0 <= x0 and x0 + 8 <= w:  # inside x: read it in place
                    src = x[img]
                else:  # on an edge: copy the tile with its zeros first
                    for a in range(8):
                        for b in range(8):
                            if 0 <= y0 + a < h and 0 <= x0 + b < w:
                                for ch in range(c):
                                    d[a, b, ch] = x[img, y0 + a, x0 + b, ch]
                            else:
                                for ch in range(c):
                                    d[a, b, ch] = 0.0
                    src, y0, x0 = d, 0, 0
                for a in range(8):  # along each row: tmp = d B
                    row = src[y0 + a]
                    for ch in range(c):
                        r = _bt6(row[x0, ch], row[x0 + 1, ch], row[x0 + 2, ch], row[x0 + 3, ch], row[x0 + 4, ch],
                                 row[x0 + 5, ch], row[x0 + 6, ch], row[x0 + 7, ch])
                        for j in range(8):
                            tmp[a, j, ch] = r[j]
                for j in range(8):  # down each column: V = B^T tmp
                    for ch in range(c):
                        r = _bt6(tmp[0, j, ch], tmp[1, j, ch], tmp[2, j, ch], tmp[3, j, ch], tmp[4, j, ch],
                                 tmp[5, j, ch], tmp[6, j, ch], tmp[7, j, ch])
                        for i in range(8):
                            V[i * 8 + j, tile, ch] = r[i]


@njit(nogil=True, cache=True, fastmath=True)
def _output_transform_6(M, y):
    """As ``_output_transform`` with F(6x6, 3x3)'s A^T."""
    n_img, ho, wo, o = y.shape
    th, tw = -(-ho // 6), -(-wo // 6)
    for img in range(n_img):
        tmp = np.empty((6, 8, o), np.float32)
        row = np.empty((6, o), np.float32)
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                for j in range(8):  # down each column: tmp = A^T M
                    for oc in range(o):
                        r = _at6(M[j, tile, oc], M[8 + j, tile, oc], M[16 + j, tile, oc], M[24 + j, tile, oc],
                                 M[32 + j, tile, oc], M[40 + j, tile, oc], M[48 + j, tile, oc], M[56 + j, tile, oc])
                        for k in range(6):
                            tmp[k, j, oc] = r[k]
                cols = min(6, wo - tx * 6)
                for k in range(min(6, ho - ty * 6)):  # along each row: Y = tmp A, inside y only
                    out = y[img, ty * 6 + k]
                    for oc in range(o):
                        r = _at6(tmp[k, 0, oc], tmp[k, 1, oc], tmp[k, 2, oc], tmp[k, 3, oc], tmp[k, 4, oc],
                                 tmp[k, 5, oc], tmp[k, 6, oc], tmp[k, 7, oc])
                        for l in range(6):
                            row[l, oc] = r[l]
                    for l in range(cols):
                        for oc in range(o):
                            out[tx * 6 + l, oc] = row[l, oc]


@njit(nogil=True, cache=True, fastmath=True)
def _output_transform_adjoint_6(dy, th, tw, dM):
    """As ``_output_transform_adjoint`` with F(6x6, 3x3)'s A."""
    n_img, ho, wo, o = dy.shape
    for img in range(n_img):
        blk = np.zeros((6, 6, o), np.float32)
        tmp = np.empty((6, 8, o), np.float32)
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                rows, cols = min(6, ho - ty * 6), min(6, wo - tx * 6)
                if rows == 6 and cols == 6:  # inside dy: read it in place
                    src, y0, x0 = dy[img], ty * 6, tx * 6
                else:  # past an edge: copy the block with its zeros first
                    for k in range(6):
                        for l in range(6):
                            if k < rows and l < cols:
                                for oc in range(o):
                                    blk[k, l, oc] = dy[img, ty * 6 + k, tx * 6 + l, oc]
                            else:
                                for oc in range(o):
                                    blk[k, l, oc] = 0.0
                    src, y0, x0 = blk, 0, 0
                for k in range(6):  # along each row: tmp = dY A^T
                    row = src[y0 + k]
                    for oc in range(o):
                        r = _a6(row[x0, oc], row[x0 + 1, oc], row[x0 + 2, oc], row[x0 + 3, oc], row[x0 + 4, oc],
                                row[x0 + 5, oc])
                        for j in range(8):
                            tmp[k, j, oc] = r[j]
                for j in range(8):  # down each column: dM = A tmp
                    for oc in range(o):
                        r = _a6(tmp[0, j, oc], tmp[1, j, oc], tmp[2, j, oc], tmp[3, j, oc], tmp[4, j, oc],
                                tmp[5, j, oc])
                        for i in range(8):
                            dM[i * 8 + j, tile, oc] = r[i]


@njit(nogil=True, cache=True, fastmath=True)
def _input_transform_adjoint_6(dV, pt, pl, th, tw, dx):
    """As ``_input_transform_adjoint`` with F(6x6, 3x3)'s B."""
    n_img, h, w, c = dx.shape
    for img in range(n_img):
        dx[img] = 0.0
        tmp = np.empty((8, 8, c), np.float32)
        dd = np.empty((8, c), np.float32)
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                for j in range(8):  # down each column: tmp = B dV
                    for ch in range(c):
                        r = _b6(dV[j, tile, ch], dV[8 + j, tile, ch], dV[16 + j, tile, ch], dV[24 + j, tile, ch],
                                dV[32 + j, tile, ch], dV[40 + j, tile, ch], dV[48 + j, tile, ch], dV[56 + j, tile, ch])
                        for a in range(8):
                            tmp[a, j, ch] = r[a]
                for a in range(8):  # along each row: dd = tmp B^T, added into dx inside x only
                    iy = ty * 6 + a - pt
                    if iy < 0 or iy >= h:
                        continue
                    for ch in range(c):
                        r = _b6(tmp[a, 0, ch], tmp[a, 1, ch], tmp[a, 2, ch], tmp[a, 3, ch], tmp[a, 4, ch],
                                tmp[a, 5, ch], tmp[a, 6, ch], tmp[a, 7, ch])
                        for b in range(8):
                            dd[b, ch] = r[b]
                    for b in range(8):
                        ix = tx * 6 + b - pl
                        if 0 <= ix < w:
                            out = dx[img, iy, ix]
                            for ch in range(c):
                                out[ch] += dd[b, ch]


# -- which kernels: the spelt-out ones for F(4x4) and F(6x6), the loops for any other m ---------
def _spelt_out(m):
    """(input, output, output adjoint, input adjoint) transforms spelt out for F(m x m, 3x3),
    or None for a tile size without them. The table is made at each call from the module's
    names, so that a kernel replaced there (a test wrapping it) is the one called."""
    return {4: (_input_transform_4, _output_transform_4, _output_transform_adjoint_4, _input_transform_adjoint_4),
            6: (_input_transform_6, _output_transform_6, _output_transform_adjoint_6, _input_transform_adjoint_6),
            }.get(m)


def _to_tiles(x, pads, th, tw, m, BT, V):
    """V = B^T d B for every tile of x."""
    spelt = _spelt_out(m)
    if spelt:
        spelt[0](x, pads[0][0], pads[1][0], th, tw, V)
    else:
        _input_transform(x, pads[0][0], pads[1][0], th, tw, BT, V)


def _from_tiles(M, m, AT, y):
    """y = A^T M A for every tile, inside y only."""
    spelt = _spelt_out(m)
    if spelt:
        spelt[1](M, y)
    else:
        _output_transform(M, AT, y)


def _to_tiles_adjoint(dy, m, AT, th, tw, dM):
    """dM = A dY A^T for every m x m block dY of dy."""
    spelt = _spelt_out(m)
    if spelt:
        spelt[2](dy, th, tw, dM)
    else:
        _output_transform_adjoint(dy, AT, th, tw, dM)


def _from_tiles_adjoint(dV, m, BT, pads, th, tw, dx):
    """dx = sum over tiles of B dV B^T, each added at its tile's place."""
    spelt = _spelt_out(m)
    if spelt:
        spelt[3](dV, pads[0][0], pads[1][0], th, tw, dx)
    else:
        _input_transform_adjoint(dV, BT, pads[0][0], pads[1][0], th, tw, dx)


# The fast path works through the batch in blocks of about ``BLOCK_TILES`` tiles (whole
# images), each block from start to end on one core: transform it, multiply it, transform
# back, while its V and M are still in that core's cache (2 MiB of L2 here), the products
# on one BLAS thread; the cores take blocks in turn. This measured faster than spreading
# each step of the whole batch over the cores, the products gaining most, in cache
# (bench/README.md, "Measurements behind the kernels' choices"). The backward transforms x
# again block by block rather than keep the forward's V, which is 2.25x (F(4x4)) to 1.78x
# (F(6x6)) the size of x and would go out of cache and back.
BLOCK_TILES = 128


def _block_images(n_img, tiles_per_image):
    """Images per block: about ``BLOCK_TILES`` tiles, and no fewer blocks than threads
    (a map of one or a few tiles would otherwise put the whole batch in one block)."""
    per_thread = -(-n_img // (numba.get_num_threads() if PARALLEL else 1))
    return max(1, min(round(BLOCK_TILES / tiles_per_image), per_thread))


def _buffer(flat, shape):
    """A contiguous array of ``shape`` at the start of the preallocated 1-D ``flat``."""
    return flat[:math.prod(shape)].reshape(shape)


def _in_blocks(n_img, per_block, work):
    """``work(starts)`` on every core's share of the blocks (the first images of each block
    of ``per_block`` images; the cores take them in turn), each share in a thread of
    tinycnn's own (``backend.on_cores``: Numba's kernels here and BLAS release the GIL),
    BLAS on one thread meanwhile; in this thread alone when there is one block or one
    thread (a small call, or a process limited to one), where its large products may still
    use every core. Returns the shares' results, in order."""
    starts = list(range(0, n_img, per_block))
    threads = max(1, min(backend.core_count(), len(starts)))
    return backend.on_cores([functools.partial(work, starts[i::threads]) for i in range(threads)])


def _kernel_transform_fast(w, m):
    """U (n*n, C, O) = G g G^T as one product: (G kron G) (n*n, 9) @ w (9, C*O); for a
    frozen kernel (``freeze_kernel``), the U computed at its first call."""
    cache = _frozen_transforms(w)
    if cache is not None and m in cache:
        return cache[m]
    _, G, _ = matrices(m)
    c, o = w.shape[2], w.shape[3]
    U = backend.matmul(np.kron(G, G), np.ascontiguousarray(w, np.float32).reshape(9, c * o))
    U = U.reshape(-1, c, o)
    if cache is not None:
        U = U.copy()     # kept while the kernel lives: NumPy's own memory, not a pool buffer
        U.flags.writeable = False
        cache[m] = U
    return U


# Kernels that will not change (an inference copy's: ``tinycnn.plan.fold.inference_copy``)
# keep their transforms U between calls, which makes Winograd pay from one image on (see
# ``conv_fast.choose_algorithm``). Keyed by the array's id, with a weak reference to tell a
# reused id from the array itself; an entry goes when its array does.
_frozen = {}


def freeze_kernel(w):
    """Mark the kernel array ``w`` (3, 3, C, O) as fixed from now on: it is made read-only,
    and its Winograd transforms are computed once and kept while it lives."""
    w.flags.writeable = False
    if _frozen_transforms(w) is None:
        key = id(w)
        _frozen[key] = (weakref.ref(w), {})
        weakref.finalize(w, _frozen.pop, key, None)


def _frozen_transforms(w):
    """{m: U} of a frozen kernel, or None."""
    entry = _frozen.get(id(w))
    return entry[1] if entry is not None and entry[0]() is w else None


def is_frozen(w):
    """Whether ``freeze_kernel`` marked this kernel array."""
    return _frozen_transforms(w) is not None


def _kernel_transform_adjoint_fast(dU, m):
    """dw (3, 3, C, O) = G^T dU G, the transpose of ``_kernel_transform_fast``."""
    _, G, _ = matrices(m)
    c, o = dU.shape[1], dU.shape[2]
    return backend.matmul(np.kron(G, G).T, dU.reshape(-1, c * o)).reshape(3, 3, c, o)


@threads_by_size
def winograd_conv2d_fast(x, w, strides, pads, m=None):
    """As winograd_conv2d_reference."""
    check_winograd_shapes(x.shape, w.shape, strides, pads)
    m = m or choose_tile(*_output_hw(x.shape, pads), x.shape[0])
    BT, _, AT = matrices(m)
    nb, _, _, c = x.shape
    o, n = w.shape[3], m + 2
    ho, wo = _output_hw(x.shape, pads)
    th, tw = tile_grid(ho, wo, m)
    x = np.ascontiguousarray(x, np.float32)
    U = _kernel_transform_fast(w, m)
    y = memory.empty((nb, ho, wo, o))
    k = _block_images(nb, th * tw)

    def work(starts):
        vbuf, mbuf = memory.empty((n * n * k * th * tw * c,)), memory.empty((n * n * k * th * tw * o,))
        for s in starts:
            t = min(k, nb - s) * th * tw
            V, M = _buffer(vbuf, (n * n, t, c)), _buffer(mbuf, (n * n, t, o))
            _to_tiles(x[s:s + k], pads, th, tw, m, BT, V)
            backend.stacked_matmul(V, U, M)
            _from_tiles(M, m, AT, y[s:s + k])

    _in_blocks(nb, k, work)
    return y


@njit(nogil=True, cache=True, fastmath=True)
def _relu_affine_in_place(z, b, scale, shift):
    """z = max(z + b, 0) * scale + shift per channel (last axis), in the calling thread:
    a ReLU convolution's epilogue with the inference BatchNormalization after it."""
    z2 = z.reshape(-1, z.shape[-1])
    for i in range(z2.shape[0]):
        for j in range(z2.shape[1]):
            z2[i, j] = max(z2[i, j] + b[j], 0.0) * scale[j] + shift[j]


def winograd_conv2d_maxpool(x, w, strides, pads, pool_hw, m=None, affine=None):
    """(y, argmax) (N, PH, PW, O) = the 2x2, stride-2 max pool (no padding, ``pool_hw`` the
    pooled size) of ``winograd_conv2d_fast``'s output z, with the pool's winning taps as
    ``pool.maxpool`` numbers them; with ``affine`` = (b, scale, shift), of
    max(z + b, 0) * scale + shift instead (a ReLU convolution and the inference BatchNorm
    after it). Each block's z goes to a scratch array the size of the block and is pooled
    while it is still in cache: the whole z (four times y) is never written out and read
    back. A fast kernel alone: ``conv.conv2d_maxpool`` and ``conv.conv2d_affine_maxpool``
    take it for such layers, and its references are theirs."""
    check_winograd_shapes(x.shape, w.shape, strides, pads)
    m = m or choose_tile(*_output_hw(x.shape, pads), x.shape[0])
    BT, _, AT = matrices(m)
    nb, _, _, c = x.shape
    o, n = w.shape[3], m + 2
    ho, wo = _output_hw(x.shape, pads)
    if tuple(pool_hw) != (ho // 2, wo // 2):
        raise ValueError(f"winograd_conv2d_maxpool: pooled size {tuple(pool_hw)}, a 2x2 pool of a {ho}x{wo} map "
                         f"gives {(ho // 2, wo // 2)}")
    th, tw = tile_grid(ho, wo, m)
    x = np.ascontiguousarray(x, np.float32)
    U = _kernel_transform_fast(w, m)
    y = memory.empty((nb,) + tuple(pool_hw) + (o,))
    argmax = memory.empty(y.shape, np.int32)
    k = _block_images(nb, th * tw)

    def work(starts):
        vbuf, mbuf = memory.empty((n * n * k * th * tw * c,)), memory.empty((n * n * k * th * tw * o,))
        z = memory.empty((k, ho, wo, o))
        for s in starts:
            images = min(k, nb - s)
            t = images * th * tw
            V, M = _buffer(vbuf, (n * n, t, c)), _buffer(mbuf, (n * n, t, o))
            _to_tiles(x[s:s + k], pads, th, tw, m, BT, V)
            backend.stacked_matmul(V, U, M)
            _from_tiles(M, m, AT, z[:images])
            if affine is not None:
                _relu_affine_in_place(z[:images], *affine)
            pool_fast.maxpool_serial(z[:images], 2, 2, 2, 2, 0, 0, pool_hw[0], pool_hw[1], y[s:s + k], argmax[s:s + k])

    _in_blocks(nb, k, work)
    return y, argmax


def _backward(dy, x_shape, w_shape, pads, m, x=None, w=None):
    """dx (given w) and dw (given x), sharing the work: each block's dM = A dY A^T is
    computed once and serves both products. Returns (dx or None, dw or None)."""
    BT, _, AT = matrices(m)
    nb, ho, wo, o = dy.shape
    c, n = x_shape[3], m + 2
    th, tw = tile_grid(ho, wo, m)
    dy = np.ascontiguousarray(dy, np.float32)
    dx = Ut = None
    if w is not None:
        Ut = memory.empty((n * n, o, c))                           # (n*n, O, C)
        np.copyto(Ut, _kernel_transform_fast(w, m).transpose(0, 2, 1))
        dx = memory.empty(x_shape)
    if x is not None:
        x = np.ascontiguousarray(x, np.float32)
    k = _block_images(nb, th * tw)

    def work(starts):
        """This core's blocks; returns its share of dU (n*n, C, O), or None."""
        mbuf, vbuf = memory.empty((n * n * k * th * tw * o,)), memory.empty((n * n * k * th * tw * c,))
        dU = part = None
        if x is not None:
            dU, part = memory.zeros((n * n, c, o)), memory.empty((n * n, c, o))
        for s in starts:
            t = min(k, nb - s) * th * tw
            dM = _buffer(mbuf, (n * n, t, o))
            V = _buffer(vbuf, (n * n, t, c))  # V for the weight gradient, then dV
            _to_tiles_adjoint(dy[s:s + k], m, AT, th, tw, dM)
            if x is not None:
                _to_tiles(x[s:s + k], pads, th, tw, m, BT, V)
                backend.stacked_matmul(V.transpose(0, 2, 1), dM, part)
                dU += part
            if w is not None:
                backend.stacked_matmul(dM, Ut, V)
                _from_tiles_adjoint(V, m, BT, pads, th, tw, dx[s:s + k])
        return dU

    shares = _in_blocks(nb, k, work)
    if x is not None:
        for share in shares[1:]:
            shares[0] += share
    dw = None if x is None else _kernel_transform_adjoint_fast(shares[0], m).reshape(w_shape)
    return dx, dw


@threads_by_size
def winograd_conv2d_grad_input_fast(dy, w, x_shape, strides, pads, m=None):
    """As winograd_conv2d_grad_input_reference."""
    check_winograd_shapes(x_shape, w.shape, strides, pads, dy.shape)
    m = m or choose_tile(*_output_hw(x_shape, pads), x_shape[0])
    return _backward(dy, x_shape, w.shape, pads, m, w=w)[0]


@threads_by_size
def winograd_conv2d_grad_weight_fast(x, dy, w_shape, strides, pads, m=None):
    """As winograd_conv2d_grad_weight_reference."""
    check_winograd_shapes(x.shape, w_shape, strides, pads, dy.shape)
    m = m or choose_tile(*_output_hw(x.shape, pads), x.shape[0])
    return _backward(dy, x.shape, w_shape, pads, m, x=x)[1]


@threads_by_size
def winograd_conv2d_grads_fast(x, dy, w, strides, pads, need_input=True, need_weight=True, m=None):
    """As winograd_conv2d_grads_reference, in one pass over dy."""
    check_winograd_shapes(x.shape, w.shape, strides, pads, dy.shape)
    m = m or choose_tile(*_output_hw(x.shape, pads), x.shape[0])
    return _backward(dy, x.shape, w.shape, pads, m, x=x if need_weight else None, w=w if need_input else None)
