"""The fast versions of norm.py's functions, with the same signatures; read norm.py first.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import memory
from ..backend import PARALLEL, threads_by_size


# The fast kernels make as few passes over the (large) M x C arrays as they can: they
# keep x rather than xhat (recomputing xhat costs nothing next to reading it) and
# fuse each formula into one loop. Sums are accumulated in float64, per block of rows
# so that the two cores share the work.
_BLOCKS = 64


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _two_sums(u2, v2, shift, scale):
    """Per channel, sum(u) and sum(u * (v - shift) * scale), in float64, block by block.

    The batch mean and mean square are ``_two_sums(x, x, 0, 1) / m``; BatchNorm's two
    backward sums, sum(g) and sum(g * xhat), are ``_two_sums(g, x, mean, inv_std)``."""
    m, c = u2.shape
    s1 = np.zeros((_BLOCKS, c))
    s2 = np.zeros((_BLOCKS, c))
    rows = (m + _BLOCKS - 1) // _BLOCKS
    for k in prange(_BLOCKS):
        for i in range(k * rows, min(m, (k + 1) * rows)):
            for j in range(c):
                u = np.float64(u2[i, j])  # products in float64: x*x in float32 would lose var when |mean| >> std
                s1[k, j] += u
                s2[k, j] += u * ((np.float64(v2[i, j]) - shift[j]) * scale[j])
    return s1.sum(axis=0), s2.sum(axis=0)


def _moments(x2):
    c = x2.shape[1]
    return _mean_var(*_two_sums(x2, x2, np.zeros(c), np.ones(c)), x2.shape[0])


def _mean_var(total, squares, m):
    """Mean and (biased) variance per channel from the float64 sums of x and x*x over m rows."""
    mean = total / m
    return mean, np.maximum(squares / m - mean * mean, 0.0)


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _normalise(x2, mean, scale, beta, y2):
    m, c = x2.shape
    for i in prange(m):
        for j in range(c):
            y2[i, j] = (x2[i, j] - mean[j]) * scale[j] + beta[j]


def _grad_sums(g2, x2, mean, inv_std):
    """sum(g) and sum(g * xhat) per channel."""
    return _two_sums(g2, x2, mean.astype(np.float64), inv_std.astype(np.float64))


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _grad_input(g2, x2, mean, inv_std, scale, dbeta_m, dgamma_m, dx2):
    m, c = g2.shape
    for i in prange(m):
        for j in range(c):
            xhat = (x2[i, j] - mean[j]) * inv_std[j]
            dx2[i, j] = scale[j] * (g2[i, j] - dbeta_m[j] - xhat * dgamma_m[j])


def _normalised(normalise, x2, mean, var, gamma, beta, eps):
    """(y2, mean, var, inv_std) in float32: ``normalise`` (``_normalise`` or, with the ReLU,
    ``_normalise_relu``) applied to x2 with the batch's statistics."""
    inv_std = (1.0 / np.sqrt(var + eps)).astype(np.float32)
    mean, var = mean.astype(np.float32), var.astype(np.float32)
    y2 = memory.empty_like(x2)
    normalise(x2, mean, (gamma * inv_std).astype(np.float32), beta, y2)
    return y2, mean, var, inv_std


@threads_by_size
def batchnorm_forward_fast(x2, gamma, beta, eps):
    x2 = np.ascontiguousarray(x2)
    return _normalised(_normalise, x2, *_moments(x2), gamma, beta, eps)


@threads_by_size
def batchnorm_backward_fast(g2, x2, mean, gamma, inv_std):
    g2 = np.ascontiguousarray(g2)
    m = g2.shape[0]
    dbeta, dgamma = _grad_sums(g2, x2, mean, inv_std)
    dx2 = memory.empty_like(g2)
    _grad_input(g2, x2, mean, inv_std, (gamma * inv_std).astype(np.float32),
                (dbeta / m).astype(np.float32), (dgamma / m).astype(np.float32), dx2)
    return dx2, dgamma.astype(np.float32), dbeta.astype(np.float32)


# -- BatchNormalization followed by a ReLU, in training ------------------------------------------


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _normalise_relu(x2, mean, scale, beta, y2):
    m, c = x2.shape
    for i in prange(m):
        for j in range(c):
            y2[i, j] = max((x2[i, j] - mean[j]) * scale[j] + beta[j], 0.0)


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _masked_grad_sums(g2, y2, x2, mean, inv_std):
    """Per channel, sum(g_relu) and sum(g_relu * xhat), in float64, block by block (as _two_sums)."""
    m, c = g2.shape
    s1 = np.zeros((_BLOCKS, c))
    s2 = np.zeros((_BLOCKS, c))
    rows = (m + _BLOCKS - 1) // _BLOCKS
    for k in prange(_BLOCKS):
        for i in range(k * rows, min(m, (k + 1) * rows)):
            for j in range(c):
                if y2[i, j] > 0:
                    u = np.float64(g2[i, j])
                    s1[k, j] += u
                    s2[k, j] += u * ((np.float64(x2[i, j]) - mean[j]) * inv_std[j])
    return s1.sum(axis=0), s2.sum(axis=0)


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _masked_grad_input(g2, y2, x2, mean, inv_std, scale, dbeta_m, dgamma_m, dx2):
    m, c = g2.shape
    for i in prange(m):
        for j in range(c):
            g = g2[i, j] if y2[i, j] > 0 else 0.0
            xhat = (x2[i, j] - mean[j]) * inv_std[j]
            dx2[i, j] = scale[j] * (g - dbeta_m[j] - xhat * dgamma_m[j])


