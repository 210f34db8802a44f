"""The fast versions of dropout.py's functions, with the same signatures; read dropout.py first.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import memory
from ..backend import PARALLEL, threads_by_size


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
