"""The fast versions of ``subpixel.py``'s functions: read subpixel.py first.

The same layout as winograd.py's fast path: V (n*n, T, C) and M (n*n, T, 4 O) for T tiles
of a block of images, so that each of the n*n positions' products is one contiguous
(T, C) @ (C, 4 O) matmul; the transforms in Numba, one block from start to end on one
core while its V and M are in that core's cache, the cores taking blocks in turn.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import backend, memory
from ..backend import threads_by_size
from . import winograd_fast as W
from .subpixel import check_shapes, choose_tile, matrices, subpixel_kernel, subpixel_kernel_adjoint, tile_grid


@njit(nogil=True, cache=True, fastmath=True)
def _input_transform(x, th, tw, BT, V):
    """V[i*n + j, tile, :] = (B^T d B)[i, j] for every tile d of x, rows ty*m - 1 ..
    ty*m + m - 1 and the same columns (zero outside x)."""
    n_img, h, w, c = x.shape
    n = BT.shape[0]
    m = n - 1
    d = np.empty((n, n, c), np.float32)
    tmp = np.empty((n, n, c), np.float32)
    for img in range(n_img):
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                for a in range(n):
                    iy = ty * m + a - 1
                    for b in range(n):
                        ix = tx * m + b - 1
                        if 0 <= iy < h and 0 <= ix < w:
                            d[a, b] = x[img, iy, ix]
                        else:
                            d[a, b] = 0.0
                for i in range(n):  # tmp = B^T d, skipping B's zeros
                    for b in range(n):
                        acc = tmp[i, b]
                        acc[:] = 0.0
                        for a in range(n):
                            coef = BT[i, a]
                            if coef != 0.0:
                                src = d[a, b]
                                for ch in range(c):
                                    acc[ch] += coef * src[ch]
                for i in range(n):  # V = tmp B
                    for j in range(n):
                        out = V[i * n + j, tile]
                        out[:] = 0.0
                        for b in range(n):
                            coef = BT[j, b]
                            if coef != 0.0:
                                src = tmp[i, b]
                                for ch in range(c):
                                    out[ch] += coef * src[ch]


@njit(nogil=True, cache=True, fastmath=True)
def _output_transform(M, AT, b, relu, y):
    """y[img, 2 (ty*m + k) + p, 2 (tx*m + l) + q, :] = relu?((A^T M A)[k, l] + b), phase
    (p, q) being channels (2p + q) O .. (2p + q + 1) O of M, inside y only."""
    n_img, ho, wo, o = y.shape
    m, n = AT.shape
    o4 = 4 * o
    th, tw = -(-ho // (2 * m)), -(-wo // (2 * m))
    tmp = np.empty((m, n, o4), np.float32)
    acc = np.empty(o4, np.float32)
    for img in range(n_img):
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                for k in range(m):  # tmp = A^T M
                    for j in range(n):
                        t = tmp[k, j]
                        t[:] = 0.0
                        for i in range(n):
                            coef = AT[k, i]
                            if coef != 0.0:
                                src = M[i * n + j, tile]
                                for oc in range(o4):
                                    t[oc] += coef * src[oc]
                for k in range(m):  # Y = tmp A, each phase to its place
                    oy = 2 * (ty * m + k)
                    if oy >= ho:
                        break
                    for l in range(m):
                        ox = 2 * (tx * m + l)
                        if ox >= wo:
                            break
                        acc[:] = 0.0
                        for j in range(n):
                            coef = AT[l, j]
                            if coef != 0.0:
                                src = tmp[k, j]
                                for oc in range(o4):
                                    acc[oc] += coef * src[oc]
                        for p in range(2):
                            for q in range(2):
                                out = y[img, oy + p, ox + q]
                                base = (2 * p + q) * o
                                for oc in range(o):
                                    v = acc[base + oc] + b[oc]
                                    out[oc] = max(v, 0.0) if relu else v


@njit(nogil=True, cache=True, fastmath=True)
def _output_transform_adjoint(dy, AT, th, tw, dM):
    """dM[i*n + j, tile, :] = (A dY A^T)[i, j], dY[k, l] the tile's block (k, l) of dy with
    its four pixels as the 4 O channels (zero past the edge)."""
    n_img, ho, wo, o = dy.shape
    m, n = AT.shape
    o4 = 4 * o
    dY = np.empty((m, m, o4), np.float32)
    tmp = np.empty((n, m, o4), np.float32)
    for img in range(n_img):
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                for k in range(m):
                    for l in range(m):
                        oy, ox = 2 * (ty * m + k), 2 * (tx * m + l)
                        blk = dY[k, l]
                        if oy < ho and ox < wo:
                            for p in range(2):
                                for q in range(2):
                                    src = dy[img, oy + p, ox + q]
                                    base = (2 * p + q) * o
                                    for oc in range(o):
                                        blk[base + oc] = src[oc]
                        else:
                            blk[:] = 0.0
                for i in range(n):  # tmp = A dY
                    for l in range(m):
                        t = tmp[i, l]
                        t[:] = 0.0
                        for k in range(m):
                            coef = AT[k, i]
                            if coef != 0.0:
                                src = dY[k, l]
                                for oc in range(o4):
                                    t[oc] += coef * src[oc]
                for i in range(n):  # dM = tmp A^T
                    for j in range(n):
                        out = dM[i * n + j, tile]
                        out[:] = 0.0
                        for l in range(m):
                            coef = AT[l, j]
                            if coef != 0.0:
                                src = tmp[i, l]
                                for oc in range(o4):
                                    out[oc] += coef * src[oc]


@njit(nogil=True, cache=True, fastmath=True)
def _input_transform_adjoint(dV, BT, th, tw, dx):
    """dx = sum over tiles of B dV B^T, each added at its tile's place (tiles overlap by
    one row and column), inside x only."""
    n_img, h, w, c = dx.shape
    n = BT.shape[0]
    m = n - 1
    tmp = np.empty((n, n, c), np.float32)
    acc = np.empty(c, np.float32)
    for img in range(n_img):  # tiles overlap inside an image, never across images
        dx[img] = 0.0
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                for a in range(n):  # tmp = B dV
                    for j in range(n):
                        t = tmp[a, j]
                        t[:] = 0.0
                        for i in range(n):
                            coef = BT[i, a]
                            if coef != 0.0:
                                src = dV[i * n + j, tile]
                                for ch in range(c):
                                    t[ch] += coef * src[ch]
                for a in range(n):  # dd = tmp B^T, added into dx inside x only
                    iy = ty * m + a - 1
                    if iy < 0 or iy >= h:
                        continue
                    for b in range(n):
                        ix = tx * m + b - 1
                        if ix < 0 or ix >= w:
                            continue
                        acc[:] = 0.0
                        for j in range(n):
                            coef = BT[j, b]
                            if coef != 0.0:
                                src = tmp[a, j]
                                for ch in range(c):
                                    acc[ch] += coef * src[ch]
                        out = dx[img, iy, ix]
                        for ch in range(c):
                            out[ch] += acc[ch]


# -- F(6x6, 2x2) spelt out: the four transforms with B^T and A^T's entries as constants -----
# As winograd.py's spelt-out kernels, and for the same reason: the loops above read the
# matrices at run time and skip their zeros one test at a time, which costs more than
# the products here (bench/README.md, "Measurements behind the kernels' choices"). Each
# 1-D transform is written as its rows, the channels innermost; B^T and A^T are F(6x6,
# 3x3)'s less infinity (subpixel.POINTS), so each pair of points +-p shares its even and
# odd parts.

# float32 constants: an integer literal would turn the float32 arithmetic into float64
_h, _q, _2, _4, _5, _8, _16, _32 = (np.float32(v) for v in (0.5, 0.25, 2, 4, 5, 8, 16, 32))
_8th, _16th, _32th = np.float32(1 / 8), np.float32(1 / 16), np.float32(1 / 32)
_5h, _5q, _17q, _21q = np.float32(5 / 2), np.float32(5 / 4), np.float32(17 / 4), np.float32(21 / 4)


@njit(inline="always")
def _bt7(d0, d1, d2, d3, d4, d5, d6):
    """B^T d for F(6x6, 2x2): the rows of its B^T (7 values in, 7 out)."""
    e1, o1 = d2 + d6 - _17q * d4, d1 + d5 - _17q * d3
    e2, o2 = _q * d2 - _5q * d4 + d6, _h * d1 - _5h * d3 + _2 * d5
    e3, o3 = _4 * d2 - _5 * d4 + d6, _2 * d1 - _5h * d3 + _h * d5
    return d6 - d0 + _21q * (d2 - d4), e1 + o1, e1 - o1, e2 + o2, e2 - o2, e3 + o3, e3 - o3


@njit(inline="always")
def _b7(v0, v1, v2, v3, v4, v5, v6):
    """B v, the adjoint of ``_bt7``: the columns of its B^T."""
    s1, t1, s2, t2, s3, t3 = v1 + v2, v1 - v2, v3 + v4, v3 - v4, v5 + v6, v5 - v6
    return (-v0, t1 + _h * t2 + _2 * t3, _21q * v0 + s1 + _q * s2 + _4 * s3, -_17q * t1 - _5h * (t2 + t3),
            -_21q * v0 - _17q * s1 - _5q * s2 - _5 * s3, t1 + _2 * t2 + _h * t3, v0 + s1 + s2 + s3)


@njit(inline="always")
def _at7(m0, m1, m2, m3, m4, m5, m6):
    """A^T m for F(6x6, 2x2): the rows of its A^T (7 values in, 6 out)."""
    s1, t1, s2, t2, s3, t3 = m1 + m2, m1 - m2, m3 + m4, m3 - m4, m5 + m6, m5 - m6
    return (m0 + s1 + s2 + s3, t1 + _2 * t2 + _h * t3, s1 + _4 * s2 + _q * s3, t1 + _8 * t2 + _8th * t3,
            s1 + _16 * s2 + _16th * s3, t1 + _32 * t2 + _32th * t3)


@njit(inline="always")
def _a7(y0, y1, y2, y3, y4, y5):
    """A y, the adjoint of ``_at7`` (6 values in, 7 out)."""
    e1, o1 = y0 + y2 + y4, y1 + y3 + y5
    e2, o2 = y0 + _4 * y2 + _16 * y4, _2 * y1 + _8 * y3 + _32 * y5
    e3, o3 = y0 + _q * y2 + _16th * y4, _h * y1 + _8th * y3 + _32th * y5
    return y0, e1 + o1, e1 - o1, e2 + o2, e2 - o2, e3 + o3, e3 - o3


@njit(nogil=True, cache=True, fastmath=True)
def _input_transform_6(x, th, tw, BT, V):
    """As ``_input_transform`` with F(6x6, 2x2)'s B^T (``BT`` is not read: the same
    signature)."""
    n_img, h, w, c = x.shape
    d = np.empty((7, 7, c), np.float32)
    tmp = np.empty((7, 7, c), np.float32)
    for img in range(n_img):
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                y0, x0 = ty * 6 - 1, tx * 6 - 1
                if 0 <= y0 and y0 + 7 <= h and 0 <= x0 and x0 + 7 <= w:  # inside x: read it in place
                    src = x[img]
                else:  # on an edge: copy the tile with its zeros first
                    for a in range(7):
                        for b in range(7):
                            if 0 <= y0 + a < h and 0 <= x0 + b < w:
                                d[a, b] = x[img, y0 + a, x0 + b]
                            else:
                                d[a, b] = 0.0
                    src, y0, x0 = d, 0, 0
                for a in range(7):  # along each row: tmp = d B
                    row = src[y0 + a]
                    for ch in range(c):
                        r = _bt7(row[x0, ch], row[x0 + 1, ch], row[x0 + 2, ch], row[x0 + 3, ch], row[x0 + 4, ch],
                                 row[x0 + 5, ch], row[x0 + 6, ch])
                        for j in range(7):
                            tmp[a, j, ch] = r[j]
                for j in range(7):  # down each column: V = B^T tmp
                    for ch in range(c):
                        r = _bt7(tmp[0, j, ch], tmp[1, j, ch], tmp[2, j, ch], tmp[3, j, ch], tmp[4, j, ch],
                                 tmp[5, j, ch], tmp[6, j, ch])
                        for i in range(7):
                            V[i * 7 + j, tile, ch] = r[i]


@njit(nogil=True, cache=True, fastmath=True)
def _output_transform_6(M, AT, b, relu, y):
    """As ``_output_transform`` with F(6x6, 2x2)'s A^T (``AT`` is not read: the same
    signature)."""
    _outputs_6(M, b, relu, y.shape[1], y.shape[2], y, np.zeros((0, 0), np.float64))


@njit(nogil=True, cache=True, fastmath=True)
def _output_sums_6(M, b, relu, ho, wo, sums):
    """sums[img] (O,) += the sum over image img's HO x WO output pixels of relu?(y + b),
    y = A^T M A as ``_output_transform_6`` computes it, never written out."""
    _outputs_6(M, b, relu, ho, wo, np.zeros((0, 0, 0, 0), np.float32), sums)


@njit(nogil=True, cache=True, fastmath=True)
def _outputs_6(M, b, relu, ho, wo, y, sums):
    """Each tile's Y = A^T M A, the epilogue applied, written to y, or, where ``sums`` has
    rows, added into them."""
    o = b.shape[0]
    o4 = 4 * o
    pooled = sums.shape[0] > 0
    th, tw = -(-ho // 12), -(-wo // 12)
    n_img = M.shape[1] // (th * tw)
    tmp = np.empty((6, 7, o4), np.float32)
    row = np.empty((6, o4), np.float32)
    for img in range(n_img):
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                for j in range(7):  # down each column: tmp = A^T M
                    for oc in range(o4):
                        r = _at7(M[j, tile, oc], M[7 + j, tile, oc], M[14 + j, tile, oc], M[21 + j, tile, oc],
                                 M[28 + j, tile, oc], M[35 + j, tile, oc], M[42 + j, tile, oc])
                        for k in range(6):
                            tmp[k, j, oc] = r[k]
                blocks = min(6, (wo - tx * 12) // 2)
                for k in range(min(6, (ho - ty * 12) // 2)):  # along each row: Y = tmp A
                    for oc in range(o4):
                        r = _at7(tmp[k, 0, oc], tmp[k, 1, oc], tmp[k, 2, oc], tmp[k, 3, oc], tmp[k, 4, oc],
                                 tmp[k, 5, oc], tmp[k, 6, oc])
                        for l in range(6):
                            row[l, oc] = r[l]
                    oy = 2 * (ty * 6 + k)
                    for p in range(2):  # each phase (p, q) of each block to its pixel, the epilogue on the way
                        for l in range(blocks):
                            for q in range(2):
                                src = row[l, (2 * p + q) * o:(2 * p + q + 1) * o]
                                if pooled:
                                    acc = sums[img]
                                    for oc in range(o):
                                        v = src[oc] + b[oc]
                                        acc[oc] += max(v, 0.0) if relu else v
                                else:
                                    px = y[img, oy + p, 2 * (tx * 6 + l) + q]
                                    for oc in range(o):
                                        v = src[oc] + b[oc]
                                        px[oc] = max(v, 0.0) if relu else v


@njit(nogil=True, cache=True, fastmath=True)
def _output_transform_adjoint_6(dy, AT, th, tw, dM):
    """As ``_output_transform_adjoint`` with F(6x6, 2x2)'s A (``AT`` is not read)."""
    n_img, ho, wo, o = dy.shape
    o4 = 4 * o
    blk = np.zeros((6, 6, o4), np.float32)
    tmp = np.empty((7, 6, o4), np.float32)
    for img in range(n_img):
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                for k in range(6):  # the tile's blocks, their four pixels as 4 O channels (zero past the edge)
                    for l in range(6):
                        oy, ox = 2 * (ty * 6 + k), 2 * (tx * 6 + l)
                        if oy < ho and ox < wo:
                            for p in range(2):
                                for q in range(2):
                                    blk[k, l, (2 * p + q) * o:(2 * p + q + 1) * o] = dy[img, oy + p, ox + q]
                        else:
                            blk[k, l] = 0.0
                for l in range(6):  # down each column: tmp = A dY
                    for oc in range(o4):
                        r = _a7(blk[0, l, oc], blk[1, l, oc], blk[2, l, oc], blk[3, l, oc], blk[4, l, oc],
                                blk[5, l, oc])
                        for i in range(7):
                            tmp[i, l, oc] = r[i]
                for i in range(7):  # along each row: dM = tmp A^T
                    for oc in range(o4):
                        r = _a7(tmp[i, 0, oc], tmp[i, 1, oc], tmp[i, 2, oc], tmp[i, 3, oc], tmp[i, 4, oc],
                                tmp[i, 5, oc])
                        for j in range(7):
                            dM[i * 7 + j, tile, oc] = r[j]


