"""Winograd minimal filtering: a 3x3, stride-1 convolution with fewer multiplications.

Shapes as in ``conv.py``: ``x`` (N, H, W, C), ``w`` (3, 3, C, O), ``y`` (N, HO, WO, O),
``pads`` ``((top, bottom), (left, right))``; strides are always (1, 1).

Where the algorithm comes from (Winograd 1980; Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016). Take one dimension first. ``m`` outputs of a
3-tap correlation, ``y[k] = sum_b d[k + b] g[b]``, read ``m + 2`` inputs ``d``. The
direct way costs ``3 m`` multiplications. Now look at polynomials: the coefficients of
``D(z) G(z)`` (``D`` of degree m+1 built from d, ``G`` of degree 2 from g) hold those
sums. A product of degree m+3 is fixed by its values at ``n = m + 2`` points, and at
each point it is *one* multiplication, ``D(p) G(p)``. So (Cook-Toom):

1. evaluate G at the points: ``G @ g``   (n values; depends only on the kernel)
2. evaluate the data's polynomial at the points: ``B^T @ d``   (n values)
3. multiply pointwise: n multiplications instead of 3 m
4. interpolate back and keep the m wanted coefficients: ``A^T @ (...)``

    y = A^T [ (G g) * (B^T d) ]          F(m, 3): m outputs, n = m + 2 multiplications

The points used here are 0, 1, -1, 2, -2 and "infinity" (the leading coefficient),
and for F(6, 3) also 1/2 and -1/2; small points keep the matrices' entries small, which
keeps float32 rounding small.
``G`` holds the 1/N_k of Lagrange interpolation, ``B^T`` the coefficients of the
polynomials prod_{l != k} (z - p_l) (with the remainder for the point at infinity),
``A^T`` the powers p_k^i (Lavin & Gray give the same matrices).

In two dimensions the same is nested: a tile ``d`` of (m + 2) x (m + 2) inputs gives
an m x m block of outputs as

    Y = A^T [ (G g G^T) * (B^T d B) ] A

with (m + 2)^2 multiplications instead of 9 m^2: 2.25x fewer for F(2x2, 3x3), 4x fewer
for F(4x4, 3x3), 5.06x fewer for F(6x6, 3x3). Neighbouring output blocks need
overlapping input tiles: a block of m outputs reads m + 2 inputs, so tiles start m apart
and overlap by the kernel's 3 - 1 = 2 rows and columns. Outputs past the edge (an HO
that is not a multiple of m) are computed from zero padding and dropped.

Across channels it becomes matrix products. For each of the (m + 2)^2 positions
(i, j) inside a tile, ``M[i, j] = V[i, j] @ U[i, j]`` where ``V[i, j]`` (tiles, C) holds
every tile's transformed input and ``U[i, j]`` (C, O) the transformed kernel: the sum
over input channels is a BLAS product, (m + 2)^2 of them, each 4x smaller (for m = 4)
than the im2col product of the same layer.

The gradients are the same linear maps transposed (the adjoints), in reverse order:
``dM = A dY A^T`` per tile, then ``dV = dM @ U^T`` and ``dU = V^T @ dM``, then
``dd = B dV B^T`` added back into the overlapping input tiles, and ``dw = G^T dU G``.

The price is rounding: the transforms add and subtract terms of different sizes, with
larger coefficients for larger m, so the float32 error grows with m (notebook 07
measures it on a real layer; the tests hold all three tile sizes to the library's
float32 tolerance). Layers use F(4x4, 3x3), or F(6x6, 3x3) where the output's size
favours its larger tiles (``choose_tile``).

The fast kernels are in ``winograd_fast.py``; ``conv.py`` binds the two by the backend.
"""
from __future__ import annotations

import numpy as np

# F(2x2, 3x3): points 0, 1, -1, infinity.
BT_2 = np.array([[1, 0, -1, 0],
                 [0, 1, 1, 0],
                 [0, -1, 1, 0],
                 [0, 1, 0, -1]], np.float64)
G_2 = np.array([[1, 0, 0],
                [1 / 2, 1 / 2, 1 / 2],
                [1 / 2, -1 / 2, 1 / 2],
                [0, 0, 1]], np.float64)
AT_2 = np.array([[1, 1, 1, 0],
                 [0, 1, -1, -1]], np.float64)