@threads_by_size
def batchnorm_relu_forward_fast(x2, gamma, beta, eps):
    x2 = np.ascontiguousarray(x2)
    return _normalised(_normalise_relu, x2, *_moments(x2), gamma, beta, eps)


@threads_by_size
def batchnorm_relu_backward_fast(g2, y2, x2, mean, gamma, inv_std):
    if not (g2.shape == y2.shape == x2.shape):
        raise ValueError(f"batchnorm_relu_backward: gradient {g2.shape}, output {y2.shape} and input {x2.shape} "
                         f"must have the same shape")
    g2, y2, x2 = (np.ascontiguousarray(a) for a in (g2, y2, x2))
    m = g2.shape[0]
    dbeta, dgamma = _masked_grad_sums(g2, y2, x2, mean.astype(np.float64), inv_std.astype(np.float64))
    dx2 = memory.empty_like(g2)
    _masked_grad_input(g2, y2, x2, mean, inv_std, (gamma * inv_std).astype(np.float32),
                       (dbeta / m).astype(np.float32), (dgamma / m).astype(np.float32), dx2)
    return dx2, dgamma.astype(np.float32), dbeta.astype(np.float32)


# -- a convolution's bias and ReLU, then BatchNormalization, in training ----------------------------


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _bias_relu_sums(z2, b):
    """In place z2 = relu(z2 + b); per channel, sum(y) and sum(y * y) in float64 (as _two_sums)."""
    m, c = z2.shape
    s1 = np.zeros((_BLOCKS, c))
    s2 = np.zeros((_BLOCKS, c))
    rows = (m + _BLOCKS - 1) // _BLOCKS
    for k in prange(_BLOCKS):
        for i in range(k * rows, min(m, (k + 1) * rows)):
            for j in range(c):
                v = max(z2[i, j] + b[j], 0.0)
                z2[i, j] = v
                u = np.float64(v)
                s1[k, j] += u
                s2[k, j] += u * u
    return s1.sum(axis=0), s2.sum(axis=0)


@njit(parallel=PARALLEL, cache=True, fastmath=True)
def _grad_input_relu_bias(g2, y2, mean, inv_std, scale, dbeta_m, dgamma_m, dz2):
    """dz2 = BatchNorm's input gradient where y2 > 0, else 0; returns its column sums."""
    m, c = g2.shape
    acc = np.zeros((_BLOCKS, c))
    rows = (m + _BLOCKS - 1) // _BLOCKS
    for k in prange(_BLOCKS):
        for i in range(k * rows, min(m, (k + 1) * rows)):
            for j in range(c):
                v = 0.0
                if y2[i, j] > 0:
                    yhat = (y2[i, j] - mean[j]) * inv_std[j]
                    v = scale[j] * (g2[i, j] - dbeta_m[j] - yhat * dgamma_m[j])
                dz2[i, j] = v
                acc[k, j] += v
    return acc.sum(axis=0)


@threads_by_size
def bias_relu_batchnorm_forward_fast(z2, b, gamma, beta, eps):
    if not z2.flags.c_contiguous or z2.dtype != np.float32:
        raise ValueError(f"bias_relu_batchnorm_forward: z2 must be a C-contiguous float32 array (it is "
                         f"overwritten in place), got {z2.dtype} {z2.shape}")
    mean, var = _mean_var(*_bias_relu_sums(z2, np.asarray(b, np.float32)), z2.shape[0])
    out2, mean, var, inv_std = _normalised(_normalise, z2, mean, var, gamma, beta, eps)
    return out2, z2, mean, var, inv_std


@threads_by_size
def bias_relu_batchnorm_backward_fast(g2, y2, mean, gamma, inv_std):
    if g2.shape != y2.shape:
        raise ValueError(f"bias_relu_batchnorm_backward: gradient {g2.shape} and output {y2.shape} must have "
                         f"the same shape")
    g2, y2 = np.ascontiguousarray(g2), np.ascontiguousarray(y2)
    m = g2.shape[0]
    dbeta, dgamma = _grad_sums(g2, y2, mean, inv_std)
    dz2 = memory.empty_like(g2)
    db = _grad_input_relu_bias(g2, y2, mean, inv_std, (gamma * inv_std).astype(np.float32),
                               (dbeta / m).astype(np.float32), (dgamma / m).astype(np.float32), dz2)
    return dz2, db.astype(np.float32), dgamma.astype(np.float32), dbeta.astype(np.float32)


@threads_by_size
def batchnorm_inference_fast(x2, mean, inv_std, gamma, beta):
    x2 = np.ascontiguousarray(x2)
    y2 = memory.empty_like(x2)
    _normalise(x2, mean, (gamma * inv_std).astype(np.float32), beta, y2)
    return y2