@njit(nogil=True, cache=True, fastmath=True)
def _input_transform_adjoint_6(dV, BT, th, tw, dx):
    """As ``_input_transform_adjoint`` with F(6x6, 2x2)'s B (``BT`` is not read)."""
    n_img, h, w, c = dx.shape
    tmp = np.empty((7, 7, c), np.float32)
    dd = np.empty((7, c), np.float32)
    for img in range(n_img):  # tiles overlap inside an image, never across images
        dx[img] = 0.0
        for ty in range(th):
            for tx in range(tw):
                tile = (img * th + ty) * tw + tx
                for j in range(7):  # down each column: tmp = B dV
                    for ch in range(c):
                        r = _b7(dV[j, tile, ch], dV[7 + j, tile, ch], dV[14 + j, tile, ch], dV[21 + j, tile, ch],
                                dV[28 + j, tile, ch], dV[35 + j, tile, ch], dV[42 + j, tile, ch])
                        for a in range(7):
                            tmp[a, j, ch] = r[a]
                for a in range(7):  # along each row: dd = tmp B^T, added into dx inside x only
                    iy = ty * 6 - 1 + a
                    if iy < 0 or iy >= h:
                        continue
                    for ch in range(c):
                        r = _b7(tmp[a, 0, ch], tmp[a, 1, ch], tmp[a, 2, ch], tmp[a, 3, ch], tmp[a, 4, ch],
                                tmp[a, 5, ch], tmp[a, 6, ch])
                        for b in range(7):
                            dd[b, ch] = r[b]
                    for b in range(7):
                        ix = tx * 6 - 1 + b
                        if 0 <= ix < w:
                            out = dx[img, iy, ix]
                            for ch in range(c):
                                out[ch] += dd[b, ch]


