"""Dropout kernels: the mask applied forward, and again to the gradient.

Shapes: ``x``, ``u`` and ``keep`` all (any shape, the same). ``u`` holds uniform draws
in [0, 1), one per value (the layer draws them from its seeded generator); a value is
kept where ``u >= rate`` and then scaled by 1 / (1 - rate) ("inverted" dropout, as
Keras: the expected output equals the input, so inference is the identity):

    y = x / (1 - rate)  where u >= rate,  else 0
    dL/dx = g / (1 - rate)  where kept,  else 0

The mask is saved as booleans (one byte a value, not a float32 mask's four). The fast
kernels do each formula in one pass over the arrays, on all cores.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import memory
from ..backend import PARALLEL, dispatch, threads_by_size


def dropout_reference(x, u, rate):
    """(y, keep): x with the values where u < rate zeroed and the rest scaled by 1/(1-rate)."""
    keep = u >= rate
    scale = x.dtype.type(1.0 / (1.0 - rate))
    return np.where(keep, x * scale, x.dtype.type(0)), keep


def dropout_grad_reference(g, keep, rate):
    """dL/dx from g = dL/dy: the same mask and scale."""
    scale = g.dtype.type(1.0 / (1.0 - rate))
    return np.where(keep, g * scale, g.dtype.type(0))


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _dropout(x1, u1, rate, scale, y1, keep1):
    for i in prange(x1.size):
        k = u1[i] >= rate
        keep1[i] = k
        y1[i] = x1[i] * scale if k else 0.0


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _masked_scale(g1, keep1, scale, out1):
    for i in prange(g1.size):
        out1[i] = g1[i] * scale if keep1[i] else 0.0


def _check(who, a, b):
    if a.shape != b.shape:
        raise ValueError(f"{who}: the values {a.shape} and the mask {b.shape} must have the same shape")


@threads_by_size
def dropout_fast(x, u, rate):
    _check("dropout", x, u)
    x, u = np.ascontiguousarray(x), np.ascontiguousarray(u, dtype=np.float32)
    y, keep = memory.empty_like(x), memory.empty(x.shape, np.bool_)
    _dropout(x.reshape(-1), u.reshape(-1), np.float32(rate), x.dtype.type(1.0 / (1.0 - rate)),
             y.reshape(-1), keep.reshape(-1))
    return y, keep


@threads_by_size
def dropout_grad_fast(g, keep, rate):
    _check("dropout_grad", g, keep)
    g, keep = np.ascontiguousarray(g), np.ascontiguousarray(keep)
    out = memory.empty_like(g)
    _masked_scale(g.reshape(-1), keep.reshape(-1), g.dtype.type(1.0 / (1.0 - rate)), out.reshape(-1))
    return out


dropout = dispatch(dropout_reference, dropout_fast)
dropout_grad = dispatch(dropout_grad_reference, dropout_grad_fast)
