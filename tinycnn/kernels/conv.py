"""Convolution kernels: forward, input gradient and weight gradient.

Shapes (NHWC, as Keras):

* ``x``  (N, H, W, C)  input
* ``w``  (KH, KW, C, O) kernel
* ``y``  (N, HO, WO, O) output, ``HO = (H + pad_top + pad_bottom - KH) // SH + 1``
* ``pads`` ``((top, bottom), (left, right))`` zeros added around ``x``
* ``strides`` ``(SH, SW)``

The convolution (strictly, cross-correlation, as in every deep-learning library) is

    y[n, i, j, o] = sum_{a, b, c} xp[n, i*SH + a, j*SW + b, c] * w[a, b, c, o]

where ``xp`` is the padded input. Read that sum one kernel tap ``(a, b)`` at a time
and it is a matrix product: the strided slice of ``xp`` seen by that tap, reshaped to
(N*HO*WO, C), times ``w[a, b]`` of shape (C, O). The reference kernels do exactly
that, one ``@`` per tap. The two gradients follow from the same picture:

* input gradient: each tap's slice received ``dy @ w[a, b].T``; add it back where the
  slice came from. This is a *transposed convolution* of ``dy``.
* weight gradient: ``dw[a, b] = slice.T @ dy``, a correlation of ``x`` with ``dy``.

The fast kernels (``conv_fast.py``) gather every tap into one matrix first (*im2col*:
one row per output pixel, one column per (tap, channel)), so that the whole convolution
is a single large matrix product that BLAS runs near the machine's peak. The gather and
its adjoint, *col2im*, are Numba loops, parallel over rows and images; the batch is
processed in chunks so that the column matrix stays small.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import backend
from ..backend import dispatch
from . import pool, subpixel, winograd
from .shapes import conv2d_output_shape, conv_output_size, same_padding, tap_slice  # noqa: F401 (for the notebooks)


# -- readable reference: one matrix product per kernel tap -------------------------------
def conv2d_reference(x, w, strides, pads):
    """y (N, HO, WO, O) = conv of x (N, H, W, C) with w (KH, KW, C, O)."""
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    n, ho, wo, o = conv2d_output_shape(x.shape, w.shape, strides, pads)
    y = np.zeros((n, ho, wo, o), np.result_type(x, w))
    for a in range(w.shape[0]):
        for b in range(w.shape[1]):
            y += xp[tap_slice(a, b, ho, wo, strides)] @ w[a, b]
    return y


def conv2d_grad_input_reference(dy, w, x_shape, strides, pads):
    """dx (N, H, W, C) from dy (N, HO, WO, O): each tap hands its slice dy @ w[a, b].T."""
    n, h, wd, c = x_shape
    (pt, pb), (pl, pr) = pads
    dxp = np.zeros((n, h + pt + pb, wd + pl + pr, c), np.result_type(dy, w))
    ho, wo = dy.shape[1:3]
    for a in range(w.shape[0]):
        for b in range(w.shape[1]):
            dxp[tap_slice(a, b, ho, wo, strides)] += dy @ w[a, b].T
    return dxp[:, pt:pt + h, pl:pl + wd, :]


def conv2d_grad_weight_reference(x, dy, w_shape, strides, pads):
    """dw (KH, KW, C, O): for each tap, its input slice correlated with dy."""
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw, c, o = w_shape
    ho, wo = dy.shape[1:3]
    dy2 = dy.reshape(-1, o)
    dw = np.empty(w_shape, np.result_type(x, dy))
    for a in range(kh):
        for b in range(kw):
            dw[a, b] = xp[tap_slice(a, b, ho, wo, strides)].reshape(-1, c).T @ dy2
    return dw


def conv2d_and_grad_weight_reference(x, w, dy, strides, pads):
    """(conv2d(x, w), conv2d_grad_weight(x, dy)): both read the same windows of x, as
    Conv2DTranspose's backward needs them (its output gradient in the role of x)."""
    return (conv2d_reference(x, w, strides, pads),
            conv2d_grad_weight_reference(x, dy, w.shape, strides, pads))


