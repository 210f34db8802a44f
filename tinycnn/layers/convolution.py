"""Conv2D, Conv2DTranspose, DepthwiseConv2D and SeparableConv2D: the Functions (math)
and the Layers (bookkeeping).

Conv2D and Conv2DTranspose are each other's gradient. Conv2D's forward is ``conv2d``;
its input gradient is a transposed convolution, ``conv2d_grad_input``.
Conv2DTranspose's forward *is* ``conv2d_grad_input`` (the input gradient of a strided
convolution "upsamples"), and its input gradient is ``conv2d``. The weight gradient of
both is ``conv2d_grad_weight`` with the roles of input and output swapped. Writing
each kernel once and using it both ways means the tests of one layer test the other too.

DepthwiseConv2D filters each channel on its own (``kernels/depthwise.py``).
SeparableConv2D is a depthwise convolution followed by a 1x1 convolution, which mixes
the channels: it applies DepthwiseConv2DFn, then Conv2DFn, rather than a kernel of its own.
"""
from __future__ import annotations

import numpy as np

from .. import initializers
from ..kernels import conv as K
from ..kernels import depthwise as D
from ..kernels.shapes import conv_output_size, paddings
from ..tensor import Function, Tensor, is_grad_enabled
from .base import Layer, check_padding, pair

_ACTIVATIONS = (None, "linear", "relu")


def _check_activation(activation, layer):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{layer}: activation must be one of {_ACTIVATIONS}, got {activation!r}")
    return activation == "relu"


class Conv2DFn(Function):
    """y = relu?(conv(x, w) + b).

    x (N, H, W, C), w (KH, KW, C, O), b (O,) -> y (N, HO, WO, O). The bias and ReLU are
    fused into one pass over the output (``K.bias_relu``) and ReLU's mask comes from the
    saved output (y > 0): backward masks the gradient and sums the bias gradient in one
    pass (``K.bias_relu_grad``). A layer without bias (``use_bias=False``, b the constant
    zero) and without ReLU passes ``epilogue=False``, and both passes are skipped: they
    would add zeros and copy the gradient (4% of a resdeep training step).
    Saved: x, w, strides, pads, ``cols`` (what the fast kernel kept for the weight
    gradient, or None: ``K.conv2d``), y, relu and epilogue.
    """

    @staticmethod
    def forward(ctx, x, w, b, strides, pads, relu, epilogue=True):
        if is_grad_enabled():   # the fast kernel may keep its columns for the weight gradient
            y, cols = K.conv2d(x, w, strides, pads, keep_cols=True)
        else:                   # no backward will come: nothing to keep
            y, cols = K.conv2d(x, w, strides, pads), None
        if epilogue:
            K.bias_relu(y, b, relu)
        ctx.save(x=x, w=w, strides=strides, pads=pads, cols=cols, y=y, relu=relu, epilogue=epilogue)
        return y

    @staticmethod
    def backward(ctx, g):
        db = None
        if ctx.epilogue:
            g, db = K.bias_relu_grad(g, ctx.y, ctx.relu)
        need_x, need_w, need_b = ctx.needs_input_grad
        dx, dw = K.conv2d_grads(ctx.x, g, ctx.w, ctx.strides, ctx.pads, need_x, need_w, cols=ctx.cols)
        return dx, dw, db if need_b else None


class Conv2DTransposeFn(Function):
    """y = relu?(conv_transpose(x, w) + b).

    x (N, H, W, C), w (KH, KW, O, C) as Keras stores it, b (O,) -> y (N, HO, WO, O),
    where (N, HO, WO, O) is ``out_shape``. Computed as the input gradient of a
    convolution from (N, HO, WO, O) to (N, H, W, C) with the same kernel; its input
    gradient is that convolution itself, of g, and its weight gradient correlates the
    same windows of g with x (``K.conv2d_transpose``; a 3x3 kernel with strides 2 goes
    by the sub-pixel Winograd of ``kernels/subpixel.py``).
    Saved: x, w, strides, pads, y, relu.
    """

    @staticmethod
    def forward(ctx, x, w, b, strides, pads, out_shape, relu):
        y = K.conv2d_transpose(x, w, b, out_shape, strides, pads, relu)
        ctx.save(x=x, w=w, strides=strides, pads=pads, y=y, relu=relu)
        return y

    @staticmethod
    def backward(ctx, g):
        g, db = K.bias_relu_grad(g, ctx.y, ctx.relu)
        need_x, need_w, need_b = ctx.needs_input_grad
        dx, dw = K.conv2d_transpose_grads(ctx.x, g, ctx.w, ctx.strides, ctx.pads, need_x, need_w)
        return dx, dw, db if need_b else None


