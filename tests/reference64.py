"""Float64 NumPy re-implementations of every layer: the specification the gradient
checks differentiate numerically.

Written from the definitions (and Keras' documented shape rules), not from tinycnn's
kernels: convolution as a sum over sliding windows, transposed convolution as each
input pixel scattering a copy of the kernel, max-pooling as a max over windows.
Functions with kinks report their distance to them (``record_kink_margin``).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from helpers import record_kink_margin


def same_pads(size, kernel, stride):
    """TensorFlow's SAME: output ceil(size / stride); the odd pixel of padding goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pads(h, w, kernel, strides, padding):
    if padding == "valid":
        return (0, 0), (0, 0)
    return same_pads(h, kernel[0], strides[0]), same_pads(w, kernel[1], strides[1])


def relu(z):
    # an exact zero is structural (a transposed-conv gap no input reaches, without bias):
    # its derivative is zero on both sides, so it is no kink to steer clear of
    record_kink_margin(np.abs(z[z != 0]))
    return np.maximum(z, 0.0)


def _windows(xp, kernel, strides):
    """(N, HO, WO, C, KH, KW): the window of xp under each output pixel."""
    win = sliding_window_view(xp, kernel, axis=(1, 2))
    return win[:, ::strides[0], ::strides[1]]


def conv2d(x, kernel, bias=None, strides=(1, 1), padding="valid", activation=None):
    """y[n,i,j,o] = sum_{a,b,c} xpad[n, i*sh+a, j*sw+b, c] * kernel[a,b,c,o] + bias[o]."""
    kh, kw = kernel.shape[:2]
    pads = _pads(x.shape[1], x.shape[2], (kh, kw), strides, padding)
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    y = np.einsum("nijcab,abco->nijo", _windows(xp, (kh, kw), strides), kernel)
    if bias is not None:
        y = y + bias
    return relu(y) if activation == "relu" else y


def conv2d_transpose(x, kernel, bias=None, strides=(1, 1), padding="valid", activation=None):
    """Each input pixel (i, j) adds ``x[n,i,j,:] . kernel`` (a KH x KW patch) to the output
    at (i*sh, j*sw); the canvas is then cropped to Keras' output size.

    kernel (KH, KW, O, C). Output size per axis: ``H*S`` (same), ``H*S + max(K-S, 0)``
    (valid); ``same`` crops ``max(K-S, 0) // 2`` from the top/left.
    """
    n, h, w, _ = x.shape
    kh, kw, o, _ = kernel.shape
    sh, sw = strides
    out_h = h * sh + (max(kh - sh, 0) if padding == "valid" else 0)
    out_w = w * sw + (max(kw - sw, 0) if padding == "valid" else 0)
    top = max(kh - sh, 0) // 2 if padding == "same" else 0
    left = max(kw - sw, 0) // 2 if padding == "same" else 0
    canvas = np.zeros((n, max((h - 1) * sh + kh, top + out_h), max((w - 1) * sw + kw, left + out_w), o))
    for a in range(kh):
        for b in range(kw):
            canvas[:, a:a + sh * (h - 1) + 1:sh, b:b + sw * (w - 1) + 1:sw] += x @ kernel[a, b].T
    y = canvas[:, top:top + out_h, left:left + out_w]
    if bias is not None:
        y = y + bias
    return relu(y) if activation == "relu" else y


def maxpool2d(x, pool=(2, 2), strides=None, padding="valid"):
    strides = strides or pool
    pads = _pads(x.shape[1], x.shape[2], pool, strides, padding)
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-np.inf)
    win = _windows(xp, pool, strides)
    flat = np.sort(win.reshape(win.shape[:4] + (-1,)), axis=-1)
    # distance to a tie: the gap between the two largest values of each window
    gap = flat[..., -1] - flat[..., -2] if flat.shape[-1] > 1 else np.full(flat.shape[:4], np.inf)
    record_kink_margin(gap[np.isfinite(gap)])
    return flat[..., -1]


def batchnorm_train(x, gamma, beta, epsilon=1e-3):
    """Normalise with the batch's mean and biased variance over all axes but the last."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    var = ((x - mean) ** 2).mean(axis=axes)
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


def batchnorm_batch_stats(x):
    axes = tuple(range(x.ndim - 1))
    return x.mean(axis=axes), x.var(axis=axes)


def batchnorm_infer(x, gamma, beta, moving_mean, moving_variance, epsilon=1e-3):
    return (x - moving_mean) / np.sqrt(moving_variance + epsilon) * gamma + beta


def dense(x, kernel, bias=None, activation=None):
    y = x @ kernel
    if bias is not None:
        y = y + bias
    if activation == "relu":
        return relu(y)
    if activation == "softmax":
        return softmax(y)
    return y


def global_average_pool(x):
    return x.mean(axis=(1, 2))


def flatten(x):
    return x.reshape(len(x), -1)


def log_softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def softmax(z, axis=-1):
    return np.exp(log_softmax(z, axis))


def softmax_cross_entropy(logits, labels, class_weights=None, label_smoothing=0.0):
    """mean_n  w[label_n] * -sum_k t_nk log softmax(logits)_nk,  t = (1-eps) onehot + eps/K."""
    n, k = logits.shape
    targets = np.full((n, k), label_smoothing / k)
    targets[np.arange(n), labels] += 1.0 - label_smoothing
    w = np.ones(n) if class_weights is None else np.asarray(class_weights, np.float64)[labels]
    return -(w * (targets * log_softmax(logits)).sum(axis=1)).sum() / n
