"""Inference with BatchNormalization folded into the Conv2D or Dense layer before it.

In inference BatchNorm is a fixed affine map per channel,
``bn(z) = (z - moving_mean) * s + beta`` with ``s = gamma / sqrt(moving_variance + eps)``.
When ``z = x * w + b`` (a convolution or a matrix product, s acting on the output
channels, the last axis of w), the two collapse into one layer:

    bn(x * w + b) = x * (w s) + ((b - moving_mean) s + beta)

so the normalisation costs nothing, and a ReLU right after it is fused into the
layer's epilogue too (Conv2D -> BatchNormalization -> ReLU, as in ``resfer``, becomes
one convolution). When the ReLU comes first (Conv2D(activation="relu") ->
BatchNormalization, as in ``vggbn`` and ``gap4``) the map cannot move inside the
convolution, but it can join its epilogue: ``max(z + b, 0) * s + t`` in the same pass
over the output that adds the bias; that costs nothing extra, so it is done at any
batch size. The folded weights are computed at every call from the current
weights, so they are never stale whatever changed them (training, ``set_weights``,
``load_weights``, direct edits). That costs one pass over the kernel, which the
activation pass it saves repays only in batches: it is done from ``FOLD_MIN_BATCH``
images up, and only without gradient recording (``no_grad``, as ``predict`` runs),
since the folded weights are not the parameters a gradient would be asked for.

``inference_copy(model)`` does the folding once, for a model that will only predict (a
webcam, a server): a copy with every Conv2D/Dense -> BatchNormalization (-> ReLU) made
one layer holding the folded weights, and its Dropout layers left out. It is a snapshot:
it does not follow later changes to the model's weights. At one face per call, where
folding at every call would cost more than it saves, it measured a seventh faster on
``resfer`` and ``resdeep`` (bench/README.md, "Measurements behind the kernels' choices").

One fusion holds in training too: a Conv2D followed by a MaxPooling2D runs as one
``Conv2DMaxPoolFn``, which pools the convolution's output before adding the bias and
applying the ReLU (they commute with max), so those two passes, and their gradients,
run over the pooled map. And in training a BatchNormalization followed by a ReLU runs
as one ``BatchNormReLUFn``, and a Conv2D(activation="relu") followed by a
BatchNormalization as one ``Conv2DBatchNormFn``: the ReLU, its mask and the bias ride in
BatchNorm's own passes.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..kernels import conv as K
from ..kernels import winograd_fast
from ..layers import Activation, BatchNormalization, Conv2D, Conv2DTranspose, Dense, Dropout, MaxPooling2D, Residual
from ..layers.base import to_input_tensor
from ..tensor import Tensor, is_grad_enabled, relu
from .fused import batchnorm_then_relu, conv_then_batchnorm, conv_then_pool

FOLD_MIN_BATCH = 8


def folded_weights(layer, bn):
    """(kernel, bias) of ``layer`` (Conv2D or Dense) with ``bn`` applied to its outputs."""
    s, t = _batchnorm_affine(bn)
    kernel = layer.kernel.data * s                       # scales the last (output) axis
    bias = layer.bias.data * s + t                       # = (b - mean) s + beta
    return kernel.astype(np.float32), bias.astype(np.float32)


def _batchnorm_affine(bn):
    """(s, t) of the inference BatchNorm bn(z) = z * s + t, each (C,); in an inference
    copy, the pair it computed once (``frozen_affine``)."""
    frozen = getattr(bn, "frozen_affine", None)
    if frozen is not None:
        return frozen
    s = bn.gamma.data / np.sqrt(bn.moving_variance.data + np.float32(bn.epsilon))
    return s.astype(np.float32), (bn.beta.data - bn.moving_mean.data * s).astype(np.float32)


def _foldable(layer, following):
    return (isinstance(layer, (Conv2D, Dense)) and layer.activation == "linear" and layer.built
            and isinstance(following, BatchNormalization) and following.built)


def _relu_conv_then_batchnorm(layer, following):
    return (type(layer) is Conv2D and layer.activation == "relu" and layer.built
            and isinstance(following, BatchNormalization) and following.built)


def conv_relu_batchnorm(layer, bn, x):
    """bn(relu(conv(x) + b)) for a built Conv2D(activation='relu') and inference ``bn``,
    with the ReLU and the normalisation in the convolution's epilogue pass."""
    layer.compute_output_shape(x.shape[1:])
    pads = layer._pads(x.shape[1], x.shape[2])
    y = K.conv2d(x.data, layer.kernel.data, layer.strides, pads)
    s, t = _batchnorm_affine(bn)
    return Tensor(K.bias_relu_affine(y, layer.bias.data, s, t))


def _conv_then_maxpool(layer, following):
    return type(layer) is Conv2D and layer.built and isinstance(following, MaxPooling2D)


def _is_relu(layer):
    return isinstance(layer, Activation) and layer.activation == "relu"


def run_layers(layers, x, training):
    """Apply ``layers`` in order to x. In inference without gradients, each Conv2D(relu)
    followed by BatchNormalization runs as one convolution with the normalisation in its
    epilogue (free at any batch size), and, from ``FOLD_MIN_BATCH`` images up, each
    Conv2D/Dense followed by BatchNormalization (and a ReLU) as one folded layer. In
    training, each BatchNormalization followed by a ReLU runs as one BatchNormReLUFn, and
    each Conv2D(relu) followed by BatchNormalization as one Conv2DBatchNormFn.
    Always, each Conv2D followed by MaxPooling2D runs as one Conv2DMaxPoolFn (pool, then
    bias and ReLU). A batch of one image in inference runs on one Numba thread."""
    with backend.one_blas_thread():   # once for the call, not once per layer
        return _run_layers_on_one_blas_thread(layers, x, training)