# -- the epilogue: bias and ReLU, fused into one pass each way ---------------------------------
def bias_relu_reference(y, b, relu):
    """In place: y += b (per channel, last axis), then max(y, 0) if ``relu``."""
    y += b
    if relu:
        np.maximum(y, 0, out=y)
    return y


def bias_relu_affine_reference(y, b, scale, shift):
    """In place: y = max(y + b, 0) * scale + shift, per channel (last axis): a ReLU
    convolution's epilogue with the inference BatchNormalization after it."""
    y += b
    np.maximum(y, 0, out=y)
    y *= scale
    y += shift
    return y


def bias_relu_grad_reference(g, y, relu):
    """(g masked by y > 0 if ``relu``, the bias gradient: g summed over all but channels)."""
    if relu:
        g = np.where(y > 0, g, np.float32(0))  # ReLU passes gradient where it passed input
    return g, g.reshape(-1, g.shape[-1]).sum(axis=0)


# -- a convolution and the max pool after it ------------------------------------------------------
def conv2d_maxpool_reference(x, w, strides, pads, pool_size, pool_strides, pool_pads, pool_hw):
    """(y, argmax): the max pool (``pool.maxpool``'s arguments) of z = conv2d(x, w)."""
    z = conv2d_reference(x, w, strides, pads)
    return pool.maxpool_reference(z, pool_size, pool_strides, pool_pads, pool_hw)


# -- the weight gradient of a convolution whose output was max-pooled ------------------------------
def conv2d_grad_weight_pooled_reference(g, argmax, saved, z_shape, pool_size, pool_strides, pool_pads):
    """dw (KH, KW, C, O) of the convolution that produced ``saved`` (``ConvSaved``), when
    its output z (``z_shape``) went through a max pool (``pool_size``, ``pool_strides``,
    ``pool_pads``): g (the pooled map's gradient) routed back to z by the pool's
    ``argmax``, then the convolution's weight gradient of that."""
    dz = pool.maxpool_grad_reference(g, argmax, z_shape, pool_size, pool_strides, pool_pads)
    return conv2d_grad_weight_reference(saved.x, dz, saved.w.shape, saved.strides, saved.pads)


# -- inference: a ReLU convolution, the BatchNormalization after it and a max pool -------------
def conv2d_affine_maxpool_reference(x, w, b, scale, shift, strides, pads, pool_size, pool_strides, pool_pads,
                                    pool_hw):
    """y (N, PH, PW, O) = maxpool(max(conv(x, w) + b, 0) * scale + shift): in inference, a
    Conv2D(activation="relu"), the BatchNormalization after it (its affine map, ``scale``
    and ``shift`` per channel) and a MaxPooling2D (``pool_size``, ``pool_strides``,
    ``pool_pads``, pooled size ``pool_hw``). The pool comes last: a negative scale reverses
    the order of a window's values, so the affine map cannot move after the max as the
    bias and ReLU can (``conv2d_maxpool``)."""
    y = bias_relu_affine_reference(conv2d_reference(x, w, strides, pads), b, scale, shift)
    return pool.maxpool_reference(y, pool_size, pool_strides, pool_pads, pool_hw)[0]


# -- which algorithm: the direct sum (im2col) or Winograd ------------------------------------------
def _direct(x, w, strides, pads, keep_cols=False):
    """The direct convolution; with ``keep_cols``, (y, cols), cols whatever the fast kernel
    keeps for the weight gradient (``conv_fast.conv2d_keeping_fast``): the reference keeps
    nothing (None)."""
    if backend.get_backend() == "numba":
        return conv2d_keeping_fast(x, w, strides, pads) if keep_cols else conv2d_fast(x, w, strides, pads)
    y = conv2d_reference(x, w, strides, pads)
    return (y, None) if keep_cols else y


