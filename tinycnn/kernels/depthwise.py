"""Depthwise convolution kernels: forward, input gradient and kernel gradient.

Shapes (NHWC, as Keras):

* ``x``  (N, H, W, C)  input
* ``w``  (KH, KW, C, M) depthwise kernel; M is the depth multiplier
* ``y``  (N, HO, WO, C*M) output, HO and WO as for a convolution (``conv.py``)
* ``pads`` ``((top, bottom), (left, right))`` zeros added around ``x``
* ``strides`` ``(SH, SW)``

A depthwise convolution filters every input channel on its own: channel c is
correlated with its own M kernels and never mixed with the other channels. In
Keras' order, output channel ``c*M + m`` is

    y[n, i, j, c*M + m] = sum_{a, b} xp[n, i*SH + a, j*SW + b, c] * w[a, b, c, m]

where ``xp`` is the padded input. Set beside ``conv.py``'s sum, the sum over input
channels is gone. So a kernel tap (a, b) is no longer a matrix product but an
elementwise one: the tap's strided slice of ``xp``, (N, HO, WO, C), times ``w[a, b]``,
(C, M), broadcast over the M kernels of each channel. The reference kernels do one
such product per tap. The gradients follow from the same picture:

* input gradient: each tap's slice received ``sum_m dy[..., c, m] * w[a, b, c, m]``;
  add it back where the slice came from;
* kernel gradient: ``dw[a, b, c, m] = sum_{n, i, j} slice[n, i, j, c] * dy[n, i, j, c, m]``.

(``dy[..., c, m]`` is ``dy`` viewed as (N, HO, WO, C, M): channel c*M + m.)

Without the channel sum there is no matrix product to hand to BLAS: each output
value costs only KH*KW multiply-adds (a full convolution costs C times as many) and
the kernel is bound by memory, not arithmetic. The fast kernels are therefore plain
loops, one pixel at a time with the channels innermost, where NHWC keeps them
contiguous in x, w and y so that the compiler vectorises that loop.

A depthwise convolution followed by a 1x1 convolution, which does mix the channels,
is ``SeparableConv2D`` (MobileNet, Xception): most of a full convolution's reach for a
fraction of its cost. The 1x1 convolution is ``conv.py``'s.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import memory
from ..backend import PARALLEL, dispatch, threads_by_size
from .shapes import conv_output_size, tap_slice


def _output_shape(x_shape, w_shape, strides, pads):
    n, h, w, c = x_shape
    kh, kw, _, m = w_shape
    ho = conv_output_size(h, kh, strides[0], *pads[0])
    wo = conv_output_size(w, kw, strides[1], *pads[1])
    return n, ho, wo, c * m


# -- readable reference: one broadcast product per kernel tap ----------------------------------
def depthwise_conv2d_reference(x, w, strides, pads):
    """y (N, HO, WO, C*M) = depthwise conv of x (N, H, W, C) with w (KH, KW, C, M)."""
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    n, ho, wo, cm = _output_shape(x.shape, w.shape, strides, pads)
    y = np.zeros((n, ho, wo) + w.shape[2:], np.result_type(x, w))  # (.., C, M): channel c*M + m
    for a in range(w.shape[0]):
        for b in range(w.shape[1]):
            y += xp[tap_slice(a, b, ho, wo, strides)][..., None] * w[a, b]
    return y.reshape(n, ho, wo, cm)


def depthwise_conv2d_grad_input_reference(dy, w, x_shape, strides, pads):
    """dx (N, H, W, C) from dy (N, HO, WO, C*M): each tap hands its slice
    ``sum_m dy[..., c, m] * w[a, b, c, m]``."""
    n, h, wd, c = x_shape
    (pt, pb), (pl, pr) = pads
    ho, wo = dy.shape[1:3]
    dy5 = dy.reshape(n, ho, wo, c, w.shape[3])
    dxp = np.zeros((n, h + pt + pb, wd + pl + pr, c), np.result_type(dy, w))
    for a in range(w.shape[0]):
        for b in range(w.shape[1]):
            dxp[tap_slice(a, b, ho, wo, strides)] += (dy5 * w[a, b]).sum(axis=-1)
    return dxp[:, pt:pt + h, pl:pl + wd, :]


def depthwise_conv2d_grad_weight_reference(x, dy, w_shape, strides, pads):
    """dw (KH, KW, C, M): for each tap, its input slice times dy, summed over n, i, j."""
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw, c, m = w_shape
    n, ho, wo = dy.shape[:3]
    dy5 = dy.reshape(n, ho, wo, c, m)
    dw = np.empty(w_shape, np.result_type(x, dy))
    for a in range(kh):
        for b in range(kw):
            dw[a, b] = np.einsum("nijc,nijcm->cm", xp[tap_slice(a, b, ho, wo, strides)], dy5)
    return dw


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


depthwise_conv2d = dispatch(depthwise_conv2d_reference, depthwise_conv2d_fast)
depthwise_conv2d_grad_input = dispatch(depthwise_conv2d_grad_input_reference, depthwise_conv2d_grad_input_fast)
depthwise_conv2d_grad_weight = dispatch(depthwise_conv2d_grad_weight_reference, depthwise_conv2d_grad_weight_fast)
