"""Batch-normalisation kernels, on x viewed as (M, C): M = N*H*W rows, one column a channel.

Forward, training mode, per channel:

    mean = x.mean(0);  var = x.var(0)            (biased, as Keras normalises)
    xhat = (x - mean) / sqrt(var + eps);  y = gamma * xhat + beta

Backward (``g`` = dL/dy). Because mean and var depend on every row, each x_i moves
every y_j; collecting those paths gives the compact form

    dgamma = sum(g * xhat);  dbeta = sum(g)
    dx = gamma / sqrt(var + eps) * (g - dbeta / M - xhat * dgamma / M)

Note that ``sum(dx) == 0`` for any ``g``: this is why a gradient check with loss
``sum(y)`` proves nothing for BatchNorm; it must contract y with a random tensor.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..backend import dispatch


def batchnorm_forward_reference(x2, gamma, beta, eps):
    """y2, xhat, mean, var, inv_std for x2 (M, C)."""
    mean = x2.mean(axis=0)
    var = x2.var(axis=0)
    inv_std = (1.0 / np.sqrt(var + eps)).astype(np.float32)
    xhat = (x2 - mean) * inv_std
    return xhat * gamma + beta, xhat, mean, var, inv_std


def batchnorm_backward_reference(g2, xhat, gamma, inv_std):
    """dx2 (M, C), dgamma (C,), dbeta (C,)."""
    m = g2.shape[0]
    dbeta = g2.sum(axis=0)
    dgamma = (g2 * xhat).sum(axis=0)
    dx2 = (gamma * inv_std) * (g2 - dbeta / m - xhat * (dgamma / m))
    return dx2.astype(np.float32), dgamma, dbeta


@njit(parallel=True, cache=True, fastmath=True)
def _column_sums(a, b):
    """Per-column sums of a and of a*b over rows, in float64, split across threads."""
    m, c = a.shape
    blocks = 64
    s_a = np.zeros((blocks, c))
    s_ab = np.zeros((blocks, c))
    rows = (m + blocks - 1) // blocks
    for k in prange(blocks):
        for i in range(k * rows, min(m, (k + 1) * rows)):
            for j in range(c):
                s_a[k, j] += a[i, j]
                s_ab[k, j] += a[i, j] * b[i, j]
    return s_a.sum(axis=0), s_ab.sum(axis=0)


@njit(parallel=True, cache=True, fastmath=True)
def _affine(x2, scale, shift, out):
    m, c = x2.shape
    for i in prange(m):
        for j in range(c):
            out[i, j] = x2[i, j] * scale[j] + shift[j]


def batchnorm_forward_fast(x2, gamma, beta, eps):
    x2 = np.ascontiguousarray(x2)
    m = x2.shape[0]
    s, ss = _column_sums(x2, x2)
    mean = s / m
    var = np.maximum(ss / m - mean * mean, 0.0)  # float64 sums keep this subtraction exact enough
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = np.empty_like(x2)
    _affine(x2, inv_std.astype(np.float32), (-mean * inv_std).astype(np.float32), xhat)
    y2 = np.empty_like(x2)
    _affine(xhat, gamma, beta, y2)
    return (y2, xhat, mean.astype(np.float32), var.astype(np.float32), inv_std.astype(np.float32))


def batchnorm_backward_fast(g2, xhat, gamma, inv_std):
    g2 = np.ascontiguousarray(g2)
    m = g2.shape[0]
    dbeta, dgamma = _column_sums(g2, xhat)
    scale = gamma * inv_std
    dx2 = np.empty_like(g2)
    # dx = scale*g - scale*dbeta/m - xhat*scale*dgamma/m, written as two affine passes
    _affine(g2, scale, (-scale * dbeta / m).astype(np.float32), dx2)
    dx2 -= xhat * (scale * dgamma / m).astype(np.float32)
    return dx2, dgamma.astype(np.float32), dbeta.astype(np.float32)


batchnorm_forward = dispatch(batchnorm_forward_reference, batchnorm_forward_fast)
batchnorm_backward = dispatch(batchnorm_backward_reference, batchnorm_backward_fast)
