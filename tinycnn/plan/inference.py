"""An inference plan: a model that only predicts, run as a flat list of kernel calls.

``Sequential.__call__`` under ``no_grad`` with ``training=False`` (and so ``predict``,
``fer_models.predict_emotion``, ``webcam.py`` and the web app) runs its inference copy
(``fold.inference_copy``: BatchNorm folded, Dropout left out) through one of these. A
plan is made once per input shape (height, width, channels; any batch size) and holds:

- one *step* per layer, or per group of layers computed as one (Conv2D + MaxPooling2D,
  the pool first and the bias and ReLU after it on the pooled map; Conv2D(relu) +
  BatchNormalization, the normalisation in the convolution's epilogue, and a
  MaxPooling2D after those two in the same kernel call; Conv2DTranspose +
  GlobalAveragePooling2D, the mean taken while each block of the output is in cache,
  with the sub-pixel Winograd). A step is a plain
  function of NumPy arrays that calls the kernels of ``tinycnn/kernels`` directly: no
  Tensor, no graph, no Function context, no input checks or shape arithmetic at each
  call (the geometry, paddings included, is computed when the plan is made);
- its large intermediate arrays come from ``tinycnn.memory``'s pool, allocated at the
  first call and reused by every later one; the array returned to the caller is its
  own until the caller lets it go (the pool counts references), so a later call never
  overwrites it.

One face spends most of its time outside arithmetic when every layer goes through the
autodiff machinery (bench/results/one_face.md shows the time per layer both ways); the
plan leaves the kernels and little else. ``InferencePlan.profile`` times each step.

A layer type without a step of its own (DepthwiseConv2D, SeparableConv2D, a Softmax
Activation, a user's own Layer) runs through its ``__call__`` inside the plan: the same
result, at the usual per-layer cost.
"""
from __future__ import annotations

import time

import numpy as np

from .. import backend
from ..kernels import conv as K
from ..kernels import pool as P
from ..kernels import subpixel
from ..layers import (Activation, BatchNormalization, Conv2D, Conv2DTranspose, Dense, Dropout, Flatten,
                      GlobalAveragePooling2D, MaxPooling2D, Residual)
from ..tensor import Tensor, no_grad
from .fold import _batchnorm_affine


class Step:
    """One kernel call (or two fused) of a plan: ``run(x) -> y`` on arrays, with the
    layer(s) it stands for and its input and output shapes (no batch axis)."""

    def __init__(self, run, layers, input_shape, output_shape, multiply_adds=0):
        self.run, self.layers = run, layers
        self.input_shape, self.output_shape = tuple(input_shape), tuple(output_shape)
        self.multiply_adds = multiply_adds

    @property
    def label(self):
        return " + ".join(_describe(layer) for layer in self.layers)

    def __repr__(self):
        return f"Step({self.label}: {self.input_shape} -> {self.output_shape})"


def _describe(layer):
    activation = getattr(layer, "activation", None)
    return type(layer).__name__ + (f"({activation})" if activation not in (None, "linear") else "")


class InferencePlan:
    """``plan(x)``: the outputs (N, ...) of ``layers`` (an inference copy's, already folded)
    for an array x (N, *input_shape), float32.

    ``steps`` lists the kernel calls; ``profile(x)`` times them."""

    def __init__(self, layers, input_shape, name="model"):
        self.name, self.input_shape = name, tuple(int(d) for d in input_shape)
        self.steps = _compile(list(layers), self.input_shape)
        self.output_shape = self.steps[-1].output_shape if self.steps else self.input_shape

    def __call__(self, x) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"InferencePlan '{self.name}': made for inputs (batch,) + {self.input_shape}, "
                             f"got {x.shape}")
        with backend.one_blas_thread():
            if len(x) == 1:   # one image: every kernel is small; one thread for the whole call
                with backend.one_numba_thread():
                    return _run(self.steps, x)
            return _run(self.steps, x)

    def profile(self, x, repeats=50, warmup=10) -> list[tuple[Step, float]]:
        """(step, median seconds) for each step, on input x, each step run ``repeats``
        times after ``warmup`` on the previous step's output."""
        x = np.ascontiguousarray(x, np.float32)
        rows = []
        with backend.one_blas_thread():
            with backend.one_numba_thread() if len(x) == 1 else _nothing():
                for step in self.steps:
                    times = []
                    for i in range(warmup + repeats):
                        t = time.perf_counter()
                        y = step.run(x)
                        if i >= warmup:
                            times.append(time.perf_counter() - t)
                    rows.append((step, float(np.median(times))))
                    x = y
        return rows

    def __repr__(self):
        lines = [f"InferencePlan '{self.name}', input (batch,) + {self.input_shape}:"]
        lines += [f"  {step.label}: {step.input_shape} -> {step.output_shape}" for step in self.steps]
        return "\n".join(lines)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _run(steps, x):
    for step in steps:
        x = step.run(x)
    return x


