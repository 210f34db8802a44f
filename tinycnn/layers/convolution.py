"""Conv2D and Conv2DTranspose: the Functions (math) and the Layers (bookkeeping).

The two are each other's gradient. Conv2D's forward is ``conv2d``; its input gradient
is a transposed convolution, ``conv2d_grad_input``. Conv2DTranspose's forward *is*
``conv2d_grad_input`` (the input gradient of a strided convolution "upsamples"), and
its input gradient is ``conv2d``. The weight gradient of both is ``conv2d_grad_weight``
with the roles of input and output swapped. Writing each kernel once and using it
both ways means the tests of one layer test the other too.
"""
from __future__ import annotations

import numpy as np

from .. import initializers
from ..kernels import conv as K
from ..kernels.shapes import conv_output_size, paddings, same_padding
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
    pass (``K.bias_relu_grad``). Saved: ``conv``, what the convolution's backward needs
    (``K.conv2d_forward``: x, w, strides, pads, and whatever the chosen kernel keeps for
    itself), y and relu.
    """

    @staticmethod
    def forward(ctx, x, w, b, strides, pads, relu):
        if is_grad_enabled():
            y, conv = K.conv2d_forward(x, w, strides, pads)
        else:  # no backward will come: nothing to keep
            y, conv = K.conv2d(x, w, strides, pads), None
        K.bias_relu(y, b, relu)
        ctx.save(conv=conv, y=y, relu=relu)
        return y

    @staticmethod
    def backward(ctx, g):
        g, db = K.bias_relu_grad(g, ctx.y, ctx.relu)
        need_x, need_w, need_b = ctx.needs_input_grad
        dx, dw = K.conv2d_backward(ctx.conv, g, need_x, need_w)
        return dx, dw, db if need_b else None


class Conv2DTransposeFn(Function):
    """y = relu?(conv_transpose(x, w) + b).

    x (N, H, W, C), w (KH, KW, O, C) as Keras stores it, b (O,) -> y (N, HO, WO, O),
    where (N, HO, WO, O) is ``out_shape``. Computed as the input gradient of a
    convolution from (N, HO, WO, O) to (N, H, W, C) with the same kernel.
    Saved: x, w, strides, pads, y, relu.
    """

    @staticmethod
    def forward(ctx, x, w, b, strides, pads, out_shape, relu):
        y = K.conv2d_grad_input(x, w, out_shape, strides, pads)
        K.bias_relu(y, b, relu)
        ctx.save(x=x, w=w, strides=strides, pads=pads, y=y, relu=relu)
        return y

    @staticmethod
    def backward(ctx, g):
        g, db = K.bias_relu_grad(g, ctx.y, ctx.relu)
        need_x, need_w, need_b = ctx.needs_input_grad
        dx = K.conv2d(g, ctx.w, ctx.strides, ctx.pads) if need_x else None
        # the "input" of the underlying convolution is g, its "output gradient" is x
        dw = K.conv2d_grad_weight(g, ctx.x, ctx.w.shape, ctx.strides, ctx.pads) if need_w else None
        return dx, dw, db if need_b else None


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
        h, w, _ = input_shape
        (pt, pb), (pl, pr) = self._pads(h, w)
        ho = conv_output_size(h, self.kernel_size[0], self.strides[0], pt, pb)
        wo = conv_output_size(w, self.kernel_size[1], self.strides[1], pl, pr)
        if ho < 1 or wo < 1:
            raise ValueError(
                f"{self._label()}: kernel {self.kernel_size} with padding '{self.padding}' is larger "
                f"than the input {(h, w)} (input shape {tuple(input_shape)})")
        return ho, wo, self.filters

    def build(self, input_shape, rng):
        self.compute_output_shape(input_shape)  # raises if the kernel does not fit
        self._add_weights(self.kernel_size + (input_shape[-1], self.filters), rng)

    def call(self, x, training):
        return self.apply_weights(x, self.kernel, self.bias, self.relu)

    def apply_weights(self, x, kernel, bias, relu):
        """This layer's convolution with the given weights (``tinycnn.layers.fold`` passes
        BatchNorm-folded ones)."""
        self.compute_output_shape(x.shape[1:])
        pads = self._pads(x.shape[1], x.shape[2])
        return Conv2DFn.apply(x, kernel, bias, strides=self.strides, pads=pads, relu=relu)

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