class DepthwiseConv2DFn(Function):
    """y = relu?(depthwise_conv(x, w) + b).

    x (N, H, W, C), w (KH, KW, C, M), b (C*M,) -> y (N, HO, WO, C*M): each input channel
    c filtered by its own M kernels, output channel c*M + m from w[..., c, m] (Keras'
    order). Bias and ReLU are fused into one pass each way, as in Conv2DFn.
    Saved: x, w, strides, pads, y, relu.
    """

    @staticmethod
    def forward(ctx, x, w, b, strides, pads, relu):
        y = D.depthwise_conv2d(x, w, strides, pads)
        K.bias_relu(y, b, relu)
        ctx.save(x=x, w=w, strides=strides, pads=pads, y=y, relu=relu)
        return y

    @staticmethod
    def backward(ctx, g):
        g, db = K.bias_relu_grad(g, ctx.y, ctx.relu)
        need_x, need_w, need_b = ctx.needs_input_grad
        dx = D.depthwise_conv2d_grad_input(g, ctx.w, ctx.x.shape, ctx.strides, ctx.pads) if need_x else None
        dw = D.depthwise_conv2d_grad_weight(ctx.x, g, ctx.w.shape, ctx.strides, ctx.pads) if need_w else None
        return dx, dw, db if need_b else None


def _window_output_hw(layer, input_shape):
    """(HO, WO) of ``layer``'s kernel (``kernel_size``, ``strides``, ``padding``) sliding
    over an input (H, W, C); a ValueError naming the layer when the kernel does not fit."""
    h, w, _ = input_shape
    (pt, pb), (pl, pr) = layer._pads(h, w)
    ho = conv_output_size(h, layer.kernel_size[0], layer.strides[0], pt, pb)
    wo = conv_output_size(w, layer.kernel_size[1], layer.strides[1], pl, pr)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"{layer._label()}: kernel {layer.kernel_size} with padding '{layer.padding}' is larger "
            f"than the input {(h, w)} (input shape {tuple(input_shape)})")
    return ho, wo


class _ConvBase(Layer):
    input_rank = 3

    def __init__(self, filters, kernel_size, strides=1, padding="valid", activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 name=None):
        super().__init__(name)
        label = f"{type(self).__name__}"
        if int(filters) < 1:
            raise ValueError(f"{label}: filters must be positive, got {filters!r}")
        self.filters = int(filters)
        self.kernel_size = pair(kernel_size, "kernel_size", label)
        self.strides = pair(strides, "strides", label)
        self.padding = check_padding(padding, label)
        self.relu = _check_activation(activation, label)
        self.activation = activation or "linear"
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def _add_weights(self, kernel_shape, rng):
        self.kernel = self.add_weight("kernel", self.kernel_initializer(kernel_shape, rng))
        if self.use_bias:
            self.bias = self.add_weight("bias", self.bias_initializer((self.filters,), rng))
        else:  # a constant zero: not a weight, so parameter counts match Keras
            self.bias = Tensor(np.zeros(self.filters, np.float32))


class Conv2D(_ConvBase):
    """2-D convolution, NHWC, as ``keras.layers.Conv2D``.

    Args:
        filters: output channels O.
        kernel_size: int or (KH, KW).
        strides: int or (SH, SW).
        padding: ``"valid"`` (no padding) or ``"same"`` (output ``ceil(H / SH)``; Keras'
            asymmetric split, the extra row/column at the bottom/right).
        activation: ``None`` or ``"relu"`` (fused into the kernel).
        use_bias: add a learned bias per output channel.

    Input (N, H, W, C) -> output (N, HO, WO, O). Weights: ``kernel`` (KH, KW, C, O),
    ``bias`` (O,).
    """

    def _pads(self, h, w):
        return paddings(self.padding, (h, w), self.kernel_size, self.strides)

    def compute_output_shape(self, input_shape):
        return _window_output_hw(self, input_shape) + (self.filters,)

    def build(self, input_shape, rng):
        self.compute_output_shape(input_shape)  # raises if the kernel does not fit
        self._add_weights(self.kernel_size + (input_shape[-1], self.filters), rng)

    def call(self, x, training):
        return self.apply_weights(x, self.kernel, self.bias, self.relu)

    def apply_weights(self, x, kernel, bias, relu):
        """This layer's convolution with the given weights (``tinycnn.plan.fold`` passes
        BatchNorm-folded ones)."""
        self.compute_output_shape(x.shape[1:])
        pads = self._pads(x.shape[1], x.shape[2])
        epilogue = relu or bias is not self.bias or self.use_bias  # not for this layer's constant zero alone
        return Conv2DFn.apply(x, kernel, bias, strides=self.strides, pads=pads, relu=relu, epilogue=epilogue)

    def multiply_adds(self, input_shape):
        ho, wo, o = self.compute_output_shape(input_shape)
        return ho * wo * o * self.kernel_size[0] * self.kernel_size[1] * input_shape[-1]


