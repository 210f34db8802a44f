"""Conv2DTranspose with a 3x3 kernel and strides 2 ("same"): one small convolution, by Winograd.

Shapes: ``x`` (N, H, W, C), ``w`` (3, 3, O, C) as Keras stores a Conv2DTranspose kernel,
``y`` (N, 2H, 2W, O).

**The sub-pixel view.** The transposed convolution scatters every input pixel, times the
kernel, into the output: ``y[2i + ky, 2j + kx] += x[i, j] @ w[ky, kx]^T`` (the
padding "same" puts the first tap on the first output row and drops what falls past
the last). Look at one axis. An even output row 2a takes tap ky = 0 from input row a
and tap ky = 2 from row a - 1; an odd one, 2a + 1, takes tap ky = 1 from row a alone.
So each output pair (2a, 2a + 1) reads just two input rows, a - 1 and a, each output
row with its own two taps (one of them zero):

    phase p = 0 (even rows): input rows (a - 1, a) times taps (2, 0)
    phase p = 1 (odd rows):  input rows (a - 1, a) times taps (-, 1)

In two dimensions every 2x2 output block (2a + p, 2b + q) is a 2x2 window of the input
(rows a - 1, a; columns b - 1, b) times a 2x2 kernel of its own for each of the four
phases (p, q). Stack the four phases' kernels as 4 O output channels and the transposed
convolution *is* an ordinary stride-1 convolution with a 2x2 kernel (2, 2, C, 4 O) over x
padded by one row above and one column to the left, whose H x W x 4 O output, each
pixel's channels laid out as its 2x2 block, is y (``subpixel_kernel`` builds that kernel
from w; Shi et al. 2016 call this the sub-pixel convolution).

**Winograd on it.** That 2x2-kernel convolution takes Winograd's minimal filtering as
``winograd.py`` explains it for 3x3 kernels: F(m x m, 2 x 2) computes an m x m block of
outputs from an (m + 1) x (m + 1) input tile with (m + 1)^2 products per channel pair,

    Y = A^T [ (G g G^T) * (B^T d B) ] A

instead of 4 m^2. Per input pixel, the sub-pixel Winograd costs 4 (m + 1)^2 / m^2
products per (C, O) pair, against the direct 9: 6.25 for F(4x4, 2x2), 5.44 for
F(6x6, 2x2). The matrices come from the same construction as winograd.py's
(``toom_cook``), with n = m + 1 points; tiles start m apart and overlap by one row and
column (the kernel's 2 - 1).

The gradients are the adjoints, as in winograd.py: dM = A dY A^T, then dV = dM U^T and
dU = V^T dM, then dd = B dV B^T added back into the overlapping tiles, dK = G^T dU G,
and each of the 2x2 kernel's taps added back to the 3x3 tap it came from.
"""
from __future__ import annotations

import numpy as np

from .. import backend

# TAPS[p][r]: the kernel row (or column) that output phase p takes from input row a - 1 + r
# of its window, None where it takes nothing.
TAPS = ((2, 0), (None, 1))

# The points of each tile size: F(4x4, 2x2) with 0, 1, -1, 2 and infinity; F(6x6, 2x2) with
# seven finite points, the same as winograd.py's F(6x6, 3x3) less infinity, which makes
# its B^T and A^T that matrix's with infinity's row and column dropped (row 0's sign aside).
POINTS = {4: (0, 1, -1, 2), 6: (0, 1, -1, 2, -2, 1 / 2, -1 / 2)}
TILE = 6        # F(6x6, 2x2) unless a map of at most 4 blocks a side favours m = 4 (``choose_tile``)


def applies(x_shape, w_shape, strides, pads, out_shape) -> bool:
    """Whether a Conv2DTranspose of x (N, H, W, C) with w (KH, KW, O, C) to ``out_shape``
    is the case this file computes: a 3x3 kernel, strides 2, the first tap at the first
    output row and column (``pads`` of the underlying convolution start at 0), and an
    output of exactly 2H x 2W (Keras' padding "same")."""
    n, h, w, c = x_shape
    return (tuple(w_shape[:2]) == (3, 3) and w_shape[3] == c and tuple(strides) == (2, 2)
            and pads[0][0] == 0 and pads[1][0] == 0
            and tuple(out_shape) == (n, 2 * h, 2 * w, w_shape[2]))


# The sub-pixel Winograd pays from about this many tiles in a call. Its transformed kernel
# U holds 49 C 4 O values, 21.8 times the kernel, and costs as much to compute and read
# whatever the batch; each tile's products save a share of the direct sum's. Measured on
# updown's three layers, it was level at 128 to 256 tiles and ahead from 256 (bench/README.md,
# "Measurements behind the kernels' choices"). A face alone always takes the direct sum.
MIN_TILES = 192