# F(4x4, 3x3): points 0, 1, -1, 2, -2, infinity.
BT_4 = np.array([[4, 0, -5, 0, 1, 0],
                 [0, -4, -4, 1, 1, 0],
                 [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0],
                 [0, 2, -1, -2, 1, 0],
                 [0, 4, 0, -5, 0, 1]], np.float64)
G_4 = np.array([[1 / 4, 0, 0],
                [-1 / 6, -1 / 6, -1 / 6],
                [-1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6],
                [1 / 24, -1 / 12, 1 / 6],
                [0, 0, 1]], np.float64)
AT_4 = np.array([[1, 1, 1, 1, 1, 0],
                 [0, 1, -1, 2, -2, 0],
                 [0, 1, 1, 4, 4, 0],
                 [0, 1, -1, 8, -8, 1]], np.float64)

# F(6x6, 3x3): points 0, 1, -1, 2, -2, 1/2, -1/2, infinity. Two more points than F(4x4)
# must be found, and the next integers (3, -3) would put 3^5 = 243 in A^T: the halves keep
# A^T's entries within 32 and B^T's within 21/4 (the powers of 1/2 are exact in float32).
BT_6 = np.array([[1, 0, -21 / 4, 0, 21 / 4, 0, -1, 0],
                 [0, 1, 1, -17 / 4, -17 / 4, 1, 1, 0],
                 [0, -1, 1, 17 / 4, -17 / 4, -1, 1, 0],
                 [0, 1 / 2, 1 / 4, -5 / 2, -5 / 4, 2, 1, 0],
                 [0, -1 / 2, 1 / 4, 5 / 2, -5 / 4, -2, 1, 0],
                 [0, 2, 4, -5 / 2, -5, 1 / 2, 1, 0],
                 [0, -2, 4, 5 / 2, -5, -1 / 2, 1, 0],
                 [0, -1, 0, 21 / 4, 0, -21 / 4, 0, 1]], np.float64)
G_6 = np.array([[1, 0, 0],
                [-2 / 9, -2 / 9, -2 / 9],
                [-2 / 9, 2 / 9, -2 / 9],
                [1 / 90, 1 / 45, 2 / 45],
                [1 / 90, -1 / 45, 2 / 45],
                [32 / 45, 16 / 45, 8 / 45],
                [32 / 45, -16 / 45, 8 / 45],
                [0, 0, 1]], np.float64)
AT_6 = np.array([[1, 1, 1, 1, 1, 1, 1, 0],
                 [0, 1, -1, 2, -2, 1 / 2, -1 / 2, 0],
                 [0, 1, 1, 4, 4, 1 / 4, 1 / 4, 0],
                 [0, 1, -1, 8, -8, 1 / 8, -1 / 8, 0],
                 [0, 1, 1, 16, 16, 1 / 16, 1 / 16, 0],
                 [0, 1, -1, 32, -32, 1 / 32, -1 / 32, 1]], np.float64)

MATRICES = {2: (BT_2, G_2, AT_2), 4: (BT_4, G_4, AT_4), 6: (BT_6, G_6, AT_6)}
TILE = 4  # F(4x4, 3x3) unless the output's size favours F(6x6) (``choose_tile``) or m is given

# F(6x6, 3x3) when its products cost at most this fraction of F(4x4, 3x3)'s. Its transforms
# cost more per tile (8x8 values, larger constants), so the products must shrink enough to
# pay: at 0.64 F(6x6) measured faster, at 0.79 faster, level or behind by layer, at 0.94
# slower (bench/README.md, "Measurements behind the kernels' choices").
F6_MAX_PRODUCTS = 0.8
F6_MIN_TILES = 64


def choose_tile(ho, wo, n_img=None):
    """m for F(m x m, 3x3) on an HO x WO output of ``n_img`` images (any number when not
    given): 4, or 6 where its (m + 2)^2 products per tile over fewer tiles are at most
    ``F6_MAX_PRODUCTS`` of F(4x4)'s (an 18x18 output: 9 tiles x 64 against 25 x 36, the
    last F(4x4) row and column of tiles mostly past the edge; a 12x12 one: 4 x 64 against
    9 x 36) and the batch has at least ``F6_MIN_TILES`` of its tiles. Fewer tiles make
    64 products too thin to pay for the larger transforms (measured at one image:
    bench/README.md, "Measurements behind the kernels' choices")."""
    (th4, tw4), (th6, tw6) = tile_grid(ho, wo, 4), tile_grid(ho, wo, 6)
    enough = n_img is None or n_img * th6 * tw6 >= F6_MIN_TILES
    return 6 if enough and 64 * th6 * tw6 <= F6_MAX_PRODUCTS * 36 * th4 * tw4 else TILE


