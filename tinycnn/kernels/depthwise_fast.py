"""The fast versions of depthwise.py's functions, with the same signatures; read depthwise.py first.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import memory
from ..backend import PARALLEL, threads_by_size
from .shapes import depthwise_conv2d_output_shape

_output_shape = depthwise_conv2d_output_shape


# -- fast: direct loops in Numba, channels innermost ---------------------------------------------
# The taps that fall in the zero padding are skipped: they would add zeros. With M = 1
# (the usual depthwise layer) each loop is written without the multiplier's inner loop,
# so that the channel loop is a plain contiguous one the compiler vectorises.
@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _depthwise_forward(x, w, sh, sw, pt, pl, y):
    """Fill y (N, HO, WO, C*M) with the depthwise conv of x (N, H, W, C) and w (KH, KW, C, M)."""
    n_img, h, wd, c = x.shape
    kh, kw, _, mult = w.shape
    ho, wo = y.shape[1], y.shape[2]
    for r in prange(n_img * ho):  # one (image, output row) per iteration
        n, oy = r // ho, r % ho
        for ox in range(wo):
            for k in range(c * mult):
                y[n, oy, ox, k] = 0.0
            for a in range(kh):
                iy = oy * sh + a - pt
                if iy < 0 or iy >= h:
                    continue
                for b in range(kw):
                    ix = ox * sw + b - pl
                    if ix < 0 or ix >= wd:
                        continue
                    if mult == 1:
                        for ch in range(c):
                            y[n, oy, ox, ch] += x[n, iy, ix, ch] * w[a, b, ch, 0]
                    else:
                        for ch in range(c):
                            v = x[n, iy, ix, ch]
                            for m in range(mult):
                                y[n, oy, ox, ch * mult + m] += v * w[a, b, ch, m]


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _depthwise_grad_input(dy, w, sh, sw, pt, pl, dx):
    """Fill dx (N, H, W, C) from dy (N, HO, WO, C*M).

    Gathered rather than scattered: input pixel (iy, ix) was seen by tap (a, b) of
    output (oy, ox) when ``oy*SH + a - pt == iy``, i.e. for the taps a with
    ``iy + pt - a`` a non-negative multiple of SH below HO*SH. Each dx value is then
    written once, by one iteration, so rows can run in parallel."""
    n_img, h, wd, c = dx.shape
    kh, kw, _, mult = w.shape
    ho, wo = dy.shape[1], dy.shape[2]
    for r in prange(n_img * h):  # one (image, input row) per iteration
        n, iy = r // h, r % h
        for ix in range(wd):
            for ch in range(c):
                dx[n, iy, ix, ch] = 0.0
            for a in range(kh):
                t = iy + pt - a
                if t < 0 or t % sh != 0 or t // sh >= ho:
                    continue
                oy = t // sh
                for b in range(kw):
                    u = ix + pl - b
                    if u < 0 or u % sw != 0 or u // sw >= wo:
                        continue
                    ox = u // sw
                    if mult == 1:
                        for ch in range(c):
                            dx[n, iy, ix, ch] += dy[n, oy, ox, ch] * w[a, b, ch, 0]
                    else:
                        for ch in range(c):
                            acc = np.float32(0.0)
                            for m in range(mult):
                                acc += dy[n, oy, ox, ch * mult + m] * w[a, b, ch, m]
                            dx[n, iy, ix, ch] += acc


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _depthwise_grad_weight(x, dy, sh, sw, pt, pl, parts):
    """Fill parts (N, KH, KW, C, M): image n's share of the kernel gradient in parts[n].

    One share per image lets the images run in parallel without two threads adding
    into the same numbers; the caller sums the shares."""
    n_img, h, wd, c = x.shape
    kh, kw, mult = parts.shape[1], parts.shape[2], parts.shape[4]
    ho, wo = dy.shape[1], dy.shape[2]
    for n in prange(n_img):
        parts[n] = 0.0
        for oy in range(ho):
            for a in range(kh):
                iy = oy * sh + a - pt
                if iy < 0 or iy >= h:
                    continue
                for ox in range(wo):
                    for b in range(kw):
                        ix = ox * sw + b - pl
                        if ix < 0 or ix >= wd:
                            continue
                        if mult == 1:
                            for ch in range(c):
                                parts[n, a, b, ch, 0] += x[n, iy, ix, ch] * dy[n, oy, ox, ch]
                        else:
                            for ch in range(c):
                                v = x[n, iy, ix, ch]
                                for m in range(mult):
                                    parts[n, a, b, ch, m] += v * dy[n, oy, ox, ch * mult + m]


def check_arrays(who, x_shape, w_shape, strides, pads, dy_shape=None, **arrays):
    """The one gate in front of the compiled kernels, which do not check bounds.

    Every size they index by is derived here from ``x_shape``, ``w_shape`` and the
    geometry, which must agree with each other and with ``dy_shape`` (when given);
    every array they read (``arrays``, by name) must be float32. Otherwise a
    ValueError names the call, the problem and the shapes."""
    problem = None
    if len(x_shape) != 4 or len(w_shape) != 4:
        problem = "input and depthwise kernel must be 4-D (N, H, W, C) and (KH, KW, C, M)"
    elif x_shape[3] != w_shape[2]:
        problem = f"input has {x_shape[3]} channels, the depthwise kernel expects {w_shape[2]}"
    elif min(w_shape) < 1:
        problem = "the depthwise kernel has an empty axis"
    elif min(strides) < 1 or min(min(p) for p in pads) < 0:
        problem = f"strides must be >= 1 and paddings >= 0, got strides {tuple(strides)} pads {tuple(pads)}"
    elif min(_output_shape(x_shape, w_shape, strides, pads)[1:3]) < 1:
        problem = "the kernel is larger than the padded input"
    elif dy_shape is not None and tuple(dy_shape) != _output_shape(x_shape, w_shape, strides, pads):
        problem = f"output gradient has shape {tuple(dy_shape)}, the depthwise convolution gives " \
                  f"{_output_shape(x_shape, w_shape, strides, pads)}"
    else:
        wrong = [f"{name} {a.dtype}" for name, a in arrays.items() if a.dtype != np.float32]
        if wrong:
            problem = "the compiled kernel takes float32 arrays, got " + ", ".join(wrong)
    if problem:
        raise ValueError(f"{who}: {problem} (input {tuple(x_shape)}, depthwise kernel {tuple(w_shape)})")


@threads_by_size
def depthwise_conv2d_fast(x, w, strides, pads):
    """As depthwise_conv2d_reference (float32; non-contiguous views are copied first)."""
    check_arrays("depthwise_conv2d", x.shape, w.shape, strides, pads, x=x, w=w)
    y = memory.empty(_output_shape(x.shape, w.shape, strides, pads))
    _depthwise_forward(np.ascontiguousarray(x), np.ascontiguousarray(w), strides[0], strides[1],
                       pads[0][0], pads[1][0], y)
    return y


@threads_by_size
def depthwise_conv2d_grad_input_fast(dy, w, x_shape, strides, pads):
    """As depthwise_conv2d_grad_input_reference."""
    x_shape = tuple(x_shape)
    check_arrays("depthwise_conv2d_grad_input", x_shape, w.shape, strides, pads, dy.shape, dy=dy, w=w)
    dx = memory.empty(x_shape)
    _depthwise_grad_input(np.ascontiguousarray(dy), np.ascontiguousarray(w), strides[0], strides[1],
                          pads[0][0], pads[1][0], dx)
    return dx


@threads_by_size
def depthwise_conv2d_grad_weight_fast(x, dy, w_shape, strides, pads):
    """As depthwise_conv2d_grad_weight_reference."""
    w_shape = tuple(w_shape)
    check_arrays("depthwise_conv2d_grad_weight", x.shape, w_shape, strides, pads, dy.shape, x=x, dy=dy)
    parts = np.empty((x.shape[0],) + w_shape, np.float32)
    _depthwise_grad_weight(np.ascontiguousarray(x), np.ascontiguousarray(dy), strides[0], strides[1],
                           pads[0][0], pads[1][0], parts)
    return parts.sum(axis=0)