def _transforms(m):
    """(input, output, output adjoint, input adjoint) transforms for F(m x m, 2x2): the
    spelt-out ones for m = 6, the loops otherwise. Looked up at each call from the
    module's names, so that a kernel replaced there (a test wrapping it) is the one called."""
    if m == 6:
        return _input_transform_6, _output_transform_6, _output_transform_adjoint_6, _input_transform_adjoint_6
    return _input_transform, _output_transform, _output_transform_adjoint, _input_transform_adjoint


def _kernel_transform(w, m):
    """U (n*n, C, 4 O) = G k G^T of the sub-pixel kernel k as one product,
    (G kron G) (n*n, 4) @ k (4, C*4 O); for a frozen kernel (an inference copy's,
    ``winograd_fast.freeze_kernel``) the U computed at its first call."""
    cache = W._frozen_transforms(w)
    key = ("subpixel", m)
    if cache is not None and key in cache:
        return cache[key]
    _, G, _ = matrices(m)
    c, o = w.shape[3], w.shape[2]
    k = subpixel_kernel(np.asarray(w, np.float32)).reshape(4, c * 4 * o)
    U = backend.matmul(np.kron(G, G), k).reshape(-1, c, 4 * o)
    if cache is not None:
        U = U.copy()     # kept while the kernel lives: NumPy's own memory, not a pool buffer
        U.flags.writeable = False
        cache[key] = U
    return U