def matrices(m, dtype=np.float32):
    """(B^T (n, n), G (n, 3), A^T (m, n)) of F(m x m, 3x3), n = m + 2, as ``dtype``."""
    if m not in MATRICES:
        raise ValueError(f"Winograd F({m}x{m}, 3x3): tile size must be one of {sorted(MATRICES)}")
    return tuple(a.astype(dtype) for a in MATRICES[m])


def tile_grid(ho, wo, m):
    """Number of m x m output blocks (TH, TW) that cover an HO x WO output."""
    return -(-ho // m), -(-wo // m)


def check_winograd_shapes(x_shape, w_shape, strides, pads, dy_shape=None, who="winograd"):
    """Where Winograd applies, and the gate in front of its compiled kernels (which do not
    check bounds): the shapes must agree, or a ValueError names them."""
    if len(w_shape) != 4 or tuple(w_shape[:2]) != (3, 3) or tuple(strides) != (1, 1):
        raise ValueError(f"{who}: Winograd F(m, 3x3) needs a 3x3 kernel and strides (1, 1), got "
                         f"kernel {tuple(w_shape[:2])} and strides {tuple(strides)}")
    if len(x_shape) != 4 or x_shape[3] != w_shape[2]:
        raise ValueError(f"{who}: input {tuple(x_shape)} has {x_shape[-1]} channels, kernel {tuple(w_shape)} "
                         f"expects {w_shape[2]}")
    ho, wo = _output_hw(x_shape, pads)
    if min(min(p) for p in pads) < 0 or ho < 1 or wo < 1:
        raise ValueError(f"{who}: paddings {tuple(pads)} on input {tuple(x_shape)} leave no output")
    if dy_shape is not None and tuple(dy_shape) != (x_shape[0], ho, wo, w_shape[3]):
        raise ValueError(f"{who}: output gradient has shape {tuple(dy_shape)}, the convolution of input "
                         f"{tuple(x_shape)} gives {(x_shape[0], ho, wo, w_shape[3])}")


def _output_hw(x_shape, pads):
    return x_shape[1] + sum(pads[0]) - 2, x_shape[2] + sum(pads[1]) - 2


# -- readable reference: the formulas above, in einsum ---------------------------------------
def kernel_transform(w, m=TILE):
    """U (n, n, C, O) = G g G^T for every (input, output) channel pair of w (3, 3, C, O)."""
    _, G, _ = matrices(m, w.dtype)
    return np.einsum("ia,abco,jb->ijco", G, w, G, optimize=True)


def input_transform(x, pads, th, tw, m=TILE):
    """V (N, TH, TW, n, n, C) = B^T d B for every tile d of the padded input.

    The tile at block (r, s) is rows r*m .. r*m + m + 1 and columns s*m .. s*m + m + 1 of
    the padded input: tiles overlap by two rows and columns."""
    BT, _, _ = matrices(m, x.dtype)
    n = m + 2
    (pt, _), (pl, _) = pads
    # pad to exactly th*m + 2 rows (the last tile may reach past the 'real' padding)
    xp = np.pad(x, ((0, 0), (pt, th * m + 2 - x.shape[1] - pt), (pl, tw * m + 2 - x.shape[2] - pl), (0, 0)))
    d = np.lib.stride_tricks.sliding_window_view(xp, (n, n), axis=(1, 2))[:, ::m, ::m]  # (N, TH, TW, C, n, n)
    return np.einsum("ia,nrscab,jb->nrsijc", BT, d, BT, optimize=True)


def output_transform(M, ho, wo, m=TILE):
    """y (N, HO, WO, O) from M (N, TH, TW, n, n, O): Y = A^T M A per tile, blocks laid side
    by side, the part past HO x WO dropped."""
    _, _, AT = matrices(m, M.dtype)
    nb, th, tw = M.shape[:3]
    Y = np.einsum("ki,nrsijo,lj->nrsklo", AT, M, AT, optimize=True)  # (N, TH, TW, m, m, O)
    return Y.transpose(0, 1, 3, 2, 4, 5).reshape(nb, th * m, tw * m, M.shape[-1])[:, :ho, :wo]


def output_transform_adjoint(dy, th, tw, m=TILE):
    """dM (N, TH, TW, n, n, O) = A dY A^T per tile: the transpose of ``output_transform``
    (dY is dy cut into m x m blocks, zero past the edge)."""
    _, _, AT = matrices(m, dy.dtype)
    nb, ho, wo, o = dy.shape
    dY = np.zeros((nb, th * m, tw * m, o), dy.dtype)
    dY[:, :ho, :wo] = dy
    dY = dY.reshape(nb, th, m, tw, m, o).transpose(0, 1, 3, 2, 4, 5)
    return np.einsum("ki,nrsklo,lj->nrsijo", AT, dY, AT, optimize=True)


def winograd_conv2d_reference(x, w, strides, pads, m=None):
    """y (N, HO, WO, O) = conv of x (N, H, W, C) with w (3, 3, C, O), by F(m x m, 3x3);
    m = ``choose_tile(HO, WO)`` unless given (as in every entry below)."""
    check_winograd_shapes(x.shape, w.shape, strides, pads)
    m = m or choose_tile(*_output_hw(x.shape, pads), x.shape[0])
    ho, wo = _output_hw(x.shape, pads)
    th, tw = tile_grid(ho, wo, m)
    V = input_transform(x, pads, th, tw, m)
    U = kernel_transform(w, m)
    M = np.einsum("nrsijc,ijco->nrsijo", V, U, optimize=True)  # one product over C per position
    return output_transform(M, ho, wo, m)


def winograd_conv2d_grad_input_reference(dy, w, x_shape, strides, pads, m=None):
    """dx (N, H, W, C) from dy (N, HO, WO, O): dd = B (dM U^T) B^T, added into the tiles."""
    check_winograd_shapes(x_shape, w.shape, strides, pads, dy.shape)
    m = m or choose_tile(*_output_hw(x_shape, pads), x_shape[0])
    n, h, wd, c = x_shape
    th, tw = tile_grid(dy.shape[1], dy.shape[2], m)
    BT, _, _ = matrices(m, dy.dtype)
    dM = output_transform_adjoint(dy, th, tw, m)
    dV = np.einsum("nrsijo,ijco->nrsijc", dM, kernel_transform(w, m), optimize=True)
    dd = np.einsum("ia,nrsijc,jb->nrsabc", BT, dV, BT, optimize=True)  # (N, TH, TW, n, n, C)
    (pt, _), (pl, _) = pads
    dxp = np.zeros((n, th * m + 2, tw * m + 2, c), dy.dtype)
    for a in range(m + 2):  # tile element (a, b) of every tile lands m apart; overlaps add up
        for b in range(m + 2):
            dxp[:, a:a + th * m:m, b:b + tw * m:m] += dd[:, :, :, a, b]
    return dxp[:, pt:pt + h, pl:pl + wd]


def winograd_conv2d_grad_weight_reference(x, dy, w_shape, strides, pads, m=None):
    """dw (3, 3, C, O) = G^T (sum over tiles of V^T dM) G."""
    check_winograd_shapes(x.shape, w_shape, strides, pads, dy.shape)
    m = m or choose_tile(*_output_hw(x.shape, pads), x.shape[0])
    th, tw = tile_grid(dy.shape[1], dy.shape[2], m)
    _, G, _ = matrices(m, x.dtype)
    V = input_transform(x, pads, th, tw, m)
    dM = output_transform_adjoint(dy, th, tw, m)
    dU = np.einsum("nrsijc,nrsijo->ijco", V, dM, optimize=True)
    return np.einsum("ia,ijco,jb->abco", G, dU, G, optimize=True)


def winograd_conv2d_grads_reference(x, dy, w, strides, pads, need_input=True, need_weight=True, m=None):
    """(dx or None, dw or None): the two gradients above, each when asked for."""
    m = m or choose_tile(*_output_hw(x.shape, pads), x.shape[0])
    return (winograd_conv2d_grad_input_reference(dy, w, x.shape, strides, pads, m) if need_input else None,
            winograd_conv2d_grad_weight_reference(x, dy, w.shape, strides, pads, m) if need_weight else None)