def chosen(x_shape, w_shape, strides, pads, out_shape) -> bool:
    """Whether to compute this Conv2DTranspose here: where it ``applies``, unless
    ``set_conv_algorithm("im2col")`` asks for the direct sum, and under "auto" only on
    at least ``MIN_TILES`` tiles."""
    if not applies(x_shape, w_shape, strides, pads, out_shape):
        return False
    setting = backend.get_conv_algorithm()
    if setting != "auto":
        return setting == "winograd"
    n, h, w = x_shape[:3]
    th, tw = tile_grid(h, w, choose_tile(h, w))
    return n * th * tw >= MIN_TILES


def check_shapes(x_shape, w_shape, strides, pads, out_shape, who="subpixel"):
    """The gate in front of the kernels (the compiled ones do not check bounds)."""
    if len(x_shape) != 4 or len(w_shape) != 4 or not applies(x_shape, w_shape, strides, pads, out_shape):
        raise ValueError(f"{who}: needs a (3, 3, O, C) kernel, strides (2, 2), paddings starting at 0 and an "
                         f"output of twice the input's size; got input {tuple(x_shape)}, kernel "
                         f"{tuple(w_shape)}, strides {tuple(strides)}, paddings {tuple(pads)}, "
                         f"output {tuple(out_shape)}")


def toom_cook(m, r, points):
    """(B^T (n, n), G (n, r), A^T (m, n)) of F(m, r), n = m + r - 1, from n distinct finite
    points, or n - 1 and infinity (the leading coefficient), in float64: Toom-Cook, the
    construction behind winograd.py's matrices, up to where each row's sign and scale is
    put.

    Multiplying polynomials of degrees r - 1 (the kernel) and m - 1 evaluates both at the
    points, multiplies there and interpolates the product back; correlation is that
    algorithm transposed. So A^T holds the powers p_k^i, G the kernel's polynomial at
    each point divided by N_k = prod_{l != k} (p_k - p_l), and B^T the coefficients of
    prod_{l != k} (z - p_l) (the Lagrange polynomials without their N_k); infinity's row
    of B^T is the product over all the finite points."""
    n = m + r - 1
    p = np.asarray(points, np.float64)
    if len(set(points)) != len(p) or len(p) not in (n - 1, n):
        raise ValueError(f"F({m}, {r}) needs {n} distinct finite points, or {n - 1} and infinity; got {points}")
    BT, G, AT = np.zeros((n, n)), np.zeros((n, r)), np.zeros((m, n))
    for k in range(len(p)):
        others = np.delete(p, k)
        BT[k, :len(p)] = np.polynomial.polynomial.polyfromroots(others)
        G[k] = p[k] ** np.arange(r) / np.prod(p[k] - others)
        AT[:, k] = p[k] ** np.arange(m)
    if len(p) == n - 1:   # and infinity
        BT[n - 1] = np.polynomial.polynomial.polyfromroots(p)
        G[n - 1, r - 1] = 1
        AT[m - 1, n - 1] = 1
    return BT, G, AT


MATRICES = {m: toom_cook(m, 2, pts) for m, pts in POINTS.items()}


def matrices(m, dtype=np.float32):
    """(B^T (n, n), G (n, 2), A^T (m, n)) of F(m x m, 2x2), n = m + 1, as ``dtype``."""
    if m not in MATRICES:
        raise ValueError(f"Winograd F({m}x{m}, 2x2): tile size must be one of {sorted(MATRICES)}")
    return tuple(a.astype(dtype) for a in MATRICES[m])


def choose_tile(h, w):
    """m for an H x W input (H x W blocks of 2x2 outputs): 6, or 4 where the map is at
    most 4 blocks a side (one F(4x4) tile covers it: 25 products against 49)."""
    return 4 if max(h, w) <= 4 else TILE