def _direct_grad_weight(x, dy, w_shape, strides, pads, cols=None):
    if backend.get_backend() == "numba":
        return conv2d_grad_weight_fast(x, dy, w_shape, strides, pads, cols=cols)
    return conv2d_grad_weight_reference(x, dy, w_shape, strides, pads)


def conv2d(x, w, strides, pads, keep_cols=False):
    """y (N, HO, WO, O) = conv of x (N, H, W, C) with w (KH, KW, C, O), by the chosen
    algorithm and backend. A forward whose backward will come passes ``keep_cols`` and
    gets (y, cols): cols is what the fast im2col kernel kept for ``conv2d_grads`` to reuse,
    None when nothing was (Winograd, the reference, or a wide column matrix)."""
    if choose_algorithm(x.shape, w.shape, strides, pads, winograd_fast.is_frozen(w)) == "winograd":
        y = winograd_conv2d(x, w, strides, pads)
        return (y, None) if keep_cols else y
    return _direct(x, w, strides, pads, keep_cols=keep_cols)


def conv2d_grad_input(dy, w, x_shape, strides, pads):
    """dx (N, H, W, C) from dy (N, HO, WO, O), by the chosen algorithm and backend."""
    if choose_algorithm(x_shape, w.shape, strides, pads) == "winograd":
        return winograd_conv2d_grad_input(dy, w, x_shape, strides, pads)
    return _direct_grad_input(dy, w, x_shape, strides, pads)


def conv2d_grad_weight(x, dy, w_shape, strides, pads, cols=None):
    """dw (KH, KW, C, O), by the chosen algorithm and backend (``cols`` from im2col's forward)."""
    if cols is None and choose_algorithm(x.shape, w_shape, strides, pads) == "winograd":
        return winograd_conv2d_grad_weight(x, dy, w_shape, strides, pads)
    return _direct_grad_weight(x, dy, w_shape, strides, pads, cols=cols)


def conv2d_grads(x, dy, w, strides, pads, need_input=True, need_weight=True, cols=None):
    """(dx or None, dw or None): both gradients of a convolution, each when asked for,
    by the chosen algorithm (Winograd computes them in one pass over dy)."""
    if cols is None and choose_algorithm(x.shape, w.shape, strides, pads) == "winograd":
        return winograd_conv2d_grads(x, dy, w, strides, pads, need_input, need_weight)
    return (conv2d_grad_input(dy, w, x.shape, strides, pads) if need_input else None,
            conv2d_grad_weight(x, dy, w.shape, strides, pads, cols=cols) if need_weight else None)


# -- Conv2DTranspose: the sub-pixel Winograd where it applies (``subpixel.py``) ----------------------
def conv2d_transpose(x, w, b, out_shape, strides, pads, relu):
    """y (N, HO, WO, O) = relu?(conv_transpose(x, w) + b), ``out_shape`` (N, HO, WO, O):
    Conv2DTranspose's forward for x (N, H, W, C) and w (KH, KW, O, C), the input gradient
    of the convolution from ``out_shape`` to x's shape. By the sub-pixel Winograd where
    ``subpixel.chosen``, else as that input gradient and the epilogue after it."""
    if subpixel.chosen(x.shape, w.shape, strides, pads, out_shape):
        return subpixel_conv_transpose(x, w, b, relu)
    return bias_relu(conv2d_grad_input(x, w, out_shape, strides, pads), b, relu)


def conv2d_transpose_grads(x, g, w, strides, pads, need_input=True, need_weight=True):
    """(dx or None, dw or None) of ``conv2d_transpose`` from g (N, HO, WO, O), the
    gradient at its output before the epilogue. The underlying convolution's input is g
    and its output gradient x: dx is that convolution of g, dw correlates the same
    windows of g with x (``conv2d_and_grad_weight`` gathers them once for both)."""
    if subpixel.chosen(x.shape, w.shape, strides, pads, g.shape):
        return subpixel_conv_transpose_grads(x, g, w, need_input, need_weight)
    if need_input and need_weight:
        return conv2d_and_grad_weight(g, w, x, strides, pads)
    return (conv2d(g, w, strides, pads) if need_input else None,
            conv2d_grad_weight(g, x, w.shape, strides, pads) if need_weight else None)


