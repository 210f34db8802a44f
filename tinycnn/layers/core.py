"""Dense, Flatten, Dropout, Activation, ReLU, Softmax and Residual."""
from __future__ import annotations

import numpy as np

from .. import initializers
from ..backend import matmul
from ..kernels import dropout as KD
from ..tensor import Function, Tensor, relu, softmax
from .base import Layer


class DenseFn(Function):
    """y = relu?(x @ w + b).  x (N, I), w (I, O), b (O,) -> y (N, O). Saved: x, w, y if relu."""

    @staticmethod
    def forward(ctx, x, w, b, relu):
        y = matmul(x, w)       # x @ w, on tinycnn's own threads (backend.matmul)
        y += b
        if relu:
            np.maximum(y, 0, out=y)
        ctx.save(x=x, w=w, y=y if relu else None)
        return y

    @staticmethod
    def backward(ctx, g):
        if ctx.y is not None:
            g = g * (ctx.y > 0)
        need_x, need_w, need_b = ctx.needs_input_grad
        return (matmul(g, ctx.w.T) if need_x else None,
                matmul(ctx.x.T, g) if need_w else None,
                g.sum(axis=0) if need_b else None)


class Dense(Layer):
    """Fully connected layer, as ``keras.layers.Dense``: (N, I) -> (N, units).

    Weights: ``kernel`` (I, units) glorot-uniform, ``bias`` (units,) zeros.
    ``activation``: ``None``, ``"relu"`` (fused) or ``"softmax"``.
    """

    input_rank = 1

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 name=None):
        super().__init__(name)
        if int(units) < 1:
            raise ValueError(f"Dense: units must be positive, got {units!r}")
        if activation not in (None, "linear", "relu", "softmax"):
            raise ValueError(f"Dense: activation must be None, 'relu' or 'softmax', got {activation!r}")
        self.units, self.activation, self.use_bias = int(units), activation or "linear", use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)

    def build(self, input_shape, rng):
        self.kernel = self.add_weight("kernel", self.kernel_initializer((input_shape[0], self.units), rng))
        self.bias = (self.add_weight("bias", np.zeros(self.units, np.float32)) if self.use_bias
                     else Tensor(np.zeros(self.units, np.float32)))  # constant, not a weight

    def compute_output_shape(self, input_shape):
        return (self.units,)

    def call(self, x, training):
        y = self.apply_weights(x, self.kernel, self.bias, self.activation == "relu")
        return softmax(y) if self.activation == "softmax" else y

    def apply_weights(self, x, kernel, bias, relu):
        """x @ kernel + bias (ReLU if ``relu``) with the given weights (``tinycnn.plan.fold``
        passes BatchNorm-folded ones)."""
        return DenseFn.apply(x, kernel, bias, relu=relu)

    def multiply_adds(self, input_shape):
        return input_shape[0] * self.units


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...), in C order (as Keras does for NHWC)."""

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def call(self, x, training):
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # not -1: a batch of 0 has no size to infer


class DropoutFn(Function):
    """y = x / (1 - rate) where u >= rate, else 0 (``kernels/dropout.py``).

    x and u (uniform draws in [0, 1)) of the same shape -> y. Saved: the mask (booleans)
    and the rate; backward applies them to the gradient."""

    @staticmethod
    def forward(ctx, x, u, rate):
        y, keep = KD.dropout(x, u, rate)
        ctx.save(keep=keep, rate=rate)
        return y

    @staticmethod
    def backward(ctx, g):
        return KD.dropout_grad(g, ctx.keep, ctx.rate), None


class Dropout(Layer):
    """Inverted dropout, as ``keras.layers.Dropout``: when training, zero each value with
    probability ``rate`` and scale the rest by 1/(1-rate), so inference is the identity."""

    def __init__(self, rate, seed=None, name=None):
        super().__init__(name)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate}")
        self.rate, self.seed = float(rate), seed
        self.rng = np.random.default_rng(seed)

    def build(self, input_shape, rng):
        if self.seed is None:  # draw this layer's stream from the model's seed
            self.rng = np.random.default_rng(rng.integers(2**63))

    def call(self, x, training):
        if not training or self.rate == 0.0:
            return x
        u = self.rng.random(x.shape, dtype=np.float32)
        return DropoutFn.apply(x, u, rate=self.rate)


class Activation(Layer):
    """``"relu"``, ``"softmax"`` or ``"linear"`` as a layer."""

    def __init__(self, activation, name=None):
        super().__init__(name)
        if activation not in ("relu", "softmax", "linear"):
            raise ValueError(f"Activation: expected 'relu', 'softmax' or 'linear', got {activation!r}")
        self.activation = activation

    def call(self, x, training):
        return {"relu": relu, "softmax": softmax, "linear": lambda t: t}[self.activation](x)


class ReLU(Activation):
    def __init__(self, name=None):
        super().__init__("relu", name)


class Residual(Layer):
    """y = relu?(block(x) + shortcut(x)): a residual connection (He et al., 2016).

    ``block`` and ``shortcut`` are lists of layers; an empty shortcut is the identity
    and then ``block`` must keep the shape. Gradients reach x through both paths and
    are added there, which is what makes deep stacks trainable.
    """

    def __init__(self, block, shortcut=(), activation="relu", name=None):
        super().__init__(name)
        self.block, self.shortcut = list(block), list(shortcut)
        self.activation = activation

    def sublayers(self):
        return self.block + self.shortcut

    def build(self, input_shape, rng):
        out_block = _build_chain(self.block, input_shape, rng)
        out_short = _build_chain(self.shortcut, input_shape, rng)
        if tuple(out_block) != tuple(out_short):
            raise ValueError(f"{self._label()}: block gives shape {tuple(out_block)}, shortcut gives "
                             f"{tuple(out_short)}; they must match to be added")

    def compute_output_shape(self, input_shape):
        shape = input_shape
        for layer in self.block:
            shape = layer.compute_output_shape(shape)
        return shape

    def call(self, x, training):
        y = s = x
        for layer in self.block:
            y = layer(y, training=training)
        for layer in self.shortcut:
            s = layer(s, training=training)
        out = y + s
        return relu(out) if self.activation == "relu" else out

    def parameters(self):
        return [p for layer in self.sublayers() for p in layer.parameters()]

    def count_params(self):
        return sum(layer.count_params() for layer in self.sublayers())

    def multiply_adds(self, input_shape):
        return _chain_multiply_adds(self.block, input_shape) + _chain_multiply_adds(self.shortcut, input_shape)


def _build_chain(layers, input_shape, rng):
    shape = tuple(input_shape)
    for layer in layers:
        shape = layer.ensure_built(shape, rng)
    return shape


def _chain_multiply_adds(layers, input_shape):
    total, shape = 0, tuple(input_shape)
    for layer in layers:
        total += layer.multiply_adds(shape)
        shape = layer.compute_output_shape(shape)
    return total
