"""MaxPool2D and GlobalAveragePooling2D."""
from __future__ import annotations

from ..kernels import pool as K
from ..kernels.shapes import conv_output_size, paddings
from ..tensor import Function
from .base import Layer, check_padding, pair


class MaxPool2DFn(Function):
    """y = max over each (PH, PW) window of x.

    x (N, H, W, C) -> y (N, HO, WO, C). Saved: argmax (N, HO, WO, C), the winning tap
    of each window, so backward routes each gradient to one input without searching.
    """

    @staticmethod
    def forward(ctx, x, pool, strides, pads, out_hw):
        y, argmax = K.maxpool(x, pool, strides, pads, out_hw)
        ctx.save(argmax=argmax, x_shape=x.shape, pool=pool, strides=strides, pads=pads)
        return y

    @staticmethod
    def backward(ctx, g):
        return (K.maxpool_grad(g, ctx.argmax, ctx.x_shape, ctx.pool, ctx.strides, ctx.pads),)


class MaxPooling2D(Layer):
    """Max pooling, as ``keras.layers.MaxPooling2D`` (``strides`` defaults to ``pool_size``).

    Input (N, H, W, C) -> output (N, HO, WO, C).
    """

    input_rank = 3

    def __init__(self, pool_size=2, strides=None, padding="valid", name=None):
        super().__init__(name)
        self.pool_size = pair(pool_size, "pool_size", "MaxPool2D")
        self.strides = pair(strides, "strides", "MaxPool2D") if strides is not None else self.pool_size
        self.padding = check_padding(padding, "MaxPool2D")

    def _pads(self, h, w):
        return paddings(self.padding, (h, w), self.pool_size, self.strides)

    def compute_output_shape(self, input_shape):
        h, w, c = input_shape
        (pt, pb), (pl, pr) = self._pads(h, w)
        ho = conv_output_size(h, self.pool_size[0], self.strides[0], pt, pb)
        wo = conv_output_size(w, self.pool_size[1], self.strides[1], pl, pr)
        if ho < 1 or wo < 1:
            raise ValueError(f"{self._label()}: pool {self.pool_size} is larger than the input "
                             f"{(h, w)} (input shape {tuple(input_shape)})")
        return ho, wo, c

    def build(self, input_shape, rng):
        self.compute_output_shape(input_shape)

    def call(self, x, training):
        ho, wo, _ = self.compute_output_shape(x.shape[1:])
        return MaxPool2DFn.apply(x, pool=self.pool_size, strides=self.strides,
                                 pads=self._pads(*x.shape[1:3]), out_hw=(ho, wo))


MaxPool2D = MaxPooling2D  # Keras' other spelling


class GlobalAveragePooling2DFn(Function):
    """y = the mean of x over height and width: x (N, H, W, C) -> y (N, C).
    Backward spreads each gradient evenly over its channel's H * W positions.
    Saved: x_shape."""

    @staticmethod
    def forward(ctx, x):
        ctx.save(x_shape=x.shape)
        return K.global_average_pool(x)

    @staticmethod
    def backward(ctx, g):
        return (K.global_average_pool_grad(g, ctx.x_shape),)


class GlobalAveragePooling2D(Layer):
    """Mean over height and width: (N, H, W, C) -> (N, C)."""

    input_rank = 3

    def compute_output_shape(self, input_shape):
        return (input_shape[-1],)

    def call(self, x, training):
        return GlobalAveragePooling2DFn.apply(x)

