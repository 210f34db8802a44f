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

from ..backend import dispatch
from .shapes import depthwise_conv2d_output_shape, tap_slice


# -- readable reference: one broadcast product per kernel tap ----------------------------------
def depthwise_conv2d_reference(x, w, strides, pads):
    """y (N, HO, WO, C*M) = depthwise conv of x (N, H, W, C) with w (KH, KW, C, M)."""
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    n, ho, wo, cm = depthwise_conv2d_output_shape(x.shape, w.shape, strides, pads)
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


# -- the fast versions (``depthwise_fast.py``), bound to the names the layers call --------------------
from .depthwise_fast import (  # noqa: E402
    depthwise_conv2d_fast, depthwise_conv2d_grad_input_fast, depthwise_conv2d_grad_weight_fast)

depthwise_conv2d = dispatch(depthwise_conv2d_reference, depthwise_conv2d_fast)
depthwise_conv2d_grad_input = dispatch(depthwise_conv2d_grad_input_reference, depthwise_conv2d_grad_input_fast)
depthwise_conv2d_grad_weight = dispatch(depthwise_conv2d_grad_weight_reference, depthwise_conv2d_grad_weight_fast)