@threads_by_size
def subpixel_conv_transpose_fast(x, w, b=None, relu=False, m=None):
    """As subpixel_conv_transpose_reference; with ``b`` (O,), relu?(y + b) in the same
    pass (the layer's epilogue)."""
    return _forward(x, w, b, relu, m, mean=False)


@threads_by_size
def subpixel_conv_transpose_mean_fast(x, w, b=None, relu=False, m=None):
    """As subpixel_conv_transpose_mean_reference: each block's outputs are summed per
    image and channel while in cache (F(6x6, 2x2)), y never written out."""
    return _forward(x, w, b, relu, m, mean=True)


def _forward(x, w, b, relu, m, mean):
    """y (N, 2H, 2W, O), or its mean over each image (N, O)."""
    nb, h, wd, c = x.shape
    o = w.shape[2]
    who = "subpixel_conv_transpose" + ("_mean" if mean else "")
    check_shapes(x.shape, w.shape, (2, 2), ((0, 1), (0, 1)), (nb, 2 * h, 2 * wd, o), who)
    m = m or choose_tile(h, wd)
    BT, _, AT = matrices(m)
    n = m + 1
    th, tw = tile_grid(h, wd, m)
    x = np.ascontiguousarray(x, np.float32)
    b = np.zeros(o, np.float32) if b is None else np.ascontiguousarray(b, np.float32)
    U = _kernel_transform(w, m)
    y = np.zeros((nb, o)) if mean else memory.empty((nb, 2 * h, 2 * wd, o))
    k = W._block_images(nb, th * tw)
    to_tiles, from_tiles, _, _ = _transforms(m)

    def work(starts):
        vbuf, mbuf = memory.empty((n * n * k * th * tw * c,)), memory.empty((n * n * k * th * tw * 4 * o,))
        z = memory.empty((k, 2 * h, 2 * wd, o)) if mean and m != 6 else None
        for s in starts:
            images = min(k, nb - s)
            t = images * th * tw
            V, M = W._buffer(vbuf, (n * n, t, c)), W._buffer(mbuf, (n * n, t, 4 * o))
            to_tiles(x[s:s + k], th, tw, BT, V)
            backend.stacked_matmul(V, U, M)
            if not mean:
                from_tiles(M, AT, b, relu, y[s:s + k])
            elif m == 6:
                _output_sums_6(M, b, relu, 2 * h, 2 * wd, y[s:s + k])
            else:   # the loops have no summing form: the block's outputs, then their sums
                from_tiles(M, AT, b, relu, z[:images])
                y[s:s + k] = z[:images].sum(axis=(1, 2), dtype=np.float64)

    W._in_blocks(nb, k, work)
    return (y / (4 * h * wd)).astype(np.float32) if mean else y