# -- making the steps -----------------------------------------------------------------------
def _compile(layers, shape):
    """The steps for ``layers`` on inputs of ``shape`` (no batch axis)."""
    steps, i = [], 0
    layers = [layer for layer in layers if not isinstance(layer, Dropout)]   # the identity in inference
    while i < len(layers):
        layer, following = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        after = layers[i + 2] if i + 2 < len(layers) else None
        if type(layer) is Conv2D and layer.relu and isinstance(following, BatchNormalization) \
                and isinstance(after, MaxPooling2D):
            step = _conv_relu_batchnorm_pool(layer, following, after, shape)
            i += 3
        elif type(layer) is Conv2D and isinstance(following, MaxPooling2D):
            step = _conv_then_pool(layer, following, shape)
            i += 2
        elif type(layer) is Conv2D and layer.relu and isinstance(following, BatchNormalization):
            step = _conv_relu_batchnorm(layer, following, shape)
            i += 2
        elif type(layer) is Conv2DTranspose and type(following) is GlobalAveragePooling2D:
            step = _conv_transpose_then_mean(layer, following, shape)
            i += 2
        else:
            step = _one_layer(layer, shape)
            i += 1
        steps.append(step)
        shape = step.output_shape
    return steps


def _one_layer(layer, shape):
    layer.ensure_built(shape)
    out = layer.compute_output_shape(shape)
    if type(layer) is Conv2D:
        return _conv(layer, shape)
    if type(layer) is Conv2DTranspose:
        return _conv_transpose(layer, shape)
    if type(layer) is Dense and layer.activation in ("linear", "relu"):
        w, b, relu = layer.kernel.data, layer.bias.data, layer.activation == "relu"

        def dense(x):
            y = backend.matmul(x, w)
            y += b
            return np.maximum(y, 0, out=y) if relu else y
        return Step(dense, [layer], shape, out, layer.multiply_adds(shape))
    if type(layer) is MaxPooling2D:
        pool, strides, pads = layer.pool_size, layer.strides, layer._pads(*shape[:2])
        return Step(lambda x: P.maxpool(x, pool, strides, pads, out[:2])[0], [layer], shape, out)
    if type(layer) is GlobalAveragePooling2D:
        return Step(P.global_average_pool, [layer], shape, out)
    if type(layer) is Flatten:
        return Step(lambda x: x.reshape(len(x), -1), [layer], shape, out)
    if type(layer) is BatchNormalization:
        s, t = _batchnorm_affine(layer)
        return Step(lambda x: x * s + t, [layer], shape, out)
    if isinstance(layer, Activation) and layer.activation == "relu":   # ReLU too
        return Step(lambda x: np.maximum(x, 0), [layer], shape, out)
    if isinstance(layer, Activation) and layer.activation == "linear":
        return Step(lambda x: x, [layer], shape, out)
    if type(layer) is Residual:
        return _residual(layer, shape)
    return _through_the_layer(layer, shape, out)


def _conv(layer, shape):
    w, b, strides, relu = layer.kernel.data, layer.bias.data, layer.strides, layer.relu
    pads = layer._pads(*shape[:2])
    epilogue = relu or layer.use_bias

    def conv(x):
        y = K.conv2d(x, w, strides, pads)
        if epilogue:
            K.bias_relu(y, b, relu)
        return y
    return Step(conv, [layer], shape, layer.compute_output_shape(shape), layer.multiply_adds(shape))