def _run_layers_on_one_blas_thread(layers, x, training):
    inference = not training and not is_grad_enabled()
    if inference and np.shape(x)[0] == 1:
        # One image: nearly every kernel is below ``backend.SMALL_WORK`` and would run on
        # one Numba thread anyway; setting that once for the call spares switching around
        # each kernel. The exceptions, updown's and gap4's first layers, lose their second
        # thread; each model measured faster or level (bench/README.md, "Measurements
        # behind the kernels' choices").
        with backend.one_numba_thread():
            return _run_layers(layers, x, training, inference, False)
    return _run_layers(layers, x, training, inference, inference and np.shape(x)[0] >= FOLD_MIN_BATCH)


def _run_layers(layers, x, training, inference, fold):
    i = 0
    while i < len(layers):
        layer, following = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        if fold and _foldable(layer, following):
            then_relu = i + 2 < len(layers) and _is_relu(layers[i + 2])
            x = to_input_tensor(x, layer._label())
            layer.ensure_built(x.shape[1:])
            kernel, bias = folded_weights(layer, following)
            x = layer.apply_weights(x, Tensor(kernel), Tensor(bias), then_relu)
            i += 3 if then_relu else 2
        elif inference and _relu_conv_then_batchnorm(layer, following):
            x = to_input_tensor(x, layer._label())
            layer.ensure_built(x.shape[1:])
            x = conv_relu_batchnorm(layer, following, x)
            i += 2
        elif training and type(layer) is Conv2D and layer.relu and isinstance(following, BatchNormalization):
            x = to_input_tensor(x, layer._label())
            layer.ensure_built(x.shape[1:])
            following.ensure_built(layer.compute_output_shape(x.shape[1:]))
            x = conv_then_batchnorm(layer, following, x)
            i += 2
        elif training and isinstance(layer, BatchNormalization) and _is_relu(following):
            x = to_input_tensor(x, layer._label())
            layer.ensure_built(x.shape[1:])
            following.ensure_built(x.shape[1:])
            x = batchnorm_then_relu(layer, x)
            i += 2
        elif _conv_then_maxpool(layer, following):
            x = to_input_tensor(x, layer._label())
            layer.ensure_built(x.shape[1:])
            following.ensure_built(layer.compute_output_shape(x.shape[1:]))
            x = conv_then_pool(layer, following, x)
            i += 2
        elif isinstance(layer, Residual):   # its block and shortcut run with the same fusions
            x = to_input_tensor(x, layer._label())
            layer.ensure_built(x.shape[1:])
            y = _run_layers(layer.block, x, training, inference, fold) + _run_layers(layer.shortcut, x, training,
                                                                                     inference, fold)
            x = relu(y) if layer.activation == "relu" else y
            i += 1
        else:
            x = layer(x, training=training)
            i += 1
    return x


def inference_copy(model):
    """A copy of the built Sequential ``model`` for inference only, with the same outputs
    (to float32 rounding): each Conv2D or Dense followed by BatchNormalization becomes
    one layer with the folded kernel and bias (and the ReLU after them as its
    activation), and Dropout layers, the identity in inference, are left out; inside
    Residual blocks too. Each BatchNormalization left (one after a ReLU, which runs in
    the convolution's epilogue) has its affine map computed once, and each Conv2D and
    Conv2DTranspose kernel is frozen (``winograd_fast.freeze_kernel``: read-only, its
    Winograd transform kept, so that Winograd pays from one image on). The copy is a
    snapshot: its weights are its own, not trainable, and later changes to ``model`` (or
    to the copy's own arrays) do not reach it. Attributes set on ``model`` (such as
    ``preprocessing``) are copied with it."""
    import copy
    if not getattr(model, "layers", None) or not all(layer.built for layer in model.layers):
        raise ValueError(f"inference_copy: model '{getattr(model, 'name', model)}' must be built (call it once, "
                         f"or build it with an input shape) before it is folded")
    cached = getattr(model, "_inference", None)
    model._inference = None      # a copy does not carry the model's own cached copy
    try:
        frozen = copy.deepcopy(model)
    finally:
        model._inference = cached
    frozen.is_inference_copy = True
    frozen.layers = _folded_chain(frozen.layers)
    for layer in frozen.all_layers():
        for w in layer.weights.values():
            w.requires_grad = False
        if isinstance(layer, BatchNormalization):  # what is left of it (after a ReLU) maps the same every call
            layer.frozen_affine = _batchnorm_affine(layer)
        if isinstance(layer, (Conv2D, Conv2DTranspose)):  # its Winograd transform, once (conv.choose_algorithm)
            winograd_fast.freeze_kernel(layer.kernel.data)
    return frozen


def _folded_chain(layers):
    """``layers`` without Dropout, each foldable Conv2D/Dense -> BatchNormalization (-> ReLU)
    made one layer (the objects are changed in place: they belong to a copy)."""
    layers = [layer for layer in layers if not isinstance(layer, Dropout)]
    out, i = [], 0
    while i < len(layers):
        layer, following = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, Residual):
            layer.block, layer.shortcut = _folded_chain(layer.block), _folded_chain(layer.shortcut)
        if _foldable(layer, following):
            relu = i + 2 < len(layers) and _is_relu(layers[i + 2])
            kernel, bias = folded_weights(layer, following)
            layer.weights = {"kernel": Tensor(kernel, name="kernel"), "bias": Tensor(bias, name="bias")}
            layer.kernel, layer.bias = layer.weights["kernel"], layer.weights["bias"]
            layer.use_bias, layer.activation = True, "relu" if relu else "linear"
            if isinstance(layer, Conv2D):
                layer.relu = relu
            i += 3 if relu else 2
        else:
            i += 1
        out.append(layer)
    return out