class Conv2DTranspose(_ConvBase):
    """Transposed 2-D convolution ("deconvolution"), as ``keras.layers.Conv2DTranspose``.

    Output size per axis, as Keras computes it: ``H * SH`` for ``same``;
    ``H * SH + max(KH - SH, 0)`` for ``valid``.

    Input (N, H, W, C) -> output (N, HO, WO, O). Weights: ``kernel`` (KH, KW, O, C)
    (note: output channels before input, as in Keras), ``bias`` (O,).
    """

    def _out_size(self, size, axis):
        k, s = self.kernel_size[axis], self.strides[axis]
        return size * s if self.padding == "same" else size * s + max(k - s, 0)

    def _pads(self, ho, wo):
        # the padding of the forward convolution whose gradient this layer computes
        return paddings(self.padding, (ho, wo), self.kernel_size, self.strides)

    def compute_output_shape(self, input_shape):
        h, w, _ = input_shape
        return self._out_size(h, 0), self._out_size(w, 1), self.filters

    def build(self, input_shape, rng):
        self._add_weights(self.kernel_size + (self.filters, input_shape[-1]), rng)

    def call(self, x, training):
        n, h, w, _ = x.shape
        ho, wo, o = self.compute_output_shape((h, w, x.shape[3]))
        return Conv2DTransposeFn.apply(x, self.kernel, self.bias, strides=self.strides,
                                       pads=self._pads(ho, wo), out_shape=(n, ho, wo, o),
                                       relu=self.relu)

    def multiply_adds(self, input_shape):
        h, w, c = input_shape
        return h * w * c * self.kernel_size[0] * self.kernel_size[1] * self.filters


class _DepthwiseBase(Layer):
    """What DepthwiseConv2D and SeparableConv2D share: the depthwise kernel (KH, KW, C, M),
    its geometry, and the depthwise pass."""

    input_rank = 3

    def __init__(self, kernel_size, strides, padding, depth_multiplier, activation, use_bias,
                 depthwise_initializer, bias_initializer, name):
        super().__init__(name)
        label = f"{type(self).__name__}"
        self.kernel_size = pair(kernel_size, "kernel_size", label)
        self.strides = pair(strides, "strides", label)
        self.padding = check_padding(padding, label)
        self.depth_multiplier = _positive_int(depth_multiplier, "depth_multiplier", label)
        self.relu = _check_activation(activation, label)
        self.activation = activation or "linear"
        self.use_bias = use_bias
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def _pads(self, h, w):
        return paddings(self.padding, (h, w), self.kernel_size, self.strides)

    def _add_depthwise_kernel(self, channels, rng):
        shape = self.kernel_size + (channels, self.depth_multiplier)
        self.depthwise_kernel = self.add_weight("depthwise_kernel", self.depthwise_initializer(shape, rng))

    def _add_bias(self, size, rng):
        if self.use_bias:
            self.bias = self.add_weight("bias", self.bias_initializer((size,), rng))
        else:  # a constant zero: not a weight, so parameter counts match Keras
            self.bias = Tensor(np.zeros(size, np.float32))

    def _depthwise(self, x, bias, relu):
        """relu?(depthwise_conv(x) + bias): x (N, H, W, C) -> (N, HO, WO, C*M)."""
        _window_output_hw(self, x.shape[1:])  # raises if the kernel does not fit
        pads = self._pads(x.shape[1], x.shape[2])
        return DepthwiseConv2DFn.apply(x, self.depthwise_kernel, bias, strides=self.strides, pads=pads,
                                       relu=relu)

    def _depthwise_multiply_adds(self, input_shape):
        ho, wo = _window_output_hw(self, input_shape)
        return ho * wo * input_shape[-1] * self.depth_multiplier * self.kernel_size[0] * self.kernel_size[1]