@threads_by_size
def subpixel_conv_transpose_grads_fast(x, dy, w, need_input=True, need_weight=True, m=None):
    """As subpixel_conv_transpose_grads_reference, in one pass over dy: each block's
    dM = A dY A^T serves both products."""
    nb, h, wd, c = x.shape
    o = w.shape[2]
    check_shapes(x.shape, w.shape, (2, 2), ((0, 1), (0, 1)), dy.shape, "subpixel_conv_transpose_grads")
    m = m or choose_tile(h, wd)
    BT, G, AT = matrices(m)
    n = m + 1
    th, tw = tile_grid(h, wd, m)
    dy = np.ascontiguousarray(dy, np.float32)
    x = np.ascontiguousarray(x, np.float32)
    dx = Ut = None
    if need_input:  # U^T as a transposed view: BLAS reads it as it is, no copy of its 49 C 4 O values
        Ut = _kernel_transform(w, m).transpose(0, 2, 1)
        dx = memory.empty(x.shape)
    k = W._block_images(nb, th * tw)
    to_tiles, _, to_tiles_adjoint, from_tiles_adjoint = _transforms(m)

    def work(starts):
        """This core's blocks; returns its share of dU (n*n, C, 4 O), or None."""
        mbuf, vbuf = memory.empty((n * n * k * th * tw * 4 * o,)), memory.empty((n * n * k * th * tw * c,))
        dU = part = None
        if need_weight:  # the first block's product is written straight into dU (it is large: 49 C 4 O)
            dU = memory.empty((n * n, c, 4 * o))
        for s in starts:
            t = min(k, nb - s) * th * tw
            dM = W._buffer(mbuf, (n * n, t, 4 * o))
            V = W._buffer(vbuf, (n * n, t, c))  # V for the weight gradient, then dV
            to_tiles_adjoint(dy[s:s + k], AT, th, tw, dM)
            if need_weight:
                to_tiles(x[s:s + k], th, tw, BT, V)
                if s == starts[0]:
                    backend.stacked_matmul(V.transpose(0, 2, 1), dM, dU)
                else:
                    part = part if part is not None else memory.empty(dU.shape)
                    backend.stacked_matmul(V.transpose(0, 2, 1), dM, part)
                    dU += part
            if need_input:
                backend.stacked_matmul(dM, Ut, V)
                from_tiles_adjoint(V, BT, th, tw, dx[s:s + k])
        return dU

    shares = W._in_blocks(nb, k, work)
    dw = None
    if need_weight:  # dK = (G kron G)^T dU, summed over the cores' shares of dU (each read once)
        GG_T = np.kron(G, G).T
        dk = sum(backend.matmul(GG_T, share.reshape(n * n, -1)) for share in shares)
        dw = subpixel_kernel_adjoint(dk.reshape(2, 2, c, 2, 2, o))
    return dx, dw
