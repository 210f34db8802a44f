"""Pooling kernels: max pooling, and global average pooling at the end of this file.

Shapes: ``x`` (N, H, W, C) -> ``y`` (N, HO, WO, C), with ``argmax`` (N, HO, WO, C) the
index ``a * PW + b`` of the window tap that won. Backward routes each output gradient
to that one input position and nowhere else: the max is locally the identity on the
winner and constant in the others. Padding (Keras ``same``) is filled with -inf so it
never wins. On a tie the first tap in row-major order wins, as in ``np.argmax``.
"""
from __future__ import annotations

import numpy as np

from ..backend import dispatch
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


# -- global average pooling: (N, H, W, C) -> (N, C) -------------------------------------------------
def global_average_pool_reference(x):
    """y (N, C) = the mean of x (N, H, W, C) over height and width."""
    return x.mean(axis=(1, 2), dtype=np.float32)


def global_average_pool_grad_reference(dy, x_shape):
    """dx (N, H, W, C): every position of a channel gets an equal share, dy / (H * W)."""
    share = dy / np.float32(x_shape[1] * x_shape[2])
    return np.broadcast_to(share[:, None, None, :], x_shape).astype(np.float32, order="C")


# -- the fast versions (``pool_fast.py``), bound to the names the layers call --------------------
from .pool_fast import (  # noqa: E402
    global_average_pool_fast, global_average_pool_grad_fast, maxpool_fast, maxpool_grad_fast)

maxpool = dispatch(maxpool_reference, maxpool_fast)
maxpool_grad = dispatch(maxpool_grad_reference, maxpool_grad_fast)
global_average_pool = dispatch(global_average_pool_reference, global_average_pool_fast)
global_average_pool_grad = dispatch(global_average_pool_grad_reference, global_average_pool_grad_fast)
