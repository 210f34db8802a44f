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

from ..backend import dispatch


def batchnorm_forward_reference(x2, gamma, beta, eps):
    """y2 (M, C), mean (C,), var (C,), inv_std (C,) for x2 (M, C)."""
    mean = x2.mean(axis=0)
    var = x2.var(axis=0)
    inv_std = (1.0 / np.sqrt(var + eps)).astype(np.float32)
    xhat = (x2 - mean) * inv_std
    return xhat * gamma + beta, mean, var, inv_std


def batchnorm_backward_reference(g2, x2, mean, gamma, inv_std):
    """dx2 (M, C), dgamma (C,), dbeta (C,) from g2 = dL/dy2 (M, C)."""
    m = g2.shape[0]
    xhat = (x2 - mean) * inv_std
    dbeta = g2.sum(axis=0)
    dgamma = (g2 * xhat).sum(axis=0)
    dx2 = (gamma * inv_std) * (g2 - dbeta / m - xhat * (dgamma / m))
    return dx2.astype(np.float32), dgamma, dbeta


# -- BatchNormalization followed by a ReLU, in training ------------------------------------------
# Every conv-BN-ReLU block of resfer and its kin. The ReLU alone costs a pass each way over
# the same (M, C) array; here it rides in BatchNorm's own passes: its forward takes the max
# as it writes y, and its mask (y > 0, from the saved output) is applied to g as BatchNorm's
# two backward passes read it. Same formulas as above, with g replaced by
# ``g_relu = g where y > 0, else 0``.

def batchnorm_relu_forward_reference(x2, gamma, beta, eps):
    """y2 = max(batchnorm(x2), 0) (M, C), and mean, var, inv_std (C,) as batchnorm_forward."""
    y2, mean, var, inv_std = batchnorm_forward_reference(x2, gamma, beta, eps)
    return np.maximum(y2, np.float32(0)), mean, var, inv_std


def batchnorm_relu_backward_reference(g2, y2, x2, mean, gamma, inv_std):
    """dx2 (M, C), dgamma, dbeta (C,) from g2 = dL/dy2 and the forward's output y2."""
    return batchnorm_backward_reference(np.where(y2 > 0, g2, np.float32(0)), x2, mean, gamma, inv_std)


# -- a convolution's bias and ReLU, then BatchNormalization, in training ----------------------------
# vggbn's and gap4's Conv2D(activation="relu") -> BatchNormalization. The convolution's
# epilogue (bias, ReLU) and its gradient (mask, bias sum) each cost a pass over the
# (M, C) map; here they ride in BatchNorm's passes: the forward's first pass adds the
# bias, clips, keeps y = relu(z + b) in z's place and sums it for the statistics; the
# backward's second pass masks BatchNorm's input gradient by y > 0 as it writes it, and
# sums it for the bias gradient.

def bias_relu_batchnorm_forward_reference(z2, b, gamma, beta, eps):
    """out2 = batchnorm(y2) with y2 = relu(z2 + b) (M, C); y2 is z2, overwritten in place.
    Returns out2, y2, and mean, var, inv_std (C,) of y2 as batchnorm_forward."""
    z2 += b
    y2 = np.maximum(z2, np.float32(0), out=z2)
    out2, mean, var, inv_std = batchnorm_forward_reference(y2, gamma, beta, eps)
    return out2, y2, mean, var, inv_std


def bias_relu_batchnorm_backward_reference(g2, y2, mean, gamma, inv_std):
    """dz2 (M, C), db, dgamma, dbeta (C,) from g2 = dL/dout2: BatchNorm's backward, then
    the ReLU's mask (y2 > 0) and the bias gradient (dz2 summed over rows)."""
    dy2, dgamma, dbeta = batchnorm_backward_reference(g2, y2, mean, gamma, inv_std)
    dz2 = np.where(y2 > 0, dy2, np.float32(0))
    return dz2, dz2.sum(axis=0), dgamma, dbeta


def batchnorm_inference_reference(x2, mean, inv_std, gamma, beta):
    """Inference: y2 = (x2 - mean) * inv_std * gamma + beta with the moving statistics."""
    return ((x2 - mean) * (inv_std * gamma) + beta).astype(np.float32)


# -- the fast versions (``norm_fast.py``), bound to the names the layers call --------------------
from .norm_fast import (  # noqa: E402
    batchnorm_backward_fast, batchnorm_forward_fast, batchnorm_inference_fast, batchnorm_relu_backward_fast,
    batchnorm_relu_forward_fast, bias_relu_batchnorm_backward_fast, bias_relu_batchnorm_forward_fast)

batchnorm_forward = dispatch(batchnorm_forward_reference, batchnorm_forward_fast)
batchnorm_backward = dispatch(batchnorm_backward_reference, batchnorm_backward_fast)
batchnorm_inference = dispatch(batchnorm_inference_reference, batchnorm_inference_fast)
batchnorm_relu_forward = dispatch(batchnorm_relu_forward_reference, batchnorm_relu_forward_fast)
batchnorm_relu_backward = dispatch(batchnorm_relu_backward_reference, batchnorm_relu_backward_fast)
bias_relu_batchnorm_forward = dispatch(bias_relu_batchnorm_forward_reference, bias_relu_batchnorm_forward_fast)
bias_relu_batchnorm_backward = dispatch(bias_relu_batchnorm_backward_reference, bias_relu_batchnorm_backward_fast)
