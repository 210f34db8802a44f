"""Inference with BatchNormalization folded into the Conv2D or Dense layer before it.

In inference BatchNorm is a fixed affine map per channel,
``bn(z) = (z - moving_mean) * s + beta`` with ``s = gamma / sqrt(moving_variance + eps)``.
When ``z = x * w + b`` (a convolution or a matrix product, s acting on the output
channels, the last axis of w), the two collapse into one layer:

    bn(x * w + b) = x * (w s) + ((b - moving_mean) s + beta)

so the normalisation costs nothing, and a ReLU right after it is fused into the
layer's epilogue too (Conv2D -> BatchNormalization -> ReLU, as in ``resfer``, becomes
one convolution). The folded weights are computed at every call from the current
weights, so they are never stale whatever changed them (training, ``set_weights``,
``load_weights``, direct edits). That costs one pass over the kernel, which the
activation pass it saves repays only in batches: it is done from ``FOLD_MIN_BATCH``
images up, and only without gradient recording (``no_grad``, as ``predict`` runs),
since the folded weights are not the parameters a gradient would be asked for.
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor, is_grad_enabled
from .base import to_input_tensor
from .convolution import Conv2D
from .core import Activation, Dense
from .normalization import BatchNormalization

FOLD_MIN_BATCH = 8


def folded_weights(layer, bn):
    """(kernel, bias) of ``layer`` (Conv2D or Dense) with ``bn`` applied to its outputs."""
    s = bn.gamma.data / np.sqrt(bn.moving_variance.data + np.float32(bn.epsilon))
    kernel = layer.kernel.data * s                       # scales the last (output) axis
    bias = (layer.bias.data - bn.moving_mean.data) * s + bn.beta.data
    return kernel.astype(np.float32), bias.astype(np.float32)


def _foldable(layer, following):
    return (isinstance(layer, (Conv2D, Dense)) and layer.activation == "linear" and layer.built
            and isinstance(following, BatchNormalization) and following.built)


def _is_relu(layer):
    return isinstance(layer, Activation) and layer.activation == "relu"


def run_layers(layers, x, training):
    """Apply ``layers`` in order to x; in inference without gradients and from
    ``FOLD_MIN_BATCH`` images up, each Conv2D/Dense followed by BatchNormalization (and
    a ReLU) runs as one folded layer."""
    fold = not training and not is_grad_enabled() and np.shape(x)[0] >= FOLD_MIN_BATCH
    i = 0
    while i < len(layers):
        layer = layers[i]
        if fold and i + 1 < len(layers) and _foldable(layer, layers[i + 1]):
            relu = i + 2 < len(layers) and _is_relu(layers[i + 2])
            x = to_input_tensor(x, layer._label())
            layer.ensure_built(x.shape[1:])
            kernel, bias = folded_weights(layer, layers[i + 1])
            x = layer.apply_weights(x, Tensor(kernel), Tensor(bias), relu)
            i += 3 if relu else 2
        else:
            x = layer(x, training=training)
            i += 1
    return x