class ConvSaved(NamedTuple):
    """What a convolution's backward needs, as the fused Functions of ``tinycnn.plan``
    save it: its input, kernel and geometry, and ``cols``, what the fast kernel kept for
    the weight gradient (``conv2d(..., keep_cols=True)``; None otherwise)."""
    x: np.ndarray
    w: np.ndarray
    strides: tuple
    pads: tuple
    cols: np.ndarray | None


# -- the fast versions (``conv_fast.py``), and the names that choose between the two ---------------
# The layers call the names bound below: each runs the reference above or its fast
# version, by the backend (``tinycnn.set_backend``).
from .conv_fast import (  # noqa: E402
    bias_relu_affine_fast, bias_relu_fast, bias_relu_grad_fast, choose_algorithm,
    conv2d_affine_maxpool_fast, conv2d_and_grad_weight_fast, conv2d_fast, conv2d_grad_input_fast,
    conv2d_grad_weight_fast, conv2d_grad_weight_pooled_fast, conv2d_keeping_fast, conv2d_maxpool_fast)
from . import winograd_fast  # noqa: E402

winograd_conv2d = dispatch(winograd.winograd_conv2d_reference, winograd_fast.winograd_conv2d_fast)
winograd_conv2d_grad_input = dispatch(winograd.winograd_conv2d_grad_input_reference,
                                      winograd_fast.winograd_conv2d_grad_input_fast)
winograd_conv2d_grad_weight = dispatch(winograd.winograd_conv2d_grad_weight_reference,
                                       winograd_fast.winograd_conv2d_grad_weight_fast)
winograd_conv2d_grads = dispatch(winograd.winograd_conv2d_grads_reference, winograd_fast.winograd_conv2d_grads_fast)

from .subpixel_fast import (  # noqa: E402
    subpixel_conv_transpose_fast, subpixel_conv_transpose_grads_fast, subpixel_conv_transpose_mean_fast)

conv2d_and_grad_weight = dispatch(conv2d_and_grad_weight_reference, conv2d_and_grad_weight_fast)
subpixel_conv_transpose = dispatch(subpixel.subpixel_conv_transpose_reference, subpixel_conv_transpose_fast)
subpixel_conv_transpose_mean = dispatch(subpixel.subpixel_conv_transpose_mean_reference,
                                        subpixel_conv_transpose_mean_fast)
subpixel_conv_transpose_grads = dispatch(subpixel.subpixel_conv_transpose_grads_reference,
                                         subpixel_conv_transpose_grads_fast)
bias_relu = dispatch(bias_relu_reference, bias_relu_fast)
bias_relu_affine = dispatch(bias_relu_affine_reference, bias_relu_affine_fast)
bias_relu_grad = dispatch(bias_relu_grad_reference, bias_relu_grad_fast)
conv2d_maxpool = dispatch(conv2d_maxpool_reference, conv2d_maxpool_fast)
conv2d_grad_weight_pooled = dispatch(conv2d_grad_weight_pooled_reference, conv2d_grad_weight_pooled_fast)
conv2d_affine_maxpool = dispatch(conv2d_affine_maxpool_reference, conv2d_affine_maxpool_fast)

_direct.reference, _direct.fast = conv2d_reference, conv2d_fast
_direct_grad_weight.reference, _direct_grad_weight.fast = conv2d_grad_weight_reference, conv2d_grad_weight_fast
_direct_grad_input = dispatch(conv2d_grad_input_reference, conv2d_grad_input_fast)

# the direct (im2col) kernels themselves, as every dispatched kernel exposes them
for _public, _kernel in ((conv2d, _direct), (conv2d_grad_input, _direct_grad_input),
                         (conv2d_grad_weight, _direct_grad_weight)):
    _public.reference, _public.fast = _kernel.reference, _kernel.fast