def _positive_int(v, what, layer):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{layer}: {what} must be a positive int, got {v!r}")
    return int(v)


class DepthwiseConv2D(_DepthwiseBase):
    """Depthwise 2-D convolution, NHWC, as ``keras.layers.DepthwiseConv2D``.

    Each input channel is filtered on its own by ``depth_multiplier`` (M) kernels; the
    channels are never mixed. Output channel c*M + m comes from input channel c and
    kernel ``depthwise_kernel[..., c, m]``.

    Args:
        kernel_size: int or (KH, KW).
        strides: int or (SH, SW).
        padding: ``"valid"`` or ``"same"`` (Keras' asymmetric split, as Conv2D).
        depth_multiplier: M, output channels per input channel.
        activation: ``None`` or ``"relu"`` (fused into the kernel).
        use_bias: add a learned bias per output channel.

    Input (N, H, W, C) -> output (N, HO, WO, C*M). Weights: ``depthwise_kernel``
    (KH, KW, C, M), ``bias`` (C*M,).
    """

    def __init__(self, kernel_size, strides=1, padding="valid", depth_multiplier=1, activation=None,
                 use_bias=True, depthwise_initializer="glorot_uniform", bias_initializer="zeros", name=None):
        super().__init__(kernel_size, strides, padding, depth_multiplier, activation, use_bias,
                         depthwise_initializer, bias_initializer, name)

    def compute_output_shape(self, input_shape):
        return _window_output_hw(self, input_shape) + (input_shape[-1] * self.depth_multiplier,)

    def build(self, input_shape, rng):
        self.compute_output_shape(input_shape)  # raises if the kernel does not fit
        self._add_depthwise_kernel(input_shape[-1], rng)
        self._add_bias(input_shape[-1] * self.depth_multiplier, rng)

    def call(self, x, training):
        return self._depthwise(x, self.bias, self.relu)

    def multiply_adds(self, input_shape):
        return self._depthwise_multiply_adds(input_shape)


class SeparableConv2D(_DepthwiseBase):
    """Depthwise-separable 2-D convolution, as ``keras.layers.SeparableConv2D``.

    A DepthwiseConv2D without bias or activation (``strides`` and ``padding`` apply
    here), then a 1x1 Conv2D to ``filters`` channels with the bias and activation.
    For C -> O channels and a KxK kernel it costs K*K*C*M + C*M*O multiply-adds per
    pixel where Conv2D costs K*K*C*O.

    Args: as DepthwiseConv2D, and ``filters`` (O), the output channels.

    Input (N, H, W, C) -> output (N, HO, WO, O). Weights: ``depthwise_kernel``
    (KH, KW, C, M), ``pointwise_kernel`` (1, 1, C*M, O), ``bias`` (O,).
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", depth_multiplier=1, activation=None,
                 use_bias=True, depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None):
        super().__init__(kernel_size, strides, padding, depth_multiplier, activation, use_bias,
                         depthwise_initializer, bias_initializer, name)
        self.filters = _positive_int(filters, "filters", type(self).__name__)
        self.pointwise_initializer = initializers.get(pointwise_initializer)

    def compute_output_shape(self, input_shape):
        return _window_output_hw(self, input_shape) + (self.filters,)

    def build(self, input_shape, rng):
        self.compute_output_shape(input_shape)  # raises if the kernel does not fit
        self._add_depthwise_kernel(input_shape[-1], rng)
        middle = input_shape[-1] * self.depth_multiplier
        self.pointwise_kernel = self.add_weight("pointwise_kernel",
                                                self.pointwise_initializer((1, 1, middle, self.filters), rng))
        self._add_bias(self.filters, rng)
        self._no_depthwise_bias = Tensor(np.zeros(middle, np.float32))  # Keras' depthwise step has none

    def call(self, x, training):
        z = self._depthwise(x, self._no_depthwise_bias, relu=False)
        return Conv2DFn.apply(z, self.pointwise_kernel, self.bias, strides=(1, 1), pads=((0, 0), (0, 0)),
                              relu=self.relu)

    def multiply_adds(self, input_shape):
        ho, wo, o = self.compute_output_shape(input_shape)
        return self._depthwise_multiply_adds(input_shape) + ho * wo * input_shape[-1] * self.depth_multiplier * o