def tile_grid(h, w, m):
    """Number of m x m tiles (TH, TW) that cover H x W blocks."""
    return -(-h // m), -(-w // m)


def subpixel_kernel(w):
    """k (2, 2, C, 2, 2, O) from w (3, 3, O, C): ``k[r, s, :, p, q]`` is the tap phase
    (p, q) takes from window position (r, s), ``w[TAPS[p][r], TAPS[q][s]]^T``, or zero."""
    o, c = w.shape[2], w.shape[3]
    k = np.zeros((2, 2, c, 2, 2, o), w.dtype)
    for p in range(2):
        for q in range(2):
            for r in range(2):
                for s in range(2):
                    ky, kx = TAPS[p][r], TAPS[q][s]
                    if ky is not None and kx is not None:
                        k[r, s, :, p, q] = w[ky, kx].T
    return k


def subpixel_kernel_adjoint(dk):
    """dw (3, 3, O, C) from dk (2, 2, C, 2, 2, O): each tap's gradient added back to the
    3x3 tap it was copied from (every 3x3 tap is copied exactly once)."""
    c, o = dk.shape[2], dk.shape[5]
    dw = np.zeros((3, 3, o, c), dk.dtype)
    for p in range(2):
        for q in range(2):
            for r in range(2):
                for s in range(2):
                    ky, kx = TAPS[p][r], TAPS[q][s]
                    if ky is not None and kx is not None:
                        dw[ky, kx] += dk[r, s, :, p, q].T
    return dw


# -- the readable reference: the formulas above, in einsum ------------------------------------
def _tiles(x, th, tw, m):
    """d (N, TH, TW, C, n, n): the input tiles, rows r*m - 1 .. r*m + m - 1 of x (zero
    outside it)."""
    h, w = x.shape[1:3]
    xp = np.pad(x, ((0, 0), (1, th * m - h), (1, tw * m - w), (0, 0)))
    return np.lib.stride_tricks.sliding_window_view(xp, (m + 1, m + 1), axis=(1, 2))[:, ::m, ::m]


def _blocks(y, th, tw, m):
    """y (N, 2H, 2W, O) as its blocks (N, TH, TW, m, m, 2, 2, O), zero past the edge:
    output pixel (2 (r m + k) + p, 2 (s m + l) + q) is block (r, s), place (k, l), phase (p, q)."""
    n, ho, wo, o = y.shape
    padded = np.zeros((n, 2 * th * m, 2 * tw * m, o), y.dtype)
    padded[:, :ho, :wo] = y
    return padded.reshape(n, th, m, 2, tw, m, 2, o).transpose(0, 1, 4, 2, 5, 3, 6, 7)


def subpixel_conv_transpose_reference(x, w, b=None, relu=False, m=None):
    """y (N, 2H, 2W, O): the transposed convolution of x (N, H, W, C) with w (3, 3, O, C),
    strides 2, padding "same", by F(m x m, 2x2) on its sub-pixel kernel; with the bias
    b (O,) added and the ReLU applied when given (the layer's epilogue)."""
    n, h, wd, _ = x.shape
    m = m or choose_tile(h, wd)
    BT, G, AT = matrices(m, x.dtype)
    th, tw = tile_grid(h, wd, m)
    V = np.einsum("ia,nrscab,jb->nrsijc", BT, _tiles(x, th, tw, m), BT, optimize=True)
    U = np.einsum("ia,abcpqo,jb->ijcpqo", G, subpixel_kernel(w), G, optimize=True)
    M = np.einsum("nrsijc,ijcpqo->nrsijpqo", V, U, optimize=True)  # one product over C per position
    Y = np.einsum("ki,nrsijpqo,lj->nrsklpqo", AT, M, AT, optimize=True)
    y = Y.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(n, 2 * th * m, 2 * tw * m, -1)[:, :2 * h, :2 * wd]
    if b is not None:
        y = y + b
    return np.maximum(y, 0) if relu else y


def subpixel_conv_transpose_mean_reference(x, w, b=None, relu=False, m=None):
    """(N, O): the mean over each image's pixels of ``subpixel_conv_transpose_reference``:
    a Conv2DTranspose and the GlobalAveragePooling2D after it, in inference."""
    return subpixel_conv_transpose_reference(x, w, b, relu, m).mean(axis=(1, 2))


def subpixel_conv_transpose_grads_reference(x, dy, w, need_input=True, need_weight=True, m=None):
    """(dx (N, H, W, C) or None, dw (3, 3, O, C) or None) from dy (N, 2H, 2W, O): the
    adjoints above, in reverse order."""
    n, h, wd, c = x.shape
    m = m or choose_tile(h, wd)
    BT, G, AT = matrices(m, dy.dtype)
    th, tw = tile_grid(h, wd, m)
    dM = np.einsum("ki,nrsklpqo,lj->nrsijpqo", AT, _blocks(dy, th, tw, m), AT, optimize=True)
    dx = dw = None
    if need_input:
        U = np.einsum("ia,abcpqo,jb->ijcpqo", G, subpixel_kernel(w), G, optimize=True)
        dV = np.einsum("nrsijpqo,ijcpqo->nrsijc", dM, U, optimize=True)
        dd = np.einsum("ia,nrsijc,jb->nrsabc", BT, dV, BT, optimize=True)
        dxp = np.zeros((n, th * m + 1, tw * m + 1, c), dy.dtype)
        for a in range(m + 1):  # tile element (a, b) of every tile lands m apart; overlaps add up
            for b in range(m + 1):
                dxp[:, a:a + th * m:m, b:b + tw * m:m] += dd[:, :, :, a, b]
        dx = dxp[:, 1:1 + h, 1:1 + wd]
    if need_weight:
        V = np.einsum("ia,nrscab,jb->nrsijc", BT, _tiles(x, th, tw, m), BT, optimize=True)
        dU = np.einsum("nrsijc,nrsijpqo->ijcpqo", V, dM, optimize=True)
        dw = subpixel_kernel_adjoint(np.einsum("ia,ijcpqo,jb->abcpqo", G, dU, G, optimize=True))
    return dx, dw