def _conv_then_pool(layer, pool, shape):
    """max pool of relu?(conv + b), computed as relu?(max pool of conv + b): bias and ReLU
    are non-decreasing per number, so they commute with max (``fused.Conv2DMaxPoolFn``)."""
    layer.ensure_built(shape)
    w, b, strides, relu = layer.kernel.data, layer.bias.data, layer.strides, layer.relu
    conv_shape = layer.compute_output_shape(shape)
    pool.ensure_built(conv_shape)
    out = pool.compute_output_shape(conv_shape)
    pads, pool_pads = layer._pads(*shape[:2]), pool._pads(*conv_shape[:2])
    geometry = (pool.pool_size, pool.strides, pool_pads, out[:2])

    def conv_then_pool(x):
        y, _ = K.conv2d_maxpool(x, w, strides, pads, *geometry)
        K.bias_relu(y, b, relu)
        return y
    return Step(conv_then_pool, [layer, pool], shape, out, layer.multiply_adds(shape))


def _conv_relu_batchnorm(layer, bn, shape):
    """bn(relu(conv + b)) with the normalisation in the convolution's epilogue pass
    (``fold.conv_relu_batchnorm``)."""
    layer.ensure_built(shape)
    out = layer.compute_output_shape(shape)
    bn.ensure_built(out)
    w, b, strides, pads = layer.kernel.data, layer.bias.data, layer.strides, layer._pads(*shape[:2])
    s, t = _batchnorm_affine(bn)
    return Step(lambda x: K.bias_relu_affine(K.conv2d(x, w, strides, pads), b, s, t), [layer, bn], shape, out,
                layer.multiply_adds(shape))


def _conv_relu_batchnorm_pool(layer, bn, pool, shape):
    """pool(bn(relu(conv + b))) as one kernel call (``K.conv2d_affine_maxpool``: on a
    one-channel input the convolution's output is never stored)."""
    step = _conv_relu_batchnorm(layer, bn, shape)
    pool.ensure_built(step.output_shape)
    out = pool.compute_output_shape(step.output_shape)
    w, b, strides, pads = layer.kernel.data, layer.bias.data, layer.strides, layer._pads(*shape[:2])
    s, t = _batchnorm_affine(bn)
    geometry = (pool.pool_size, pool.strides, pool._pads(*step.output_shape[:2]), out[:2])
    return Step(lambda x: K.conv2d_affine_maxpool(x, w, b, s, t, strides, pads, *geometry), [layer, bn, pool], shape,
                out, step.multiply_adds)


def _conv_transpose(layer, shape):
    w, b, strides, relu = layer.kernel.data, layer.bias.data, layer.strides, layer.relu
    out = layer.compute_output_shape(shape)
    pads = layer._pads(*out[:2])

    def conv_transpose(x):
        return K.conv2d_transpose(x, w, b, (len(x),) + out, strides, pads, relu)
    return Step(conv_transpose, [layer], shape, out, layer.multiply_adds(shape))


def _conv_transpose_then_mean(layer, gap, shape):
    """The mean over each image of a Conv2DTranspose's output: where the sub-pixel Winograd
    is chosen (``kernels/subpixel.py``), each block's outputs are summed while in cache
    and the whole output (updown's: 48 x 48 x 32 per image) is never written out."""
    layer.ensure_built(shape)
    w, b, strides, relu = layer.kernel.data, layer.bias.data, layer.strides, layer.relu
    out = layer.compute_output_shape(shape)
    pads = layer._pads(*out[:2])

    def conv_transpose_then_mean(x):
        if subpixel.chosen(x.shape, w.shape, strides, pads, (len(x),) + out):
            return K.subpixel_conv_transpose_mean(x, w, b, relu)
        return P.global_average_pool(K.conv2d_transpose(x, w, b, (len(x),) + out, strides, pads, relu))
    return Step(conv_transpose_then_mean, [layer, gap], shape, gap.compute_output_shape(out),
                layer.multiply_adds(shape))


def _residual(layer, shape):
    layer.ensure_built(shape)
    block, shortcut = _compile(layer.block, shape), _compile(layer.shortcut, shape)
    relu = layer.activation == "relu"

    def residual(x):
        y = _run(block, x)
        y = y + _run(shortcut, x)
        return np.maximum(y, 0, out=y) if relu else y
    out = block[-1].output_shape if block else shape
    return Step(residual, [layer], shape, out, layer.multiply_adds(shape))


def _through_the_layer(layer, shape, out):
    def call(x):
        with no_grad():
            return layer(Tensor(x), training=False).data
    return Step(call, [layer], shape, out, layer.multiply_adds(shape))
